//! The detector's configuration: every number of docs/method.md in one place, with its default, and every
//! ablation as a switch. Serialised into each model's manifest, so a model always carries what it was made with.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    pub preprocess: PreprocessConfig,
    pub patches: PatchConfig,
    pub backbone: BackboneConfig,
    pub sca: ScaConfig,
    pub adaptor: AdaptorConfig,
    pub generator: GeneratorConfig,
    pub discriminator: DiscriminatorConfig,
    pub training: TrainingConfig,
    pub scoring: ScoringConfig,
}

impl DetectorConfig {
    /// Reads a JSON configuration; absent keys keep their defaults, unknown keys are an error.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Checks values a typo could make meaningless, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(bool, &str); 14] = [
            (
                self.preprocess.voxel_size > 0.0 && self.preprocess.voxel_size.is_finite(),
                "preprocess.voxel_size must be > 0",
            ),
            (self.patches.count >= 8, "patches.count must be at least 8"),
            (self.patches.size >= 4, "patches.size must be at least 4"),
            (self.preprocess.fpfh_radius > 0.0, "preprocess.fpfh_radius must be > 0"),
            (
                self.sca.prototype_ratio > 0.0 && self.sca.prototype_ratio <= 1.0,
                "sca.prototype_ratio must be in (0, 1]",
            ),
            (self.sca.temperature > 0.0, "sca.temperature must be > 0"),
            (self.sca.sinkhorn_iterations >= 1, "sca.sinkhorn_iterations must be at least 1"),
            ((0.0..=1.0).contains(&self.sca.snapping), "sca.snapping must be in [0, 1]"),
            ((0.0..=1.0).contains(&self.adaptor.alpha), "adaptor.alpha must be in [0, 1]"),
            ((0.0..=1.0).contains(&self.generator.probability), "generator.probability must be in [0, 1]"),
            (self.training.batch_size >= 1, "training.batch_size must be at least 1"),
            (self.training.learning_rate > 0.0, "training.learning_rate must be > 0"),
            (
                self.scoring.target_false_reject_rate > 0.0 && self.scoring.target_false_reject_rate <= 0.5,
                "scoring.target_false_reject_rate must be in (0, 0.5]",
            ),
            (
                self.scoring.holdout_fraction > 0.0 && self.scoring.holdout_fraction < 1.0,
                "scoring.holdout_fraction must be in (0, 1)",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err(message.to_string()),
            None => self.discriminator.validate(),
        }
    }
}

/// Step 0 of the method: per cloud, before any learning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessConfig {
    /// Voxel edge in the cloud's own unit (the paper: 0.5 mm for Real3D-AD, 1 mm for depth cameras). The
    /// default suits millimetre CAD parts and scans; set it for the sensor's unit.
    pub voxel_size: f32,
    /// PCA normals over this many nearest neighbours.
    pub normal_neighbors: usize,
    /// Which side normals face: `sensor` (towards the cloud frame's origin, i.e. a depth camera) or `outward`
    /// (away from the part's centre, for scans taken all round).
    pub normals_face: NormalSide,
    /// FPFH radius for the SCA descriptors, in the normalised (unit-radius) frame.
    pub fpfh_radius: f32,
    /// Training augmentations (method step 0.4).
    pub augment: AugmentConfig,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            voxel_size: 1.0,
            normal_neighbors: 16,
            normals_face: NormalSide::Sensor,
            fpfh_radius: 0.1,
            augment: AugmentConfig::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormalSide {
    Sensor,
    Outward,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Random rotation about the up axis (z), up to ± this many degrees.
    pub yaw_degrees: f32,
    /// Gaussian jitter σ in the normalised frame.
    pub jitter: f32,
    /// Uniform scaling in [1 − s, 1 + s].
    pub scale: f32,
    /// Augmented copies drawn per training cloud. The frozen backbone and SCA dominate the cost of a training
    /// step, so copies are drawn once and their features cached, not redrawn every epoch.
    pub views_per_cloud: usize,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self { yaw_degrees: 180.0, jitter: 0.005, scale: 0.05, views_per_cloud: 4 }
    }
}

/// Step 1: patches by FPS + kNN.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PatchConfig {
    /// n: patch centres per cloud.
    pub count: usize,
    /// k: points per patch.
    pub size: usize,
}

impl Default for PatchConfig {
    fn default() -> Self {
        Self { count: 1024, size: 32 }
    }
}

/// Where patch tokens come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BackboneConfig {
    /// Point-MAE's encoder with weights from a safetensors checkpoint (converted with
    /// scripts/convert_pointmae.py). Width and depth come from the checkpoint; heads from its metadata.
    PointMae { checkpoint: String },
    /// Training-free tokens: the FPFH of each patch (at its centre, over the patch's radius), projected to
    /// `width` by a fixed map drawn from `seed`. The default while no pretrained checkpoint is at hand.
    Fpfh { width: usize, seed: u64 },
    /// Point-MAE's encoder with seeded random weights: only as an explicit choice (ablation "no pretraining").
    RandomPointMae { width: usize, depth: usize, heads: usize, seed: u64 },
}

impl Default for BackboneConfig {
    fn default() -> Self {
        Self::Fpfh { width: 256, seed: 7 }
    }
}

/// How SCA fuses its two similarity matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fusion {
    Both,
    GeometryOnly,
    FeatureOnly,
}

