//! Outlier removal before voxelising: depth cameras put flying pixels on every edge, and a single absurd point
//! (1e30, a point 2 m behind the part) must neither blow up the grid and the normalisation nor decide a verdict.
//! Two steps: a robust box (per-axis quantiles, widened by a margin of their span) drops far points in O(n),
//! then the voxel points are linked within a few voxels and groups too small to be part of a surface go.
//! A burr or fin is attached to its part and stays; only what floats apart from everything is removed.

use rayon::prelude::*;

use super::{Point, Result, linked_components, positive, voxel_downsample};

/// How far is too far, and how small a floating group is noise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutlierRule {
    /// The box is the `quantile` … 1 − `quantile` range of each axis…
    pub quantile: f32,
    /// …widened on both sides by this many times its span.
    pub margin: f32,
    /// Voxel edge for the grouping (the model's voxel).
    pub voxel: f32,
    /// Voxel points closer than this many voxels belong to one group.
    pub link_voxels: f32,
    /// Groups of fewer voxel points than this are outliers.
    pub min_group: usize,
}

/// Which points are kept, and the robust extent of the kept ones.
#[derive(Clone, Debug, PartialEq)]
pub struct Inliers {
    /// One flag per input point.
    pub keep: Vec<bool>,
    pub removed: usize,
    /// Diagonal of the quantile box (before the margin): the part's size, blind to stray points.
    pub robust_diagonal: f32,
}

impl Inliers {
    pub(crate) fn from_flags(keep: Vec<bool>, robust_diagonal: f64) -> Self {
        let removed = keep.iter().filter(|k| !**k).count();
        Self { keep, removed, robust_diagonal: robust_diagonal as f32 }
    }

    pub fn kept_points(&self, points: &[Point]) -> Vec<Point> {
        points.iter().zip(&self.keep).filter(|(_, k)| **k).map(|(p, _)| *p).collect()
    }
}

/// Where the `q` and 1 − `q` quantiles of `n` values sit in sorted order.
pub(crate) fn quantile_ranks(n: usize, q: f32) -> (usize, usize) {
    let last = n - 1;
    let lo_at = ((last as f32) * q).floor() as usize;
    let hi_at = ((last as f32) * (1.0 - q)).ceil() as usize;
    (lo_at, hi_at.min(last))
}

/// The `q` and 1 − `q` quantiles of one coordinate (finite points only).
fn quantile_range(points: &[Point], axis: usize, q: f32) -> (f32, f32) {
    let mut v: Vec<f32> = points.iter().map(|p| p[axis]).collect();
    let (lo_at, hi_at) = quantile_ranks(v.len(), q);
    let lo = *v.select_nth_unstable_by(lo_at, f32::total_cmp).1;
    let hi = *v.select_nth_unstable_by(hi_at, f32::total_cmp).1;
    (lo, hi)
}

/// The robust box: each axis's quantile range widened by the margin, in f64.
pub(crate) struct RobustBox {
    pub low: [f64; 3],
    pub high: [f64; 3],
    /// Diagonal of the quantile box (before the margin).
    pub diagonal: f64,
}

impl RobustBox {
    /// From each axis's (low, high) quantiles. An infinite `margin` keeps every point.
    pub fn new(ranges: [(f32, f32); 3], margin: f32) -> Self {
        let spans = ranges.map(|(lo, hi)| f64::from(hi) - f64::from(lo));
        let diagonal = spans.iter().map(|s| s * s).sum::<f64>().sqrt();
        // A flat part has a zero span on one axis: it still gets a tenth of the part's size as room there.
        // An infinite margin keeps everything (outlier removal off) and only measures.
        let room =
            spans.map(|s| if margin.is_finite() { f64::from(margin) * s.max(diagonal * 0.1) } else { f64::INFINITY });
        Self {
            low: std::array::from_fn(|a| f64::from(ranges[a].0) - room[a]),
            high: std::array::from_fn(|a| f64::from(ranges[a].1) + room[a]),
            diagonal,
        }
    }

    fn contains(&self, p: &Point) -> bool {
        (0..3).all(|a| (self.low[a]..=self.high[a]).contains(&f64::from(p[a])))
    }
}

/// Flags the points inside the robust box (the first step; cheap, and enough to measure the part's size). An
/// infinite `rule.margin` keeps every point.
pub fn inside_robust_box(points: &[Point], rule: &OutlierRule) -> Result<Inliers> {
    if points.is_empty() {
        return Err(super::GeometryError::Empty);
    }
    let mut ranges = [(0.0, 0.0); 3];
    let q = rule.quantile.clamp(0.0, 0.5);
    ranges.par_iter_mut().enumerate().for_each(|(a, r)| *r = quantile_range(points, a, q));
    let robust = RobustBox::new(ranges, rule.margin);
    Ok(Inliers::from_flags(points.iter().map(|p| robust.contains(p)).collect(), robust.diagonal))
}

/// Flying pixels are a small minority of a scan: a grouping that would remove more than this share of the
/// points has met a scan sparser than the voxel (points several voxels apart), not noise, and removes nothing.
const MAX_FLOATING_SHARE: f32 = 0.05;

