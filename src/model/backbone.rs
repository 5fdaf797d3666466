//! Method step 1 (learned half): patch tokens Z ∈ R^{n×C}. Two sources:
//! - Point-MAE's encoder (mini-PointNet per patch, positional MLP of the centre, pre-LN Transformer blocks,
//!   final LayerNorm) with the public release's parameter names and shapes, so its ShapeNet checkpoint loads
//!   once converted to safetensors (scripts/convert_pointmae.py). Frozen: it never trains here.
//! - Training-free FPFH tokens: FPFH at each centre at two radii, projected to C by a fixed seeded map (the
//!   first reading), or at several radii in voxels, concatenated, unprojected (the default: the token width is
//!   the descriptor's own size).
//!
//! Either way the backbone's tensors are saved inside each model folder, so a model is self-contained.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn, nn::Module, nn::ModuleT};

use super::config::BackboneConfig;
use super::preprocess::{CONTEXT_DIMS, PatchedCloud};
use super::{LayerInit, ModelError, Result, copy_into, tensors_from_bytes};
use crate::geometry::device::Stage;
use crate::geometry::{FPFH_BINS, Fpfh};
use crate::transfers::Transfer;

/// What a model's tokens came from; stored in the manifest and checked on load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackboneIdentity {
    /// `point_mae`, `fpfh`, `multiscale_fpfh` or `random_point_mae`.
    pub kind: String,
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
    /// The checkpoint it was loaded from, if any.
    pub source: Option<String>,
    /// `multiscale_fpfh`: the radii, in voxels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub radii_voxels: Vec<f32>,
}

const PREFIX: &str = "MAE_encoder";
/// The FPFH token source's wide scale uses every 4th point (about 16× cheaper than all of them).
const WIDE_FPFH_STRIDE: usize = 4;
/// Official Point-MAE: 6 heads. A checkpoint's shapes do not tell the head count, so the converter records it.
const DEFAULT_HEADS: usize = 6;

/// Point-MAE's `MaskTransformer` as used for feature extraction (no masking).
struct PointMae {
    first_conv: (nn::Conv1D, nn::BatchNorm, nn::Conv1D),
    second_conv: (nn::Conv1D, nn::BatchNorm, nn::Conv1D),
    pos_embed: (nn::Linear, nn::Linear),
    blocks: Vec<Block>,
    norm: nn::LayerNorm,
    heads: usize,
}

struct Block {
    norm1: nn::LayerNorm,
    qkv: nn::Linear,
    proj: nn::Linear,
    norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl PointMae {
    fn new(root: &nn::Path, width: usize, depth: usize, heads: usize, init: LayerInit) -> Self {
        let p = root / PREFIX;
        let enc = &p / "encoder";
        let conv = |path: nn::Path, i: i64, o: i64| nn::conv1d(path, i, o, 1, init.conv(Default::default()));
        let first = &enc / "first_conv";
        let second = &enc / "second_conv";
        let c = width as i64;
        let first_conv = (
            conv(&first / "0", 3, 128),
            nn::batch_norm1d(&first / "1", 128, Default::default()),
            conv(&first / "3", 128, 256),
        );
        let second_conv = (
            conv(&second / "0", 512, 512),
            nn::batch_norm1d(&second / "1", 512, Default::default()),
            conv(&second / "3", 512, c),
        );
        let pe = &p / "pos_embed";
        let linear = init.linear(Default::default());
        let pos_embed = (nn::linear(&pe / "0", 3, 128, linear), nn::linear(&pe / "2", 128, c, linear));
        let no_bias = init.linear(nn::LinearConfig { bias: false, ..Default::default() });
        let blocks = (0..depth)
            .map(|i| {
                let b = &p / "blocks" / "blocks" / i;
                Block {
                    norm1: nn::layer_norm(&b / "norm1", vec![c], Default::default()),
                    qkv: nn::linear(&b / "attn" / "qkv", c, 3 * c, no_bias),
                    proj: nn::linear(&b / "attn" / "proj", c, c, linear),
                    norm2: nn::layer_norm(&b / "norm2", vec![c], Default::default()),
                    fc1: nn::linear(&b / "mlp" / "fc1", c, 4 * c, linear),
                    fc2: nn::linear(&b / "mlp" / "fc2", 4 * c, c, linear),
                }
            })
            .collect();
        let norm = nn::layer_norm(&p / "norm", vec![c], Default::default());
        Self { first_conv, second_conv, pos_embed, blocks, norm, heads }
    }

    /// `groups`: (B, n, k, 3) relative to centres; `centres`: (B, n, 3) → (B, n, C).
    fn forward(&self, groups: &Tensor, centres: &Tensor) -> Tensor {
        let (b, n, k, _) = groups.size4().expect("groups are 4-D");
        let x = groups.reshape([b * n, k, 3]).transpose(1, 2);
        let f = self.first_conv.0.forward(&x);
        let f = self.first_conv.1.forward_t(&f, false).relu();
        let f = self.first_conv.2.forward(&f); // (bn, 256, k)
        let global = f.amax([2], true).expand([b * n, 256, k], false);
        let f = Tensor::cat(&[global, f], 1);
        let f = self.second_conv.0.forward(&f);
        let f = self.second_conv.1.forward_t(&f, false).relu();
        let f = self.second_conv.2.forward(&f);
        let c = f.size()[1];
        let tokens = f.amax([2], false).reshape([b, n, c]);
        let pos = self.pos_embed.1.forward(&self.pos_embed.0.forward(centres).gelu("none"));
        let mut x = tokens;
        for block in &self.blocks {
            x = block.forward(&(x + &pos), self.heads);
        }
        self.norm.forward(&x)
    }
}

impl Block {
    fn forward(&self, x: &Tensor, heads: usize) -> Tensor {
        let (b, n, c) = x.size3().expect("tokens are 3-D");
        let h = heads as i64;
        let qkv = self.qkv.forward(&self.norm1.forward(x)).reshape([b, n, 3, h, c / h]).permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let a = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false);
        let a = self.proj.forward(&a.transpose(1, 2).reshape([b, n, c]));
        let x = x + a;
        let m = self.fc2.forward(&self.fc1.forward(&self.norm2.forward(&x)).gelu("none"));
        x + m
    }
}

