//! Farthest-point sampling: `n` indices spread over the cloud, each the point farthest from those already
//! chosen. The start index is an argument so inference is deterministic (a cloud always gives the same centres).

use super::{Point, squared_distance};

/// Lanes of the distance pass: the loop body over fixed-size chunks is what the compiler turns into SIMD.
const LANES: usize = 8;

/// Returns `min(n, points.len())` distinct indices, the first being `start` (clamped into range).
pub fn farthest_point_sampling(points: &[Point], n: usize, start: usize) -> Vec<u32> {
    let n = n.min(points.len());
    if n == 0 {
        return Vec::new();
    }
    // Coordinates as three arrays and the running nearest distance as a fourth, so that one pass per centre is
    // straight-line arithmetic over contiguous memory. A chosen point's distance is -inf: never the farthest
    // again, while duplicates of it (distance 0) stay eligible once everything else is taken.
    let axis = |k: usize| -> Vec<f32> { points.iter().map(|p| p[k]).collect() };
    let (xs, ys, zs) = (axis(0), axis(1), axis(2));
    let whole = points.len() / LANES * LANES;
    let mut nearest = vec![f32::INFINITY; points.len()];
    let mut chosen = Vec::with_capacity(n);
    let mut current = start.min(points.len() - 1);
    for _ in 0..n {
        chosen.push(current as u32);
        nearest[current] = f32::NEG_INFINITY;
        let [cx, cy, cz] = points[current];
        let mut farthest = [f32::NEG_INFINITY; LANES];
        for (((x, y), z), d) in xs[..whole]
            .chunks_exact(LANES)
            .zip(ys[..whole].chunks_exact(LANES))
            .zip(zs[..whole].chunks_exact(LANES))
            .zip(nearest[..whole].chunks_exact_mut(LANES))
        {
            for l in 0..LANES {
                let (dx, dy, dz) = (x[l] - cx, y[l] - cy, z[l] - cz);
                let dist = dx * dx + dy * dy + dz * dz;
                let m = if dist < d[l] { dist } else { d[l] };
                d[l] = m;
                farthest[l] = if m > farthest[l] { m } else { farthest[l] };
            }
        }
        let mut best = farthest.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for i in whole..points.len() {
            nearest[i] = nearest[i].min(squared_distance(points[i], points[current]));
            best = best.max(nearest[i]);
        }
        // The first point at the farthest distance, as a sequential scan picks it.
        current = nearest.iter().position(|&d| d == best).unwrap_or(current);
    }
    chosen
}

#[cfg(test)]
mod tests {
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

    /// The plain sequential definition the lane-wise pass must reproduce index for index.
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
    }

    #[test]
    fn duplicates_do_not_repeat_until_exhausted() {
        let pts = [[0.0; 3], [0.0; 3], [1.0, 0.0, 0.0]];
        assert_eq!(farthest_point_sampling(&pts, 2, 0), vec![0, 2]);
        assert_eq!(farthest_point_sampling(&pts, 3, 0), vec![0, 2, 1]);
    }
}
