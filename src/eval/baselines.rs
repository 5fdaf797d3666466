//! Baselines in the project, run on the same data as ours: BTF (Horwitz & Hoshen, "Back to the Feature") with
//! raw coordinates or FPFH as per-point features, a memory bank of the training clouds' features, and each test
//! point scored by its distance to the nearest bank entry; and PatchCore(FPFH+Raw): both features standardised
//! and concatenated, the bank reduced to a greedy k-center coreset as PatchCore does.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::geometry::{self, NeighborIndex, Point};
use crate::model::Result;
use crate::model::bank::brute_force_distances;
use crate::model::conditioning::greedy_coreset;
use crate::train::TrainingCloud;
use crate::transfers::Transfer;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Baseline {
    /// BTF(Raw): the point's coordinates.
    BtfRaw,
    /// BTF(FPFH): the point's FPFH.
    BtfFpfh,
    /// PatchCore(FPFH+Raw): standardised FPFH and coordinates, coreset memory bank.
    PatchCoreFpfhRaw,
}

impl Baseline {
    pub fn name(self) -> &'static str {
        match self {
            Self::BtfRaw => "BTF(Raw)",
            Self::BtfFpfh => "BTF(FPFH)",
            Self::PatchCoreFpfhRaw => "PatchCore(FPFH+Raw)",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BaselineConfig {
    /// Voxel size in the clouds' unit.
    pub voxel: f32,
    /// FPFH radius in voxels.
    pub fpfh_radius_voxels: f32,
    pub normal_neighbors: usize,
    /// Bank entries kept (a seeded random subset beyond that).
    pub bank_size: usize,
    /// PatchCore's coreset size.
    pub coreset_size: usize,
    pub seed: u64,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        Self {
            voxel: 1.0,
            fpfh_radius_voxels: 5.0,
            normal_neighbors: 16,
            bank_size: 30_000,
            coreset_size: 5_000,
            seed: 5,
        }
    }
}

/// Per-voxel-point features of a cloud, and the voxel grid to spread scores back.
fn features(kind: Baseline, cfg: &BaselineConfig, points: &[Point]) -> Result<(geometry::VoxelGrid, Vec<f32>, usize)> {
    let grid = geometry::voxel_downsample(points, cfg.voxel)?;
    match kind {
        Baseline::BtfRaw => {
            let flat = grid.points.iter().flatten().copied().collect();
            Ok((grid, flat, 3))
        }
        Baseline::BtfFpfh | Baseline::PatchCoreFpfhRaw => {
            let (index, normals) = geometry::outward_normals(&grid.points, cfg.normal_neighbors)?;
            let fpfh = geometry::fpfh(&grid.points, &normals, &index, cfg.fpfh_radius_voxels * cfg.voxel)?;
            let flat = fpfh.iter().flatten().copied().collect();
            Ok((grid, flat, geometry::FPFH_BINS))
        }
    }
}

/// A baseline's memory of the training clouds' voxel features, scoring a point by its distance to the nearest.
pub struct BaselineBank {
    kind: Baseline,
    cfg: BaselineConfig,
    bank: Tensor,
    /// Per-dimension mean and standard deviation of the training features (PatchCore(FPFH+Raw) only), so that
    /// histograms and coordinates weigh alike.
    standardise: Option<(Tensor, Tensor)>,
    /// Raw coordinates are searched with a k-d tree; FPFH (33-D) by chunked distance matrices.
    raw_index: Option<NeighborIndex>,
}

impl BaselineBank {
    pub fn fit(kind: Baseline, cfg: &BaselineConfig, train: &[TrainingCloud]) -> Result<Self> {
        let mut rows = Vec::new();
        let mut dim = 3;
        for cloud in train {
            let (_, f, d) = features(kind, cfg, &cloud.points)?;
            rows.extend(f.chunks(d).map(<[f32]>::to_vec));
            dim = d;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
        rows.shuffle(&mut rng);
        rows.truncate(cfg.bank_size);
        let raw_index = match kind {
            Baseline::BtfRaw => {
                Some(NeighborIndex::new(&rows.iter().map(|r| [r[0], r[1], r[2]]).collect::<Vec<Point>>())?)
            }
            Baseline::BtfFpfh | Baseline::PatchCoreFpfhRaw => None,
        };
        let flat: Vec<f32> = rows.concat();
        let mut bank = Tensor::from_slice(&flat).reshape([-1, dim as i64]);
        let mut standardise = None;
        if kind == Baseline::PatchCoreFpfhRaw {
            let mean = bank.mean_dim(0, true, Kind::Float);
            let std = bank.std_dim(0, true, true).clamp_min(1e-6);
            bank = greedy_coreset(&((&bank - &mean) / &std), cfg.coreset_size);
            standardise = Some((mean, std));
        }
        Ok(Self { kind, cfg: cfg.clone(), bank, standardise, raw_index })
    }

    /// One score per input point: distance of its voxel's feature to the nearest bank feature.
    pub fn score(&self, points: &[Point]) -> Result<Vec<f32>> {
        let (grid, f, d) = features(self.kind, &self.cfg, points)?;
        if let Some(index) = &self.raw_index {
            let nearest: Vec<f32> = grid.points.iter().map(|p| index.nearest(p).squared_distance.sqrt()).collect();
            return Ok(grid.spread(&nearest));
        }
        let mut queries = Tensor::from_slice(&f).reshape([-1, d as i64]);
        if let Some((mean, std)) = &self.standardise {
            queries = (queries - mean) / std;
        }
        let nearest: Vec<f32> = brute_force_distances(&self.bank, &queries).download().try_into()?;
        Ok(grid.spread(&nearest))
    }
}
