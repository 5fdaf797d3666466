//! Fast Point Feature Histograms as PCL defines them (Rusu et al. 2009; `pcl::FPFHEstimation`): for each pair of
//! a point and a neighbour, the Darboux-frame angles (θ, α, φ) go into three 11-bin histograms (the SPFH, each
//! histogram summing to 100); a point's FPFH is the 1/d²-weighted sum of its neighbours' SPFHs, each histogram
//! normalised again to 100. Open3D differs only by adding the point's own SPFH on top (its histograms sum to
//! 200); the tests check against Open3D through that identity.

use std::f64::consts::PI;

use rayon::prelude::*;

use super::neighbors::NeighborIndex;
use super::{Point, RadiusSearch, Result, positive};

pub const FPFH_BINS: usize = 33;
const BINS_PER_ANGLE: usize = 11;

pub type Fpfh = [f32; FPFH_BINS];

fn vector(p: Point) -> [f64; 3] {
    p.map(f64::from)
}

fn sub64(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn dot64(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross64(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

/// PCL's `computePairFeatures`: (θ, α, φ) of the pair (θ as the arguments of its `atan2`, which [`theta_bin`]
/// bins without computing it in almost every case), the source chosen so the frame is the same whichever point
/// comes first, and whether that choice was a tie (the same |cosine| at both ends: then each end is its own
/// source and the two orders differ; otherwise they agree bit for bit, negating `d` being exact). `None` for
/// coincident points, a degenerate frame, or a missing (zero) normal, where PCL would have a NaN normal.
fn pair_features(p1: Point, n1: Point, p2: Point, n2: Point) -> Option<(PairAngles, bool)> {
    if n1 == [0.0; 3] || n2 == [0.0; 3] {
        return None;
    }
    let (p1, p2, n1, n2) = (vector(p1), vector(p2), vector(n1), vector(n2));
    let mut d = sub64(p2, p1);
    let length = dot64(d, d).sqrt();
    if length == 0.0 {
        return None;
    }
    let angle1 = dot64(n1, d) / length;
    let angle2 = dot64(n2, d) / length;
    let tie = angle1.abs() == angle2.abs();
    // PCL compares acos(|angle|); acos falls, so the larger angle is the smaller |cosine|.
    let (u, target, phi) = if angle1.abs() < angle2.abs() {
        d = d.map(|c| -c);
        (n2, n1, -angle2)
    } else {
        (n1, n2, angle1)
    };
    let v = cross64(d, u);
    let v_norm = dot64(v, v).sqrt();
    if v_norm == 0.0 {
        return None;
    }
    let v = v.map(|c| c / v_norm);
    let w = cross64(u, v);
    let alpha = dot64(v, target);
    Some((PairAngles { theta_y: dot64(w, target), theta_x: dot64(u, target), alpha, phi }, tie))
}

/// A pair's angles: θ = atan2(`theta_y`, `theta_x`), α and φ.
#[derive(Clone, Copy, Debug, PartialEq)]
struct PairAngles {
    theta_y: f64,
    theta_x: f64,
    alpha: f64,
    phi: f64,
}

/// atan(a) / a as a polynomial in a² on [0, 1], fitted (least squares) to within 3e-7 rad of atan.
const ATAN_COEFFICIENTS: [f64; 7] = [
    0.999_996_046_845_064_9,
    -0.333_172_656_374_513_2,
    0.198_075_553_524_114_6,
    -0.132_341_671_585_224_6,
    0.079_663_256_922_708_4,
    -0.033_654_662_084_918_12,
    0.006_832_589_977_999_974,
];

/// atan2 within 3e-7 rad by a polynomial, no libm call (NaN where either argument is).
fn approximate_atan2(y: f64, x: f64) -> f64 {
    if y.is_nan() || x.is_nan() {
        return f64::NAN; // `min` and `max` below would drop it
    }
    let (ay, ax) = (y.abs(), x.abs());
    let a = ay.min(ax) / ay.max(ax);
    let s = a * a;
    let mut r = a * ATAN_COEFFICIENTS.iter().rev().fold(0.0, |acc, c| acc * s + c);
    if ay > ax {
        r = std::f64::consts::FRAC_PI_2 - r;
    }
    if x < 0.0 {
        r = PI - r;
    }
    if y < 0.0 { -r } else { r }
}

/// How close (in bins) to a bin edge the approximate angle may fall before libm's atan2 decides: far above the
/// approximation's 5e-7 bins.
const THETA_GUARD_BINS: f64 = 1e-5;

/// θ's bin, exactly as binning libm's atan2 gives it: the approximation decides wherever it lies clear of a bin
/// edge (all but about one pair in 10⁴), libm's atan2 elsewhere (edges, ±π, NaN).
fn theta_bin(y: f64, x: f64) -> usize {
    const BINS_PER_RADIAN: f64 = BINS_PER_ANGLE as f64 / (2.0 * PI);
    let scaled = (approximate_atan2(y, x) + PI) * BINS_PER_RADIAN;
    if scaled > 0.0 && scaled < BINS_PER_ANGLE as f64 {
        // Truncation is the floor here (libm's floor is a call on baseline x86-64).
        let whole = scaled as usize;
        let fraction = scaled - whole as f64;
        if fraction > THETA_GUARD_BINS && fraction < 1.0 - THETA_GUARD_BINS {
            return whole;
        }
    }
    bin(y.atan2(x), -PI, PI)
}

fn bin(value: f64, low: f64, high: f64) -> usize {
    // Truncation is the floor once negatives are 0 (and a call to libm's floor costs more than the rest).
    let b = (BINS_PER_ANGLE as f64 * (value - low) / (high - low)).max(0.0);
    (b as usize).min(BINS_PER_ANGLE - 1)
}

/// The three histogram slots (θ, α, φ) of a pair's angles.
fn slots(angles: PairAngles) -> [usize; 3] {
    [
        theta_bin(angles.theta_y, angles.theta_x),
        BINS_PER_ANGLE + bin(angles.alpha, -1.0, 1.0),
        2 * BINS_PER_ANGLE + bin(angles.phi, -1.0, 1.0),
    ]
}

/// A simplified PFH from its bin counts, `neighbors` counting the point itself.
fn spfh_from_counts(counts: [u32; FPFH_BINS], neighbors: usize) -> Fpfh {
    if neighbors < 2 {
        return [0.0; FPFH_BINS];
    }
    let increment = 100.0 / (neighbors - 1) as f32;
    counts.map(|c| c as f32 * increment)
}

/// The distinct values of `indices` (each < `len`) in first-seen order, and per index its place among them
/// (`u32::MAX` where it does not occur).
pub(crate) fn distinct(indices: impl Iterator<Item = u32>, len: usize) -> (Vec<u32>, Vec<u32>) {
    let (mut slot, mut values) = (vec![u32::MAX; len], Vec::new());
    for i in indices {
        if slot[i as usize] == u32::MAX {
            slot[i as usize] = values.len() as u32;
            values.push(i);
        }
    }
    (slot, values)
}

/// Needed points per task of [`spfh_of_needed`].
const SPFH_CHUNK: usize = 512;
/// A point's bin counts and its neighbourhood's size (itself included).
type PointCounts = ([u32; FPFH_BINS], usize);
/// Bins a task owes a point outside it: the point's place in `needed` and one bin per angle.
type OwedBins = (u32, [u8; 3]);

/// The SPFH of each of `needed` (distinct points; `slot` maps a point to its place in `needed`), over the
/// neighbourhood `known[k]` (index, squared distance) where given (the point itself included), else a search.
/// A pair of two needed points is the same pair from either end (PCL picks the frame's source by the normals,
/// not by the order; see [`pair_features`]), so it is computed once, by the end with the lower index, and
/// counted at both: each task counts its own points' pairs and lists the bins it owes the other ends, which are
/// added after (plain counters, no atomics).
fn spfh_of_needed(
    points: &[Point],
    normals: &[Point],
    search: &RadiusSearch,
    needed: &[u32],
    slot: &[u32],
    known: &[Vec<(u32, f32)>],
) -> Vec<Fpfh> {
    let pair = |a: u32, b: u32| {
        pair_features(points[a as usize], normals[a as usize], points[b as usize], normals[b as usize])
    };
    let tasks: Vec<(Vec<PointCounts>, Vec<OwedBins>)> = needed
        .par_chunks(SPFH_CHUNK)
        .enumerate()
        .map(|(task, chunk)| {
            let mut own = Vec::with_capacity(chunk.len());
            let mut owed = Vec::new();
            for (k, &i) in (task * SPFH_CHUNK..).zip(chunk) {
                let (mut counts, mut size) = ([0u32; FPFH_BINS], 0);
                let mut visit = |j: u32| {
                    size += 1;
                    let other = slot[j as usize];
                    if j == i || (other != u32::MAX && j < i) {
                        return; // itself, or counted from the other end
                    }
                    let Some((angles, tie)) = pair(i, j) else { return };
                    let bins = slots(angles);
                    bins.iter().for_each(|&b| counts[b] += 1);
                    if other != u32::MAX {
                        let reverse = if tie { pair(j, i).map(|(angles, _)| slots(angles)) } else { Some(bins) };
                        if let Some(bins) = reverse {
                            owed.push((other, bins.map(|b| b as u8)));
                        }
                    }
                };
                match known.get(k) {
                    Some(list) => list.iter().for_each(|&(j, _)| visit(j)),
                    None => search.for_each_within(&points[i as usize], |j, _| visit(j)),
                }
                own.push((counts, size));
            }
            (own, owed)
        })
        .collect();
    let mut counts: Vec<PointCounts> = Vec::with_capacity(needed.len());
    tasks.iter().for_each(|(own, _)| counts.extend_from_slice(own));
    for (_, owed) in &tasks {
        for &(other, bins) in owed {
            bins.iter().for_each(|&b| counts[other as usize].0[b as usize] += 1);
        }
    }
    counts.into_iter().map(|(c, size)| spfh_from_counts(c, size)).collect()
}

/// The SPFH of each queried point (mainly to compare with implementations that add it to the FPFH).
pub fn spfh_at(
    points: &[Point],
    normals: &[Point],
    index: &NeighborIndex,
    radius: f32,
    queries: &[u32],
) -> Result<Vec<Fpfh>> {
    let radius = positive("FPFH radius", radius)?;
    let search = RadiusSearch::new(points, index, radius)?;
    let (slot, needed) = distinct(queries.iter().copied(), points.len());
    let spfhs = spfh_of_needed(points, normals, &search, &needed, &slot, &[]);
    Ok(queries.iter().map(|&q| spfhs[slot[q as usize] as usize]).collect())
}

/// FPFH of each queried point over the whole cloud (`points` and `normals` are the indexed cloud).
pub fn fpfh_at(
    points: &[Point],
    normals: &[Point],
    index: &NeighborIndex,
    radius: f32,
    queries: &[u32],
) -> Result<Vec<Fpfh>> {
    let radius = positive("FPFH radius", radius)?;
    let search = RadiusSearch::new(points, index, radius)?;
    let distinct_queries = distinct(queries.iter().copied(), points.len()).1;
    let lists: Vec<Vec<(u32, f32)>> =
        distinct_queries.par_iter().map(|&q| search.within(&points[q as usize])).collect();
    // Each neighbour's SPFH once, however many queries share it; the queries' own neighbourhoods are known.
    let (slot, needed) =
        distinct(distinct_queries.iter().copied().chain(lists.iter().flatten().map(|n| n.0)), points.len());
    let spfhs = spfh_of_needed(points, normals, &search, &needed, &slot, &lists);
    Ok(queries
        .par_iter()
        .map(|&q| {
            let neighbors = &lists[slot[q as usize] as usize];
            let mut hist = [0f32; FPFH_BINS];
            for &(j, squared_distance) in neighbors {
                if squared_distance == 0.0 {
                    continue;
                }
                let weight = 1.0 / squared_distance;
                // Bin by bin, no dependence between them: the compiler vectorises it.
                for (h, value) in hist.iter_mut().zip(&spfhs[slot[j as usize] as usize]) {
                    *h += value * weight;
                }
            }
            for angle in hist.chunks_mut(BINS_PER_ANGLE) {
                let sum: f32 = angle.iter().sum();
                if sum != 0.0 {
                    angle.iter_mut().for_each(|h| *h *= 100.0 / sum);
                }
            }
            hist
        })
        .collect())
}

/// FPFH of every point.
pub fn fpfh(points: &[Point], normals: &[Point], index: &NeighborIndex, radius: f32) -> Result<Vec<Fpfh>> {
    let all: Vec<u32> = (0..points.len() as u32).collect();
    fpfh_at(points, normals, index, radius, &all)
}

#[cfg(test)]
mod tests {
    use super::super::{NormalOrientation, estimate_normals, neighbors::Neighborhood, unit_sphere_points};
    use super::*;

    #[test]
    fn histograms_sum_to_100_and_subsets_agree() {
        let pts = unit_sphere_points(1500);
        let index = NeighborIndex::new(&pts).unwrap();
        let normals = estimate_normals(&pts, &index, Neighborhood::Knn(12), NormalOrientation::AwayFromCentroid);
        let all = fpfh(&pts, &normals, &index, 0.25).unwrap();
        for h in &all {
            for part in h.chunks(BINS_PER_ANGLE) {
                assert!((part.iter().sum::<f32>() - 100.0).abs() < 1e-2);
            }
        }
        let some = fpfh_at(&pts, &normals, &index, 0.25, &[3, 700]).unwrap();
        assert_eq!(some, vec![all[3], all[700]]);
        // A sphere looks the same everywhere: descriptors of distant points are close.
        let l1: f32 = all[100].iter().zip(&all[1200]).map(|(a, b)| (a - b).abs()).sum();
        assert!(l1 < 60.0, "{l1}");
    }

    #[test]
    fn pair_features_are_symmetric_in_the_frame_choice() {
        let (p1, n1, p2, n2) = ([0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.2], [0.3, 0.0, 0.95]);
        let (a, tie) = pair_features(p1, n1, p2, n2).unwrap();
        assert_eq!(pair_features(p2, n2, p1, n1), Some((a, tie)), "bit for bit the same frame");
        assert!(!tie);
        // Equal |cosines|: each end is its own source.
        let (n1, n2) = ([0.0, 0.6, 0.8], [0.0, -0.6, 0.8]);
        assert!(pair_features(p1, n1, [1.0, 0.0, 0.0], n2).unwrap().1);
        assert!(pair_features(p1, n1, p1, n2).is_none());
        assert!(pair_features(p1, [0.0; 3], p2, n2).is_none());
    }

    #[test]
    fn theta_bins_are_those_of_libm_atan2() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut worst = 0f64;
        for _ in 0..200_000 {
            let (y, x): (f64, f64) = (rng.gen_range(-1.0..1.0), rng.gen_range(-1.0..1.0));
            worst = worst.max((approximate_atan2(y, x) - y.atan2(x)).abs());
            assert_eq!(theta_bin(y, x), bin(y.atan2(x), -PI, PI), "({y}, {x})");
        }
        assert!(worst < 5e-7, "approximation error {worst}");
        // On and next to every bin edge, on the axes, at ±π and ±0, and NaN.
        let mut cases = vec![(0.0, 0.0), (0.0, -1.0), (-0.0, -1.0), (0.0, 1.0), (-0.0, 1.0), (1.0, 0.0), (-1.0, 0.0)];
        cases.push((f64::NAN, 1.0));
        for edge in 0..=BINS_PER_ANGLE {
            let angle = -PI + 2.0 * PI * edge as f64 / BINS_PER_ANGLE as f64;
            for nudge in [-1e-9, -1e-15, 0.0, 1e-15, 1e-9] {
                cases.push(((angle + nudge).sin(), (angle + nudge).cos()));
            }
        }
        for (y, x) in cases {
            assert_eq!(theta_bin(y, x), bin(y.atan2(x), -PI, PI), "({y}, {x})");
        }
    }

    /// SPFH by its definition: every pair computed from the point's own end.
    fn spfh_by_definition(points: &[Point], normals: &[Point], index: &NeighborIndex, radius: f32, i: usize) -> Fpfh {
        let neighbors = index.within(&points[i], radius);
        let mut counts = [0u32; FPFH_BINS];
        for n in neighbors.iter().filter(|n| n.index as usize != i) {
            let j = n.index as usize;
            if let Some((features, _)) = pair_features(points[i], normals[i], points[j], normals[j]) {
                slots(features).iter().for_each(|&b| counts[b] += 1);
            }
        }
        spfh_from_counts(counts, neighbors.len())
    }

    #[test]
    fn pairs_counted_once_give_each_point_its_own_spfh() {
        // A sphere (no two ends alike) and a flat grid with one normal (every pair a tie: each end is its own
        // frame's source), queried in part so some neighbours' pairs are not shared.
        let sphere = unit_sphere_points(800);
        let plane: Vec<Point> = (0..400).map(|i| [(i % 20) as f32 * 0.05, (i / 20) as f32 * 0.05, 0.0]).collect();
        for (pts, radius) in [(sphere, 0.3), (plane, 0.16)] {
            let index = NeighborIndex::new(&pts).unwrap();
            let normals = estimate_normals(&pts, &index, Neighborhood::Knn(12), NormalOrientation::AwayFromCentroid);
            let some: Vec<u32> = (0..pts.len() as u32).filter(|i| i % 3 != 0).collect();
            let shared = spfh_at(&pts, &normals, &index, radius, &some).unwrap();
            for (&i, h) in some.iter().zip(&shared) {
                assert_eq!(*h, spfh_by_definition(&pts, &normals, &index, radius, i as usize), "point {i}");
            }
        }
    }

    #[test]
    fn isolated_points_give_zero_histograms() {
        let pts = [[0.0; 3], [10.0, 0.0, 0.0]];
        let index = NeighborIndex::new(&pts).unwrap();
        let h = fpfh(&pts, &[[0.0, 0.0, 1.0]; 2], &index, 1.0).unwrap();
        assert!(h.iter().all(|h| h.iter().all(|v| *v == 0.0)));
    }
}
