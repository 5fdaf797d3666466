//! Rigid registration of a scan to a template of the same part: a start where the scan is (a fixtured part in the
//! template's frame) or at the template's centroid (a scan in another frame), whichever fits better, then
//! point-to-plane ICP with a shrinking correspondence distance (so the part of a single camera view that the
//! template also has pulls it into place, and what only one side has is ignored). Fixtured parts come back within
//! a few degrees and millimetres; this removes that residual pose so positions mean the same thing in every scan.

use nalgebra::{Matrix3, Matrix6, Rotation3, Vector3, Vector6};
use rayon::prelude::*;

use super::{NeighborIndex, Point, SharedPoints, dot, squared_distance};

/// `p ↦ R p + t`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rigid {
    pub rotation: [[f32; 3]; 3],
    pub translation: Point,
}

impl Rigid {
    pub const IDENTITY: Self =
        Self { rotation: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], translation: [0.0; 3] };

    pub fn apply(&self, p: Point) -> Point {
        let r = &self.rotation;
        let t = self.translation;
        [
            r[0][0] * p[0] + r[0][1] * p[1] + r[0][2] * p[2] + t[0],
            r[1][0] * p[0] + r[1][1] * p[1] + r[1][2] * p[2] + t[1],
            r[2][0] * p[0] + r[2][1] * p[1] + r[2][2] * p[2] + t[2],
        ]
    }

    fn from_rotation(rotation: &Rotation3<f64>, translation: Point) -> Self {
        let m = rotation.matrix();
        Self { rotation: std::array::from_fn(|i| std::array::from_fn(|j| m[(i, j)] as f32)), translation }
    }

    /// `self` after `first`.
    fn after(&self, first: &Self) -> Self {
        let a = Matrix3::from_fn(|i, j| self.rotation[i][j]);
        let b = Matrix3::from_fn(|i, j| first.rotation[i][j]);
        let r = a * b;
        let t = self.apply(first.translation);
        Self { rotation: std::array::from_fn(|i| std::array::from_fn(|j| r[(i, j)])), translation: t }
    }

    /// Rotation angle in degrees (for logs and tests).
    pub fn angle_degrees(&self) -> f32 {
        let trace = self.rotation[0][0] + self.rotation[1][1] + self.rotation[2][2];
        ((trace - 1.0) / 2.0).clamp(-1.0, 1.0).acos().to_degrees()
    }
}

/// A template to register to: points, their normals, an index over them, and each point's [`isolation`].
pub struct Template<'a> {
    pub points: &'a SharedPoints<'a>,
    pub normals: &'a SharedPoints<'a>,
    pub index: &'a NeighborIndex,
    pub isolation: &'a [f32],
}

/// Per point, the squared distance to its nearest other point (0 for a repeated point). A query less than half
/// that distance from a point has that point as its nearest (every other point is at least the rest of the
/// distance away), so an ICP step keeps a correspondence without a search while the moved source point stays
/// that close; late steps move points by far less than a spacing.
pub fn isolation(points: &[Point], index: &NeighborIndex) -> Vec<f32> {
    points.par_iter().map(|p| index.knn(p, 2).get(1).map_or(f32::INFINITY, |n| n.squared_distance)).collect()
}

/// Below this share of a template point's squared isolation (a quarter: half the distance), a query's nearest
/// point is surely that one; a little less, so no rounding of the squared distances can make it untrue.
const SURELY_NEAREST: f32 = 0.249;

/// What a registration found.
#[derive(Clone, Copy, Debug)]
pub struct Registration {
    pub transform: Rigid,
    /// Share of the source points with a template point within the final correspondence distance.
    pub overlap: f32,
    /// RMS point-to-plane residual of those points.
    pub rms: f32,
}

fn centroid(points: &[Point]) -> Point {
    let n = points.len().max(1) as f64;
    let s = points.iter().fold([0f64; 3], |a, p| [a[0] + p[0] as f64, a[1] + p[1] as f64, a[2] + p[2] as f64]);
    s.map(|v| (v / n) as f32)
}

/// Source points that judge a start.
const START_SAMPLE: usize = 256;

