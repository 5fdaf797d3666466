//! The detector (docs/method.md): one module per stage — [`preprocess`] (steps 0–1 geometry), [`backbone`]
//! (tokens), [`sca`] (step 2), [`adaptor`] (3), [`generator`] (4, training only), [`discriminator`] (5),
//! [`scoring`] (7) — assembled here into a [`Detector`] that turns a cloud into per-point scores and a verdict,
//! and [`store`], the model folder on disk. Training lives in `crate::train`.

pub mod adaptor;
pub mod backbone;
pub mod bank;
mod batch;
pub mod conditioning;
pub mod config;
pub mod discriminator;
pub mod generator;
pub mod point_head;
pub mod preprocess;
pub mod sca;
pub mod scoring;
pub mod store;

pub use batch::{GeometryPart, PreparedClouds};

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};
use thiserror::Error;

use crate::cloud::{CloudError, PointCloud};
use crate::geometry::device::Compute;
use crate::geometry::{self, GeometryError, Point};
use crate::transfers::Transfer;
use adaptor::Adaptor;
use backbone::Backbone;
use conditioning::Conditioning;
use config::{DetectorConfig, ScoringConfig};
use discriminator::Discriminator;
use generator::Generator;
use point_head::PointHead;
use preprocess::PatchedCloud;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error(transparent)]
    Geometry(#[from] GeometryError),
    #[error(transparent)]
    Bag(#[from] crate::bag::BagError),
    #[error("the scan has {points} usable points; scoring needs at least {needed}")]
    TooFewInputPoints { points: usize, needed: usize },
    #[error(
        "only {points} points remain after the model's {voxel}-unit voxels; a patch needs {needed}: the scan shows too little of the part, or is in a larger unit than the training clouds"
    )]
    TooFewPoints { points: usize, needed: usize, voxel: f32 },
    #[error(
        "{points} voxel points at the model's {voxel}-unit voxel exceed the cap of {cap} (preprocess.max_voxel_points): the scan is far denser or larger than the part, e.g. in a smaller unit than the training clouds"
    )]
    TooManyVoxels { points: usize, cap: usize, voxel: f32 },
    #[error(
        "the scan spans {scan} units across but the part the model learnt spans {part}: the scan is in another unit than the training clouds (about ×{ratio}), or shows another scene"
    )]
    UnitMismatch { scan: f32, part: f32, ratio: f32 },
    #[error("all {0} points were removed as outliers (no group of points dense enough to be a surface)")]
    AllOutliers(usize),
    #[error("scoring is not sound, no verdict: {0}")]
    Unsound(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("checkpoint {path}: {problem}")]
    Checkpoint { path: String, problem: String },
    #[error("model {path}: {problem}")]
    Model { path: String, problem: String },
    #[error("training: {0}")]
    Training(String),
    #[error("cancelled")]
    Cancelled,
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("LibTorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The learned stages failed for a whole batch of clouds (each of them gets this error).
    #[error("batch scoring: {0}")]
    Batch(String),
}

impl ModelError {
    /// Whether the input (the scan), not the model or the machine, is what is wrong.
    pub fn is_input_problem(&self) -> bool {
        matches!(
            self,
            Self::Cloud(_)
                | Self::Geometry(_)
                | Self::TooFewInputPoints { .. }
                | Self::TooFewPoints { .. }
                | Self::TooManyVoxels { .. }
                | Self::UnitMismatch { .. }
                | Self::AllOutliers(_)
        )
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// A scan spanning more than this many times the learnt part (or less than its inverse) is in another unit.
const UNIT_MISMATCH_RATIO: f32 = 20.0;

/// Where a detector runs: its tensors' device, and whether its per-scan geometry runs there too
/// ([`Detector::with_device_geometry`]). A bare device keeps the geometry on the host.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placement {
    pub device: Device,
    pub device_geometry: bool,
}

impl From<Device> for Placement {
    fn from(device: Device) -> Self {
        Self { device, device_geometry: false }
    }
}

/// Where the detector runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    /// CUDA when LibTorch sees a GPU, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl DeviceChoice {
    pub fn resolve(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => Ok(Device::cuda_if_available()),
            Self::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            Self::Cuda => Err(ModelError::Config(
                "device cuda requested but LibTorch sees no GPU (build with --features cuda and the full torch wheel)"
                    .into(),
            )),
        }
    }
}

/// Calibrated decision thresholds on scores in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// τ_pc: a cloud whose score exceeds it is rejected.
    pub cloud: f32,
    /// τ_seg: points scoring above it are anomalous.
    pub point: f32,
}

