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
    pub point_head: PointHeadConfig,
    pub training: TrainingConfig,
    pub conditioning: ConditioningConfig,
    pub scoring: ScoringConfig,
}

impl DetectorConfig {
    /// Whether scoring reads every voxel point's own features (a point head or a point bank).
    pub fn uses_point_features(&self) -> bool {
        self.point_head.enabled || self.conditioning.point_bank_size > 0
    }

    /// The configuration with every scoring choice that applies only after the heads (score source, object
    /// score, weights, median filter) at its default: configurations with the same key train the same model.
    pub fn training_key(&self) -> Self {
        let scoring = ScoringConfig {
            holdout_fraction: self.scoring.holdout_fraction,
            target_false_reject_rate: self.scoring.target_false_reject_rate,
            point_false_positive_rate: self.scoring.point_false_positive_rate,
            ..ScoringConfig::default()
        };
        Self { scoring, ..self.clone() }
    }

    /// Reads a JSON configuration; absent keys keep their defaults, unknown keys are an error.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Checks values a typo could make meaningless, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(bool, &str); 23] = [
            (
                self.preprocess.voxel_size >= 0.0 && self.preprocess.voxel_size.is_finite(),
                "preprocess.voxel_size must be >= 0 (0: derived from the training clouds)",
            ),
            (
                self.preprocess.voxel_spacing_factor > 0.0 && self.preprocess.voxel_spacing_factor.is_finite(),
                "preprocess.voxel_spacing_factor must be > 0",
            ),
            (
                self.scoring.top_fraction > 0.0 && self.scoring.top_fraction <= 1.0,
                "scoring.top_fraction must be in (0, 1]",
            ),
            (
                (0.0..0.5).contains(&self.preprocess.outliers.quantile),
                "preprocess.outliers.quantile must be in [0, 0.5)",
            ),
            (
                self.preprocess.outliers.margin >= 0.0 && self.preprocess.outliers.link_voxels > 0.0,
                "preprocess.outliers.margin must be >= 0 and .link_voxels > 0",
            ),
            (self.preprocess.max_voxel_points >= 1000, "preprocess.max_voxel_points must be at least 1000"),
            (
                {
                    let [lo, hi] = self.preprocess.augment.camera_elevation_degrees;
                    (-90.0..=90.0).contains(&lo) && (-90.0..=90.0).contains(&hi) && lo <= hi
                },
                "preprocess.augment.camera_elevation_degrees must be [a, b] with -90 <= a <= b <= 90",
            ),
            (self.conditioning.bank_size >= 1, "conditioning.bank_size must be at least 1"),
            ((0.0..=1.0).contains(&self.scoring.point_weight), "scoring.point_weight must be in [0, 1]"),
            ((0.0..=1.0).contains(&self.scoring.point_bank_weight), "scoring.point_bank_weight must be in [0, 1]"),
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
            None => {
                self.discriminator.validate()?;
                self.generator.pseudo_defects.validate()?;
                let multiscale = matches!(self.backbone, BackboneConfig::MultiscaleFpfh { .. });
                if self.point_head.enabled && !multiscale {
                    return Err("point_head needs per-point features: backbone.kind multiscale_fpfh".into());
                }
                if self.conditioning.point_bank_size > 0 && !multiscale {
                    return Err("conditioning.point_bank_size > 0 needs per-point features: backbone.kind \
                                multiscale_fpfh (or set it to 0)"
                        .into());
                }
                if self.uses_point_features() && self.point_head.points_per_view < 16 {
                    return Err("point_head.points_per_view must be at least 16".into());
                }
                if let BackboneConfig::MultiscaleFpfh { radii_voxels } = &self.backbone
                    && (radii_voxels.is_empty() || radii_voxels.iter().any(|r| !(*r > 0.0 && r.is_finite())))
                {
                    return Err("backbone.radii_voxels must be one or more radii > 0".into());
                }
                Ok(())
            }
        }
    }
}