/// Where ICP starts: the scan as it is, or moved so its centroid meets the template's — whichever leaves a sample
/// of its points nearer the template (each distance capped at `cutoff`). A scan in the template's frame (a
/// fixtured part) is nearly in place already, and a single view's centroid is not the part's: only one side is
/// seen, so the centroids would pull it off by a good share of the part. A scan in another frame needs them.
pub(crate) fn start(source: &[Point], template: &Template, cutoff: f32) -> Rigid {
    let (cs, ct) = (centroid(source), centroid(template.points));
    let centred = Rigid { translation: [ct[0] - cs[0], ct[1] - cs[1], ct[2] - cs[2]], ..Rigid::IDENTITY };
    let step = source.len().div_ceil(START_SAMPLE).max(1);
    let misfit = |pose: &Rigid| -> f64 {
        source
            .iter()
            .step_by(step)
            .map(|&p| f64::from(template.index.nearest(&pose.apply(p)).squared_distance.min(cutoff * cutoff)))
            .sum()
    };
    if misfit(&centred) < misfit(&Rigid::IDENTITY) { centred } else { Rigid::IDENTITY }
}

/// A source point's nearest template point, kept from one ICP step to the next while it surely stays the nearest.
#[derive(Clone, Copy)]
struct Correspondence {
    template: u32,
    /// Where the moved source point was when it was searched.
    searched_at: Point,
    /// How far the point may move from there with the same nearest template point: half the gap between its
    /// nearest and second-nearest distances (every other point is at least the second distance less the move
    /// away, the nearest at most its distance plus the move), a little less for rounding.
    slack: f32,
}

impl Correspondence {
    const NONE: Self = Self { template: u32::MAX, searched_at: [f32::NAN; 3], slack: 0.0 };

    /// The nearest template point of `q` (the source point moved) and its squared distance, searched only where
    /// it may have changed since the last search (always, unless `keep`). The flag says whether it searched.
    fn update(&mut self, q: Point, template: &Template, keep: bool) -> (usize, f32, bool) {
        let i = self.template as usize;
        let mut settling = false;
        if let (true, Some(&t)) = (keep, template.points.get(i)) {
            let moved = squared_distance(q, self.searched_at);
            let near = squared_distance(q, t);
            if moved < self.slack * self.slack || near < SURELY_NEAREST * template.isolation[i] {
                return (i, near, false);
            }
            settling = moved < template.isolation[i];
        }
        // While the point still moves by more than a spacing a step, a slack would not last: the nearest alone.
        let (nearest, slack) = if settling {
            let two = template.index.knn(&q, 2);
            let [nearest, second] = [0, 1].map(|k| two.get(k).map_or(f32::INFINITY, |n| n.squared_distance.sqrt()));
            (two[0], 0.499 * (second - nearest) - 1e-5 * second)
        } else {
            (template.index.nearest(&q), 0.0)
        };
        *self = Self { template: nearest.index, searched_at: q, slack };
        (nearest.index as usize, nearest.squared_distance, true)
    }
}

/// Source points per parallel task of the correspondence search.
const CHUNK: usize = 512;

/// The point-to-plane least-squares system of one ICP step, summed over correspondences.
#[derive(Default)]
struct NormalEquations {
    ata: Matrix6<f64>,
    atb: Vector6<f64>,
    used: usize,
    residual2: f64,
    /// Nearest-point searches made.
    searches: usize,
}

impl NormalEquations {
    /// Adds the correspondence of the moved source point `q` with template point `t` (normal `n`).
    fn add(&mut self, q: Point, t: Point, n: Point) {
        let r = dot([q[0] - t[0], q[1] - t[1], q[2] - t[2]], n) as f64;
        let qv = Vector3::new(q[0] as f64, q[1] as f64, q[2] as f64);
        let nv = Vector3::new(n[0] as f64, n[1] as f64, n[2] as f64);
        let c = qv.cross(&nv);
        let row = Vector6::new(c[0], c[1], c[2], nv[0], nv[1], nv[2]);
        self.ata += row * row.transpose();
        self.atb -= row * r;
        self.used += 1;
        self.residual2 += r * r;
    }

    fn sum(self, other: Self) -> Self {
        Self {
            ata: self.ata + other.ata,
            atb: self.atb + other.atb,
            used: self.used + other.used,
            residual2: self.residual2 + other.residual2,
            searches: self.searches + other.searches,
        }
    }
}

/// Registers `source` to the template. `start_distance` is the first correspondence cut-off (about the largest
/// expected misplacement), `end_distance` the last (about the point spacing).
pub fn register(
    source: &[Point],
    template: &Template,
    start_distance: f32,
    end_distance: f32,
    iterations: usize,
) -> Registration {
    icp(source, template, [start_distance, end_distance], iterations, true).0
}

