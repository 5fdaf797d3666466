//! The detector (docs/method.md): one module per stage — [`preprocess`] (steps 0–1 geometry), [`backbone`]
//! (tokens), [`sca`] (step 2), [`adaptor`] (3), [`generator`] (4, training only), [`discriminator`] (5),
//! [`scoring`] (7) — assembled here into a [`Detector`] that turns a cloud into per-point scores and a verdict,
//! and [`store`], the model folder on disk. Training lives in `crate::train`.

pub mod adaptor;
pub mod backbone;
pub mod config;
pub mod discriminator;
pub mod generator;
pub mod preprocess;
pub mod sca;
pub mod scoring;
pub mod store;

use std::collections::HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};
use thiserror::Error;

use crate::cloud::{CloudError, PointCloud};
use crate::geometry::{GeometryError, Point};
use adaptor::Adaptor;
use backbone::Backbone;
use config::DetectorConfig;
use discriminator::Discriminator;
use generator::Generator;
use preprocess::PatchedCloud;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error(transparent)]
    Geometry(#[from] GeometryError),
    #[error(transparent)]
    Bag(#[from] crate::bag::BagError),
    #[error("only {points} points remain after {voxel}-unit voxels; a patch needs {needed}: use a smaller voxel size")]
    TooFewPoints { points: usize, needed: usize, voxel: f32 },
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
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

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

/// The trained parts: adaptor, generator scale, positional MLP and discriminator, in one VarStore.
pub struct Heads {
    pub vs: nn::VarStore,
    pub adaptor: Adaptor,
    pub generator: Generator,
    pub discriminator: Discriminator,
}

impl Heads {
    pub fn new(cfg: &DetectorConfig, width: usize, device: Device) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        // Group 0 carries the adaptor (weight decay), group 1 the rest.
        let adaptor = Adaptor::new(&(vs.root().set_group(0) / "adaptor"), width, &cfg.adaptor);
        let generator = Generator::new(&(vs.root().set_group(1) / "generator"), &cfg.generator);
        let discriminator = Discriminator::new(&(vs.root().set_group(1) / "discriminator"), width, &cfg.discriminator)
            .map_err(ModelError::Config)?;
        Ok(Self { vs, adaptor, generator, discriminator })
    }

    /// Patch scores in (0, 1) for features (B, n, C) with centres (B, n, 3).
    pub fn scores(&self, features: &Tensor, centres: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        self.discriminator.scores(&self.adaptor.forward(features), centres)
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

/// The outcome of inspecting one cloud.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    /// One score per input point, in the input's order and layout; NaN where the input point was not finite.
    #[serde(skip)]
    pub point_scores: Vec<f32>,
    pub cloud_score: f32,
    pub thresholds: Thresholds,
    pub passed: bool,
    pub valid_points: usize,
    pub anomalous_points: usize,
    /// Centre and largest radius of the anomalous points, in the input's frame and unit.
    pub defect: Option<scoring::DefectRegion>,
    pub patches: usize,
    pub times: StageTimes,
}

pub struct Detector {
    pub config: DetectorConfig,
    pub backbone: Backbone,
    pub heads: Heads,
    pub thresholds: Thresholds,
    pub device: Device,
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
        dst.copy_(&tensors[name].to_kind(Kind::Float).to_device(dst.device()));
    }
    Ok(())
}

/// Centres of a patched cloud as a (1, n, 3) tensor.
pub fn centre_tensor(cloud: &PatchedCloud, device: Device) -> Tensor {
    let flat: Vec<f32> = cloud.centre_points().into_iter().flatten().collect();
    Tensor::from_slice(&flat).reshape([1, cloud.patch_count() as i64, 3]).to_device(device)
}

impl Detector {
    /// An untrained detector (thresholds unset) for the configuration.
    pub fn new(config: DetectorConfig, device: Device) -> Result<Self> {
        config.validate().map_err(ModelError::Config)?;
        let backbone = Backbone::from_config(&config.backbone, device)?;
        let heads = Heads::new(&config, backbone.width(), device)?;
        Ok(Self { config, backbone, heads, thresholds: Thresholds { cloud: f32::NAN, point: f32::NAN }, device })
    }

    /// Steps 0–1 on the finite points of a cloud, optionally augmented (training).
    pub fn patch(
        &self,
        points: &[Point],
        augment: Option<(&preprocess::Augmentation, &mut dyn rand::RngCore)>,
    ) -> Result<PatchedCloud> {
        let c = &self.config;
        preprocess::patch_cloud(points, &c.preprocess, c.patches.count, c.patches.size, augment)
    }

    /// Backbone tokens refined by SCA: (n, C), no gradient.
    pub fn features(&self, cloud: &PatchedCloud) -> Result<(Tensor, f64, f64)> {
        let t = Instant::now();
        let tokens = self.backbone.tokens(cloud)?;
        let backbone_ms = ms(t);
        let t = Instant::now();
        let refined = sca::aggregate(&self.config.sca, &tokens, &cloud.centre_points(), &cloud.descriptors);
        Ok((refined, backbone_ms, ms(t)))
    }

    /// Scores finite points (sensor frame): one score per point, and the stage times.
    pub fn score_points(&self, points: &[Point]) -> Result<(Vec<f32>, usize, StageTimes)> {
        let t = Instant::now();
        let patched = self.patch(points, None)?;
        let preprocess_ms = ms(t);
        let (features, backbone_ms, sca_ms) = self.features(&patched)?;
        let t = Instant::now();
        let patch_scores: Vec<f32> = self
            .heads
            .scores(&features.unsqueeze(0), &centre_tensor(&patched, self.device))
            .squeeze_dim(0)
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .try_into()?;
        let heads_ms = ms(t);
        let t = Instant::now();
        let radius = self.config.scoring.median_radius_voxels * self.config.preprocess.voxel_size / patched.frame.scale;
        let voxel_scores = scoring::project_to_points(&patched, &patch_scores, radius)?;
        let scores = patched.grid.spread(&voxel_scores);
        let times = StageTimes { preprocess_ms, backbone_ms, sca_ms, heads_ms, projection_ms: ms(t) };
        Ok((scores, patched.patch_count(), times))
    }

    /// Scores every point of a cloud and decides with the calibrated thresholds.
    pub fn inspect(&self, cloud: &PointCloud) -> Result<Inspection> {
        self.inspect_with(cloud, self.thresholds)
    }

    /// Scores every point of a cloud and decides with the given thresholds (an operator's override).
    pub fn inspect_with(&self, cloud: &PointCloud, thresholds: Thresholds) -> Result<Inspection> {
        let finite = cloud.finite_points()?;
        let (finite_scores, patches, mut times) = self.score_points(&finite.points)?;
        let t = Instant::now();
        let verdict = scoring::decide(&finite.points, &finite_scores, thresholds);
        let point_scores = finite.scatter(&finite_scores, f32::NAN);
        times.projection_ms += ms(t);
        Ok(Inspection {
            point_scores,
            cloud_score: verdict.cloud_score,
            thresholds,
            passed: verdict.passed,
            valid_points: finite.points.len(),
            anomalous_points: verdict.anomalous_points,
            defect: verdict.defect,
            patches,
            times,
        })
    }
}
