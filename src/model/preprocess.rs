//! Method steps 0 and 1 (geometry half): a cloud's finite points → voxel grid → unit sphere → (training only)
//! augmentation → FPS patch centres → kNN patches → normals → FPFH descriptors. Produces a [`PatchedCloud`]
//! that the backbone, SCA and scoring read, and that remembers how to map results back to every input point.

use rand::Rng;

use super::config::{AugmentConfig, NormalSide, PreprocessConfig};
use super::{ModelError, Result};
use crate::geometry::{self, Fpfh, NeighborIndex, Neighborhood, NormalOrientation, Point, UnitSphere, VoxelGrid};

pub struct PatchedCloud {
    /// Voxel grid of the finite input points (sensor frame), with each input point's voxel.
    pub grid: VoxelGrid,
    /// Sensor frame ↔ normalised frame.
    pub frame: UnitSphere,
    /// Voxel points in the normalised (and, in training, augmented) frame.
    pub points: Vec<Point>,
    pub index: NeighborIndex,
    /// Patch centres: indices into `points`, FPS order.
    pub centres: Vec<u32>,
    /// `centres.len() × patch_size` indices into `points`, patch after patch.
    pub groups: Vec<u32>,
    pub patch_size: usize,
    pub normals: Vec<Point>,
    /// SCA's geometric descriptor g_i: FPFH at each centre, over `fpfh_radius` (normalised frame).
    pub descriptors: Vec<Fpfh>,
    pub fpfh_radius: f32,
}

impl PatchedCloud {
    pub fn patch_count(&self) -> usize {
        self.centres.len()
    }

    pub fn centre_points(&self) -> Vec<Point> {
        self.centres.iter().map(|&c| self.points[c as usize]).collect()
    }

    /// Patch members relative to their centre: `patch_count × patch_size × 3`, the backbone's input.
    pub fn relative_groups(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.groups.len() * 3);
        for (p, members) in self.groups.chunks(self.patch_size).enumerate() {
            let c = self.points[self.centres[p] as usize];
            for &m in members {
                let q = self.points[m as usize];
                out.extend([q[0] - c[0], q[1] - c[1], q[2] - c[2]]);
            }
        }
        out
    }

    /// FPFH at each centre over a wider radius (normalised frame), computed over every `stride`-th point and
    /// the centres: histograms are normalised, so thinning keeps their shape while the cost, which grows with
    /// the square of the neighbours per radius, drops by about stride².
    pub fn descriptors_at_radius(&self, radius: f32, stride: usize) -> Result<Vec<Fpfh>> {
        let mut keep: Vec<u32> = (0..self.points.len() as u32).step_by(stride.max(1)).collect();
        keep.extend(&self.centres);
        keep.sort_unstable();
        keep.dedup();
        let points: Vec<Point> = keep.iter().map(|&i| self.points[i as usize]).collect();
        let normals: Vec<Point> = keep.iter().map(|&i| self.normals[i as usize]).collect();
        let queries: Vec<u32> = self.centres.iter().map(|c| keep.binary_search(c).map_or(0, |k| k as u32)).collect();
        let index = NeighborIndex::new(&points)?;
        Ok(geometry::fpfh_at(&points, &normals, &index, radius, &queries)?)
    }
}

/// A random similarity transform of the normalised cloud: yaw about z, isotropic scale, and per-point jitter.
pub struct Augmentation {
    yaw: f32,
    scale: f32,
    jitter: f32,
}

impl Augmentation {
    pub fn draw(cfg: &AugmentConfig, rng: &mut impl Rng) -> Self {
        let yaw = cfg.yaw_degrees.to_radians() * rng.gen_range(-1.0f32..=1.0);
        let scale = 1.0 + cfg.scale * rng.gen_range(-1.0f32..=1.0);
        Self { yaw, scale, jitter: cfg.jitter }
    }

    fn transform(&self, p: Point) -> Point {
        let (s, c) = self.yaw.sin_cos();
        [(c * p[0] - s * p[1]) * self.scale, (s * p[0] + c * p[1]) * self.scale, p[2] * self.scale]
    }

    fn apply(&self, points: &mut [Point], rng: &mut impl Rng) {
        for p in points.iter_mut() {
            *p = self.transform(*p);
            if self.jitter > 0.0 {
                for c in p.iter_mut() {
                    *c += self.jitter * standard_normal(rng);
                }
            }
        }
    }
}