/// ICP, keeping correspondences that surely hold (or searching every one, to compare): the registration and the
/// number of nearest-point searches.
fn icp(
    source: &[Point],
    template: &Template,
    distances: [f32; 2],
    iterations: usize,
    keep: bool,
) -> (Registration, usize) {
    // Each source point's template point, and how far the point may move from where it was searched.
    let mut found = vec![Correspondence::NONE; source.len()];
    let mut searches = 0;
    let registration = icp_steps(source, template, distances, iterations, |transform, cutoff| {
        let sums = source
            .par_chunks(CHUNK)
            .zip(found.par_chunks_mut(CHUNK))
            .map(|(chunk, found)| {
                let mut sums = NormalEquations::default();
                for (&p, found) in chunk.iter().zip(found) {
                    let q = transform.apply(p);
                    let (i, squared, searched) = found.update(q, template, keep);
                    sums.searches += usize::from(searched);
                    if squared <= cutoff * cutoff {
                        sums.add(q, template.points[i], template.normals[i]);
                    }
                }
                sums
            })
            .reduce(NormalEquations::default, NormalEquations::sum);
        searches += sums.searches;
        sums
    });
    (registration, searches)
}

/// ICP's correspondence cut-offs, one per step: shrinking geometrically from the start distance to the end distance
/// over `iterations` steps (at least one).
pub(crate) fn cutoffs([start_distance, end_distance]: [f32; 2], iterations: usize) -> impl Iterator<Item = f32> {
    let iterations = iterations.max(1);
    (0..iterations).map(move |it| {
        let f = it as f32 / (iterations - 1).max(1) as f32;
        start_distance * (end_distance / start_distance).powf(f)
    })
}

