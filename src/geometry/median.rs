//! A 3D median filter over per-point values (the detector's last smoothing of point scores): each point takes
//! the median of the finite values within a radius of it, itself included.

use rayon::prelude::*;

use super::neighbors::NeighborIndex;
use super::{Point, RadiusSearch, Result, positive};

pub fn median_filter(points: &[Point], values: &[f32], index: &NeighborIndex, radius: f32) -> Result<Vec<f32>> {
    let radius = positive("median filter radius", radius)?;
    let search = RadiusSearch::new(points, index, radius)?;
    Ok(points
        .par_iter()
        .zip(values)
        .map_init(Vec::new, |window, (p, &own)| {
            window.clear();
            search.for_each_within(p, |j, _| {
                let v = values[j as usize];
                if v.is_finite() {
                    window.push(v);
                }
            });
            if window.is_empty() {
                return own;
            }
            // The middle order statistic(s) only; no full sort.
            let (mid, odd) = (window.len() / 2, window.len() % 2 == 1);
            let (below, &mut upper, _) = window.select_nth_unstable_by(mid, f32::total_cmp);
            if odd {
                upper
            } else {
                let lower = below.iter().copied().max_by(f32::total_cmp).unwrap_or(upper);
                0.5 * (lower + upper)
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_a_lone_spike_and_keeps_an_edge() {
        let pts: Vec<Point> = (0..20).map(|i| [i as f32, 0.0, 0.0]).collect();
        let mut values: Vec<f32> = (0..20).map(|i| if i < 10 { 0.0 } else { 1.0 }).collect();
        values[4] = 9.0;
        let index = NeighborIndex::new(&pts).unwrap();
        let out = median_filter(&pts, &values, &index, 1.5).unwrap();
        assert_eq!(out[4], 0.0, "spike removed");
        assert_eq!((out[8], out[11]), (0.0, 1.0), "step edge kept");
        assert!(median_filter(&pts, &values, &index, -1.0).is_err());
    }
}
