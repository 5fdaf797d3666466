//! Fast Point Feature Histograms as PCL defines them (Rusu et al. 2009; `pcl::FPFHEstimation`): for each pair of
//! a point and a neighbour, the Darboux-frame angles (θ, α, φ) go into three 11-bin histograms (the SPFH, each
//! histogram summing to 100); a point's FPFH is the 1/d²-weighted sum of its neighbours' SPFHs, each histogram
//! normalised again to 100. Open3D differs only by adding the point's own SPFH on top (its histograms sum to
//! 200); the tests check against Open3D through that identity.

mod pairs;

use rayon::prelude::*;

use super::neighbors::NeighborIndex;
use super::{Point, RadiusSearch, Result, positive};
use pairs::{PairLanes, pair_slots};

pub const FPFH_BINS: usize = 33;
const BINS_PER_ANGLE: usize = 11;

pub type Fpfh = [f32; FPFH_BINS];

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
/// not by the order; see [`pairs::pair_slots`]), so it is computed once, by the end with the lower index, and
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
    let tasks: Vec<(Vec<PointCounts>, Vec<OwedBins>)> = needed
        .par_chunks(SPFH_CHUNK)
        .enumerate()
        .map(|(task, chunk)| {
            let mut own = Vec::with_capacity(chunk.len());
            let mut owed = Vec::new();
            let (mut lanes, mut others) = (PairLanes::default(), Vec::new());
            for (k, &i) in (task * SPFH_CHUNK..).zip(chunk) {
                let mut size = 0;
                others.clear();
                let mut visit = |j: u32| {
                    size += 1;
                    let other = slot[j as usize];
                    // Not itself, nor a pair counted from the other end.
                    if j != i && (other == u32::MAX || j > i) {
                        others.push(j);
                    }
                };
                match known.get(k) {
                    Some(list) => list.iter().for_each(|&(j, _)| visit(j)),
                    None => search.for_each_within(&points[i as usize], |j, _| visit(j)),
                }
                let mut counts = [0u32; FPFH_BINS];
                for (&j, pair) in others.iter().zip(lanes.pairs(points, normals, i, &others)) {
                    let Some((bins, tie)) = pair else { continue };
                    bins.iter().for_each(|&b| counts[b] += 1);
                    let other = slot[j as usize];
                    if other != u32::MAX {
                        let reverse = if tie {
                            let (pj, nj, pi, ni) =
                                (points[j as usize], normals[j as usize], points[i as usize], normals[i as usize]);
                            pair_slots(pj, nj, pi, ni).map(|(bins, _)| bins)
                        } else {
                            Some(bins)
                        };
                        if let Some(bins) = reverse {
                            owed.push((other, bins.map(|b| b as u8)));
                        }
                    }
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

    /// SPFH by its definition: every pair computed from the point's own end.
    fn spfh_by_definition(points: &[Point], normals: &[Point], index: &NeighborIndex, radius: f32, i: usize) -> Fpfh {
        let neighbors = index.within(&points[i], radius);
        let mut counts = [0u32; FPFH_BINS];
        for n in neighbors.iter().filter(|n| n.index as usize != i) {
            let j = n.index as usize;
            if let Some((bins, _)) = pairs::pair_slots(points[i], normals[i], points[j], normals[j]) {
                bins.iter().for_each(|&b| counts[b] += 1);
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