/// ICP's loop: from the [`start`], a step per [`cutoffs`]; `step(transform, cutoff)` sums the normal equations of
/// the source moved by `transform` over its correspondences within `cutoff`. Stops where fewer than 6 pairs are
/// left or the equations have no unique solution (the device's twin, `device::register`, freezes instead).
fn icp_steps(
    source: &[Point],
    template: &Template,
    distances: [f32; 2],
    iterations: usize,
    mut step: impl FnMut(&Rigid, f32) -> NormalEquations,
) -> Registration {
    let mut transform = start(source, template, distances[0]);
    let mut result = Registration { transform, overlap: 0.0, rms: f32::INFINITY };
    for cutoff in cutoffs(distances, iterations) {
        let NormalEquations { ata, atb, used, residual2, .. } = step(&transform, cutoff);
        if used < 6 {
            break;
        }
        result = Registration {
            transform,
            overlap: used as f32 / source.len() as f32,
            rms: (residual2 / used as f64).sqrt() as f32,
        };
        let Some(x) = ata.cholesky().map(|c| c.solve(&atb)) else { break };
        let rotation = Rotation3::from_euler_angles(x[0], x[1], x[2]);
        let step = Rigid::from_rotation(&rotation, [x[3] as f32, x[4] as f32, x[5] as f32]);
        transform = step.after(&transform);
        result.transform = transform;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::{Neighborhood, NormalOrientation, estimate_normals};

    /// An irregular open box (three walls and a floor of different sizes): no symmetry to slide along. Sampled
    /// every 0.5 units, from `shift` on.
    fn part(shift: f32) -> Vec<Point> {
        let mut pts = Vec::new();
        for i in 0..60 {
            for j in 0..40 {
                let (u, v) = (i as f32 * 0.5 + shift, j as f32 * 0.5 + shift);
                pts.push([u, v, 0.0]);
                if j < 24 {
                    pts.push([u, 0.0, v]);
                }
                if i < 40 {
                    pts.push([0.0, v, u * 0.4]);
                }
            }
        }
        for k in 0..200 {
            let a = k as f32 * 0.1;
            pts.push([10.0 + 3.0 * a.cos(), 8.0 + 3.0 * a.sin(), 2.0 + 0.05 * k as f32]);
        }
        pts
    }

    /// The part's points with what registration needs of a template.
    struct TestTemplate {
        points: SharedPoints<'static>,
        index: NeighborIndex,
        normals: SharedPoints<'static>,
        isolation: Vec<f32>,
    }

    impl TestTemplate {
        fn of(points: Vec<Point>) -> Self {
            let index = NeighborIndex::new(&points).unwrap();
            let normals = estimate_normals(&points, &index, Neighborhood::Knn(12), NormalOrientation::AwayFromCentroid);
            let isolation = isolation(&points, &index);
            Self { points: points.into(), index, normals: normals.into(), isolation }
        }

        fn template(&self) -> Template<'_> {
            Template { points: &self.points, normals: &self.normals, index: &self.index, isolation: &self.isolation }
        }
    }

    #[test]
    fn recovers_a_known_pose() {
        let owned = TestTemplate::of(part(0.0));
        let (template_points, template) = (&owned.points, owned.template());
        // The part moved by 4° about a tilted axis and 1.5 units; the scan misses a tenth of it.
        let axis = Vector3::new(0.2, 0.3, 1.0).normalize();
        let rotation = Rotation3::from_axis_angle(&nalgebra::Unit::new_normalize(axis), 4f64.to_radians());
        let pose = Rigid::from_rotation(&rotation, [1.5, -1.0, 0.5]);
        let scan: Vec<Point> =
            template_points.iter().skip(template_points.len() / 10).map(|&p| pose.apply(p)).collect();
        let found = register(&scan, &template, 5.0, 0.5, 30);
        assert!(found.overlap > 0.95, "overlap {}", found.overlap);
        for (&p, &q) in template_points.iter().skip(template_points.len() / 10).zip(&scan) {
            let back = found.transform.apply(q);
            let error = ((back[0] - p[0]).powi(2) + (back[1] - p[1]).powi(2) + (back[2] - p[2]).powi(2)).sqrt();
            assert!(error < 0.02, "point {p:?} comes back {error} away");
        }
        let residual = found.transform.after(&pose);
        assert!(residual.angle_degrees() < 0.05, "residual rotation {}°", residual.angle_degrees());
        // Correspondences kept while they surely hold give the registration that searches every one, bit for
        // bit, with far fewer searches: for a scan of the template's own points and for one sampled between them
        // (its points a third of a spacing from the template's, where only the second-nearest's gap can tell).
        let between: Vec<Point> = part(0.25).iter().map(|&p| pose.apply(p)).collect();
        for scan in [&scan, &between] {
            let (kept, searches) = icp(scan, &template, [5.0, 0.5], 30, true);
            let (every, all) = icp(scan, &template, [5.0, 0.5], 30, false);
            assert_eq!((kept.transform, kept.overlap, kept.rms), (every.transform, every.overlap, every.rms));
            assert_eq!(all, 30 * scan.len());
            assert!(searches < all / 3, "{searches} of {all} searches");
        }
    }

    #[test]
    fn a_view_of_one_side_registers_from_where_it_is() {
        let owned = TestTemplate::of(part(0.0));
        let (template_points, template) = (&owned.points, owned.template());
        // A camera sees the near third of the part (its centroid several units off the part's), placed 1.5 units
        // and 2° off.
        let rotation = Rotation3::from_euler_angles(0.0, 0.0, 2f64.to_radians());
        let pose = Rigid::from_rotation(&rotation, [1.0, -1.0, 0.5]);
        let seen: Vec<Point> = template_points.iter().copied().filter(|p| p[0] < 10.0).collect();
        let scan: Vec<Point> = seen.iter().map(|&p| pose.apply(p)).collect();
        assert_eq!(start(&scan, &template, 5.0), Rigid::IDENTITY, "the view starts where it is");
        let found = register(&scan, &template, 5.0, 0.5, 30);
        let worst = seen
            .iter()
            .zip(&scan)
            .map(|(p, &q)| squared_distance(found.transform.apply(q), *p).sqrt())
            .fold(0f32, f32::max);
        assert!(worst < 0.02, "a point comes back {worst} away");
        // The same view in another frame (30 units away) starts from the centroids and still lands.
        let far: Vec<Point> = scan.iter().map(|p| [p[0] + 30.0, p[1], p[2]]).collect();
        assert_ne!(start(&far, &template, 5.0), Rigid::IDENTITY, "the far view starts from the centroids");
        let found = register(&far, &template, 5.0, 0.5, 30);
        let landed = found.transform.apply(far[0]);
        assert!(landed[0] < 15.0, "the far view was not moved onto the part: {landed:?}");
    }
}
