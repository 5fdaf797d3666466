//! Geometric pseudo-defects for training (generator kinds `geometric` and `geometric+selective`): local surface
//! changes made in point space on a good training view, with a mask of the points they touched. The defective
//! view then goes through the same frozen stages as any cloud, so the discriminator learns what a changed
//! surface does to the tokens rather than what feature noise does.
//!
//! The shape families and ranges are this module's own (config `generator.pseudo_defects`), not the benchmark
//! simulator's: the evaluation has to measure generalisation, not recall of `inspect3d synth`. Sizes are shares
//! of the part's robust diagonal or of the defect's radius, with a floor of a fraction of a voxel so that a
//! defect is never below what the voxel grid can show; so they mean the same in any unit.

use rand::Rng;

use crate::geometry::{self, NeighborIndex, Point, cross, normalised};
use crate::model::config::{PseudoDefectConfig, PseudoDefectFamily};
use crate::model::preprocess::standard_normal;

/// A point moved by less than this share of a voxel still looks like the surface it was on: not labelled.
const VISIBLE_SHIFT_VOXELS: f32 = 0.15;
/// Smallest displacement drawn, in voxels. A voxel point is the mean of the scan points in its cell, so a
/// registered surface moved by a third of a voxel stands several times above how closely a clean scan fits its
/// template (0.07–0.09 voxel RMS measured on the benchmark's camera frames).
const MIN_SHIFT_VOXELS: f32 = 0.3;
/// Points around a removed region within this many voxels of its edge form the labelled rim.
const RIM_VOXELS: f32 = 1.5;

/// A view with pseudo-defects: its points (some moved, some removed) and, for each, whether a defect touched it.
pub struct DefectiveView {
    pub points: Vec<Point>,
    pub touched: Vec<bool>,
}

/// The part's diagonal from the 1st–99th percentiles of each coordinate (one far point cannot inflate it).
pub fn robust_diagonal(points: &[Point]) -> f32 {
    let mut span2 = 0.0f32;
    for axis in 0..3 {
        let mut v: Vec<f32> = points.iter().map(|p| p[axis]).collect();
        let lo = crate::model::scoring::quantile(&v, 0.01);
        let hi = crate::model::scoring::quantile(&v, 0.99);
        v.clear();
        span2 += (hi - lo).powi(2);
    }
    span2.sqrt()
}

fn log_uniform(range: [f32; 2], rng: &mut impl Rng) -> f32 {
    if range[1] <= range[0] {
        return range[0];
    }
    (range[0].ln() + rng.gen_range(0.0..1.0) * (range[1].ln() - range[0].ln())).exp()
}