/// Box–Muller: one N(0, 1) draw.
pub fn standard_normal(rng: &mut impl Rng) -> f32 {
    let u1: f32 = rng.gen_range(f32::MIN_POSITIVE..1.0);
    let u2: f32 = rng.r#gen();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// Runs the geometry of steps 0–1 on the finite points of one cloud (sensor frame).
pub fn patch_cloud(
    finite_points: &[Point],
    cfg: &PreprocessConfig,
    patch_count: usize,
    patch_size: usize,
    augment: Option<(&Augmentation, &mut dyn rand::RngCore)>,
) -> Result<PatchedCloud> {
    let grid = geometry::voxel_downsample(finite_points, cfg.voxel_size)?;
    if grid.points.len() < patch_size {
        return Err(ModelError::TooFewPoints { points: grid.points.len(), needed: patch_size, voxel: cfg.voxel_size });
    }
    let frame = UnitSphere::fit(&grid.points)?;
    let mut points = frame.apply_all(&grid.points);
    // The sensor sits at the sensor frame's origin; it moves with the normalisation and the augmentation.
    let mut viewpoint = frame.apply([0.0; 3]);
    if let Some((aug, mut rng)) = augment {
        aug.apply(&mut points, &mut rng);
        viewpoint = aug.transform(viewpoint);
    }
    let index = NeighborIndex::new(&points)?;
    // A deterministic start (the point farthest from the centre) so a cloud always gives the same patches,
    // whatever order its points arrive in.
    let start = points
        .iter()
        .enumerate()
        .max_by(|a, b| geometry::dot(*a.1, *a.1).total_cmp(&geometry::dot(*b.1, *b.1)))
        .map_or(0, |(i, _)| i);
    let centres = geometry::farthest_point_sampling(&points, patch_count, start);
    let centre_points: Vec<Point> = centres.iter().map(|&c| points[c as usize]).collect();
    let groups = index.group(&centre_points, patch_size);
    let orientation = match cfg.normals_face {
        NormalSide::Sensor => NormalOrientation::TowardsViewpoint(viewpoint),
        NormalSide::Outward => NormalOrientation::AwayFromCentroid,
    };
    let normals = geometry::estimate_normals(&points, &index, Neighborhood::Knn(cfg.normal_neighbors), orientation);
    let descriptors = geometry::fpfh_at(&points, &normals, &index, cfg.fpfh_radius, &centres)?;
    Ok(PatchedCloud {
        grid,
        frame,
        points,
        index,
        centres,
        groups,
        patch_size,
        normals,
        descriptors,
        fpfh_radius: cfg.fpfh_radius,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// An irregular box (unequal sides, jittered): no exact distance ties for FPS to break by order.
    fn box_surface() -> Vec<Point> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut pts = Vec::new();
        for i in 0..40 {
            for j in 0..40 {
                let (u, v) = (i as f32 * 0.5, j as f32 * 0.35);
                pts.extend([
                    [u, v, 0.0],
                    [u, v, 13.0],
                    [u, 0.0, v],
                    [u, 14.0, v],
                    [0.0, v, u * 0.6],
                    [20.0, v, u * 0.6],
                ]);
            }
        }
        for p in pts.iter_mut() {
            for c in p.iter_mut() {
                *c += 0.01 * standard_normal(&mut rng);
            }
        }
        pts
    }

    #[test]
    fn patches_cover_the_cloud_and_are_order_independent() {
        let pts = box_surface();
        let cfg = PreprocessConfig { voxel_size: 0.9, ..Default::default() };
        let a = patch_cloud(&pts, &cfg, 64, 16, None).unwrap();
        assert_eq!((a.patch_count(), a.groups.len()), (64, 64 * 16));
        let max_r = a.points.iter().map(|p| geometry::dot(*p, *p).sqrt()).fold(0f32, f32::max);
        assert!((max_r - 1.0).abs() < 1e-4);
        let mut reversed = pts.clone();
        reversed.reverse();
        let b = patch_cloud(&reversed, &cfg, 64, 16, None).unwrap();
        let key = |c: &PatchedCloud| {
            let mut v: Vec<[i32; 3]> = c.centre_points().iter().map(|p| p.map(|x| (x * 1e4) as i32)).collect();
            v.sort();
            v
        };
        assert_eq!(key(&a), key(&b), "the same centres whatever the input order");
        assert_eq!(a.relative_groups().len(), 64 * 16 * 3);
    }

    #[test]
    fn augmentation_keeps_shape_and_too_few_points_is_named() {
        let pts = box_surface();
        let cfg = PreprocessConfig { voxel_size: 0.9, ..Default::default() };
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let aug = Augmentation::draw(&cfg.augment, &mut rng);
        let a = patch_cloud(&pts, &cfg, 32, 16, Some((&aug, &mut rng))).unwrap();
        assert_eq!(a.patch_count(), 32);
        let err = patch_cloud(&pts[..10], &cfg, 32, 16, None).err().unwrap();
        assert!(err.to_string().contains("voxel"), "{err}");
    }
}