/// Step 2: Spatial Context Aggregation (no learned weights).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScaConfig {
    pub enabled: bool,
    /// n̄ / n.
    pub prototype_ratio: f32,
    /// T: Sinkhorn iterations.
    pub sinkhorn_iterations: usize,
    /// t: Sinkhorn temperature.
    pub temperature: f32,
    /// Assignment + centroid-update rounds.
    pub assignment_rounds: usize,
    /// K: patches per prototype in the local step.
    pub local_neighbors: usize,
    /// Step 4 (global aggregation among prototypes).
    pub global_step: bool,
    /// τ: prototypes farther apart than this (normalised frame) do not exchange information.
    pub global_radius: f32,
    /// τ_c: spatial bandwidth of the back-projection to patches.
    pub spatial_bandwidth: f32,
    /// β of step 6; 0 disables snapping.
    pub snapping: f32,
    pub fusion: Fusion,
}

impl Default for ScaConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            prototype_ratio: 0.1,
            sinkhorn_iterations: 20,
            temperature: 0.05,
            assignment_rounds: 1,
            local_neighbors: 10,
            global_step: true,
            global_radius: 0.5,
            spatial_bandwidth: 0.1,
            snapping: 0.0,
            fusion: Fusion::Both,
        }
    }
}

/// Step 3: the Feature Adaptor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptorConfig {
    pub enabled: bool,
    /// α: weight of the residual path.
    pub alpha: f64,
}

impl Default for AdaptorConfig {
    fn default() -> Self {
        Self { enabled: true, alpha: 0.5 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GeneratorKind {
    /// Corrupts a random subset of tokens (the paper's generator).
    Selective,
    /// Corrupts every token; the clean copy gives the negatives (SimpleNet).
    SimpleNet,
}

/// Step 4: the anomalous feature generator (training only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeneratorConfig {
    pub kind: GeneratorKind,
    /// p: share of tokens corrupted.
    pub probability: f64,
    /// σ of the Gaussian noise.
    pub sigma: f64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self { kind: GeneratorKind::Selective, probability: 0.5, sigma: 0.1 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscriminatorKind {
    /// Cross-patch attention, then the MLP head (the paper's discriminator).
    Attention,
    /// The MLP head on each token alone (SimpleNet).
    Mlp,
}

/// Step 5: the discriminator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscriminatorConfig {
    pub kind: DiscriminatorKind,
    pub heads: usize,
    /// Hidden width of the head as a multiple of the token width.
    pub hidden_ratio: usize,
    pub dropout: f64,
}

impl Default for DiscriminatorConfig {
    fn default() -> Self {
        Self { kind: DiscriminatorKind::Attention, heads: 4, hidden_ratio: 4, dropout: 0.1 }
    }
}

impl DiscriminatorConfig {
    fn validate(&self) -> Result<(), String> {
        if self.heads == 0 || self.hidden_ratio == 0 {
            return Err("discriminator.heads and discriminator.hidden_ratio must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err("discriminator.dropout must be in [0, 1)".into());
        }
        Ok(())
    }
}

/// Step 6: training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// AdamW weight decay, on the adaptor's weights only.
    pub weight_decay: f64,
    pub gradient_clip: f64,
    pub seed: u64,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self { epochs: 100, batch_size: 8, learning_rate: 1e-4, weight_decay: 1e-4, gradient_clip: 1.0, seed: 42 }
    }
}

/// Step 7: from patch scores to a decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoringConfig {
    /// Radius of the 3D median filter, in voxels.
    pub median_radius_voxels: f32,
    /// Share of good parts the cloud threshold may reject.
    pub target_false_reject_rate: f64,
    /// Share of points of good parts the point threshold may flag.
    pub point_false_positive_rate: f64,
    /// Share of the good training clouds held out to calibrate the thresholds.
    pub holdout_fraction: f64,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        Self {
            median_radius_voxels: 3.0,
            target_false_reject_rate: 0.05,
            point_false_positive_rate: 0.001,
            holdout_fraction: 0.2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_method_numbers_and_round_trip() {
        let c = DetectorConfig::default();
        assert_eq!((c.patches.count, c.patches.size), (1024, 32));
        assert_eq!((c.sca.sinkhorn_iterations, c.sca.temperature, c.sca.local_neighbors), (20, 0.05, 10));
        assert_eq!((c.generator.probability, c.generator.sigma, c.adaptor.alpha), (0.5, 0.1, 0.5));
        assert_eq!((c.training.batch_size, c.training.learning_rate, c.training.epochs), (8, 1e-4, 100));
        c.validate().unwrap();
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(DetectorConfig::from_json(&text).unwrap(), c);
    }

    #[test]
    fn partial_json_keeps_defaults_and_typos_are_errors() {
        let c = DetectorConfig::from_json(
            r#"{"sca": {"enabled": false}, "backbone": {"kind": "fpfh", "width": 64, "seed": 1}}"#,
        )
        .unwrap();
        assert!(!c.sca.enabled);
        assert_eq!(c.sca.temperature, 0.05);
        assert!(DetectorConfig::from_json(r#"{"sca": {"enabeld": false}}"#).is_err());
        let bad = DetectorConfig { adaptor: AdaptorConfig { alpha: 2.0, ..Default::default() }, ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("adaptor.alpha"));
    }
}