/// How a module's layers start: drawn from LibTorch's random generator (a model about to be trained), or zero
/// (weights about to be copied in). Loading draws nothing: the generator is one per process, and a training
/// running meanwhile (the node's training action) must get the numbers its seed gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerInit {
    Random,
    Zeros,
}

impl LayerInit {
    /// `init` for a random start; zero for a load.
    pub fn or_zero(self, init: nn::Init) -> nn::Init {
        match self {
            Self::Random => init,
            Self::Zeros => nn::Init::Const(0.0),
        }
    }

    /// A linear layer's configuration, its weights and bias through [`Self::or_zero`].
    pub fn linear(self, config: nn::LinearConfig) -> nn::LinearConfig {
        match self {
            Self::Random => config,
            Self::Zeros => nn::LinearConfig {
                ws_init: self.or_zero(config.ws_init),
                bs_init: Some(nn::Init::Const(0.0)),
                ..config
            },
        }
    }

    /// A convolution's configuration, its weights and bias through [`Self::or_zero`].
    pub fn conv(self, config: nn::ConvConfig) -> nn::ConvConfig {
        nn::ConvConfig { ws_init: self.or_zero(config.ws_init), bs_init: self.or_zero(config.bs_init), ..config }
    }
}

/// The trained parts: adaptor, generator scale, positional MLP, discriminator and point head, in one VarStore.
pub struct Heads {
    pub vs: nn::VarStore,
    pub adaptor: Adaptor,
    pub generator: Generator,
    pub discriminator: Discriminator,
    pub point_head: Option<PointHead>,
    /// Whether the positional MLP and the point head get the capture input ([`PatchedCloud::all_round`]).
    pub sees_capture: bool,
}

impl Heads {
    pub fn new(cfg: &DetectorConfig, width: usize, device: Device, init: LayerInit) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        // Group 0 carries the adaptor (weight decay), group 1 the rest.
        let adaptor = Adaptor::new(&(vs.root().set_group(0) / "adaptor"), width, &cfg.adaptor, init);
        let generator = Generator::new(&(vs.root().set_group(1) / "generator"), &cfg.generator);
        let sees_capture = cfg.preprocess.heads_see_capture();
        let extra = usize::from(sees_capture);
        let discriminator =
            Discriminator::new(&(vs.root().set_group(1) / "discriminator"), width, 3 + extra, &cfg.discriminator, init)
                .map_err(ModelError::Config)?;
        let point_head = cfg
            .point_head
            .enabled
            .then(|| PointHead::new(&(vs.root().set_group(1) / "point_head"), width + extra, &cfg.point_head, init));
        Ok(Self { vs, adaptor, generator, discriminator, point_head, sees_capture })
    }

    /// `x` (…, k) with the capture input `all_round` appended as one more column where the heads get it.
    pub fn with_capture(&self, x: &Tensor, all_round: bool) -> Tensor {
        if !self.sees_capture {
            return x.shallow_clone();
        }
        let mut shape = x.size();
        if let Some(last) = shape.last_mut() {
            *last = 1;
        }
        Tensor::cat(&[x, &Tensor::full(shape.as_slice(), f64::from(u8::from(all_round)), (x.kind(), x.device()))], -1)
    }

    /// Patch logits for features (B, n, C) with centres (B, n, 3), or (B, n, 4) with the capture input.
    pub fn logits(&self, features: &Tensor, centres: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        self.discriminator.forward_t(&self.adaptor.forward(features), centres, false).to_kind(Kind::Float)
    }
}

/// Wall time of each inference stage, milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StageTimes {
    pub preprocess_ms: f64,
    pub backbone_ms: f64,
    pub sca_ms: f64,
    pub heads_ms: f64,
    pub projection_ms: f64,
}

/// What the frozen stages give the heads for one cloud.
pub struct Features {
    /// (n, C): patch tokens after conditioning and SCA.
    pub patches: Tensor,
    /// (S, C): the conditioned features of the cloud's samples (`PatchedCloud::samples`), when the model scores
    /// points by their own features.
    pub points: Option<Tensor>,
}

/// The heads' raw outputs for one cloud, before normalisation: read to the host with the batch's, or, where the
/// projection runs on the heads' device, kept there so that only the point scores come back
/// ([`scoring::voxel_scores`]).
pub enum RawScores {
    Host(HostScores),
    Device(DeviceScores),
}

