//! A benchmark in Real3D-AD's layout from real CAD meshes: for each part and capture mode, good training scans
//! and test scans, some with a bulge or sink whose every point is labelled. Capture modes: full 360° scans (a
//! turntable scanner: dense, precise; class `<part>`) and single frames of a cell's depth camera (organised,
//! noisy, with holes; class `<part>_camera`). Each part is scaled to `diagonal` millimetres. Deterministic for
//! a seed. A third mode, `full_then_camera` (class `<part>_cross`), trains on full scans and tests on camera frames
//! expressed in the part's frame: a cell taught from fused all-round scans that inspects single views.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::camera::{self, CameraConfig};
use super::defects::{self, DefectKind};
use super::{mesh::Mesh, sample};
use crate::cloud::{PointCloud, pcd};
use crate::eval::dataset::write_ground_truth;
use crate::geometry::{NeighborIndex, Point, dot, squared_distance};

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
    /// Defect kinds, used in turn for the defective test scans.
    pub defects: Vec<DefectKind>,
    pub seed: u64,
    /// Which capture modes to write.
    pub modes: Vec<CaptureMode>,
    pub camera: CameraConfig,
    /// Every written coordinate is multiplied by this: 1 writes millimetres, 0.001 metres (what a camera
    /// driver publishes). The sizes above stay in millimetres.
    pub unit_scale: f32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMode {
    FullScan,
    Camera,
    /// Training scans full, test scans camera frames (in the part's frame).
    FullThenCamera,
}

impl CaptureMode {
    /// How the class's training and test scans are captured.
    fn captures(self) -> (CaptureMode, CaptureMode) {
        match self {
            Self::FullThenCamera => (Self::FullScan, Self::Camera),
            mode => (mode, mode),
        }
    }
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
            defects: DefectKind::ALL.to_vec(),
            seed: 1,
            modes: vec![CaptureMode::FullScan, CaptureMode::Camera],
            camera: CameraConfig::default(),
            unit_scale: 1.0,
        }
    }
}

/// Radius range of a missing chunk, and the rim beyond it that is labelled with it, mm.
const MISSING_RADIUS: [f32; 2] = [3.0, 6.0];
const MISSING_RIM: f32 = 1.5;

/// A scan with one defect of `kind`, and its mask. A camera sees a missing chunk as the part with that material
/// cut away (the cavity's wall, or what lies behind where it cuts through); a full scan loses the chunk's points.
fn defective_scan(
    mesh: &Mesh,
    mode: CaptureMode,
    kind: DefectKind,
    cfg: &BenchmarkConfig,
    rng: &mut impl Rng,
) -> anyhow::Result<(Scan, Vec<bool>)> {
    if mode == CaptureMode::Camera && kind == DefectKind::MissingChunk {
        let (f, ball) = camera::capture_carved(mesh, &cfg.camera, rng, |surface, rng| {
            let visible: Vec<usize> = camera::visible_points(surface).map(|(i, _)| i).collect();
            let at = *visible.get(rng.gen_range(0..visible.len().max(1)))?;
            Some(camera::Ball {
                centre: surface.points[at],
                radius: rng.gen_range(MISSING_RADIUS[0]..=MISSING_RADIUS[1]),
            })
        });
        let ball = ball.ok_or_else(|| anyhow::anyhow!("the frame shows no part to cut a missing chunk from"))?;
        let reach = (ball.radius + MISSING_RIM).powi(2);
        let mask = f.points.iter().map(|p| p[0].is_finite() && squared_distance(*p, ball.centre) < reach).collect();
        return Ok((Scan { width: f.width, height: f.height, points: f.points, normals: f.normals }, mask));
    }
    let mut s = scan(mesh, mode, cfg, rng);
    let mask = apply_defect(kind, &mut s, cfg, rng)?;
    Ok((s, mask))
}

