//! A benchmark in Real3D-AD's layout from real CAD meshes: for each part, good training scans and test scans,
//! some with a bulge or sink whose every point is labelled. Full 360° scans (a turntable scanner: dense,
//! precise); each part is scaled to `diagonal` millimetres. Deterministic for a seed.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{defects, mesh::Mesh, sample};
use crate::cloud::{PointCloud, pcd};
use crate::eval::dataset::write_ground_truth;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BenchmarkConfig {
    pub train: usize,
    pub test_good: usize,
    pub test_defective: usize,
    pub points: usize,
    /// Gaussian noise along the normal, mm.
    pub noise: f32,
    /// Bounding-box diagonal every part is scaled to, mm.
    pub diagonal: f32,
    /// Defect radius range, mm.
    pub radius: [f32; 2],
    /// Defect height range, mm (bulges outward, sinks inward).
    pub height: [f32; 2],
    pub seed: u64,
}

impl Default for BenchmarkConfig {
    fn default() -> Self {
        Self {
            train: 4,
            test_good: 4,
            test_defective: 8,
            points: 30_000,
            noise: 0.02,
            diagonal: 100.0,
            radius: [4.0, 10.0],
            height: [1.0, 3.0],
            seed: 1,
        }
    }
}

/// Writes one class per mesh under `out`; returns the class folders.
pub fn generate(
    meshes: &[PathBuf],
    out: &Path,
    cfg: &BenchmarkConfig,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut classes = Vec::new();
    for (m, mesh_path) in meshes.iter().enumerate() {
        let class = mesh_path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("part")
            .to_lowercase();
        let dir = out.join(&class);
        for sub in ["train", "test", "gt"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let mesh = Mesh::read(mesh_path)?.normalised(cfg.diagonal);
        let mut rng =
            rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_mul(1000).wrapping_add(m as u64));
        let write = |path: PathBuf, points: &[[f32; 3]]| {
            pcd::write(
                &path,
                &PointCloud::from_xyz(points),
                pcd::PcdEncoding::BinaryCompressed,
            )
        };
        for i in 0..cfg.train {
            write(
                dir.join(format!("train/{i:03}_template.pcd")),
                &sample::sample_surface(&mesh, cfg.points, cfg.noise, &mut rng).points,
            )?;
        }
        for i in 0..cfg.test_good {
            write(
                dir.join(format!("test/{i:03}_good.pcd")),
                &sample::sample_surface(&mesh, cfg.points, cfg.noise, &mut rng).points,
            )?;
        }
        for i in 0..cfg.test_defective {
            let mut s = sample::sample_surface(&mesh, cfg.points, cfg.noise, &mut rng);
            let (kind, sign) = if i % 2 == 0 {
                ("bulge", 1.0)
            } else {
                ("sink", -1.0)
            };
            let centre = s.points[rng.gen_range(0..s.points.len())];
            let radius = rng.gen_range(cfg.radius[0]..=cfg.radius[1]);
            let height = sign * rng.gen_range(cfg.height[0]..=cfg.height[1]);
            let mask = defects::bump(&mut s.points, &s.normals, centre, radius, height);
            let name = format!("{i:03}_{kind}");
            write(dir.join(format!("test/{name}.pcd")), &s.points)?;
            write_ground_truth(&dir.join(format!("gt/{name}.txt")), &s.points, &mask)?;
        }
        tracing::info!(
            class,
            part = m + 1,
            parts = meshes.len(),
            "benchmark class written"
        );
        classes.push(dir);
    }
    Ok(classes)
}
