//! Farthest-point sampling: `n` indices spread over the cloud, each the point farthest from those already
//! chosen. The start index is an argument so inference is deterministic (a cloud always gives the same centres).

use super::{Point, squared_distance};

/// Returns `min(n, points.len())` distinct indices, the first being `start` (clamped into range).
pub fn farthest_point_sampling(points: &[Point], n: usize, start: usize) -> Vec<u32> {
    let n = n.min(points.len());
    if n == 0 {
        return Vec::new();
    }
    let mut chosen = Vec::with_capacity(n);
    let mut nearest = vec![f32::INFINITY; points.len()];
    let mut taken = vec![false; points.len()];
    let mut current = start.min(points.len() - 1);
    for _ in 0..n {
        chosen.push(current as u32);
        taken[current] = true;
        let c = points[current];
        let mut best = (0usize, -1f32);
        for (i, (p, d)) in points.iter().zip(nearest.iter_mut()).enumerate() {
            let dist = squared_distance(*p, c);
            if dist < *d {
                *d = dist;
            }
            // Duplicates of chosen points are at distance 0 too; `taken` keeps the indices distinct.
            if *d > best.1 && !taken[i] {
                best = (i, *d);
            }
        }
        current = best.0;
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

    #[test]
    fn duplicates_do_not_repeat_until_exhausted() {
        let pts = [[0.0; 3], [0.0; 3], [1.0, 0.0, 0.0]];
        assert_eq!(farthest_point_sampling(&pts, 2, 0), vec![0, 2]);
        assert_eq!(farthest_point_sampling(&pts, 3, 0), vec![0, 2, 1]);
    }
}