/// Puts one defect of `kind` on the visible surface of a scan; returns the mask.
fn apply_defect(
    kind: DefectKind,
    s: &mut Scan,
    cfg: &BenchmarkConfig,
    rng: &mut impl Rng,
) -> anyhow::Result<Vec<bool>> {
    let visible: Vec<usize> = (0..s.points.len()).filter(|&j| s.points[j][0].is_finite()).collect();
    anyhow::ensure!(!visible.is_empty(), "the scan has no points to put a defect on");
    let pick = |rng: &mut dyn rand::RngCore| visible[rng.gen_range(0..visible.len())];
    let range = |r: [f32; 2], scale: f32, rng: &mut dyn rand::RngCore| scale * rng.gen_range(r[0]..=r[1]);
    let at = pick(rng);
    let (centre, normal) = (s.points[at], s.normals[at]);
    Ok(match kind {
        DefectKind::Bulge | DefectKind::Sink => {
            let sign = if kind == DefectKind::Bulge { 1.0 } else { -1.0 };
            let (r, h) = (range(cfg.radius, 1.0, rng), range(cfg.height, sign, rng));
            defects::bump(&mut s.points, &s.normals, centre, r, h)
        }
        DefectKind::Dent => {
            let (r, d) = (range(cfg.radius, 1.2, rng), range(cfg.height, 0.4, rng));
            defects::dent(&mut s.points, &s.normals, centre, r, d)
        }
        DefectKind::Pit => {
            let (r, d) = (range([1.0, 2.5], 1.0, rng), range([1.5, 3.0], 1.0, rng));
            defects::pit(&mut s.points, &s.normals, centre, r, d)
        }
        DefectKind::Scratch => {
            let t = defects::tangent(normal, rng);
            let half = 0.5 * range([15.0, 30.0], 1.0, rng);
            let (a, b) = ([0, 1, 2].map(|k| centre[k] - half * t[k]), [0, 1, 2].map(|k| centre[k] + half * t[k]));
            let (w, d) = (range([0.8, 1.5], 1.0, rng), range([0.3, 0.8], 1.0, rng));
            defects::groove(&mut s.points, &s.normals, a, b, w, d)
        }
        DefectKind::Burr => {
            // Along a sharp edge: a point whose close neighbours face more than 45° away; the edge runs along
            // the cross product of the two normals.
            let pts: Vec<Point> = visible.iter().map(|&j| s.points[j]).collect();
            let index = NeighborIndex::new(&pts)?;
            let mut candidates = Vec::new();
            for (k, &j) in visible.iter().enumerate().step_by(7) {
                if let Some(m) = index
                    .within(&pts[k], 1.5)
                    .iter()
                    .find(|m| dot(s.normals[visible[m.index as usize]], s.normals[j]) < 0.7)
                {
                    candidates.push((j, visible[m.index as usize]));
                }
            }
            let Some(&(j, other)) = candidates.get(rng.gen_range(0..candidates.len().max(1))) else {
                anyhow::bail!("no sharp edge visible for a burr");
            };
            let (n1, n2) = (s.normals[j], s.normals[other]);
            let dir = [n1[1] * n2[2] - n1[2] * n2[1], n1[2] * n2[0] - n1[0] * n2[2], n1[0] * n2[1] - n1[1] * n2[0]];
            let len = dot(dir, dir).sqrt().max(1e-9);
            let half = 0.5 * range([10.0, 20.0], 1.0, rng);
            let c = s.points[j];
            let (a, b) = ([0, 1, 2].map(|k| c[k] - half * dir[k] / len), [0, 1, 2].map(|k| c[k] + half * dir[k] / len));
            let (w, h) = (range([0.8, 1.2], 1.0, rng), range([0.4, 0.8], 1.0, rng));
            defects::groove(&mut s.points, &s.normals, a, b, w, -h)
        }
        DefectKind::MissingChunk => {
            let r = range(MISSING_RADIUS, 1.0, rng);
            defects::missing_chunk(&mut s.points, centre, r, MISSING_RIM)
        }
    })
}

/// One scan: its points (organised W × H for camera frames, NaN without a return) and their surface normals.
struct Scan {
    width: usize,
    height: usize,
    points: Vec<[f32; 3]>,
    normals: Vec<[f32; 3]>,
}

fn scan(mesh: &Mesh, mode: CaptureMode, cfg: &BenchmarkConfig, rng: &mut impl Rng) -> Scan {
    match mode {
        CaptureMode::FullScan | CaptureMode::FullThenCamera => {
            let s = sample::sample_surface(mesh, cfg.points, cfg.noise, rng);
            Scan { width: s.points.len(), height: 1, points: s.points, normals: s.normals }
        }
        CaptureMode::Camera => {
            let f = camera::capture(mesh, &cfg.camera, rng);
            Scan { width: f.width, height: f.height, points: f.points, normals: f.normals }
        }
    }
}

