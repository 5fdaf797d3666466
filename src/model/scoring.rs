//! Method step 7: from patch scores to point scores (each point takes the maximum over the patches containing
//! it, uncovered points their nearest patch's score, then a 3D median filter), the cloud score (the maximum or
//! the mean of the top share), the decision, the defect region (the linked anomalous group around the top
//! score), and threshold calibration. Where the geometry runs on the heads' device, the point scores are made
//! there too, and only they come back.

use serde::Serialize;
use tch::{Device, Tensor};

use super::conditioning::Reference;
use super::config::{ObjectScore, ScoreSource, ScoringConfig};
use super::preprocess::PatchedCloud;
use super::{DeviceScores, HostScores, RawScores, Thresholds};
use crate::geometry::device::{self, Stage};
use crate::geometry::{self, Point};

/// Voxel-point scores in (0, 1) from raw scores: the configured patch score (discriminator, bank or both, each
/// normalised by its held-out good patches) projected to the voxel points (max over the patches that contain a
/// point), averaged (`scoring.point_weight`) with the point-level score (the point head's and the point bank's
/// normalised scores, `scoring.point_bank_weight`), median-filtered. The paper's configuration (discriminator only,
/// nothing per point) keeps the discriminator's probability as it is. `references`: the discriminator's, the
/// bank's, the point head's and the point bank's. Outputs kept on the heads' device are scored there, and only the
/// filtered scores come back.
pub fn voxel_scores(
    cloud: &PatchedCloud,
    raw: &RawScores,
    references: [Reference; 4],
    scoring: &ScoringConfig,
) -> super::Result<Vec<f32>> {
    match (raw, cloud.compute.device_for(Stage::Projection)) {
        (RawScores::Device(outputs), Some(on)) => device_voxel_scores(cloud, outputs, references, scoring, on),
        _ => host_voxel_scores(cloud, &*raw.on_host(cloud)?, references, scoring),
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Normalised scores are 0 on a typical good point and 1 on the rarest good ones: 1 maps to 0.5.
fn calibrated(normalised: f32) -> f32 {
    sigmoid(4.0 * (normalised - 1.0))
}

fn host_voxel_scores(
    cloud: &PatchedCloud,
    raw: &HostScores,
    [d, b, point, point_bank]: [Reference; 4],
    scoring: &ScoringConfig,
) -> super::Result<Vec<f32>> {
    let radius = scoring.median_radius_voxels * cloud.voxel;
    let head = raw.point_logits.iter().map(|&l| point.normalise(l));
    let bank = raw.point_distances.iter().map(|&x| point_bank.normalise(x));
    let point_level: Vec<f32> = match (raw.point_logits.is_empty(), raw.point_distances.is_empty()) {
        (true, true) => Vec::new(),
        (false, true) => head.collect(),
        (true, false) => bank.collect(),
        (false, false) => {
            let w = scoring.point_bank_weight;
            head.zip(bank).map(|(h, k)| (1.0 - w) * h + w * k).collect()
        }
    };
    if scoring.source == ScoreSource::Discriminator && point_level.is_empty() {
        let patch: Vec<f32> = raw.logits.iter().map(|&l| sigmoid(l)).collect();
        return Ok(project_to_points(cloud, &patch, radius)?);
    }
    let patch: Vec<f32> = match scoring.source {
        ScoreSource::Bank if !raw.distances.is_empty() => raw.distances.iter().map(|&x| b.normalise(x)).collect(),
        ScoreSource::Fused if !raw.distances.is_empty() => {
            raw.logits.iter().zip(&raw.distances).map(|(&l, &x)| 0.5 * (d.normalise(l) + b.normalise(x))).collect()
        }
        _ => raw.logits.iter().map(|&l| d.normalise(l)).collect(),
    };
    let mut voxel = spread_patch_scores(cloud, &patch)?;
    if !point_level.is_empty() {
        let w = scoring.point_weight;
        for (v, p) in voxel.iter_mut().zip(point_level) {
            *v = (1.0 - w) * *v + w * p;
        }
    }
    let filtered = cloud.compute.median_filter(&cloud.points, &voxel, &cloud.index, radius)?;
    Ok(filtered.into_iter().map(calibrated).collect())
}

/// [`host_voxel_scores`] as tensor code on `on`, op for op: the same values for the same inputs (but the paper's
/// probability, whose sigmoid is LibTorch's). Reads the filtered scores only.
fn device_voxel_scores(
    cloud: &PatchedCloud,
    raw: &DeviceScores,
    [d, b, point, point_bank]: [Reference; 4],
    scoring: &ScoringConfig,
    on: Device,
) -> super::Result<Vec<f32>> {
    let radius = scoring.median_radius_voxels * cloud.voxel;
    // Divided by a tensor, not a number: CUDA multiplies by a number's reciprocal, which rounds unlike the host.
    let normalised = |x: &Tensor, r: Reference| {
        let shifted = x.to_device(on) - f64::from(r.low);
        &shifted / shifted.full_like(f64::from(r.high - r.low))
    };
    let point_level = match (&raw.point_logits, &raw.point_distances) {
        (None, None) => None,
        (Some(head), None) => Some(normalised(head, point)),
        (None, Some(bank)) => Some(normalised(bank, point_bank)),
        (Some(head), Some(bank)) => {
            let w = scoring.point_bank_weight;
            Some(normalised(head, point) * f64::from(1.0 - w) + normalised(bank, point_bank) * f64::from(w))
        }
    };
    let probability_only = scoring.source == ScoreSource::Discriminator && point_level.is_none();
    let patch = match (scoring.source, &raw.distances) {
        _ if probability_only => raw.logits.to_device(on).sigmoid(),
        (ScoreSource::Bank, Some(x)) => normalised(x, b),
        (ScoreSource::Fused, Some(x)) => (normalised(&raw.logits, d) + normalised(x, b)) * 0.5,
        _ => normalised(&raw.logits, d),
    };
    let mut voxel = device::spread_on(on, &cloud.points, &cloud.centres, &cloud.groups, cloud.patch_size, &patch);
    if let Some(per_cell) = point_level {
        let w = scoring.point_weight;
        voxel = voxel * f64::from(1.0 - w) + per_cell.index_select(0, &cloud.cell_of.on(on)) * f64::from(w);
    }
    let grid = device::search_grid(&cloud.points, on, "median filter radius", radius)?;
    let filtered = device::host_floats(&device::median_filter(&grid, &voxel, radius)?)?;
    Ok(if probability_only { filtered } else { filtered.into_iter().map(calibrated).collect() })
}

/// Scores of the voxel points (normalised frame) from one score per patch, median-filtered.
pub fn project_to_points(
    cloud: &PatchedCloud,
    patch_scores: &[f32],
    median_radius: f32,
) -> crate::geometry::Result<Vec<f32>> {
    let scores = spread_patch_scores(cloud, patch_scores)?;
    cloud.compute.median_filter(&cloud.points, &scores, &cloud.index, median_radius)
}

/// Each voxel point's score: the maximum over the patches that contain it, else its nearest patch's.
pub fn spread_patch_scores(cloud: &PatchedCloud, patch_scores: &[f32]) -> crate::geometry::Result<Vec<f32>> {
    cloud.compute.spread_patch_scores(&cloud.points, &cloud.centres, &cloud.groups, cloud.patch_size, patch_scores)
}

/// A group of anomalous points linked to each other.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct DefectRegion {
    pub centroid: Point,
    /// Largest distance of a point of the region from the centroid.
    pub extent: f32,
    /// The region's highest point score.
    pub peak: f32,
    pub points: usize,
}

pub struct Verdict {
    pub cloud_score: f32,
    pub passed: bool,
    pub anomalous_points: usize,
    /// The region holding the highest score.
    pub defect: Option<DefectRegion>,
    /// Every region, highest peak first.
    pub regions: Vec<DefectRegion>,
}

/// The cloud score of point scores: the maximum, or the mean of the highest `top_fraction` of them (at least
/// one), so that a single noisy point cannot decide alone.
pub fn cloud_score(scores: &[f32], cfg: &ScoringConfig) -> f32 {
    match cfg.object_score {
        ObjectScore::Max => scores.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        ObjectScore::TopMean => {
            let mut v: Vec<f32> = scores.iter().copied().filter(|s| !s.is_nan()).collect();
            if v.is_empty() {
                return f32::NAN;
            }
            let k = ((v.len() as f32 * cfg.top_fraction).ceil() as usize).clamp(1, v.len());
            v.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            v[..k].iter().sum::<f32>() / k as f32
        }
    }
}

/// Decision and defect region of scored points with their cloud score (any frame; the region is in the same
/// frame). The region is the group of anomalous points, linked within `link` of each other, that holds the
/// highest score: a few stray anomalous points elsewhere do not drag its centre out of the defect. A verdict
/// needs sound inputs: no points, or a score or threshold that is not finite (an uncalibrated model, a model
/// whose weights went NaN), is an error naming what, never a pass.
pub fn decide(
    points: &[Point],
    scores: &[f32],
    cloud_score: f32,
    thresholds: Thresholds,
    link: f32,
) -> Result<Verdict, String> {
    if scores.is_empty() || scores.len() != points.len() {
        return Err(format!("{} scores for {} points", scores.len(), points.len()));
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        let bad = scores.iter().filter(|s| !s.is_finite()).count();
        return Err(format!("{bad} of {} point scores are not finite (first: point {i}, {})", scores.len(), scores[i]));
    }
    for (what, value) in
        [("cloud score", cloud_score), ("cloud threshold", thresholds.cloud), ("point threshold", thresholds.point)]
    {
        if !value.is_finite() {
            return Err(format!("the {what} is {value}"));
        }
    }
    let flagged: Vec<usize> = (0..points.len()).filter(|&i| scores[i] > thresholds.point).collect();
    let regions = linked_regions(points, scores, &flagged, link);
    let passed = cloud_score <= thresholds.cloud;
    Ok(Verdict { cloud_score, passed, anomalous_points: flagged.len(), defect: regions.first().copied(), regions })
}

/// The groups of `flagged` points linked within `link` of each other (all of them as one group when `link` is
/// not a positive length), highest peak first.
fn linked_regions(points: &[Point], scores: &[f32], flagged: &[usize], link: f32) -> Vec<DefectRegion> {
    let candidates: Vec<Point> = flagged.iter().map(|&i| points[i]).collect();
    let groups: Vec<Vec<usize>> = match geometry::linked_components(&candidates, link) {
        Ok(labels) => {
            let mut groups = vec![Vec::new(); labels.iter().max().map_or(0, |&l| l as usize + 1)];
            for (&l, &i) in labels.iter().zip(flagged) {
                groups[l as usize].push(i);
            }
            groups
        }
        // Not a positive length: one region.
        Err(_) if flagged.is_empty() => Vec::new(),
        Err(_) => vec![flagged.to_vec()],
    };
    let mut regions: Vec<DefectRegion> = groups
        .into_iter()
        .map(|members| {
            let n = members.len() as f64;
            let sum = members.iter().fold([0f64; 3], |a, &i| {
                let p = points[i];
                [a[0] + f64::from(p[0]), a[1] + f64::from(p[1]), a[2] + f64::from(p[2])]
            });
            let centroid = sum.map(|v| (v / n) as f32);
            let extent =
                members.iter().map(|&i| geometry::squared_distance(points[i], centroid)).fold(0f32, f32::max).sqrt();
            let peak = members.iter().map(|&i| scores[i]).fold(f32::NEG_INFINITY, f32::max);
            DefectRegion { centroid, extent, peak, points: members.len() }
        })
        .collect();
    regions.sort_by(|a, b| b.peak.total_cmp(&a.peak));
    regions
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
/// `point_rate` of their points. With m clouds the empirical quantile only resolves rates in steps of 1/m; when
/// m·rate < 1 the worst held-out cloud would sit right on the threshold, so τ_pc is then the larger of that
/// cloud's score and a normal tail estimate (mean + z·std of the held-out scores at the rate).
pub fn calibrate(cloud_scores: &[f32], point_scores: &[f32], false_reject_rate: f64, point_rate: f64) -> Thresholds {
    let empirical = quantile(cloud_scores, 1.0 - false_reject_rate);
    let finite: Vec<f64> = cloud_scores.iter().filter(|s| s.is_finite()).map(|&s| f64::from(s)).collect();
    let cloud = if finite.len() >= 2 && (finite.len() as f64) * false_reject_rate < 1.0 {
        let n = finite.len() as f64;
        let mean = finite.iter().sum::<f64>() / n;
        let std = (finite.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        empirical.max((mean + normal_quantile(1.0 - false_reject_rate) * std) as f32)
    } else {
        empirical
    };
    Thresholds { cloud, point: quantile(point_scores, 1.0 - point_rate) }
}

/// The standard normal quantile (Acklam's rational approximation, relative error < 1.2e-9), p in (0, 1).
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383_577_518_672_69e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] =
        [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
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
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::geometry::device::Compute;
    use crate::model::Detector;
    use crate::model::config::{DetectorConfig, PatchConfig};

    /// The projection as tensor code (CPU tensors here) gives every voxel point the host's score, to the bit, for each
    /// score source and point level; the paper's probability within LibTorch's sigmoid's rounding.
    #[test]
    fn scores_projected_on_the_device_are_the_hosts() {
        let mut config = DetectorConfig { patches: PatchConfig { count: 64, size: 32 }, ..Default::default() };
        config.preprocess.voxel_size = 0.04;
        let detector = Detector::new(config, Device::Cpu).unwrap().with_device_geometry(true);
        let mut cloud = detector.patch(&geometry::unit_sphere_points(4000), None).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut draw = |n: usize| Tensor::from_slice(&(0..n).map(|_| rng.gen_range(-3f32..3.0)).collect::<Vec<_>>());
        let (patches, cells) = (cloud.patch_count(), cloud.cell_count);
        let (logits, distances) = (draw(patches), draw(patches));
        let (point_logits, point_distances) = (draw(cells), draw(cells));
        let references = [(0.1, 1.2), (-0.3, 2.0), (0.5, 1.5), (0.0, 0.7)].map(|(low, high)| Reference { low, high });
        for source in [ScoreSource::Discriminator, ScoreSource::Bank, ScoreSource::Fused] {
            for (head, bank) in [(false, false), (true, false), (false, true), (true, true)] {
                let raw = RawScores::Device(DeviceScores {
                    logits: logits.shallow_clone(),
                    distances: Some(distances.shallow_clone()),
                    point_logits: head.then(|| point_logits.shallow_clone()),
                    point_distances: bank.then(|| point_distances.shallow_clone()),
                });
                let scoring = ScoringConfig { source, ..Default::default() };
                cloud.compute = Compute::tensors(Device::Cpu);
                let on_device = voxel_scores(&cloud, &raw, references, &scoring).unwrap();
                cloud.compute = Compute::Host;
                let on_host = voxel_scores(&cloud, &raw, references, &scoring).unwrap();
                let case = format!("{source:?}, point head {head}, point bank {bank}");
                let pairs = || on_device.iter().zip(&on_host);
                assert_eq!(on_device.len(), on_host.len(), "{case}");
                if source == ScoreSource::Discriminator && !head && !bank {
                    let worst = pairs().map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    assert!(worst < 1e-6, "{case}: {worst}");
                } else {
                    let differing = pairs().filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                    assert_eq!(differing, 0, "{case}: {differing} of {} scores differ", on_host.len());
                }
            }
        }
    }

    #[test]
    fn decision_and_defect_region() {
        let pts = [[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [12.0, 0.0, 0.0], [5.0, 5.0, 5.0]];
        let max = ScoringConfig { object_score: ObjectScore::Max, ..Default::default() };
        let scores = [0.1, 0.9, 0.8, 0.2];
        let t = Thresholds { cloud: 0.5, point: 0.5 };
        let v = decide(&pts, &scores, cloud_score(&scores, &max), t, 5.0).unwrap();
        assert!(!v.passed);
        assert_eq!((v.cloud_score, v.anomalous_points), (0.9, 2));
        let d = v.defect.unwrap();
        assert_eq!((d.centroid, d.extent), ([11.0, 0.0, 0.0], 1.0));
        let ok = decide(&pts, &[0.1, 0.2, 0.3, 0.2], 0.3, t, 5.0).unwrap();
        assert!(ok.passed && ok.defect.is_none());
        // A stray anomalous point far away is counted but does not move the region.
        let stray = [[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [12.0, 0.0, 0.0], [90.0, 0.0, 0.0]];
        let v = decide(&stray, &[0.1, 0.9, 0.8, 0.7], 0.9, t, 5.0).unwrap();
        assert_eq!(v.anomalous_points, 3);
        assert_eq!(v.defect.unwrap().centroid, [11.0, 0.0, 0.0]);
        // Every region, strongest first, with its peak and size.
        let summary: Vec<(Point, f32, usize)> = v.regions.iter().map(|r| (r.centroid, r.peak, r.points)).collect();
        assert_eq!(summary, vec![([11.0, 0.0, 0.0], 0.9, 2), ([90.0, 0.0, 0.0], 0.7, 1)]);
        assert!(ok.regions.is_empty());
    }

    #[test]
    fn no_verdict_from_anything_not_finite() {
        let pts = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]];
        let good = Thresholds { cloud: 0.5, point: 0.5 };
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let e = decide(&pts, &[0.1, bad], 0.1, good, 1.0).err().unwrap();
            assert!(e.contains("1 of 2 point scores are not finite"), "{e}");
            let e = decide(&pts, &[0.1, 0.1], bad, good, 1.0).err().unwrap();
            assert!(e.contains("cloud score"), "{e}");
            let e = decide(&pts, &[0.1, 0.1], 0.1, Thresholds { cloud: bad, ..good }, 1.0).err().unwrap();
            assert!(e.contains("cloud threshold"), "{e}");
            let e = decide(&pts, &[0.1, 0.1], 0.1, Thresholds { point: bad, ..good }, 1.0).err().unwrap();
            assert!(e.contains("point threshold"), "{e}");
        }
        // The empty case: the max of nothing is -inf, which once passed every part.
        let none = ScoringConfig { object_score: ObjectScore::Max, ..Default::default() };
        assert!(decide(&[], &[], cloud_score(&[], &none), good, 1.0).is_err());
    }

    #[test]
    fn top_mean_cloud_score_ignores_one_outlier() {
        let mut scores = vec![0.1f32; 1000];
        scores[3] = 1.0;
        let top = ScoringConfig { object_score: ObjectScore::TopMean, top_fraction: 0.01, ..Default::default() };
        assert!((cloud_score(&scores, &top) - (1.0 + 9.0 * 0.1) / 10.0).abs() < 1e-6);
        let max = ScoringConfig { object_score: ObjectScore::Max, ..Default::default() };
        assert_eq!(cloud_score(&scores, &max), 1.0);
    }

    #[test]
    fn quantiles_and_f1() {
        assert_eq!(quantile(&[3.0, 1.0, 2.0, f32::NAN], 0.5), 2.0);
        assert_eq!(quantile(&[0.0, 10.0], 0.25), 2.5);
        let t = calibrate(&[0.1, 0.2, 0.3, 0.4], &[0.0; 10], 0.25, 0.0);
        assert!((t.cloud - 0.325).abs() < 1e-6);
        // Two held-out clouds cannot resolve 5 %: the normal tail (mean + 1.645 std) lies above the worse one.
        let t = calibrate(&[0.3, 0.5], &[0.0; 10], 0.05, 0.0);
        let expected = 0.4 + 1.644_853_6 * (0.02f64).sqrt();
        assert!((f64::from(t.cloud) - expected).abs() < 1e-5, "{}", t.cloud);
        assert!((normal_quantile(0.975) - 1.959_964).abs() < 1e-5 && normal_quantile(0.5).abs() < 1e-12);
        let (th, f1) = best_f1_threshold(&[0.9, 0.8, 0.3, 0.2], &[true, true, false, false]).unwrap();
        assert!((th - 0.55).abs() < 1e-6 && (f1 - 1.0).abs() < 1e-12);
        assert!(best_f1_threshold(&[0.5], &[false]).is_none());
    }
}