/// Step 0 of the method: per cloud, before any learning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessConfig {
    /// Voxel edge in the cloud's own unit (the paper: 0.5 mm for Real3D-AD, 1 mm for depth cameras). 0 (the
    /// default): derived from the training clouds (`voxel_spacing_factor` × their median point spacing, at
    /// least 1/200 of the part's diagonal) and stored in the model, so clouds in metres or millimetres need no
    /// setting. Every other geometric size is in voxels or in the unit-radius frame.
    pub voxel_size: f32,
    /// With `voxel_size` 0: the voxel is this many median point spacings of the training clouds.
    pub voxel_spacing_factor: f32,
    /// Register every cloud to the first training cloud (centroids, then point-to-plane ICP) and normalise it
    /// with that cloud's frame, so patch positions are comparable across scans (fixtured parts).
    pub align: bool,
    /// With `align`: the template is every training cloud registered to the first and fused on the voxel grid,
    /// so it has the whole part where one view has holes (specular patches, occlusion); else the first cloud.
    pub fuse_template: bool,
    /// With `align`: the surface context's count of template points around a point counts only those the
    /// view's camera can see (or that the view has), so an occlusion border is not mistaken for the rim of
    /// missing material. The camera is the cloud frame's origin where that lies outside the part; else, for a
    /// view that covers under 80 % of the template, a camera 3.5 part radii off on the side the view covers;
    /// a scan covering more (all round) expects the whole template. Off by default: measured no better on full
    /// scans and sensor-frame views, and worse on views in the part's frame (docs/evaluation.md).
    pub template_visibility: bool,
    /// With `align`: the heads (positional MLP and point head) get one more input, 1 where the scan has at
    /// least 80 % of the template (taken all round) and 0 where it is a partial view, so one model can learn
    /// that an occlusion border is normal in a view and the same thin rim is material gone on a full scan; and
    /// where calibration cuts camera views, each kind's scores are normalised by its own kind's held-out scores.
    pub capture_input: bool,
    /// PCA normals over this many nearest neighbours.
    pub normal_neighbors: usize,
    /// Which side normals face: `sensor` (towards the cloud frame's origin, i.e. a depth camera) or `outward`
    /// (away from the part's centre, for scans taken all round).
    pub normals_face: NormalSide,
    /// FPFH radius for the SCA descriptors, in the normalised (unit-radius) frame.
    pub fpfh_radius: f32,
    /// Training augmentations (method step 0.4).
    pub augment: AugmentConfig,
    /// Flying pixels and absurd points removed before voxelising (training and inspection alike).
    pub outliers: OutlierConfig,
    /// A scan with more voxel points than this is refused before any work: no input may stall the worker.
    pub max_voxel_points: usize,
}

impl PreprocessConfig {
    /// Whether the heads get the capture input (it needs the template).
    pub fn heads_see_capture(&self) -> bool {
        self.align && self.capture_input
    }
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            voxel_size: 0.0,
            voxel_spacing_factor: 3.0,
            align: true,
            fuse_template: true,
            template_visibility: false,
            capture_input: true,
            normal_neighbors: 16,
            normals_face: NormalSide::Sensor,
            fpfh_radius: 0.1,
            augment: AugmentConfig::default(),
            outliers: OutlierConfig::default(),
            max_voxel_points: 100_000,
        }
    }
}

/// Outlier removal (`geometry::outliers`): a robust box, then floating groups. Removed points are scored NaN
/// and counted in the verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutlierConfig {
    pub enabled: bool,
    /// The box spans the `quantile` … 1 − `quantile` range of each axis…
    pub quantile: f32,
    /// …widened on both sides by this many times its span; points outside it are removed.
    pub margin: f32,
    /// Voxel points closer than this many voxels belong to one group…
    pub link_voxels: f32,
    /// …and groups of fewer voxel points than this float apart from the part: removed (unless they are more
    /// than 5 % of the scan: then it is sparse, not noisy).
    pub min_group: usize,
}