impl Scan {
    /// A camera frame's points and normals moved from the camera's frame into the part's.
    fn in_part_frame(self, camera: &CameraConfig) -> Self {
        let points = self.points.iter().map(|&p| camera::camera_to_part(camera, p)).collect();
        let normals = self.normals.iter().map(|&n| camera::camera_to_part_direction(camera, n)).collect();
        Self { points, normals, ..self }
    }
}

fn write_scan(path: &Path, s: &Scan, unit_scale: f32) -> crate::cloud::Result<()> {
    let scaled: Vec<Point> = s.points.iter().map(|p| p.map(|c| c * unit_scale)).collect();
    let cloud = PointCloud::from_xyz(&scaled);
    let organised = PointCloud::new(s.width, s.height, cloud.fields().to_vec())?;
    pcd::write(path, &organised, pcd::PcdEncoding::BinaryCompressed)
}

/// Writes one class per mesh and capture mode under `out`; returns the class folders.
pub fn generate(meshes: &[PathBuf], out: &Path, cfg: &BenchmarkConfig) -> anyhow::Result<Vec<PathBuf>> {
    anyhow::ensure!(
        cfg.unit_scale > 0.0 && cfg.unit_scale.is_finite(),
        "unit_scale must be a number > 0 (1: millimetres, 0.001: metres), got {}",
        cfg.unit_scale
    );
    let mut classes = Vec::new();
    let total = meshes.len() * cfg.modes.len();
    for (m, mesh_path) in meshes.iter().enumerate() {
        let part = mesh_path.file_stem().and_then(|s| s.to_str()).unwrap_or("part").to_lowercase();
        let mesh = Mesh::read(mesh_path)?.normalised(cfg.diagonal);
        for (k, &mode) in cfg.modes.iter().enumerate() {
            let class = match mode {
                CaptureMode::FullScan => part.clone(),
                CaptureMode::Camera => format!("{part}_camera"),
                CaptureMode::FullThenCamera => format!("{part}_cross"),
            };
            let (train_mode, test_mode) = mode.captures();
            // Test frames of a cross class are written in the part's frame, where its training scans are.
            let in_part_frame = mode == CaptureMode::FullThenCamera;
            let test_scan = |s: Scan| if in_part_frame { s.in_part_frame(&cfg.camera) } else { s };
            let dir = out.join(&class);
            for sub in ["train", "test", "gt"] {
                std::fs::create_dir_all(dir.join(sub))?;
            }
            let mut rng =
                rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_mul(1000).wrapping_add((m * 10 + k) as u64));
            for i in 0..cfg.train {
                write_scan(
                    &dir.join(format!("train/{i:03}_template.pcd")),
                    &scan(&mesh, train_mode, cfg, &mut rng),
                    cfg.unit_scale,
                )?;
            }
            for i in 0..cfg.test_good {
                write_scan(
                    &dir.join(format!("test/{i:03}_good.pcd")),
                    &test_scan(scan(&mesh, test_mode, cfg, &mut rng)),
                    cfg.unit_scale,
                )?;
            }
            for i in 0..cfg.test_defective {
                anyhow::ensure!(!cfg.defects.is_empty(), "the benchmark configuration lists no defect kinds");
                let kind = cfg.defects[i % cfg.defects.len()];
                let (s, mask) = defective_scan(&mesh, test_mode, kind, cfg, &mut rng)?;
                let s = test_scan(s);
                let name = format!("{i:03}_{}", kind.name());
                write_scan(&dir.join(format!("test/{name}.pcd")), &s, cfg.unit_scale)?;
                let (points, labels): (Vec<_>, Vec<_>) = s
                    .points
                    .iter()
                    .zip(&mask)
                    .filter(|(p, _)| p[0].is_finite())
                    .map(|(p, m)| (p.map(|c| c * cfg.unit_scale), *m))
                    .unzip();
                write_ground_truth(&dir.join(format!("gt/{name}.txt")), &points, &labels)?;
            }
            tracing::info!(class, progress = format!("{}/{total}", classes.len() + 1), "benchmark class written");
            classes.push(dir);
        }
    }
    Ok(classes)
}
