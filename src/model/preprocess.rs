//! Method steps 0 and 1 (geometry half): a cloud's finite points → voxel grid → unit sphere → (training only)
//! augmentation → FPS patch centres → kNN patches → normals → FPFH descriptors. Produces a [`PatchedCloud`]
//! that the backbone, SCA and scoring read, and that remembers how to map results back to every input point.

use rand::Rng;
use rayon::prelude::*;
use tch::Tensor;

use super::config::{AugmentConfig, NormalSide, PreprocessConfig};
use super::{ModelError, Result};
use crate::geometry::device::{self, Compute, Stage};
use crate::geometry::visibility::{self, CELL_CAMERA_DISTANCE, Camera};
use crate::geometry::{
    self, FPFH_BINS, Fpfh, NeighborIndex, Neighborhood, NormalOrientation, Point, RadiusSearch, SharedIndices,
    SharedPoints, SharedRows, UnitSphere, VoxelGrid,
};
use crate::transfers::Transfer;

pub struct PatchedCloud {
    /// Voxel grid of the finite input points (sensor frame), with each input point's voxel.
    pub grid: VoxelGrid,
    /// Sensor frame ↔ normalised frame.
    pub frame: UnitSphere,
    /// Voxel points in the normalised (and, in training, augmented) frame.
    pub points: SharedPoints<'static>,
    pub index: NeighborIndex,
    /// Patch centres: indices into `points`, FPS order.
    pub centres: SharedIndices,
    /// `centres.len() × patch_size` indices into `points`, patch after patch.
    pub groups: SharedIndices,
    pub patch_size: usize,
    pub normals: SharedRows<3>,
    /// SCA's geometric descriptor g_i: FPFH at each centre, over `fpfh_radius` (normalised frame).
    pub descriptors: SharedRows<FPFH_BINS>,
    pub fpfh_radius: f32,
    /// The voxel edge in the normalised frame: geometric sizes given in voxels are multiples of it.
    pub voxel: f32,
    /// The voxel points that per-point features are taken at: the first point of each cell of a grid of
    /// [`FEATURE_CELL_VOXELS`] voxels (the first `cell_count`), then the patch centres not among them.
    pub samples: SharedIndices,
    pub cell_count: usize,
    /// Per voxel point, the index in `samples` of its cell's point, whose point-level scores it takes.
    pub cell_of: SharedIndices,
    /// Per patch centre, its index in `samples`.
    pub centre_samples: Vec<u32>,
    /// Per sample, what FPFH cannot see: [`CONTEXT_DIMS`] numbers (see [`surface_context`]).
    pub context: SharedRows<CONTEXT_DIMS>,
    /// Whether the scan has [`ALL_ROUND_COVERAGE`] of the registered template (taken all round) or is a partial
    /// view; all round without a template or without the capture input. The heads' capture input (1 or 0).
    pub all_round: bool,
    /// Where this cloud's geometry (voxel grid, FPS, grouping, normals, FPFH, projection) runs.
    pub compute: Compute,
}

/// Edge of the cells that share one set of per-point features, in voxels. Per-point features (multi-scale FPFH
/// and surface context), the point head and the point bank cost most per point; the median filter smooths
/// scores over 3 voxels anyway, so one sample per 2-voxel cell (about a quarter of a surface's voxel points)
/// keeps the localisation.
pub const FEATURE_CELL_VOXELS: f32 = 2.0;

/// Where per-point features are taken ([`PatchedCloud::samples`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampling {
    /// One sample per feature cell, plus the patch centres: inspection.
    Cells,
    /// Every voxel point: training, so the point head learns from every labelled point (the head scores one
    /// point at a time, so a head trained on every point scores the cells' points alike).
    EveryPoint,
}

/// Numbers per sample in [`PatchedCloud::context`] (see [`surface_context`]). With three FPFH scales the
/// tokens are 3 × 33 + 6 = 105 wide, which the default 3 attention heads divide.
pub const CONTEXT_DIMS: usize = 6;
/// Distances to the template's surface beyond this many voxels are all "far" (a surface the template lacks).
const TEMPLATE_DISTANCE_CAP_VOXELS: f32 = 4.0;
/// Radii of the context numbers, in voxels.
const CONTEXT_RADII_VOXELS: [f32; 2] = [3.0, 6.0];
/// A template point within this many voxels of a scan point is one the scan has.
const COVERED_VOXELS: f32 = 1.0;
/// A scan that has this share of the template was taken all round: it is expected to have all of it.
const ALL_ROUND_COVERAGE: f32 = 0.8;

impl PatchedCloud {
    pub fn patch_count(&self) -> usize {
        self.centres.len()
    }

    pub fn centre_points(&self) -> Vec<Point> {
        self.centres.iter().map(|&c| self.points[c as usize]).collect()
    }