impl OutlierConfig {
    /// The rule at voxel edge `voxel`; off, it removes nothing (the box still measures the part).
    pub fn rule(&self, voxel: f32) -> crate::geometry::OutlierRule {
        crate::geometry::OutlierRule {
            quantile: self.quantile,
            margin: if self.enabled { self.margin } else { f32::INFINITY },
            voxel,
            link_voxels: self.link_voxels,
            min_group: if self.enabled { self.min_group } else { 0 },
        }
    }
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self { enabled: true, quantile: 0.01, margin: 1.0, link_voxels: 3.0, min_group: 5 }
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
    /// Random rotation about the z axis through the cloud's centre, up to ± this many degrees, applied before
    /// registration (as a part placed a little differently would be).
    pub yaw_degrees: f32,
    /// Gaussian jitter σ in the normalised frame.
    pub jitter: f32,
    /// Uniform scaling in [1 − s, 1 + s].
    pub scale: f32,
    /// Augmented copies drawn per training cloud. The frozen backbone and SCA dominate the cost of a training
    /// step, so copies are drawn once and their features cached, not redrawn every epoch.
    pub views_per_cloud: usize,
    /// Further views of each all-round training cloud (one whose frame's origin lies inside the part, so no
    /// single sensor took it: a turntable scan, views fused in a world frame), each cut to what one camera sees,
    /// so that training views look like a cell camera's inspection views: their occlusion borders, their
    /// missing far side. Their pseudo-defects are made on the cut view. Also used to calibrate. 0: none.
    pub camera_views: usize,
    /// Elevation range of those cameras above the cloud frame's xy plane (z up), degrees; any azimuth.
    pub camera_elevation_degrees: [f32; 2],
}

impl Default for AugmentConfig {
    fn default() -> Self {
        // A fixtured part comes back within a few degrees: that, not any yaw, is what training should see.
        Self {
            yaw_degrees: 5.0,
            jitter: 0.002,
            scale: 0.0,
            views_per_cloud: 4,
            camera_views: 4,
            camera_elevation_degrees: [20.0, 90.0],
        }
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
        // The paper's n = 1024 costs 4× the attention and 2× the bank search for no measured gain with these
        // tokens, whose point head gives the sharpness (docs/evaluation.md); config/paper.json keeps 1024.
        Self { count: 512, size: 32 }
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
    /// `width` by a fixed map drawn from `seed` (the first reading; kept for `config/paper.json`).
    Fpfh { width: usize, seed: u64 },
    /// Training-free tokens: FPFH at each centre at several radii (in voxels), concatenated (33 per radius),
    /// Hellinger-scaled, and 3 numbers of surface context (how much of a border the patch is, and how many
    /// points it has where the registered template has them). Token width = 33 × radii + 3, the descriptor's
    /// own size: no projection. The default.
    MultiscaleFpfh { radii_voxels: Vec<f32> },
    /// Point-MAE's encoder with seeded random weights: only as an explicit choice (ablation "no pretraining").
    RandomPointMae { width: usize, depth: usize, heads: usize, seed: u64 },
}

impl Default for BackboneConfig {
    fn default() -> Self {
        Self::MultiscaleFpfh { radii_voxels: vec![3.0, 5.0, 8.0] }
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
    /// Negatives are patches of training views with geometric pseudo-defects made in point space
    /// (`pseudo_defects`), sent through the same frozen stages; no feature noise.
    Geometric,
    /// Both: geometric pseudo-defect views, and the selective feature noise on the clean views.
    #[serde(rename = "geometric+selective")]
    GeometricSelective,
}

impl GeneratorKind {
    pub fn geometric(self) -> bool {
        matches!(self, Self::Geometric | Self::GeometricSelective)
    }
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
    /// The point-space defects of the geometric kinds.
    pub pseudo_defects: PseudoDefectConfig,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            kind: GeneratorKind::Geometric,
            probability: 0.5,
            sigma: 0.1,
            pseudo_defects: PseudoDefectConfig::default(),
        }
    }
}