/// The heads' raw outputs on the host.
#[derive(Clone, Default)]
pub struct HostScores {
    /// Per patch, the discriminator's logit.
    pub logits: Vec<f32>,
    /// Per patch, the distance to the nearest bank feature (empty without a bank).
    pub distances: Vec<f32>,
    /// Per voxel point, its cell's point-head logit (empty without the head).
    pub point_logits: Vec<f32>,
    /// Per voxel point, its cell's distance to the nearest point-bank feature (empty without a point bank).
    pub point_distances: Vec<f32>,
}

/// The heads' raw outputs as 1-D float tensors on their device: per patch, and per feature cell (the first
/// `cell_count` samples) for the point level.
pub struct DeviceScores {
    pub logits: Tensor,
    pub distances: Option<Tensor>,
    pub point_logits: Option<Tensor>,
    pub point_distances: Option<Tensor>,
}

impl RawScores {
    /// The outputs on the host, the point-level ones spread to the voxel points: read in one copy where they are on
    /// the device.
    pub fn on_host(&self, cloud: &PatchedCloud) -> Result<Cow<'_, HostScores>> {
        let outputs = match self {
            Self::Host(scores) => return Ok(Cow::Borrowed(scores)),
            Self::Device(outputs) => outputs,
        };
        let parts = [
            Some(&outputs.logits),
            outputs.distances.as_ref(),
            outputs.point_logits.as_ref(),
            outputs.point_distances.as_ref(),
        ];
        let mut read =
            crate::transfers::read_together(&parts.iter().flatten().copied().collect::<Vec<_>>())?.into_iter();
        let read = parts.map(|part| match part {
            Some(_) => read.next().unwrap_or_default().into_iter().map(|v| v as f32).collect(),
            None => Vec::new(),
        });
        Ok(Cow::Owned(HostScores::of_cells(cloud, read)))
    }
}

impl HostScores {
    /// One cloud's outputs read to the host: the logits and distances per patch, then the point level's per feature
    /// cell (each empty where the model has none), which every voxel point takes from its cell.
    fn of_cells(cloud: &PatchedCloud, [logits, distances, point_logits, point_distances]: [Vec<f32>; 4]) -> Self {
        let per_point = |cells: Vec<f32>| if cells.is_empty() { cells } else { cloud.spread_cells(&cells) };
        Self { logits, distances, point_logits: per_point(point_logits), point_distances: per_point(point_distances) }
    }
}

/// A cloud's inliers, patches and raw head outputs: what scoring it needs, before any scoring choice.
pub struct Unscored {
    inliers: geometry::Inliers,
    patched: PatchedCloud,
    raw: RawScores,
    times: StageTimes,
}

/// Scores of one cloud's finite points.
pub struct PointScores {
    /// One per finite point, in their order; NaN for outliers.
    pub scores: Vec<f32>,
    /// Per finite point: scored (true) or removed as an outlier.
    pub scored: Vec<bool>,
    pub outliers: usize,
    pub patches: usize,
    pub times: StageTimes,
}

impl PointScores {
    /// The scores with outliers at 0, the lowest, for ranking against labels: a removed point was not flagged.
    pub fn outliers_lowest(&self) -> Vec<f32> {
        self.scores.iter().map(|&s| if s.is_nan() { 0.0 } else { s }).collect()
    }
}

/// The outcome of inspecting one cloud.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    /// One score per input point, in the input's order and layout; NaN where the input point was not finite.
    #[serde(skip)]
    pub point_scores: Vec<f32>,
    pub cloud_score: f32,
    pub thresholds: Thresholds,
    pub passed: bool,
    /// Finite points that were scored (outliers excluded).
    pub valid_points: usize,
    /// Finite points removed as outliers (flying pixels, absurd values): score NaN.
    pub outlier_points: usize,
    pub anomalous_points: usize,
    /// Centre and largest radius of the anomalous points, in the input's frame and unit.
    pub defect: Option<scoring::DefectRegion>,
    /// Every linked group of anomalous points (the defect's first), highest peak first, in the input's frame.
    pub regions: Vec<scoring::DefectRegion>,
    pub patches: usize,
    pub times: StageTimes,
}

pub struct Detector {
    pub config: DetectorConfig,
    pub backbone: Backbone,
    pub conditioning: Conditioning,
    pub heads: Heads,
    pub thresholds: Thresholds,
    pub device: Device,
    /// Where the per-scan geometry runs: the host (the default) or tensor code on `device`
    /// ([`Self::with_device_geometry`]), stage by stage ([`Compute::with_host`]).
    pub compute: Compute,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The tensors of a safetensors file already in memory.
pub(crate) fn tensors_from_bytes(bytes: &[u8]) -> std::result::Result<HashMap<String, Tensor>, String> {
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format!("not safetensors: {e:?}"))?;
    file.tensors()
        .into_iter()
        .map(|(name, view)| Tensor::try_from(view).map(|t| (name, t)).map_err(|e| e.to_string()))
        .collect()
}

