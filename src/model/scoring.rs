//! Method step 7: from patch scores to point scores (each point takes the maximum over the patches containing
//! it, uncovered points their nearest patch's score, then a 3D median filter), the cloud score (the maximum),
//! the decision, the defect region, and threshold calibration.

use serde::Serialize;

use super::Thresholds;
use super::preprocess::PatchedCloud;
use crate::geometry::{self, NeighborIndex, Point};

/// Scores of the voxel points (normalised frame) from one score per patch.
pub fn project_to_points(
    cloud: &PatchedCloud,
    patch_scores: &[f32],
    median_radius: f32,
) -> crate::geometry::Result<Vec<f32>> {
    let mut scores = vec![f32::NEG_INFINITY; cloud.points.len()];
    for (members, &s) in cloud.groups.chunks(cloud.patch_size).zip(patch_scores) {
        for &m in members {
            let slot = &mut scores[m as usize];
            *slot = slot.max(s);
        }
    }
    let centre_index = NeighborIndex::new(&cloud.centre_points())?;
    for (p, s) in cloud.points.iter().zip(scores.iter_mut()) {
        if *s == f32::NEG_INFINITY {
            *s = patch_scores[centre_index.nearest(p).index as usize];
        }
    }
    geometry::median_filter(&cloud.points, &scores, &cloud.index, median_radius)
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct DefectRegion {
    pub centroid: Point,
    /// Largest distance of an anomalous point from the centroid.
    pub extent: f32,
}

pub struct Verdict {
    pub cloud_score: f32,
    pub passed: bool,
    pub anomalous_points: usize,
    pub defect: Option<DefectRegion>,
}

/// Cloud score, decision and defect region of scored points (any frame; the region is in the same frame).
pub fn decide(points: &[Point], scores: &[f32], thresholds: Thresholds) -> Verdict {
    let cloud_score = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let anomalous: Vec<Point> =
        points.iter().zip(scores).filter(|(_, s)| **s > thresholds.point).map(|(p, _)| *p).collect();
    let defect = (!anomalous.is_empty()).then(|| {
        let n = anomalous.len() as f64;
        let sum = anomalous
            .iter()
            .fold([0f64; 3], |a, p| [a[0] + f64::from(p[0]), a[1] + f64::from(p[1]), a[2] + f64::from(p[2])]);
        let centroid = sum.map(|v| (v / n) as f32);
        let extent = anomalous.iter().map(|p| geometry::squared_distance(*p, centroid)).fold(0f32, f32::max).sqrt();
        DefectRegion { centroid, extent }
    });
    // NaN thresholds (an uncalibrated model) never pass a part.
    let passed = cloud_score <= thresholds.cloud;
    Verdict { cloud_score, passed, anomalous_points: anomalous.len(), defect }
}

/// The value below which a share `keep` of `values` lies (linear interpolation between order statistics).
pub fn quantile(values: &[f32], keep: f64) -> f32 {
    let mut v: Vec<f32> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f32::NAN;
    }
    v.sort_unstable_by(f32::total_cmp);
    let pos = keep.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let w = (pos - lo as f64) as f32;
    v[lo] * (1.0 - w) + v[hi] * w
}

/// Thresholds from held-out good clouds: τ_pc rejects about `false_reject_rate` of them, τ_seg flags about
/// `point_rate` of their points. With few clouds the quantile is coarse: with m clouds the cloud threshold can
/// only resolve rates in steps of 1/m, so the worst held-out cloud sets it when m·rate < 1.
pub fn calibrate(cloud_scores: &[f32], point_scores: &[f32], false_reject_rate: f64, point_rate: f64) -> Thresholds {
    Thresholds {
        cloud: quantile(cloud_scores, 1.0 - false_reject_rate),
        point: quantile(point_scores, 1.0 - point_rate),
    }
}

/// The point threshold with the best F1 against labelled points (for validation sets with defects).
pub fn best_f1_threshold(scores: &[f32], labels: &[bool]) -> Option<(f32, f64)> {
    let mut pairs: Vec<(f32, bool)> =
        scores.iter().copied().zip(labels.iter().copied()).filter(|(s, _)| s.is_finite()).collect();
    let positives = pairs.iter().filter(|(_, l)| *l).count();
    if positives == 0 {
        return None;
    }
    pairs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp, mut best) = (0usize, 0usize, None::<(f32, f64)>);
    for (i, (s, l)) in pairs.iter().enumerate() {
        if *l {
            tp += 1
        } else {
            fp += 1
        }
        // Only between distinct scores can a threshold separate.
        if pairs.get(i + 1).is_some_and(|next| next.0 == *s) {
            continue;
        }
        let f1 = 2.0 * tp as f64 / (2 * tp + fp + (positives - tp)) as f64;
        if best.is_none_or(|(_, b)| f1 > b) {
            let below = pairs.get(i + 1).map_or(*s - 1e-6, |next| next.0);
            best = Some((0.5 * (s + below), f1));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_and_defect_region() {
        let pts = [[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [12.0, 0.0, 0.0], [5.0, 5.0, 5.0]];
        let v = decide(&pts, &[0.1, 0.9, 0.8, 0.2], Thresholds { cloud: 0.5, point: 0.5 });
        assert!(!v.passed);
        assert_eq!((v.cloud_score, v.anomalous_points), (0.9, 2));
        let d = v.defect.unwrap();
        assert_eq!((d.centroid, d.extent), ([11.0, 0.0, 0.0], 1.0));
        let ok = decide(&pts, &[0.1, 0.2, 0.3, 0.2], Thresholds { cloud: 0.5, point: 0.5 });
        assert!(ok.passed && ok.defect.is_none());
        assert!(!decide(&pts, &[0.1; 4], Thresholds { cloud: f32::NAN, point: f32::NAN }).passed);
    }

    #[test]
    fn quantiles_and_f1() {
        assert_eq!(quantile(&[3.0, 1.0, 2.0, f32::NAN], 0.5), 2.0);
        assert_eq!(quantile(&[0.0, 10.0], 0.25), 2.5);
        let t = calibrate(&[0.1, 0.2, 0.3, 0.4], &[0.0; 10], 0.25, 0.0);
        assert!((t.cloud - 0.325).abs() < 1e-6);
        let (th, f1) = best_f1_threshold(&[0.9, 0.8, 0.3, 0.2], &[true, true, false, false]).unwrap();
        assert!((th - 0.55).abs() < 1e-6 && (f1 - 1.0).abs() < 1e-12);
        assert!(best_f1_threshold(&[0.5], &[false]).is_none());
    }
}