    /// The centres' coordinates, with their copy on `device` taken there where the points and the centres already
    /// are (the same numbers; otherwise the first stage to need it copies it up).
    pub fn shared_centre_points(&self, device: tch::Device) -> SharedPoints<'static> {
        let host = self.centre_points();
        match (self.points.copy_on(device), self.centres.copy_on(device)) {
            (Some(points), Some(centres)) => SharedPoints::with_copy(host, points.index_select(0, &centres)),
            _ => host.into(),
        }
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
        keep.extend(self.centres.iter());
        keep.sort_unstable();
        keep.dedup();
        let points: Vec<Point> = keep.iter().map(|&i| self.points[i as usize]).collect();
        let all_normals = self.normals.rows()?;
        let normals: Vec<Point> = keep.iter().map(|&i| all_normals[i as usize]).collect();
        let queries: Vec<u32> = self.centres.iter().map(|c| keep.binary_search(c).map_or(0, |k| k as u32)).collect();
        Ok(self.compute.fpfh_at(&points.into(), &SharedRows::Host(normals), None, radius, &queries)?)
    }

    /// FPFH of each sample over `radius` (normalised frame), on a [`CoarseCopy`] where the radius holds many
    /// more than ~30 points: each sample takes the descriptor of its nearest coarse point.
    pub fn sample_descriptors(&self, radius: f32) -> Result<Vec<Fpfh>> {
        match CoarseCopy::for_radius(self.compute, &self.points, &self.normals, self.voxel, radius)? {
            None => Ok(self.compute.fpfh_at(&self.points, &self.normals, Some(&self.index), radius, &self.samples)?),
            Some(copy) => {
                let coarse_of = |s: u32| copy.representative[s as usize];
                let (slot, needed) =
                    geometry::fpfh::distinct(self.samples.iter().map(|&s| coarse_of(s)), copy.points.len());
                let coarse = self.compute.fpfh_at(&copy.points, &copy.normals, None, radius, &needed)?;
                Ok(self.samples.iter().map(|&s| coarse[slot[coarse_of(s) as usize] as usize]).collect())
            }
        }
    }

    /// [`Self::sample_descriptors`] where the FPFH stage runs on `device`, kept there: S × 33 (`samples` the
    /// samples' indices on it). Nothing is read: the point features take them as they are.
    pub fn sample_descriptors_on(&self, device: tch::Device, samples: &Tensor, radius: f32) -> Result<Tensor> {
        use crate::geometry::device::{fpfh_at, fpfh_of_coarse_points, search_grid};
        Ok(match coarse_voxel(self.voxel, radius) {
            None => {
                let grid = search_grid(&self.points, device, "FPFH radius", radius)?;
                fpfh_at(&grid, &self.normals.on(device), radius, samples)
            }
            Some(coarse) => fpfh_of_coarse_points(&self.points, &self.normals, device, coarse, radius, samples)?,
        })
    }

    /// Per voxel point, its cell's value of `per_cell` (one value per cell sample, the first `cell_count`).
    pub fn spread_cells(&self, per_cell: &[f32]) -> Vec<f32> {
        self.cell_of.iter().map(|&c| per_cell[c as usize]).collect()
    }

    /// Share of each patch's members flagged in `flags` (one per voxel point).
    pub fn patch_shares(&self, flags: &[bool]) -> Vec<f32> {
        self.groups
            .chunks(self.patch_size)
            .map(|members| members.iter().filter(|&&m| flags[m as usize]).count() as f32 / members.len() as f32)
            .collect()
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

    /// The pose half: yaw about the z axis through `pivot` (sensor frame, before registration, as a part
    /// placed a little differently would be).
    fn turn(&self, p: Point, pivot: Point) -> Point {
        let (s, c) = self.yaw.sin_cos();
        let (x, y) = (p[0] - pivot[0], p[1] - pivot[1]);
        [c * x - s * y + pivot[0], s * x + c * y + pivot[1], p[2]]
    }

    /// The shape half, in the normalised frame: isotropic scale and per-point jitter.
    fn apply(&self, points: &mut [Point], rng: &mut impl Rng) {
        for p in points.iter_mut() {
            *p = p.map(|c| c * self.scale);
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

/// Correspondence cut-offs of the registration, in template voxels: a fixtured part is misplaced by a few
/// millimetres at most, and the last iterations pair points about a spacing apart.
const ALIGN_START_VOXELS: f32 = 8.0;
const ALIGN_END_VOXELS: f32 = 1.5;
pub const ALIGN_ITERATIONS: usize = 20;
/// At most this many points of a scan register it (every k-th voxel point): registration needs shape, not density.
const ALIGN_MAX_POINTS: usize = 4000;

/// The registration of a scan's voxel points (sensor frame) to `template`, whose voxel edge is `voxel`, as the
/// detector runs it: every k-th point (at most [`ALIGN_MAX_POINTS`]), the cut-offs and steps above, by `compute`.
pub fn align(
    points: &SharedPoints,
    template: &geometry::Template,
    voxel: f32,
    compute: Compute,
) -> Result<geometry::Registration> {
    let step = points.len().div_ceil(ALIGN_MAX_POINTS).max(1);
    let sample: Vec<Point> = points.iter().step_by(step).copied().collect();
    // The same rows of the points' copy where registration runs, if they have one there.
    let sample = match compute.device_for(Stage::Registration).and_then(|device| points.copy_on(device)) {
        Some(copy) => SharedPoints::with_copy(sample, copy.slice(0, 0, None, step as i64)),
        None => sample.into(),
    };
    let distances = [ALIGN_START_VOXELS * voxel, ALIGN_END_VOXELS * voxel];
    Ok(compute.register(&sample, template, distances, ALIGN_ITERATIONS)?)
}

/// The part as training first saw it: voxel points (sensor frame of that cloud) with normals, and its unit-
/// sphere frame. Scans are registered to it and normalised with its frame, so a patch position means the same
/// place on the part in every scan.
pub struct PoseTemplate {
    pub points: SharedPoints<'static>,
    pub frame: UnitSphere,
    normals: SharedPoints<'static>,
    index: NeighborIndex,
    isolation: Vec<f32>,
    voxel: f32,
    /// The template in its own normalised frame (where registered scans are), and indexed.
    placed_points: SharedPoints<'static>,
    placed: NeighborIndex,
}

impl PoseTemplate {
    /// From the voxel points of a cloud and its frame.
    pub fn new(points: Vec<Point>, frame: UnitSphere, cfg: &PreprocessConfig) -> Result<Self> {
        let (index, normals) = geometry::outward_normals(&points, cfg.normal_neighbors)?;
        let isolation = geometry::registration::isolation(&points, &index);
        let placed_points = frame.apply_all(&points);
        let placed = NeighborIndex::new(&placed_points)?;
        let (points, normals, placed_points) = (points.into(), normals.into(), placed_points.into());
        Ok(Self { points, frame, normals, index, isolation, voxel: cfg.voxel_size, placed_points, placed })
    }

    /// From a cloud's finite points (sensor frame).
    pub fn from_cloud(finite_points: &[Point], cfg: &PreprocessConfig) -> Result<Self> {
        let grid = geometry::voxel_downsample(finite_points, cfg.voxel_size)?;
        let frame = UnitSphere::fit(&grid.points)?;
        Self::new(grid.points, frame, cfg)
    }

    /// The first cloud's template with every other cloud registered to it and added, all on one voxel grid; the
    /// first cloud's frame is kept.
    pub fn fused(first: &[Point], others: &[&[Point]], cfg: &PreprocessConfig) -> Result<Self> {
        let base = Self::from_cloud(first, cfg)?;
        let mut all = base.points.to_vec();
        for cloud in others {
            let grid = geometry::voxel_downsample(cloud, cfg.voxel_size)?;
            let pose = base.register(&grid.points.as_slice().into(), Compute::Host)?.transform;
            all.extend(grid.points.iter().map(|&p| pose.apply(p)));
        }
        let fused = geometry::voxel_downsample(&all, cfg.voxel_size)?;
        Self::new(fused.points, base.frame, cfg)
    }

    /// Which template points a registered view (`scan`, indexed, in the template's normalised frame) is expected
    /// to have: those its camera sees and those it has anyway (a camera placed a little off still leaves those
    /// alone). The camera is the sensor at `viewpoint` where that lies outside the part; a view taken from
    /// inside the part's sphere (an all-round scan, or a view moved into the part's frame) that has most of the
    /// template is expected to have all of it (`None`); else its camera is assumed [`CELL_CAMERA_DISTANCE`]
    /// radii off on the side the view has (the mean outward normal of the template points it covers).
    pub fn expected(&self, scan: &NeighborIndex, viewpoint: Point, voxel: f32) -> Option<Vec<bool>> {
        let reach = COVERED_VOXELS * voxel;
        let has = |p: &Point| scan.nearest(p).squared_distance <= reach * reach;
        let sensor_outside = geometry::dot(viewpoint, viewpoint) > 1.0;
        if !sensor_outside && self.is_all_round(scan, voxel) {
            return None;
        }
        let covered: Vec<bool> = self.placed_points.par_iter().map(has).collect();
        let camera = if sensor_outside {
            viewpoint
        } else {
            let facing = self
                .normals
                .iter()
                .zip(&covered)
                .filter(|(_, c)| **c)
                .fold([0.0f32; 3], |sum, (n, _)| [sum[0] + n[0], sum[1] + n[1], sum[2] + n[2]]);
            let length = geometry::dot(facing, facing).sqrt();
            if length.is_nan() || length <= f32::EPSILON {
                return None;
            }
            facing.map(|c| c / length * CELL_CAMERA_DISTANCE)
        };
        let distance = geometry::dot(camera, camera).sqrt();
        let lens = Camera { position: camera, target: [0.0; 3], pixel: voxel / distance };
        let seen = visibility::visible(&self.placed_points, &self.normals, &lens, voxel, visibility::grazing_cos());
        Some(seen.into_iter().zip(covered).map(|(s, c)| s || c).collect())
    }

    /// Whether a registered scan (`scan`, indexed, in the template's normalised frame) has at least
    /// [`ALL_ROUND_COVERAGE`] of the template, judged on every 8th template point.
    pub fn is_all_round(&self, scan: &NeighborIndex, voxel: f32) -> bool {
        let reach = COVERED_VOXELS * voxel;
        let covered =
            self.placed_points.par_iter().step_by(8).filter(|p| scan.nearest(p).squared_distance <= reach * reach);
        covered.count() as f32 >= ALL_ROUND_COVERAGE * self.placed_points.len().div_ceil(8) as f32
    }

    /// The rigid transform that takes `points` (sensor frame) onto the template, found by `compute`.
    pub fn register(&self, points: &SharedPoints, compute: Compute) -> Result<geometry::Registration> {
        let template = geometry::Template {
            points: &self.points,
            normals: &self.normals,
            index: &self.index,
            isolation: &self.isolation,
        };
        align(points, &template, self.voxel, compute)
    }
}

/// A cloud on its way to patches: voxel points in the normalised (and, in training, augmented) frame.
pub struct View {
    pub grid: VoxelGrid,
    pub frame: UnitSphere,
    /// On the host and, where the voxel grid ran on a device, there too (placed there as on the host).
    pub points: SharedPoints<'static>,
    /// The sensor (the cloud frame's origin) in the same frame.
    pub viewpoint: Point,
    /// The voxel edge in the normalised frame.
    pub voxel: f32,
    /// Where the patch step's geometry will run.
    pub compute: Compute,
}

impl View {
    /// The view's normals, as the patch step will estimate them (pseudo-defects displace along them).
    pub fn normals(&self, cfg: &PreprocessConfig, index: &NeighborIndex) -> Vec<Point> {
        geometry::estimate_normals(
            &self.points,
            index,
            Neighborhood::Knn(cfg.normal_neighbors),
            orientation(cfg.normals_face, self.viewpoint),
        )
    }

    /// The same view with its points replaced (a pseudo-defective copy, points added or removed). The copy is
    /// for training only: its grid maps each new point to itself, not to the input.
    pub fn with_points(&self, points: Vec<Point>) -> Self {
        let grid = VoxelGrid { points: points.clone(), representative: (0..points.len() as u32).collect() };
        let (frame, viewpoint, voxel, compute) = (self.frame, self.viewpoint, self.voxel, self.compute);
        Self { grid, frame, points: points.into(), viewpoint, voxel, compute }
    }
}

fn orientation(side: NormalSide, viewpoint: Point) -> NormalOrientation {
    match side {
        NormalSide::Sensor => NormalOrientation::TowardsViewpoint(viewpoint),
        NormalSide::Outward => NormalOrientation::AwayFromCentroid,
    }
}

/// Step 0 on the finite points of one cloud (sensor frame): voxel grid, registration to the template (when
/// given) and the template's unit sphere, or the cloud's own; then augmentation. `compute` runs the voxel grid
/// and, later, the patch step's geometry.
pub fn prepare_view(
    finite_points: &SharedPoints,
    cfg: &PreprocessConfig,
    patch_size: usize,
    template: Option<&PoseTemplate>,
    augment: Option<(&Augmentation, &mut dyn rand::RngCore)>,
    compute: Compute,
) -> Result<View> {
    let (grid, voxel_points) = compute.voxel_points(finite_points, cfg.voxel_size)?;
    if grid.points.len() > cfg.max_voxel_points {
        return Err(ModelError::TooManyVoxels {
            points: grid.points.len(),
            cap: cfg.max_voxel_points,
            voxel: cfg.voxel_size,
        });
    }
    if grid.points.len() < patch_size {
        return Err(ModelError::TooFewPoints { points: grid.points.len(), needed: patch_size, voxel: cfg.voxel_size });
    }
    // The sensor sits at the sensor frame's origin; it moves with the pose, the registration and the
    // normalisation.
    let mut sensor = [0.0f32; 3];
    let sensor_points = match &augment {
        Some((aug, _)) => {
            let mut turned = voxel_points.into_vec();
            let pivot = UnitSphere::fit(&turned)?.centre;
            turned.iter_mut().for_each(|p| *p = aug.turn(*p, pivot));
            sensor = aug.turn(sensor, pivot);
            SharedPoints::from(turned)
        }
        None => voxel_points,
    };
    let (frame, pose) = match template {
        Some(t) => {
            let registration = t.register(&sensor_points, compute)?;
            let pose = registration.transform;
            tracing::debug!(
                rms_voxels = registration.rms / cfg.voxel_size,
                overlap = registration.overlap,
                degrees = pose.angle_degrees(),
                shift_voxels = geometry::dot(pose.translation, pose.translation).sqrt() / cfg.voxel_size,
                "registered"
            );
            (t.frame, Some(pose))
        }
        None => (UnitSphere::fit(&sensor_points)?, None),
    };
    let place = |p: Point| frame.apply(pose.map_or(p, |pose| pose.apply(p)));
    let (mut placed, mut viewpoint) = (sensor_points.iter().map(|&p| place(p)).collect::<Vec<_>>(), place(sensor));
    let mut voxel = cfg.voxel_size / frame.scale;
    if let Some((aug, mut rng)) = augment {
        aug.apply(&mut placed, &mut rng);
        viewpoint = viewpoint.map(|c| c * aug.scale);
        voxel *= aug.scale;
    }
    // The voxel grid's copy on the device (none for an augmented view) is placed there as on the host.
    let copy = compute.device_for(Stage::Voxels).and_then(|device| sensor_points.copy_on(device));
    let points = match copy {
        Some(copy) => SharedPoints::with_copy(placed, device::placed(&copy, pose.as_ref(), &frame)),
        None => placed.into(),
    };
    Ok(View { grid, frame, points, viewpoint, voxel, compute })
}

/// Runs the geometry of steps 0–1 on the finite points of one cloud (sensor frame).
pub fn patch_cloud(
    finite_points: &[Point],
    cfg: &PreprocessConfig,
    patch_count: usize,
    patch_size: usize,
    template: Option<&PoseTemplate>,
    augment: Option<(&Augmentation, &mut dyn rand::RngCore)>,
) -> Result<PatchedCloud> {
    let view = prepare_view(&finite_points.into(), cfg, patch_size, template, augment, Compute::Host)?;
    patch_view(view, cfg, Centres::Sample(patch_count), patch_size, template, Sampling::Cells)
}

/// Where an FPFH radius holds many more than ~30 voxel points, its descriptors are computed on a copy of the
/// cloud coarsened to a third of the radius: FPFH's cost grows with the square of the points per radius (every
/// neighbour's own histogram over its own neighbours), its normalised histograms barely change with thinning,
/// and every scale and every scan density then costs about the same. Each coarse point takes the normal of its
/// voxel's central member: a choice that host and device make alike.
struct CoarseCopy {
    points: SharedPoints<'static>,
    normals: SharedRows<3>,
    /// Per voxel point, its coarse point.
    representative: Vec<u32>,
}

impl CoarseCopy {
    /// `None` where the radius is small enough to use the voxel points themselves.
    fn for_radius(
        compute: Compute,
        points: &SharedPoints,
        normals: &SharedRows<3>,
        voxel: f32,
        radius: f32,
    ) -> Result<Option<Self>> {
        let Some(coarse_voxel) = coarse_voxel(voxel, radius) else {
            return Ok(None);
        };
        let (grid, central) = compute.voxel_centres(points, coarse_voxel)?;
        let all_normals = normals.rows()?;
        let normals = SharedRows::Host(central.iter().map(|&i| all_normals[i as usize]).collect());
        Ok(Some(Self { points: grid.points.into(), normals, representative: grid.representative }))
    }
}

/// The voxel edge of the [`CoarseCopy`] for FPFH over `radius` of points `voxel` apart; `None` where the radius is
/// small enough to use the voxel points themselves.
fn coarse_voxel(voxel: f32, radius: f32) -> Option<f32> {
    let coarse = radius / 3.0;
    (coarse > voxel * 1.2).then_some(coarse)
}

/// SCA's descriptor: FPFH at each centre over `radius`, on a [`CoarseCopy`] (with the centres added to it, so
/// each histogram is still taken at its centre) where the radius holds many points. Made on the device where FPFH
/// runs there, and kept there.
fn centre_descriptors(
    compute: Compute,
    points: &SharedPoints,
    normals: &SharedRows<3>,
    index: &NeighborIndex,
    voxel: f32,
    centres: &SharedIndices,
    radius: f32,
) -> Result<SharedRows<FPFH_BINS>> {
    use crate::geometry::device::{fpfh_among_coarse_points, fpfh_at, search_grid};
    let Some(device) = compute.device_for(Stage::Fpfh) else {
        return Ok(SharedRows::Host(centre_descriptor_rows(compute, points, normals, index, voxel, centres, radius)?));
    };
    let centres = centres.on(device);
    Ok(SharedRows::device(match coarse_voxel(voxel, radius) {
        None => fpfh_at(&search_grid(points, device, "FPFH radius", radius)?, &normals.on(device), radius, &centres),
        Some(coarse) => fpfh_among_coarse_points(points, normals, device, coarse, radius, &centres)?,
    }))
}

/// [`centre_descriptors`] as rows on the host, each stage by `compute` (and read back where that is a device).
fn centre_descriptor_rows(
    compute: Compute,
    points: &SharedPoints,
    normals: &SharedRows<3>,
    index: &NeighborIndex,
    voxel: f32,
    centres: &[u32],
    radius: f32,
) -> Result<Vec<Fpfh>> {
    let Some(copy) = CoarseCopy::for_radius(compute, points, normals, voxel, radius)? else {
        return Ok(compute.fpfh_at(points, normals, Some(index), radius, centres)?);
    };
    let (mut coarse_points, mut coarse_normals) = (copy.points.into_vec(), copy.normals.rows()?.into_owned());
    let first = coarse_points.len() as u32;
    let all_normals = normals.rows()?;
    coarse_points.extend(centres.iter().map(|&c| points[c as usize]));
    coarse_normals.extend(centres.iter().map(|&c| all_normals[c as usize]));
    let queries: Vec<u32> = (first..coarse_points.len() as u32).collect();
    Ok(compute.fpfh_at(&coarse_points.into(), &SharedRows::Host(coarse_normals), None, radius, &queries)?)
}

/// At each voxel point `at` (normalised frame, `voxel` its edge), what FPFH cannot see:
/// - how far the centroid of the points within 3 voxels lies from the point, in radii (0 inside a surface, about
///   0.4 on its border);
/// - the count of points within 3 and 6 voxels over the template's count there (about 1 where the scan has what
///   the template has; lower on the rim of missing material, which FPFH on a flat face cannot see);
/// - the registered template's surface: the distance to its nearest point and to its tangent plane there, in
///   voxels (capped), and how far the normals disagree (1 − |cos|): a bulge, sink or dent moves the surface off
///   the part's, whatever its histogram looks like.
///
/// The template's counts are over the template points in `expected` (all where `None`; see
/// [`PoseTemplate::expected`]). Without a template the counts are 1 and the template numbers 0. `compute`: on the
/// host, or as tensor code on a device ([`device_surface_context`]).
pub fn surface_context(
    compute: Compute,
    points: &SharedPoints,
    normals: &SharedRows<3>,
    index: &NeighborIndex,
    voxel: f32,
    template: Option<(&PoseTemplate, Option<&[bool]>)>,
    at: &SharedIndices,
) -> Result<SharedRows<CONTEXT_DIMS>> {
    Ok(match compute.device_for(Stage::Context) {
        None => SharedRows::Host(host_surface_context(points, &normals.rows()?, index, voxel, template, at)?),
        Some(device) => SharedRows::device(device_surface_context(device, points, normals, voxel, template, at)?),
    })
}

fn host_surface_context(
    points: &[Point],
    normals: &[Point],
    index: &NeighborIndex,
    voxel: f32,
    template: Option<(&PoseTemplate, Option<&[bool]>)>,
    at: &[u32],
) -> Result<Vec<[f32; CONTEXT_DIMS]>> {
    let [near, far] = CONTEXT_RADII_VOXELS.map(|r| r * voxel);
    // One pass over the wider radius counts both.
    let scan = RadiusSearch::new(points, index, far)?;
    let template_search = template.map(|(t, _)| RadiusSearch::new(&t.placed_points, &t.placed, far)).transpose()?;
    let expected = template.and_then(|(_, expected)| expected);
    let counts = |search: &RadiusSearch, centre: &Point| {
        let mut counts = [0usize; 2];
        search.for_each_within(centre, |j, squared| {
            if expected.is_none_or(|e| e[j as usize]) {
                counts[1] += 1;
                counts[0] += usize::from(squared <= near * near);
            }
        });
        counts
    };
    Ok(at
        .par_iter()
        .map(|&i| {
            let (centre, normal) = (points[i as usize], normals[i as usize]);
            let mut out = [0.0; CONTEXT_DIMS];
            let (mut found, mut sum) = ([0usize; 2], [0f32; 3]);
            scan.for_each_within(&centre, |j, squared| {
                found[1] += 1;
                if squared <= near * near {
                    found[0] += 1;
                    let p = points[j as usize];
                    sum = [sum[0] + p[0], sum[1] + p[1], sum[2] + p[2]];
                }
            });
            let mean = sum.map(|s| s / found[0].max(1) as f32);
            out[0] = geometry::squared_distance(mean, centre).sqrt() / near;
            let expected = template_search.as_ref().map(|search| counts(search, &centre));
            for k in 0..2 {
                out[1 + k] = match expected {
                    Some(expected) if expected[k] == 0 => 2.0,
                    Some(expected) => (found[k] as f32 / expected[k] as f32).min(2.0),
                    None => 1.0,
                };
            }
            if let Some((t, _)) = template {
                let nearest = t.placed.nearest(&centre);
                let i = nearest.index as usize;
                let offset = geometry::sub(centre, t.placed_points[i]);
                let template_normal = t.normals[i];
                out[3] = (nearest.squared_distance.sqrt() / voxel).min(TEMPLATE_DISTANCE_CAP_VOXELS);
                out[4] = (geometry::dot(offset, template_normal).abs() / voxel).min(TEMPLATE_DISTANCE_CAP_VOXELS);
                out[5] = 1.0 - geometry::dot(normal, template_normal).abs().min(1.0);
            }
            out
        })
        .collect())
}

/// [`surface_context`] as tensor code on `device` (S × [`CONTEXT_DIMS`]): the same numbers, up to the order in
/// which the centroid's sums round and, where two template points are equally near, which one is taken.
fn device_surface_context(
    device: tch::Device,
    points: &SharedPoints,
    normals: &SharedRows<3>,
    voxel: f32,
    template: Option<(&PoseTemplate, Option<&[bool]>)>,
    at: &SharedIndices,
) -> Result<Tensor> {
    use crate::geometry::device::{knn_in, search_grid, within};
    use tch::Kind;
    if at.is_empty() {
        return Ok(Tensor::zeros([0, CONTEXT_DIMS as i64], (Kind::Float, device)));
    }
    let [near, far] = CONTEXT_RADII_VOXELS.map(|r| r * voxel);
    let within_near = |found: &crate::geometry::device::Neighbors| found.squared_distance.le(f64::from(near * near));
    let count = |mask: &Tensor| mask.sum_dim_intlist(1, false, Kind::Float);
    let (cloud, at) = (points.on(device), at.on(device));
    let centres = cloud.index_select(0, &at);
    let q = centres.size()[0];
    let scan = within(&search_grid(points, device, "context radius", far)?, &centres, far);
    let (found_near, found_far) = (within_near(&scan), scan.valid());
    let members = cloud.index_select(0, &scan.index.clamp_min(0).view(-1)).view([q, -1, 3]);
    let sum = (members * found_near.unsqueeze(2).to_kind(Kind::Float)).sum_dim_intlist(1, false, Kind::Float);
    let mean = sum / count(&found_near).clamp_min(1.0).unsqueeze(1);
    let offset_radii = (mean - &centres).square().sum_dim_intlist(1, false, Kind::Float).sqrt() / f64::from(near);
    let mut columns = vec![offset_radii];
    match template {
        None => {
            columns.extend([1.0, 1.0, 0.0, 0.0, 0.0].map(|v| Tensor::full([q], v, (Kind::Float, device))));
        }
        Some((t, expected)) => {
            let (template_points, template_grid) =
                (t.placed_points.on(device), search_grid(&t.placed_points, device, "context radius", far)?);
            let around = within(&template_grid, &centres, far);
            let mut counted = around.valid();
            if let Some(expected) = expected {
                let flags: Vec<u8> = expected.iter().map(|&e| u8::from(e)).collect();
                let flags = Tensor::from_slice(&flags).upload(device).to_kind(Kind::Bool);
                counted =
                    counted.logical_and(&flags.index_select(0, &around.index.clamp_min(0).view(-1)).view([q, -1]));
            }
            for (found, expected) in [(&found_near, counted.logical_and(&within_near(&around))), (&found_far, counted)]
            {
                let (found, expected) = (count(found), count(&expected));
                let ratio = (found / &expected).clamp_max(2.0);
                columns.push(ratio.where_self(&expected.gt(0.0), &Tensor::full_like(&expected, 2.0)));
            }
            let nearest = knn_in(&template_grid, &centres, 1);
            let i = nearest.index.view(-1);
            let template_normals = t.normals.on(device).index_select(0, &i);
            let offset = &centres - template_points.index_select(0, &i);
            let cap = f64::from(TEMPLATE_DISTANCE_CAP_VOXELS);
            let along = (offset * &template_normals).sum_dim_intlist(1, false, Kind::Float).abs();
            let agreement = (normals.on(device).index_select(0, &at) * template_normals)
                .sum_dim_intlist(1, false, Kind::Float)
                .abs()
                .clamp_max(1.0);
            columns.push((nearest.squared_distance.view(-1).sqrt() / f64::from(voxel)).clamp_max(cap));
            columns.push((along / f64::from(voxel)).clamp_max(cap));
            columns.push(1.0 - agreement);
        }
    }
    Ok(Tensor::stack(&columns, 1))
}

/// Where step 1 finds its patch centres.
pub enum Centres {
    /// Farthest-point sampling of this many from [`sampling_start`], on the view alone.
    Sample(usize),
    /// Already sampled (indices of the view's points): several views' FPS in one batch
    /// ([`Compute::farthest_point_sampling_batch`]).
    Chosen(SharedIndices),
}

/// Where FPS starts on a view's points: the point farthest from the centre, so a cloud always gives the same
/// patches, whatever order its points arrive in.
pub fn sampling_start(points: &[Point]) -> usize {
    points
        .iter()
        .enumerate()
        .max_by(|a, b| geometry::dot(*a.1, *a.1).total_cmp(&geometry::dot(*b.1, *b.1)))
        .map_or(0, |(i, _)| i)
}

/// Step 1's geometry on a prepared view: FPS centres, kNN patches, normals, the SCA descriptors and the
/// surface context (against `template` when scans are registered).
pub fn patch_view(
    view: View,
    cfg: &PreprocessConfig,
    centres: Centres,
    patch_size: usize,
    template: Option<&PoseTemplate>,
    sampling: Sampling,
) -> Result<PatchedCloud> {
    if view.points.len() < patch_size {
        return Err(ModelError::TooFewPoints { points: view.points.len(), needed: patch_size, voxel: cfg.voxel_size });
    }
    let View { grid, frame, points, viewpoint, voxel, compute } = view;
    // FPS is serial: the tree and the normals take the other core meanwhile; likewise the SCA descriptors and
    // the samples' surface context below.
    let (centres, indexed) = rayon::join(
        || match centres {
            Centres::Sample(count) => compute.farthest_point_sampling(&points, count, sampling_start(&points)),
            Centres::Chosen(chosen) => Ok(chosen),
        },
        || -> Result<_> {
            let index = NeighborIndex::new(&points)?;
            let side = orientation(cfg.normals_face, viewpoint);
            let normals = compute.normals(&points, &index, cfg.normal_neighbors, voxel, side)?;
            Ok((index, normals))
        },
    );
    let (centres, (index, normals)) = (centres?, indexed?);
    let groups = compute.group(&points, &index, &centres, patch_size, voxel)?;
    let (descriptors, sampled) = rayon::join(
        || centre_descriptors(compute, &points, &normals, &index, voxel, &centres, cfg.fpfh_radius),
        || -> Result<_> {
            let cells = FeatureSamples::of(compute, &points, voxel, &centres, sampling)?;
            let expected =
                template.filter(|_| cfg.template_visibility).and_then(|t| t.expected(&index, viewpoint, voxel));
            let all_round = template.is_none_or(|t| !cfg.heads_see_capture() || t.is_all_round(&index, voxel));
            tracing::debug!(all_round, "capture");
            let template = template.map(|t| (t, expected.as_deref()));
            let context = surface_context(compute, &points, &normals, &index, voxel, template, &cells.samples)?;
            Ok((cells, context, all_round))
        },
    );
    let (descriptors, (cells, context, all_round)) = (descriptors?, sampled?);
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
        voxel,
        samples: cells.samples,
        cell_count: cells.cell_count,
        cell_of: cells.cell_of,
        centre_samples: cells.centre_samples,
        context,
        all_round,
        compute,
    })
}

/// The points that carry per-point features (see the fields of the same names in [`PatchedCloud`]).
struct FeatureSamples {
    samples: SharedIndices,
    cell_count: usize,
    cell_of: SharedIndices,
    centre_samples: Vec<u32>,
}

impl FeatureSamples {
    fn of(compute: Compute, points: &SharedPoints, voxel: f32, centres: &[u32], sampling: Sampling) -> Result<Self> {
        Ok(match sampling {
            Sampling::EveryPoint => {
                let every: Vec<u32> = (0..points.len() as u32).collect();
                Self {
                    samples: every.clone().into(),
                    cell_count: points.len(),
                    cell_of: every.into(),
                    centre_samples: centres.to_vec(),
                }
            }
            Sampling::Cells => {
                let cells = compute.voxel_downsample(points, FEATURE_CELL_VOXELS * voxel)?;
                let mut samples = cells.first_members();
                let cell_count = samples.len();
                let centre_samples = centres
                    .iter()
                    .map(|&c| {
                        let cell = cells.representative[c as usize];
                        if samples[cell as usize] == c {
                            cell
                        } else {
                            samples.push(c);
                            samples.len() as u32 - 1
                        }
                    })
                    .collect();
                Self { samples: samples.into(), cell_count, cell_of: cells.representative.into(), centre_samples }
            }
        })
    }
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
    fn every_voxel_point_takes_a_sample_of_its_own_feature_cell() {
        let pts = box_surface();
        let cfg = PreprocessConfig { voxel_size: 0.5, ..Default::default() };
        let cloud = patch_cloud(&pts, &cfg, 64, 16, None, None).unwrap();
        let n = cloud.points.len();
        assert!(cloud.cell_count < n / 2, "{} cells of {n} voxel points", cloud.cell_count);
        let cell_diagonal = FEATURE_CELL_VOXELS * cloud.voxel * 3f32.sqrt();
        for (p, &s) in cloud.cell_of.iter().enumerate() {
            assert!((s as usize) < cloud.cell_count, "a voxel point takes a cell's sample, not a centre's");
            let d = geometry::squared_distance(cloud.points[p], cloud.points[cloud.samples[s as usize] as usize]);
            assert!(d.sqrt() <= cell_diagonal * 1.001, "point {p} is {} from its sample", d.sqrt());
        }
        for (k, &c) in cloud.centres.iter().enumerate() {
            assert_eq!(cloud.samples[cloud.centre_samples[k] as usize], c, "each centre has its own features");
        }
        assert_eq!(cloud.context.rows().unwrap().len(), cloud.samples.len());
        let view = prepare_view(&pts.as_slice().into(), &cfg, 16, None, None, Compute::Host).unwrap();
        let every = patch_view(view, &cfg, Centres::Sample(64), 16, None, Sampling::EveryPoint).unwrap();
        assert_eq!(every.samples, (0..every.points.len() as u32).collect::<Vec<_>>());
        assert_eq!(every.centres, every.centre_samples);
    }

    #[test]
    fn patches_cover_the_cloud_and_are_order_independent() {
        let pts = box_surface();
        let cfg = PreprocessConfig { voxel_size: 0.9, ..Default::default() };
        let a = patch_cloud(&pts, &cfg, 64, 16, None, None).unwrap();
        assert_eq!((a.patch_count(), a.groups.len()), (64, 64 * 16));
        let max_r = a.points.iter().map(|p| geometry::dot(*p, *p).sqrt()).fold(0f32, f32::max);
        assert!((max_r - 1.0).abs() < 1e-4);
        let mut reversed = pts.clone();
        reversed.reverse();
        let b = patch_cloud(&reversed, &cfg, 64, 16, None, None).unwrap();
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
        let a = patch_cloud(&pts, &cfg, 32, 16, None, Some((&aug, &mut rng))).unwrap();
        assert_eq!(a.patch_count(), 32);
        let err = patch_cloud(&pts[..10], &cfg, 32, 16, None, None).err().unwrap();
        assert!(err.to_string().contains("voxel"), "{err}");
    }

    #[test]
    fn the_template_numbers_see_a_bump_and_a_fused_template_fills_a_views_hole() {
        let pts = box_surface();
        let cfg = PreprocessConfig { voxel_size: 0.5, ..Default::default() };
        // One view lacks a corner of the top face; the other has it: fused, the template has it.
        let in_hole = |p: &Point| p[2] > 12.9 && p[0] < 6.0 && p[1] < 5.0;
        let holed: Vec<Point> = pts.iter().copied().filter(|p| !in_hole(p)).collect();
        let alone = PoseTemplate::from_cloud(&holed, &cfg).unwrap();
        let fused = PoseTemplate::fused(&holed, &[pts.as_slice()], &cfg).unwrap();
        let corner = alone.frame.apply([3.0, 2.5, 13.0]);
        let nearest = |t: &PoseTemplate| t.placed.nearest(&corner).squared_distance.sqrt() * alone.frame.scale;
        assert!(nearest(&alone) > 1.5, "the hole is far from the lone template: {}", nearest(&alone));
        assert!(nearest(&fused) < 0.5, "the fused template covers it: {}", nearest(&fused));
        assert_eq!(fused.frame, alone.frame, "the first cloud's frame is kept");

        // A 1.5-unit bump on the top face: far from the template's surface there, and only there.
        let bumped: Vec<Point> = pts
            .iter()
            .map(|&p| {
                let d2 = (p[0] - 10.0).powi(2) + (p[1] - 7.0).powi(2);
                if p[2] > 12.9 && d2 < 4.0 { [p[0], p[1], p[2] + 1.5 * (1.0 - d2 / 4.0)] } else { p }
            })
            .collect();
        let cloud = patch_cloud(&bumped, &cfg, 64, 16, Some(&fused), None).unwrap();
        let (mut on_bump, mut elsewhere) = (Vec::new(), Vec::new());
        for (&s, c) in cloud.samples.iter().zip(cloud.context.rows().unwrap().iter()) {
            let q = cloud.frame.invert(cloud.points[s as usize]);
            let d2 = (q[0] - 10.0).powi(2) + (q[1] - 7.0).powi(2);
            if q[2] > 13.5 && d2 < 1.0 {
                on_bump.push(c[4]);
            } else if d2 > 9.0 {
                elsewhere.push(c[4]);
            }
        }
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
        assert!(!on_bump.is_empty() && !elsewhere.is_empty());
        assert!(mean(&on_bump) > 1.5, "the bump's top is off the template's plane: {} voxels", mean(&on_bump));
        assert!(mean(&elsewhere) < 0.5, "the rest lies on it: {} voxels", mean(&elsewhere));
    }
    #[test]
    fn the_device_surface_context_is_the_hosts() {
        // The box centred on the origin; a camera's view of its upper half, with a bump on the top face.
        let pts: Vec<Point> = box_surface().iter().map(|&p| geometry::sub(p, [10.0, 7.0, 6.5])).collect();
        let cfg = PreprocessConfig { voxel_size: 0.5, ..Default::default() };
        let template = PoseTemplate::from_cloud(&pts, &cfg).unwrap();
        let view: Vec<Point> = pts
            .iter()
            .filter(|p| p[2] > 0.0)
            .map(|&p| {
                let d2 = p[0] * p[0] + p[1] * p[1];
                if p[2] > 6.4 && d2 < 4.0 { [p[0], p[1], p[2] + 1.5 * (1.0 - d2 / 4.0)] } else { p }
            })
            .collect();
        let cloud = patch_cloud(&view, &cfg, 64, 16, Some(&template), None).unwrap();
        let expected = template.expected(&cloud.index, [0.0; 3], cloud.voxel);
        assert!(expected.is_some(), "a view expects part of the template");
        for (case, t) in [None, Some((&template, None)), Some((&template, expected.as_deref()))].into_iter().enumerate()
        {
            let context = |compute| {
                surface_context(compute, &cloud.points, &cloud.normals, &cloud.index, cloud.voxel, t, &cloud.samples)
                    .and_then(|context| Ok(context.rows()?.into_owned()))
                    .unwrap()
            };
            let (host, device) = (context(Compute::Host), context(Compute::tensors(tch::Device::Cpu)));
            assert_eq!(host.len(), device.len());
            for (h, d) in host.iter().zip(&device) {
                for k in 0..CONTEXT_DIMS {
                    assert!(
                        (h[k] - d[k]).abs() <= 1e-4 * h[k].abs().max(1.0),
                        "case {case}, number {k}: {h:?} vs {d:?}"
                    );
                }
            }
            // Not all alike: the bump, the border and the template's counts show in them.
            let spread = |k: usize| {
                host.iter().map(|c| c[k]).fold(f32::INFINITY, f32::min) < host.iter().map(|c| c[k]).fold(0.0, f32::max)
            };
            assert!(spread(0) && (t.is_none() || (1..CONTEXT_DIMS).all(spread)), "case {case}");
        }
    }

    #[test]
    fn point_features_and_descriptors_kept_on_the_device_are_the_rows_read_back() {
        let pts = box_surface();
        let on_device = Compute::tensors(tch::Device::Cpu);
        // SCA's radius on a coarse copy at 0.4, on the voxel points themselves at 0.1 (a unit-sphere frame).
        for fpfh_radius in [0.4, 0.1] {
            let cfg = PreprocessConfig { voxel_size: 0.5, fpfh_radius, ..Default::default() };
            let view = prepare_view(&pts.as_slice().into(), &cfg, 16, None, None, on_device).unwrap();
            let c = patch_view(view, &cfg, Centres::Sample(64), 16, None, Sampling::Cells).unwrap();
            assert!(c.descriptors.on_device().is_some(), "made and kept on the device");
            let read_back =
                centre_descriptor_rows(on_device, &c.points, &c.normals, &c.index, c.voxel, &c.centres, fpfh_radius);
            assert_eq!(c.descriptors.rows().unwrap().into_owned(), read_back.unwrap(), "radius {fpfh_radius}");
        }
        let cfg = PreprocessConfig { voxel_size: 0.5, ..Default::default() };
        let template = PoseTemplate::from_cloud(&pts, &cfg).unwrap();
        let features = |compute: Compute| {
            let view = prepare_view(&pts.as_slice().into(), &cfg, 16, Some(&template), None, compute).unwrap();
            let cloud = patch_view(view, &cfg, Centres::Sample(64), 16, Some(&template), Sampling::Cells).unwrap();
            // 3 voxels on the voxel points themselves, 5 and 8 on coarse copies.
            let features = crate::model::backbone::point_features(&[3.0, 5.0, 8.0], &cloud, tch::Device::Cpu);
            let rows = crate::geometry::device::host_floats(&features.unwrap()).unwrap();
            (rows, cloud.context.rows().unwrap().into_owned())
        };
        let ((joined, context), (read_back, _)) = (features(on_device), features(on_device.with_host(Stage::Context)));
        let width = 3 * geometry::FPFH_BINS + CONTEXT_DIMS;
        assert_eq!(joined.len(), context.len() * width);
        for (s, (a, b)) in joined.chunks(width).zip(read_back.chunks(width)).enumerate() {
            let (fpfh, rest) = a.split_at(3 * geometry::FPFH_BINS);
            assert_eq!(fpfh, &b[..fpfh.len()], "sample {s}: the histograms, to the bit");
            assert_eq!(rest, context[s].as_slice(), "sample {s}: the device's context, as it reads back");
        }
        assert!(joined.iter().any(|&v| v > 0.0 && v < 1.0), "Hellinger-scaled histograms");
    }

    #[test]
    fn the_capture_input_tells_a_view_from_an_all_round_scan() {
        let pts = box_surface();
        let cfg = PreprocessConfig { voxel_size: 0.5, ..Default::default() };
        let template = PoseTemplate::from_cloud(&pts, &cfg).unwrap();
        // The top face and the sides' upper halves: what a camera above sees, about half the part.
        let view: Vec<Point> = pts.iter().copied().filter(|p| p[2] > 6.5).collect();
        let capture = |points: &[Point], cfg: &PreprocessConfig| {
            f32::from(u8::from(patch_cloud(points, cfg, 64, 16, Some(&template), None).unwrap().all_round))
        };
        assert_eq!(capture(&pts, &cfg), 1.0, "the whole part");
        assert_eq!(capture(&view, &cfg), 0.0, "a view");
        let off = PreprocessConfig { capture_input: false, ..cfg.clone() };
        assert_eq!(capture(&view, &off), 1.0, "without the capture input every scan reads alike");
    }

    #[test]
    fn a_views_occlusion_border_keeps_the_template_counts_that_a_hole_lowers() {
        // The box centred on the frame's origin: a view in the part's frame, its sensor unknown.
        let pts: Vec<Point> = box_surface().iter().map(|&p| geometry::sub(p, [10.0, 7.0, 6.5])).collect();
        let cfg = PreprocessConfig { voxel_size: 0.5, template_visibility: true, ..Default::default() };
        let template = PoseTemplate::from_cloud(&pts, &cfg).unwrap();
        // What a camera above sees: the top face and the sides' upper halves; a corner of the top face is missing.
        let in_hole = |p: &Point| p[2] > 6.0 && p[0] < -4.0 && p[1] < -2.0;
        let view: Vec<Point> = pts.iter().copied().filter(|p| p[2] > 0.0 && !in_hole(p)).collect();

        let all_round = patch_cloud(&pts, &cfg, 64, 16, Some(&template), None).unwrap();
        assert!(template.expected(&all_round.index, [0.0; 3], all_round.voxel).is_none(), "a full scan expects all");
        let cloud = patch_cloud(&view, &cfg, 64, 16, Some(&template), None).unwrap();
        let expected = template.expected(&cloud.index, [0.0; 3], cloud.voxel).unwrap();
        let placed = |i: usize| template.frame.invert(template.placed_points[i]);
        let share = |keep: &dyn Fn(Point) -> bool| {
            let picked: Vec<bool> = (0..expected.len()).filter(|&i| keep(placed(i))).map(|i| expected[i]).collect();
            picked.iter().filter(|&&e| e).count() as f32 / picked.len().max(1) as f32
        };
        assert!(share(&|p| p[2] < -6.0) < 0.05, "the bottom face is expected: {}", share(&|p| p[2] < -6.0));
        assert!(share(&|p| in_hole(&p)) > 0.9, "the hole is not expected: {}", share(&|p| in_hole(&p)));

        // The count ratio within 3 voxels at the view's lower border and on the hole's rim, with and without.
        let ratio = |cfg: &PreprocessConfig, near: &dyn Fn(Point) -> bool| {
            let cloud = patch_cloud(&view, cfg, 64, 16, Some(&template), None).unwrap();
            let picked: Vec<f32> = (cloud.samples.iter().zip(cloud.context.rows().unwrap().iter()))
                .filter(|(s, _)| near(cloud.frame.invert(cloud.points[**s as usize])))
                .map(|(_, c)| c[1])
                .collect();
            assert!(!picked.is_empty());
            picked.iter().sum::<f32>() / picked.len() as f32
        };
        let border = |p: Point| p[2] < 0.6;
        let rim = |p: Point| p[2] > 6.0 && ((p[0] < -4.0 && p[1] < -1.0) || (p[0] < -3.0 && p[1] < -2.0));
        let blind = PreprocessConfig { template_visibility: false, ..cfg.clone() };
        // Measured: 0.59 / 0.83 at the border, 0.66 on the rim (a strip a voxel wide beyond the border stays
        // expected: template points that close to the view count as ones it has).
        assert!(ratio(&blind, &border) < 0.7, "without visibility the border is a rim: {}", ratio(&blind, &border));
        assert!(ratio(&cfg, &border) > 0.78, "the occlusion border: {}", ratio(&cfg, &border));
        assert!(ratio(&cfg, &rim) < 0.72, "the hole's rim: {}", ratio(&cfg, &rim));
    }
}
