//! Farthest-point sampling: `n` indices spread over the cloud, each the point farthest from those already
//! chosen. The start index is an argument so inference is deterministic (a cloud always gives the same centres).

use super::{Point, bounds, squared_box_gap};

/// Points per bucket: nearby points (in Morton order) whose bounding box lets a pass skip them all.
const BUCKET: usize = 64;
/// A bucket is skipped only when its box is this much farther than its farthest point's running distance, so
/// that no rounding of a point's own distance could have lowered it.
const SKIP_MARGIN: f32 = 1.0 - 1e-5;

/// Nearby points, their bounding box, and the largest running nearest distance among them with the first
/// (lowest input index) point that has it.
struct Bucket {
    range: std::ops::Range<usize>,
    /// Bounding box (low, high).
    bounds: (Point, Point),
    farthest: f32,
    farthest_index: u32,
}

/// Returns `min(n, points.len())` distinct indices, the first being `start` (clamped into range). The same indices
/// as the sequential definition (each pass updates every point's distance to the chosen set and takes the first
/// point at the largest one; `tests` check it), but a pass skips every bucket of points whose box is farther from
/// the new centre than any of its points already is from the chosen set — most of them after the first centres.
pub fn farthest_point_sampling(points: &[Point], n: usize, start: usize) -> Vec<u32> {
    let n = n.min(points.len());
    if n == 0 {
        return Vec::new();
    }
    let order = morton_order(points);
    let sorted: Vec<Point> = order.iter().map(|&i| points[i as usize]).collect();
    let mut place = vec![0usize; points.len()];
    for (k, &i) in order.iter().enumerate() {
        place[i as usize] = k;
    }
    // The running nearest distance, in Morton order. A chosen point's is -inf: never the farthest again, while
    // duplicates of it (distance 0) stay eligible once everything else is taken.
    let mut nearest = vec![f32::INFINITY; points.len()];
    let mut buckets: Vec<Bucket> = (0..points.len())
        .step_by(BUCKET)
        .map(|first| {
            let range = first..(first + BUCKET).min(points.len());
            let bounds = bounds(&sorted[range.clone()]);
            Bucket { range, bounds, farthest: f32::INFINITY, farthest_index: u32::MAX }
        })
        .collect();
    let mut chosen = Vec::with_capacity(n);
    let mut current = start.min(points.len() - 1);
    for _ in 0..n {
        chosen.push(current as u32);
        let own = place[current];
        nearest[own] = f32::NEG_INFINITY;
        let centre = points[current];
        let [cx, cy, cz] = centre;
        for bucket in &mut buckets {
            let gap = squared_box_gap(&bucket.bounds, &(centre, centre));
            if gap * SKIP_MARGIN > bucket.farthest && !bucket.range.contains(&own) {
                continue;
            }
            let (mut farthest, mut farthest_index) = (f32::NEG_INFINITY, u32::MAX);
            for k in bucket.range.clone() {
                let [x, y, z] = sorted[k];
                let (dx, dy, dz) = (x - cx, y - cy, z - cz);
                let d = &mut nearest[k];
                *d = d.min(dx * dx + dy * dy + dz * dz);
                if *d > farthest || (*d == farthest && order[k] < farthest_index) {
                    (farthest, farthest_index) = (*d, order[k]);
                }
            }
            (bucket.farthest, bucket.farthest_index) = (farthest, farthest_index);
        }
        // The first point (input order) at the farthest distance, as a sequential scan picks it.
        let next = buckets.iter().fold((f32::NEG_INFINITY, u32::MAX), |best, b| {
            if b.farthest > best.0 || (b.farthest == best.0 && b.farthest_index < best.1) {
                (b.farthest, b.farthest_index)
            } else {
                best
            }
        });
        current = if next.1 == u32::MAX { current } else { next.1 as usize };
    }
    chosen
}

/// Point indices in Morton (Z-curve) order of their coordinates quantised to 1024 steps per axis over the
/// bounding box: consecutive points are near each other.
fn morton_order(points: &[Point]) -> Vec<u32> {
    let (low, high) = bounds(points);
    let scale = [0, 1, 2].map(|a| if high[a] > low[a] { 1023.0 / (high[a] - low[a]) } else { 0.0 });
    let spread = |v: u64| {
        // Bits of a 10-bit value two apart.
        let mut v = v & 0x3ff;
        v = (v | (v << 16)) & 0x0300_00ff;
        v = (v | (v << 8)) & 0x0300_f00f;
        v = (v | (v << 4)) & 0x030c_30c3;
        (v | (v << 2)) & 0x0924_9249
    };
    let mut keyed: Vec<(u64, u32)> = points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let q = [0, 1, 2].map(|a| (((p[a] - low[a]) * scale[a]) as u64).min(1023));
            (spread(q[0]) | (spread(q[1]) << 1) | (spread(q[2]) << 2), i as u32)
        })
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::super::squared_distance;
    use super::*;

    #[test]
    fn spreads_out_and_is_deterministic() {
        let pts: Vec<Point> = (0..100).map(|i| [i as f32, 0.0, 0.0]).collect();
        let s = farthest_point_sampling(&pts, 3, 0);
        assert_eq!(s, vec![0, 99, 49]);
        assert_eq!(farthest_point_sampling(&pts, 3, 0), s);
        assert_eq!(farthest_point_sampling(&pts, 500, 0).len(), 100);
        assert!(farthest_point_sampling(&[], 5, 0).is_empty());
    }

    /// The plain sequential definition the bucketed passes must reproduce index for index.
    fn reference(points: &[Point], n: usize, start: usize) -> Vec<u32> {
        let mut chosen = vec![start as u32];
        let mut nearest = vec![f32::INFINITY; points.len()];
        while chosen.len() < n {
            let c = points[*chosen.last().unwrap_or(&0) as usize];
            let mut best = (0, f32::NEG_INFINITY);
            for (i, p) in points.iter().enumerate() {
                nearest[i] = nearest[i].min(squared_distance(*p, c));
                if nearest[i] > best.1 && !chosen.contains(&(i as u32)) {
                    best = (i, nearest[i]);
                }
            }
            chosen.push(best.0 as u32);
        }
        chosen
    }

    #[test]
    fn matches_the_sequential_definition() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        // 1003 points: whole lanes and a remainder; a grid of repeated coordinates makes ties.
        let pts: Vec<Point> = (0..1003)
            .map(|_| [0; 3].map(|_| f32::from(rng.gen_range(0u8..12)) * 0.25 + rng.gen_range(0.0..1e-3)))
            .collect();
        assert_eq!(farthest_point_sampling(&pts, 200, 5), reference(&pts, 200, 5));
        let ties: Vec<Point> = (0..203).map(|i| [(i % 7) as f32, (i % 3) as f32, 0.0]).collect();
        assert_eq!(farthest_point_sampling(&ties, 30, 0), reference(&ties, 30, 0));
        // A surface with many buckets, most of them skipped once the first centres are placed.
        let sphere = super::super::unit_sphere_points(4000);
        assert_eq!(farthest_point_sampling(&sphere, 300, 17), reference(&sphere, 300, 17));
    }

    #[test]
    fn duplicates_do_not_repeat_until_exhausted() {
        let pts = [[0.0; 3], [0.0; 3], [1.0, 0.0, 0.0]];
        assert_eq!(farthest_point_sampling(&pts, 2, 0), vec![0, 2]);
        assert_eq!(farthest_point_sampling(&pts, 3, 0), vec![0, 2, 1]);
    }
}
