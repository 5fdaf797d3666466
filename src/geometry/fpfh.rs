//! Fast Point Feature Histograms as PCL defines them (Rusu et al. 2009; `pcl::FPFHEstimation`): for each pair of
//! a point and a neighbour, the Darboux-frame angles (θ, α, φ) go into three 11-bin histograms (the SPFH, each
//! histogram summing to 100); a point's FPFH is the 1/d²-weighted sum of its neighbours' SPFHs, each histogram
//! normalised again to 100. Open3D differs only by adding the point's own SPFH on top (its histograms sum to
//! 200); the tests check against Open3D through that identity.

use std::f64::consts::PI;

use rayon::prelude::*;

use super::neighbors::{Neighbor, NeighborIndex};
use super::{Point, Result, positive};

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

/// PCL's `computePairFeatures`: (θ, α, φ) of the pair, the source chosen so the frame is the same whichever point
/// comes first. `None` for coincident points, a degenerate frame, or a missing (zero) normal, where PCL would
/// have a NaN normal.
fn pair_features(p1: Point, n1: Point, p2: Point, n2: Point) -> Option<[f64; 3]> {
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
    let theta = dot64(w, target).atan2(dot64(u, target));
    Some([theta, alpha, phi])
}

fn bin(value: f64, low: f64, high: f64) -> usize {
    let b = (BINS_PER_ANGLE as f64 * (value - low) / (high - low)).floor();
    (b.max(0.0) as usize).min(BINS_PER_ANGLE - 1)
}

/// Simplified PFH of point `i` over its neighbours within `radius` (the neighbourhood includes `i` itself).
fn spfh(points: &[Point], normals: &[Point], index: &NeighborIndex, radius: f32, i: usize) -> Fpfh {
    let (mut counts, mut neighbors) = ([0u32; FPFH_BINS], 0usize);
    index.for_each_within(&points[i], radius, |n| {
        neighbors += 1;
        let j = n.index as usize;
        if j == i {
            return;
        }
        if let Some([theta, alpha, phi]) = pair_features(points[i], normals[i], points[j], normals[j]) {
            counts[bin(theta, -PI, PI)] += 1;
            counts[BINS_PER_ANGLE + bin(alpha, -1.0, 1.0)] += 1;
            counts[2 * BINS_PER_ANGLE + bin(phi, -1.0, 1.0)] += 1;
        }
    });
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

/// The SPFH of each queried point (mainly to compare with implementations that add it to the FPFH).
pub fn spfh_at(
    points: &[Point],
    normals: &[Point],
    index: &NeighborIndex,
    radius: f32,
    queries: &[u32],
) -> Result<Vec<Fpfh>> {
    let radius = positive("FPFH radius", radius)?;
    Ok(queries.par_iter().map(|&q| spfh(points, normals, index, radius, q as usize)).collect())
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
    let neighborhoods: Vec<Vec<Neighbor>> =
        queries.par_iter().map(|&q| index.within_unsorted(&points[q as usize], radius)).collect();
    // Each neighbour's SPFH once, however many queries share it.
    let (slot, needed) = distinct(neighborhoods.iter().flatten().map(|n| n.index), points.len());
    let spfhs = spfh_at(points, normals, index, radius, &needed)?;
    Ok(neighborhoods
        .par_iter()
        .map(|neighbors| {
            let mut hist = [0f32; FPFH_BINS];
            let mut sums = [0f32; 3];
            for n in neighbors {
                if n.squared_distance == 0.0 {
                    continue;
                }
                let weight = 1.0 / n.squared_distance;
                for (b, value) in spfhs[slot[n.index as usize] as usize].iter().enumerate() {
                    let v = value * weight;
                    hist[b] += v;
                    sums[b / BINS_PER_ANGLE] += v;
                }
            }
            for (b, h) in hist.iter_mut().enumerate() {
                let s = sums[b / BINS_PER_ANGLE];
                if s != 0.0 {
                    *h *= 100.0 / s;
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
    use super::super::{NormalOrientation, estimate_normals, neighbors::Neighborhood};
    use super::*;

    fn sphere(n: usize) -> Vec<Point> {
        (0..n)
            .map(|i| {
                let (t, z) = (i as f32 * 2.399_963, 1.0 - 2.0 * (i as f32 + 0.5) / n as f32);
                let r = (1.0 - z * z).sqrt();
                [r * t.cos(), r * t.sin(), z]
            })
            .collect()
    }

    #[test]
    fn histograms_sum_to_100_and_subsets_agree() {
        let pts = sphere(1500);
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
        let a = pair_features(p1, n1, p2, n2).unwrap();
        let b = pair_features(p2, n2, p1, n1).unwrap();
        for k in 0..3 {
            assert!((a[k] - b[k]).abs() < 1e-9);
        }
        assert!(pair_features(p1, n1, p1, n2).is_none());
        assert!(pair_features(p1, [0.0; 3], p2, n2).is_none());
    }

    #[test]
    fn isolated_points_give_zero_histograms() {
        let pts = [[0.0; 3], [10.0, 0.0, 0.0]];
        let index = NeighborIndex::new(&pts).unwrap();
        let h = fpfh(&pts, &[[0.0, 0.0, 1.0]; 2], &index, 1.0).unwrap();
        assert!(h.iter().all(|h| h.iter().all(|v| *v == 0.0)));
    }
}