enum Source {
    PointMae(Box<PointMae>),
    /// (2·33) → C projection.
    /// Scales of the SCA descriptor radius the two FPFHs use.
    Fpfh {
        projection: Tensor,
        radius_scales: [f32; 2],
    },
    MultiscaleFpfh {
        radii_voxels: Vec<f32>,
    },
}

pub struct Backbone {
    vs: nn::VarStore,
    source: Source,
    pub identity: BackboneIdentity,
}

impl Backbone {
    /// Builds the configured backbone (loading a checkpoint for `point_mae`).
    pub fn from_config(cfg: &BackboneConfig, device: Device) -> Result<Self> {
        match cfg {
            BackboneConfig::PointMae { checkpoint } => Self::load_point_mae(Path::new(checkpoint), device),
            BackboneConfig::Fpfh { width, seed } => Ok(Self::fpfh(*width, Some(*seed), device)),
            BackboneConfig::MultiscaleFpfh { radii_voxels } => Ok(Self::multiscale_fpfh(radii_voxels, device)),
            BackboneConfig::RandomPointMae { width, depth, heads, seed } => {
                tracing::warn!(width, depth, heads, seed, "backbone: Point-MAE with RANDOM weights (explicit choice)");
                tch::manual_seed(*seed as i64);
                let mut vs = nn::VarStore::new(device);
                let model = PointMae::new(&vs.root(), *width, *depth, *heads, LayerInit::Random);
                vs.freeze();
                let identity = BackboneIdentity {
                    kind: "random_point_mae".into(),
                    width: *width,
                    depth: *depth,
                    heads: *heads,
                    source: None,
                    radii_voxels: Vec::new(),
                };
                Ok(Self { vs, source: Source::PointMae(Box::new(model)), identity })
            }
        }
    }

    /// The FPFH tokens' random projection, drawn from `seed`; `None`: zero, to be loaded.
    fn fpfh(width: usize, seed: Option<u64>, device: Device) -> Self {
        let mut vs = nn::VarStore::new(device);
        let init = match seed {
            Some(seed) => {
                tch::manual_seed(seed as i64);
                LayerInit::Random
            }
            None => LayerInit::Zeros,
        };
        let input = 2 * FPFH_BINS as i64;
        let projection = vs.root().var(
            "projection",
            &[input, width as i64],
            init.or_zero(nn::Init::Randn { mean: 0.0, stdev: 1.0 / (input as f64).sqrt() }),
        );
        vs.freeze();
        let identity =
            BackboneIdentity { kind: "fpfh".into(), width, depth: 0, heads: 0, source: None, radii_voxels: Vec::new() };
        Self { vs, source: Source::Fpfh { projection, radius_scales: [1.0, 2.0] }, identity }
    }

    fn multiscale_fpfh(radii_voxels: &[f32], device: Device) -> Self {
        let identity = BackboneIdentity {
            kind: "multiscale_fpfh".into(),
            width: multiscale_width(radii_voxels.len()),
            depth: 0,
            heads: 0,
            source: None,
            radii_voxels: radii_voxels.to_vec(),
        };
        // No tensors: the folder's backbone file is empty, the identity says everything.
        Self {
            vs: nn::VarStore::new(device),
            source: Source::MultiscaleFpfh { radii_voxels: radii_voxels.to_vec() },
            identity,
        }
    }