/// The second step: of the points still kept, those in groups of fewer than `rule.min_group` voxel points are
/// dropped too (unless that would be more than [`MAX_FLOATING_SHARE`] of them).
pub fn drop_floating_groups(points: &[Point], inliers: Inliers, rule: &OutlierRule) -> Result<Inliers> {
    drop_floating_groups_with(points, inliers, rule, |kept, voxel| {
        let grid = voxel_downsample(kept, voxel)?;
        let group_size = group_sizes(&grid.points, voxel * rule.link_voxels)?;
        Ok(grid.representative.iter().map(|&r| group_size[r as usize] < rule.min_group).collect())
    })
}

/// [`drop_floating_groups`] with `floating(kept points, voxel)` flagging the kept points in small groups.
pub(crate) fn drop_floating_groups_with(
    points: &[Point],
    mut inliers: Inliers,
    rule: &OutlierRule,
    floating: impl FnOnce(&[Point], f32) -> Result<Vec<bool>>,
) -> Result<Inliers> {
    let voxel = positive("outlier voxel", rule.voxel)?;
    let kept: Vec<usize> = (0..points.len()).filter(|&i| inliers.keep[i]).collect();
    if kept.is_empty() || rule.min_group <= 1 {
        return Ok(inliers);
    }
    let kept_points: Vec<Point> = kept.iter().map(|&i| points[i]).collect();
    let flags = floating(&kept_points, voxel)?;
    let floating: Vec<usize> = kept.iter().zip(flags).filter(|(_, f)| *f).map(|(i, _)| *i).collect();
    if floating.len() as f32 > MAX_FLOATING_SHARE * kept.len() as f32 {
        tracing::debug!(
            floating = floating.len(),
            points = kept.len(),
            "scan sparser than the voxel: no group removal"
        );
        return Ok(inliers);
    }
    for i in floating {
        inliers.keep[i] = false;
        inliers.removed += 1;
    }
    Ok(inliers)
}

/// For every point, the size of the group it belongs to when points closer than `link` are joined.
fn group_sizes(points: &[Point], link: f32) -> Result<Vec<usize>> {
    let labels = linked_components(points, link)?;
    let mut sizes = vec![0; points.len()];
    for &l in &labels {
        sizes[l as usize] += 1;
    }
    Ok(labels.iter().map(|&l| sizes[l as usize]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both steps, as the detector runs them.
    fn find_inliers(points: &[Point], rule: &OutlierRule) -> Result<Inliers> {
        drop_floating_groups(points, inside_robust_box(points, rule)?, rule)
    }

    fn plate() -> Vec<Point> {
        let mut pts = Vec::new();
        for i in 0..60 {
            for j in 0..40 {
                pts.push([i as f32, j as f32, 0.05 * ((i * 7 + j * 3) % 5) as f32]);
            }
        }
        pts
    }

    fn rule() -> OutlierRule {
        OutlierRule { quantile: 0.01, margin: 1.0, voxel: 1.0, link_voxels: 3.0, min_group: 5 }
    }

    #[test]
    fn absurd_and_flying_points_go_and_the_part_stays() {
        let mut pts = plate();
        let part = pts.len();
        pts.push([0.0, 0.0, 1e30]);
        pts.push([3e38, -3e38, 0.0]);
        pts.push([30.0, 20.0, -400.0]); // far behind
        pts.push([30.0, 20.0, -15.0]); // inside the box, floating alone
        // A burr: a short spike attached to the plate's edge stays.
        for k in 1..4 {
            pts.push([59.0 + k as f32 * 0.9, 20.0, 0.0]);
        }
        let inliers = find_inliers(&pts, &rule()).unwrap();
        assert_eq!(inliers.removed, 4);
        assert!(inliers.keep[..part].iter().all(|&k| k), "no point of the part removed");
        assert!(inliers.keep[part + 4..].iter().all(|&k| k), "the attached spike stays");
        assert!((inliers.robust_diagonal - (59f32.powi(2) + 39f32.powi(2)).sqrt()).abs() < 3.0);
    }

    #[test]
    fn a_scan_sparser_than_the_voxel_is_not_taken_for_noise() {
        // Points 5 voxels apart: every one floats alone, which is sparse sampling, not flying pixels.
        let sparse: Vec<Point> = plate().iter().map(|p| p.map(|c| c * 5.0)).collect();
        let inliers = find_inliers(&sparse, &rule()).unwrap();
        assert_eq!(inliers.removed, 0);
    }

    #[test]
    fn one_point_and_identical_points_are_kept_and_finite() {
        let one = find_inliers(&[[1.0, 2.0, 3.0]], &OutlierRule { min_group: 1, ..rule() }).unwrap();
        assert_eq!((one.removed, one.robust_diagonal), (0, 0.0));
        // Groups are counted in voxel points: ten copies of one point are one voxel, not a surface; but when
        // everything would go, nothing does.
        let same = find_inliers(&[[5.0; 3]; 10], &rule()).unwrap();
        assert_eq!((same.removed, same.robust_diagonal), (0, 0.0));
        assert!(find_inliers(&[], &rule()).is_err());
    }
}