/// Point-space pseudo-defects (crate::train::pseudo_defects). Sizes are relative to the part (its robust
/// bounding-box diagonal) or to the defect's own radius, so they mean the same in any unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PseudoDefectConfig {
    /// Defective copies made of each training view.
    pub copies_per_view: usize,
    /// Defects per copy, drawn uniformly in this range.
    pub defects_per_copy: [usize; 2],
    /// Radius as a share of the part's diagonal; drawn log-uniformly, so small defects are as common as large.
    pub radius: [f32; 2],
    /// Displacement as a share of the radius (bumps, dents, ridges, grooves, shear), log-uniform.
    pub magnitude: [f32; 2],
    /// A patch is a negative when at least this share of its points were moved or border a removed region;
    /// patches with some but fewer such points are left out of the loss.
    pub patch_share: f32,
    /// The shape families used (all by default).
    pub families: Vec<PseudoDefectFamily>,
}

impl Default for PseudoDefectConfig {
    fn default() -> Self {
        Self {
            copies_per_view: 2,
            defects_per_copy: [1, 3],
            radius: [0.02, 0.15],
            magnitude: [0.03, 0.5],
            patch_share: 0.25,
            families: PseudoDefectFamily::ALL.to_vec(),
        }
    }
}

impl PseudoDefectConfig {
    fn validate(&self) -> Result<(), String> {
        let [lo, hi] = self.defects_per_copy;
        let ranges = [self.radius, self.magnitude];
        if lo == 0 || lo > hi {
            return Err("generator.pseudo_defects.defects_per_copy must be [a, b] with 1 <= a <= b".into());
        }
        if ranges.iter().any(|[a, b]| !(*a > 0.0 && a <= b && b.is_finite())) {
            return Err("generator.pseudo_defects.radius and .magnitude must be [a, b] with 0 < a <= b".into());
        }
        if !(self.patch_share > 0.0 && self.patch_share <= 1.0) {
            return Err("generator.pseudo_defects.patch_share must be in (0, 1]".into());
        }
        if self.families.is_empty() {
            return Err("generator.pseudo_defects.families must name at least one family".into());
        }
        Ok(())
    }
}

/// The training generator's own shape families (deliberately not the benchmark simulator's kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PseudoDefectFamily {
    /// Smooth raised patch along the normals.
    Bump,
    /// Smooth depressed patch along the normals.
    Dent,
    /// A raised or sunken band along a straight surface path.
    Ridge,
    /// Random normal displacement over a patch (a rough, pitted area).
    Roughness,
    /// Tangential slip of a patch (a step where material was pushed sideways).
    Shear,
    /// Points removed from a disc; its rim is the defect.
    Hole,
}

impl PseudoDefectFamily {
    pub const ALL: [Self; 6] = [Self::Bump, Self::Dent, Self::Ridge, Self::Roughness, Self::Shear, Self::Hole];
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
    /// Add the positional embedding of the patch centre (normalised frame). Off, the discriminator judges a
    /// patch by its shape and its neighbours' alone, whatever the part's pose.
    pub positional: bool,
}

impl Default for DiscriminatorConfig {
    fn default() -> Self {
        // 3 heads: the default tokens are 105 wide (3 FPFH scales + 6 context numbers), which 4 does not divide.
        Self { kind: DiscriminatorKind::Attention, heads: 3, hidden_ratio: 4, dropout: 0.1, positional: true }
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

/// The point head (this project's addition): a small MLP that scores every voxel point from its own multi-scale
/// features, trained on the pseudo-defects' per-point labels. Patches describe context but are a few voxels
/// wide; this head gives the point scores their sharpness. Its score is averaged with the patch score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PointHeadConfig {
    pub enabled: bool,
    pub hidden: [usize; 2],
    /// Points per training view that enter the loss (every touched point, the rest drawn at random).
    pub points_per_view: usize,
}

impl Default for PointHeadConfig {
    fn default() -> Self {
        Self { enabled: true, hidden: [128, 64], points_per_view: 2048 }
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
        // Fewer epochs at a higher rate than the paper's 100 at 1e-4 (config/paper.json): the pseudo-defect
        // views make each epoch several times larger, and training must fit in minutes on a cell's CPU.
        Self { epochs: 30, batch_size: 8, learning_rate: 1e-3, weight_decay: 1e-4, gradient_clip: 1.0, seed: 42 }
    }
}

/// Token conditioning and the memory bank (no learned weights; statistics of the training tokens, stored in
/// the model folder's `conditioning.safetensors`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConditioningConfig {
    /// Standardise every token dimension with the training tokens' mean and standard deviation, so that
    /// distances and noise mean the same in every dimension.
    pub standardise: bool,
    /// At most this many training features kept for the memory-bank score.
    pub bank_size: usize,
    /// Training voxel points' features kept (a greedy k-center coreset of the clean views' points) for a per-point
    /// memory-bank score: a point's distance to its nearest good point feature. 0: none. Needs per-point
    /// features (backbone `multiscale_fpfh`).
    pub point_bank_size: usize,
}