fn sub(a: Point, b: Point) -> Point {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn add_scaled(p: &mut Point, d: Point, s: f32) {
    for k in 0..3 {
        p[k] += d[k] * s;
    }
}

/// A unit tangent at a surface point with normal `n`, in a random direction.
fn random_tangent(n: Point, rng: &mut impl Rng) -> Point {
    let helper = if n[0].abs() < 0.9 { [1.0, 0.0, 0.0] } else { [0.0, 1.0, 0.0] };
    let u = normalised(cross(n, helper));
    let v = cross(n, u);
    let a = rng.gen_range(0.0..std::f32::consts::TAU);
    normalised([u[0] * a.cos() + v[0] * a.sin(), u[1] * a.cos() + v[1] * a.sin(), u[2] * a.cos() + v[2] * a.sin()])
}

/// The smooth bump profile: 1 at the centre, 0 with zero slope at `t = 1`.
fn profile(t: f32) -> f32 {
    if t >= 1.0 { 0.0 } else { (1.0 - t * t).powi(2) }
}

/// Makes `1..=n` defects (as configured) on a view: `points` and `normals` in one frame, `index` over `points`,
/// `voxel` the grid's edge in that frame.
pub fn make(
    points: &[Point],
    normals: &[Point],
    index: &NeighborIndex,
    voxel: f32,
    cfg: &PseudoDefectConfig,
    rng: &mut impl Rng,
) -> DefectiveView {
    let diagonal = robust_diagonal(points);
    let mut moved: Vec<Point> = points.to_vec();
    let mut touched = vec![false; points.len()];
    let mut removed = vec![false; points.len()];
    let count = rng.gen_range(cfg.defects_per_copy[0]..=cfg.defects_per_copy[1]);
    for _ in 0..count {
        let family = cfg.families[rng.gen_range(0..cfg.families.len())];
        let centre_index = rng.gen_range(0..points.len());
        let radius = (diagonal * log_uniform(cfg.radius, rng)).max(3.0 * voxel);
        let shift = (radius * log_uniform(cfg.magnitude, rng)).max(MIN_SHIFT_VOXELS * voxel);
        apply(
            family,
            Site { centre: points[centre_index], normal: normals[centre_index], radius, shift, voxel },
            points,
            normals,
            index,
            &mut moved,
            &mut touched,
            &mut removed,
            rng,
        );
    }
    let keep = |i: &usize| !removed[*i];
    DefectiveView {
        points: (0..points.len()).filter(keep).map(|i| moved[i]).collect(),
        touched: (0..points.len()).filter(keep).map(|i| touched[i]).collect(),
    }
}

/// Where one defect goes and how large it is (all in the view's frame).
#[derive(Clone, Copy)]
struct Site {
    centre: Point,
    normal: Point,
    radius: f32,
    shift: f32,
    voxel: f32,
}

#[allow(clippy::too_many_arguments)]
fn apply(
    family: PseudoDefectFamily,
    site: Site,
    points: &[Point],
    normals: &[Point],
    index: &NeighborIndex,
    moved: &mut [Point],
    touched: &mut [bool],
    removed: &mut [bool],
    rng: &mut impl Rng,
) {
    let Site { centre, normal, radius, shift, voxel } = site;
    let visible = VISIBLE_SHIFT_VOXELS * voxel;
    // Only the surface the centre lies on: not the far side of a thin wall within the radius.
    let on_surface = |p: Point| geometry::dot(sub(p, centre), normal).abs() < 0.5 * radius.max(4.0 * voxel);
    let mut displace = |i: usize, direction: Point, amount: f32| {
        add_scaled(&mut moved[i], direction, amount);
        if amount.abs() >= visible {
            touched[i] = true;
        }
    };
    match family {
        PseudoDefectFamily::Bump | PseudoDefectFamily::Dent => {
            let sign = if family == PseudoDefectFamily::Bump { 1.0 } else { -1.0 };
            for n in index.within(&centre, radius) {
                let i = n.index as usize;
                if on_surface(points[i]) {
                    displace(i, normal, sign * shift * profile(n.squared_distance.sqrt() / radius));
                }
            }
        }
        PseudoDefectFamily::Ridge => {
            // A band of half-width w along a straight path of length L through the centre, raised or sunken.
            let direction = random_tangent(normal, rng);
            let half_length = radius * rng.gen_range(1.0..2.5);
            let half_width = (radius * rng.gen_range(0.12..0.3)).max(1.5 * voxel);
            let height = shift.min(2.0 * half_width).max(MIN_SHIFT_VOXELS * voxel);
            let sign = if rng.gen_bool(0.5) { 1.0 } else { -1.0 };
            for n in index.within(&centre, half_length + half_width) {
                let i = n.index as usize;
                let d = sub(points[i], centre);
                if !on_surface(points[i]) {
                    continue;
                }
                let along = geometry::dot(d, direction);
                let across = sub(d, direction.map(|x| x * along));
                let off_plane = geometry::dot(across, normal);
                let lateral = (geometry::dot(across, across) - off_plane * off_plane).max(0.0).sqrt();
                let end_taper = profile((along.abs() / half_length).min(1.0).powi(4));
                displace(i, normal, sign * height * profile(lateral / half_width) * end_taper);
            }
        }
        PseudoDefectFamily::Roughness => {
            let amplitude = (0.35 * shift).max(MIN_SHIFT_VOXELS * voxel);
            for n in index.within(&centre, radius) {
                let i = n.index as usize;
                if on_surface(points[i]) {
                    let weight = profile(n.squared_distance.sqrt() / radius).sqrt();
                    displace(i, normals[i], amplitude * weight * standard_normal(rng));
                }
            }
        }
        PseudoDefectFamily::Shear => {
            // One side of a cut through the centre slips along the normal: a step that fades out at the radius.
            let cut = random_tangent(normal, rng);
            for n in index.within(&centre, radius) {
                let i = n.index as usize;
                if on_surface(points[i]) && geometry::dot(sub(points[i], centre), cut) > 0.0 {
                    displace(i, normal, shift * profile(n.squared_distance.sqrt() / radius).sqrt());
                }
            }
        }
        PseudoDefectFamily::Hole => {
            let hole = (0.6 * radius).max(2.0 * voxel);
            for n in index.within(&centre, hole + RIM_VOXELS * voxel) {
                let i = n.index as usize;
                if !on_surface(points[i]) {
                    continue;
                }
                if n.squared_distance.sqrt() < hole {
                    removed[i] = true;
                } else {
                    touched[i] = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// A flat 1 × 1 grid of spacing 0.01 in z = 0 with normals +z.
    fn plate() -> (Vec<Point>, Vec<Point>) {
        let pts: Vec<Point> =
            (0..100).flat_map(|i| (0..100).map(move |j| [i as f32 * 0.01, j as f32 * 0.01, 0.0])).collect();
        let normals = vec![[0.0, 0.0, 1.0]; pts.len()];
        (pts, normals)
    }

    fn one_family(family: PseudoDefectFamily) -> PseudoDefectConfig {
        PseudoDefectConfig { defects_per_copy: [1, 1], families: vec![family], ..Default::default() }
    }

    #[test]
    fn every_touched_point_moved_and_every_visibly_moved_point_is_touched() {
        let (pts, normals) = plate();
        let index = NeighborIndex::new(&pts).unwrap();
        for family in [
            PseudoDefectFamily::Bump,
            PseudoDefectFamily::Dent,
            PseudoDefectFamily::Ridge,
            PseudoDefectFamily::Roughness,
            PseudoDefectFamily::Shear,
        ] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(5);
            let v = make(&pts, &normals, &index, 0.01, &one_family(family), &mut rng);
            assert_eq!(v.points.len(), pts.len(), "{family:?} removes nothing");
            let touched = v.touched.iter().filter(|t| **t).count();
            assert!(touched > 5, "{family:?} touched {touched} points");
            for (i, (p, q)) in pts.iter().zip(&v.points).enumerate() {
                let shift = geometry::squared_distance(*p, *q).sqrt();
                if v.touched[i] {
                    assert!(
                        shift >= VISIBLE_SHIFT_VOXELS * 0.01 - 1e-6,
                        "{family:?}: point {i} labelled, moved {shift}"
                    );
                } else {
                    assert!(shift < VISIBLE_SHIFT_VOXELS * 0.01, "{family:?}: point {i} moved {shift} unlabelled");
                }
            }
        }
    }

    #[test]
    fn a_hole_removes_a_disc_and_labels_its_rim() {
        let (pts, normals) = plate();
        let index = NeighborIndex::new(&pts).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let v = make(&pts, &normals, &index, 0.01, &one_family(PseudoDefectFamily::Hole), &mut rng);
        let gone = pts.len() - v.points.len();
        assert!(gone > 10, "removed {gone}");
        // Every rim point lies within the rim width of some removed point.
        let kept = NeighborIndex::new(&v.points).unwrap();
        let removed: Vec<Point> = pts.iter().filter(|p| kept.nearest(p).squared_distance > 1e-10).copied().collect();
        assert_eq!(removed.len(), gone);
        let holes = NeighborIndex::new(&removed).unwrap();
        for (p, t) in v.points.iter().zip(&v.touched) {
            let to_hole = holes.nearest(p).squared_distance.sqrt();
            if *t {
                assert!(to_hole <= (RIM_VOXELS + 1.0) * 0.01 + 1e-5, "rim point {to_hole} from the hole");
            } else {
                assert!(to_hole > 0.0);
            }
        }
    }
}