    /// A converted Point-MAE checkpoint (safetensors). Width and depth are read from the tensors.
    pub fn load_point_mae(path: &Path, device: Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::Io { path: path.display().to_string(), source: e })?;
        let (heads, tensors) = read_checkpoint(&bytes, path)?;
        let bad = |problem: String| ModelError::Checkpoint { path: path.display().to_string(), problem };
        let width = tensors
            .get(&format!("{PREFIX}.norm.weight"))
            .map(|t| t.size()[0] as usize)
            .ok_or_else(|| bad(format!("no tensor {PREFIX}.norm.weight: not a Point-MAE encoder")))?;
        let depth =
            (0..).take_while(|i| tensors.contains_key(&format!("{PREFIX}.blocks.blocks.{i}.norm1.weight"))).count();
        if depth == 0 {
            return Err(bad("no transformer blocks".into()));
        }
        if width % heads != 0 {
            return Err(bad(format!("width {width} is not divisible by {heads} heads")));
        }
        let mut vs = nn::VarStore::new(device);
        let model = PointMae::new(&vs.root(), width, depth, heads, LayerInit::Zeros);
        copy_into(&mut vs, &tensors).map_err(bad)?;
        vs.freeze();
        let identity = BackboneIdentity {
            kind: "point_mae".into(),
            width,
            depth,
            heads,
            source: Some(path.display().to_string()),
            radii_voxels: Vec::new(),
        };
        tracing::info!(width, depth, heads, checkpoint = %path.display(), "backbone: Point-MAE loaded");
        Ok(Self { vs, source: Source::PointMae(Box::new(model)), identity })
    }

    /// Rebuilds a backbone saved in a model folder from the bytes of its safetensors file (`path` names it in
    /// errors).
    pub fn load_saved(identity: &BackboneIdentity, bytes: &[u8], path: &Path, device: Device) -> Result<Self> {
        let bad = |problem: String| ModelError::Checkpoint { path: path.display().to_string(), problem };
        let tensors = tensors_from_bytes(bytes).map_err(bad)?;
        let mut backbone = match identity.kind.as_str() {
            "fpfh" => Self::fpfh(identity.width, None, device),
            "multiscale_fpfh" if identity.width == multiscale_width(identity.radii_voxels.len()) => {
                Self::multiscale_fpfh(&identity.radii_voxels, device)
            }
            "multiscale_fpfh" => {
                return Err(bad(format!(
                    "multiscale_fpfh of width {} does not match its {} radii",
                    identity.width,
                    identity.radii_voxels.len()
                )));
            }
            "point_mae" | "random_point_mae" => {
                let mut vs = nn::VarStore::new(device);
                let model = PointMae::new(&vs.root(), identity.width, identity.depth, identity.heads, LayerInit::Zeros);
                vs.freeze();
                Self { vs, source: Source::PointMae(Box::new(model)), identity: identity.clone() }
            }
            other => return Err(bad(format!("unknown backbone kind '{other}'"))),
        };
        copy_into(&mut backbone.vs, &tensors).map_err(bad)?;
        backbone.identity = identity.clone();
        Ok(backbone)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        self.vs
            .save(path)
            .map_err(|e| ModelError::Checkpoint { path: path.display().to_string(), problem: e.to_string() })
    }

    pub fn width(&self) -> usize {
        self.identity.width
    }

    /// The radii (voxels) of the per-point multi-scale FPFH; `None` for the token sources that only describe
    /// patches.
    pub fn point_feature_radii(&self) -> Option<&[f32]> {
        match &self.source {
            Source::MultiscaleFpfh { radii_voxels } => Some(radii_voxels),
            _ => None,
        }
    }

    /// Multi-scale tokens of every sample point (S, C; `PatchedCloud::samples`) on the backbone's device: see
    /// [`point_features`]. An error for the other token sources.
    pub fn point_features(&self, cloud: &PatchedCloud) -> Result<Tensor> {
        let Some(radii) = self.point_feature_radii() else {
            return Err(ModelError::Config(format!("{} tokens have no per-point features", self.identity.kind)));
        };
        point_features(radii, cloud, self.vs.device())
    }

    /// Tokens of one patched cloud: (n, C), no gradient.
    pub fn tokens(&self, cloud: &PatchedCloud) -> Result<Tensor> {
        let device = self.vs.device();
        let n = cloud.patch_count() as i64;
        let _guard = tch::no_grad_guard();
        match &self.source {
            Source::PointMae(model) => {
                let groups = Tensor::from_slice(&cloud.relative_groups())
                    .reshape([1, n, cloud.patch_size as i64, 3])
                    .upload(device);
                let centres: Vec<f32> = cloud.centre_points().into_iter().flatten().collect();
                let centres = Tensor::from_slice(&centres).reshape([1, n, 3]).upload(device);
                Ok(model.forward(&groups, &centres).squeeze_dim(0))
            }
            Source::Fpfh { projection, radius_scales } => {
                let mut rows: Vec<f32> = Vec::with_capacity(cloud.patch_count() * 2 * FPFH_BINS);
                let base = cloud.descriptors.rows()?;
                let wide = cloud.descriptors_at_radius(radius_scales[1] * cloud.fpfh_radius, WIDE_FPFH_STRIDE)?;
                for (a, b) in base.iter().zip(&wide) {
                    // Hellinger (square-root) scaling: histograms compare better than raw counts.
                    rows.extend(a.iter().chain(b.iter()).map(|v| (v / 100.0).sqrt()));
                }
                let x = Tensor::from_slice(&rows).reshape([n, 2 * FPFH_BINS as i64]).upload(device);
                Ok(x.matmul(projection))
            }
            Source::MultiscaleFpfh { .. } => {
                Ok(self.point_features(cloud)?.index_select(0, &centre_rows(cloud, device)))
            }
        }
    }
}