impl Default for ConditioningConfig {
    fn default() -> Self {
        Self { standardise: true, bank_size: 10_000, point_bank_size: 4096 }
    }
}

/// Which patch scores make the point scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreSource {
    /// The discriminator's probability (the paper).
    Discriminator,
    /// Distance to the nearest training feature.
    Bank,
    /// Both, each normalised by its held-out good patches, averaged.
    Fused,
}

/// How point scores become the cloud score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectScore {
    /// The highest point score (the paper, Real3D-AD).
    Max,
    /// The mean of the highest `top_fraction` of point scores: one noisy point cannot decide.
    TopMean,
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
    pub source: ScoreSource,
    pub object_score: ObjectScore,
    /// With `top_mean`: the share of the highest point scores averaged.
    pub top_fraction: f32,
    /// With a point head or a point bank: the weight of the point-level score against the patch score's (0:
    /// patches only).
    pub point_weight: f32,
    /// With both a point head and a point bank: the bank's share of the point-level score (0: the head alone,
    /// 1: the bank alone).
    pub point_bank_weight: f32,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        Self {
            source: ScoreSource::Discriminator,
            object_score: ObjectScore::TopMean,
            top_fraction: 0.01,
            point_weight: 0.5,
            point_bank_weight: 0.5,
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
    fn defaults_are_the_measured_configuration_and_round_trip() {
        let c = DetectorConfig::default();
        assert_eq!((c.patches.count, c.patches.size), (512, 32));
        assert_eq!((c.sca.sinkhorn_iterations, c.sca.temperature, c.sca.local_neighbors), (20, 0.05, 10));
        assert_eq!((c.generator.probability, c.generator.sigma, c.adaptor.alpha), (0.5, 0.1, 0.5));
        assert_eq!((c.training.batch_size, c.training.learning_rate, c.training.epochs), (8, 1e-3, 30));
        assert_eq!((c.generator.kind, c.scoring.source), (GeneratorKind::Geometric, ScoreSource::Discriminator));
        assert_eq!(c.preprocess.voxel_size, 0.0, "derived from the data");
        c.validate().unwrap();
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(DetectorConfig::from_json(&text).unwrap(), c);
    }

    #[test]
    fn config_detector_json_is_the_default() {
        let shipped = DetectorConfig::from_json(include_str!("../../config/detector.json")).unwrap();
        assert_eq!(shipped, DetectorConfig::default(), "config/detector.json must spell out the defaults");
    }

    #[test]
    fn the_paper_preset_keeps_the_papers_numbers() {
        let c = DetectorConfig::from_json(include_str!("../../config/paper.json")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.generator.kind, GeneratorKind::Selective);
        assert_eq!((c.scoring.source, c.scoring.object_score), (ScoreSource::Discriminator, ObjectScore::Max));
        assert_eq!((c.patches.count, c.training.epochs, c.training.learning_rate), (1024, 100, 1e-4));
        assert!(!c.point_head.enabled && !c.conditioning.standardise && !c.preprocess.align);
    }

    #[test]
    fn the_cpu_fast_preset_is_the_default_with_half_the_patches_and_a_quarter_of_the_point_bank() {
        let c = DetectorConfig::from_json(include_str!("../../config/cpu_fast.json")).unwrap();
        c.validate().unwrap();
        let mut expected = DetectorConfig::default();
        expected.patches.count /= 2;
        expected.conditioning.point_bank_size /= 4;
        assert_eq!(c, expected, "docs/evaluation.md measured exactly this configuration");
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