/// Copies named tensors into a VarStore, checking that every variable is present with its shape.
pub(crate) fn copy_into(vs: &mut nn::VarStore, tensors: &HashMap<String, Tensor>) -> std::result::Result<(), String> {
    let _guard = tch::no_grad_guard();
    let mut variables = vs.variables();
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort();
    let mut missing = Vec::new();
    for name in names {
        match tensors.get(name) {
            None => missing.push(name.clone()),
            Some(src) if src.size() != variables[name].size() => {
                return Err(format!("tensor {name} has shape {:?}, expected {:?}", src.size(), variables[name].size()));
            }
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        let shown: Vec<_> = missing.iter().take(5).cloned().collect();
        return Err(format!("{} tensors missing, e.g. {}", missing.len(), shown.join(", ")));
    }
    for (name, dst) in variables.iter_mut() {
        dst.copy_(&tensors[name].to_kind(Kind::Float).upload(dst.device()));
    }
    Ok(())
}

/// Centres of a patched cloud as a (1, n, 3) tensor.
pub fn centre_tensor(cloud: &PatchedCloud, device: Device) -> Tensor {
    cloud.shared_centre_points(device).on(device).unsqueeze(0)
}

impl Detector {
    /// An untrained detector (thresholds unset) for the configuration.
    pub fn new(config: DetectorConfig, device: Device) -> Result<Self> {
        config.validate().map_err(ModelError::Config)?;
        let backbone = Backbone::from_config(&config.backbone, device)?;
        let heads = Heads::new(&config, backbone.width(), device, LayerInit::Random)?;
        let conditioning = Conditioning::identity(backbone.width(), device);
        Ok(Self {
            config,
            backbone,
            conditioning,
            heads,
            thresholds: Thresholds { cloud: f32::NAN, point: f32::NAN },
            device,
            compute: Compute::Host,
        })
    }

    /// The detector with its per-scan geometry (voxel grid, FPS, grouping, normals, FPFH, projection and median
    /// filter) run as tensor code on its own device (`geometry::device`), or on the host. The host's is the
    /// default: on two CPU cores its k-d trees beat the tensor code's padded searches about tenfold
    /// (docs/benchmarks.md); on a GPU, measure first (`scripts/gpu_check.sh`).
    pub fn with_device_geometry(self, on: bool) -> Self {
        let compute = if on { Compute::tensors(self.device) } else { Compute::Host };
        Self { compute, ..self }
    }

    /// Steps 0–1 on the finite points of a cloud (registered to the template when the model aligns),
    /// optionally augmented (training).
    pub fn patch(
        &self,
        points: &[Point],
        augment: Option<(&preprocess::Augmentation, &mut dyn rand::RngCore)>,
    ) -> Result<PatchedCloud> {
        self.geometry().patch(&points.into(), augment)
    }

    /// Standardises token rows with the training statistics, when the configuration says so.
    pub(crate) fn condition(&self, x: Tensor) -> Tensor {
        if self.config.conditioning.standardise { self.conditioning.standardise(&x) } else { x }
    }

    /// The backbone's tokens, standardised when the configuration says so: (n, C), no gradient.
    pub fn tokens(&self, cloud: &PatchedCloud) -> Result<Tensor> {
        Ok(self.condition(self.backbone.tokens(cloud)?))
    }

    /// SCA over (conditioned) tokens: (n, C).
    pub fn aggregate(&self, tokens: &Tensor, cloud: &PatchedCloud) -> Tensor {
        sca::aggregate(&self.config.sca, tokens, &cloud.shared_centre_points(tokens.device()), &cloud.descriptors)
    }

    /// Patch features after SCA (n, C) and, with a point head, every voxel point's conditioned features (N, C);
    /// with the backbone and SCA times.
    pub fn features(&self, cloud: &PatchedCloud) -> Result<(Features, f64, f64)> {
        let t = Instant::now();
        let rows = self.geometry().point_rows(cloud)?;
        let (features, _, sca_ms) = self.features_of(cloud, rows.as_ref())?;
        Ok((features, ms(t) - sca_ms, sca_ms))
    }

    /// [`Self::features`] with the samples' per-point feature rows already computed (`None` where the model does
    /// not score points by their own features).
    fn features_of(&self, cloud: &PatchedCloud, point_rows: Option<&Tensor>) -> Result<(Features, f64, f64)> {
        let t = Instant::now();
        let (tokens, points) = match point_rows {
            Some(rows) if self.config.uses_point_features() => {
                let points = self.condition(rows.shallow_clone());
                (points.index_select(0, &backbone::centre_rows(cloud, self.device)), Some(points))
            }
            _ if self.config.uses_point_features() => {
                return Err(ModelError::Config(format!(
                    "{} tokens have no per-point features",
                    self.backbone.identity.kind
                )));
            }
            _ => (self.tokens(cloud)?, None),
        };
        let backbone_ms = ms(t);
        let t = Instant::now();
        let patches = self.aggregate(&tokens, cloud);
        Ok((Features { patches, points }, backbone_ms, ms(t)))
    }

    /// The raw scores of a patched cloud's features: discriminator logits and bank distances per patch (the
    /// bank's empty when the model keeps none), point-head logits per voxel point (empty without the head).
    pub fn raw_scores_of(&self, cloud: &PatchedCloud, features: &Features) -> Result<RawScores> {
        self.raw_scores_batch(&[(cloud, features)])?.pop().map_or_else(batch::left_unscored, Ok)
    }

    /// Voxel-point scores in (0, 1) from raw scores ([`scoring::voxel_scores`], with the references of the cloud's
    /// capture).
    pub fn voxel_scores(&self, cloud: &PatchedCloud, raw: &RawScores, scoring: &ScoringConfig) -> Result<Vec<f32>> {
        scoring::voxel_scores(cloud, raw, self.conditioning.references(cloud.all_round), scoring)
    }

    /// The raw patch scores of finite points (sensor frame), with the patched cloud they belong to.
    pub fn raw_scores(&self, points: &[Point]) -> Result<(PatchedCloud, RawScores)> {
        let patched = self.patch(points, None)?;
        let (features, _, _) = self.features(&patched)?;
        let raw = self.raw_scores_of(&patched, &features)?;
        Ok((patched, raw))
    }

    /// The finite points (sensor frame) worth scoring, and which they are: outliers removed when the configuration
    /// says so, and the scan checked against the part the model learnt (its unit and size), before any costly work.
    pub fn inliers(&self, points: &[Point]) -> Result<(geometry::Inliers, geometry::SharedPoints<'static>)> {
        self.geometry().inliers(&points.into())
    }

    /// Scores finite points (sensor frame): one score per point (NaN for outliers), and the stage times.
    pub fn score_points(&self, points: &[Point]) -> Result<PointScores> {
        self.point_scores_of(&self.unscored(points)?, &self.config.scoring)
    }

    /// Everything of [`Self::score_points`] that does not depend on the scoring configuration: outlier removal,
    /// patching, features and the heads' raw outputs.
    pub fn unscored(&self, points: &[Point]) -> Result<Unscored> {
        batch::only(self.unscored_batch(&[points]))
    }

    /// One score per finite point of an unscored cloud under `scoring` (the model's own, or an evaluation's
    /// variant: every one reuses the same features).
    pub fn point_scores_of(&self, unscored: &Unscored, scoring: &ScoringConfig) -> Result<PointScores> {
        let Unscored { inliers, patched, raw, times } = unscored;
        let t = Instant::now();
        let mut kept_scores = patched.grid.spread(&self.voxel_scores(patched, raw, scoring)?).into_iter();
        let scores = inliers.keep.iter().map(|&k| if k { kept_scores.next().unwrap_or(f32::NAN) } else { f32::NAN });
        let scores = scores.collect();
        Ok(PointScores {
            scores,
            scored: inliers.keep.clone(),
            outliers: inliers.removed,
            patches: patched.patch_count(),
            times: StageTimes { projection_ms: ms(t), ..times.clone() },
        })
    }

    /// The cloud score of point scores, as the configuration says (max or the mean of the top share).
    pub fn cloud_score(&self, point_scores: &[f32]) -> f32 {
        scoring::cloud_score(point_scores, &self.config.scoring)
    }

    /// Scores every point of a cloud and decides with the calibrated thresholds.
    pub fn inspect(&self, cloud: &PointCloud) -> Result<Inspection> {
        self.inspect_with(cloud, self.thresholds)
    }

    /// Scores every point of a cloud and decides with the given thresholds (an operator's override). A verdict
    /// comes only from sound scoring: any score or threshold that is not finite is an error, never a PASS.
    pub fn inspect_with(&self, cloud: &PointCloud, thresholds: Thresholds) -> Result<Inspection> {
        batch::only(self.inspect_batch(&[cloud], thresholds))
    }
}