/// Multi-scale tokens of every sample point (S, C on `device`): the FPFH of each radius (voxels), Hellinger-scaled,
/// then the surface context. Where the cloud's FPFH and context ran on a device they are joined there, nothing read.
/// Otherwise they are rows on the host, copied up once; the scales are computed side by side there: each has serial
/// steps (its coarse copy's grid and tree) that leave a core to the others.
pub fn point_features(radii_voxels: &[f32], cloud: &PatchedCloud, device: Device) -> Result<Tensor> {
    use rayon::prelude::*;
    if let (Some(on), Some(context)) = (cloud.compute.device_for(Stage::Fpfh), cloud.context.on_device()) {
        let samples = cloud.samples.on(on);
        let mut columns = radii_voxels
            .iter()
            .map(|r| Ok(hellinger(&cloud.sample_descriptors_on(on, &samples, r * cloud.voxel)?)))
            .collect::<Result<Vec<Tensor>>>()?;
        columns.push(context);
        return Ok(Tensor::cat(&columns, 1).to_device(device));
    }
    let scales: Vec<Vec<Fpfh>> =
        radii_voxels.par_iter().map(|r| cloud.sample_descriptors(r * cloud.voxel)).collect::<Result<_>>()?;
    let context = cloud.context.rows()?;
    let width = multiscale_width(scales.len());
    let mut rows: Vec<f32> = Vec::with_capacity(cloud.samples.len() * width);
    for p in 0..cloud.samples.len() {
        rows.extend(scales.iter().flat_map(|s| s[p].iter()).map(|v| (v / 100.0).sqrt()));
        rows.extend(context[p]);
    }
    Ok(Tensor::from_slice(&rows).reshape([cloud.samples.len() as i64, width as i64]).upload(device))
}

/// Hellinger (square-root) scaling of FPFH histograms (each bin out of 100), rounded as the host's rows round it:
/// a division in f32, not a product with 0.01, and the root in f64 rounded to f32 (LibTorch's f32 root on a CPU is
/// within an ulp, not exact; a root in f64 rounds to the exact f32 one).
fn hellinger(histograms: &Tensor) -> Tensor {
    (histograms / histograms.full_like(100.0)).to_kind(Kind::Double).sqrt().to_kind(Kind::Float)
}

/// The rows of a cloud's patch centres among its samples' point features.
pub fn centre_rows(cloud: &PatchedCloud, device: Device) -> Tensor {
    let rows: Vec<i64> = cloud.centre_samples.iter().map(|&s| i64::from(s)).collect();
    Tensor::from_slice(&rows).upload(device)
}

/// Multi-scale FPFH tokens: 33 numbers per radius, then the surface context.
pub fn multiscale_width(radii: usize) -> usize {
    FPFH_BINS * radii + CONTEXT_DIMS
}

/// Reads a converted Point-MAE checkpoint: its tensors and the head count recorded in its metadata.
fn read_checkpoint(bytes: &[u8], path: &Path) -> Result<(usize, HashMap<String, Tensor>)> {
    let bad = |problem: String| ModelError::Checkpoint { path: path.display().to_string(), problem };
    let (_, metadata) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not safetensors: {e:?}")))?;
    let heads = match metadata.metadata().as_ref().and_then(|m| m.get("num_heads")) {
        Some(h) => h.parse().map_err(|_| bad(format!("num_heads metadata '{h}' is not a number")))?,
        None => {
            tracing::warn!("checkpoint records no num_heads; assuming Point-MAE's {DEFAULT_HEADS}");
            DEFAULT_HEADS
        }
    };
    Ok((heads, tensors_from_bytes(bytes).map_err(bad)?))
}
