//! Scoring several clouds at once: each cloud's geometry (outliers, registration, patches, per-point features)
//! on every core at the same time, then the learned stages in one batch. Geometry holds no tensors (LibTorch's
//! are not `Sync`), so it runs on rayon's threads, or on a thread that does not hold the detector at all (the
//! inspector prepares the next scans while the detector scores the previous ones: [`GeometryPart`],
//! [`PreparedClouds`]); the heads run once per batch on the detector's device. A single cloud is a batch of
//! one: [`Detector::inspect`] and [`Detector::unscored`] go through here too.

use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use super::config::DetectorConfig;
use super::preprocess::{self, Centres, PatchedCloud, PoseTemplate, Sampling, View};
use super::{
    Detector, DeviceScores, Features, HostScores, Inspection, ModelError, RawScores, Result, StageTimes, Thresholds,
    UNIT_MISMATCH_RATIO, Unscored, backbone, centre_tensor, ms, scoring,
};
use crate::cloud::{FinitePoints, PointCloud};
use crate::geometry::device::{Compute, Stage};
use crate::geometry::{self, Point, SharedPoints};

/// What the geometry of a cloud needs of a detector: configuration, template and feature radii, no tensors.
/// Owned (the template shared), so a thread without the detector can hold it ([`Detector::geometry`]).
#[derive(Clone)]
pub struct GeometryPart {
    config: DetectorConfig,
    template: Option<Arc<PoseTemplate>>,
    point_feature_radii: Option<Vec<f32>>,
    compute: Compute,
    /// The model's: where the point features go.
    device: Device,
}

/// Clouds after their geometry, before any learned stage: the first half of [`Detector::inspect_batch`]
/// ([`GeometryPart::prepare_clouds`]), the second being [`Detector::inspect_prepared`].
pub struct PreparedClouds {
    finite: Vec<Result<FinitePoints>>,
    prepared: Vec<Result<Prepared>>,
}

/// A cloud after its geometry, before any learned stage.
struct Prepared {
    inliers: geometry::Inliers,
    patched: PatchedCloud,
    /// The samples' per-point feature rows, when the model scores points by their own features.
    point_rows: Option<Tensor>,
    preprocess_ms: f64,
    rows_ms: f64,
}

impl GeometryPart {
    /// The finite points (sensor frame) worth scoring, and which they are: outliers removed when the configuration
    /// says so, and the scan checked against the part the model learnt (its unit and size), before any costly work.
    /// The kept points keep their copy on the device where outlier removal ran there.
    pub(crate) fn inliers(&self, points: &SharedPoints) -> Result<(geometry::Inliers, SharedPoints<'static>)> {
        let cfg = &self.config.preprocess;
        let needed = self.config.patches.size;
        if points.len() < needed {
            return Err(ModelError::TooFewInputPoints { points: points.len(), needed });
        }
        let rule = cfg.outliers.rule(cfg.voxel_size);
        // The unit is checked on the robust box, before the voxel-sized steps that a wrong unit would derail.
        let unit_check = |boxed: &geometry::Inliers| match &self.template {
            Some(template) => {
                let part = 2.0 * template.frame.scale;
                let ratio = boxed.robust_diagonal / part;
                if (1.0 / UNIT_MISMATCH_RATIO..=UNIT_MISMATCH_RATIO).contains(&ratio) {
                    return Ok(());
                }
                let ratio = if ratio >= 1.0 { ratio } else { 1.0 / ratio };
                Err(ModelError::UnitMismatch { scan: boxed.robust_diagonal, part, ratio })
            }
            None => Ok(()),
        };
        let (inliers, kept) = self.compute.inliers(points, &rule, unit_check)?;
        if inliers.removed == points.len() {
            return Err(ModelError::AllOutliers(points.len()));
        }
        Ok((inliers, kept))
    }

    /// Steps 0–1 on the finite points of a cloud (registered to the template when the model aligns),
    /// optionally augmented (training).
    pub(crate) fn patch(
        &self,
        points: &SharedPoints,
        augment: Option<(&preprocess::Augmentation, &mut dyn rand::RngCore)>,
    ) -> Result<PatchedCloud> {
        let view = self.view(points, augment)?;
        self.patch_view(view, Centres::Sample(self.config.patches.count))
    }

    fn template(&self) -> Option<&PoseTemplate> {
        self.template.as_deref().filter(|_| self.config.preprocess.align)
    }

    /// Step 0 ([`preprocess::prepare_view`]) with this model's configuration and template.
    fn view(
        &self,
        points: &SharedPoints,
        augment: Option<(&preprocess::Augmentation, &mut dyn rand::RngCore)>,
    ) -> Result<View> {
        let c = &self.config;
        preprocess::prepare_view(points, &c.preprocess, c.patches.size, self.template(), augment, self.compute)
    }

    /// Step 1 ([`preprocess::patch_view`]) with this model's configuration and template.
    fn patch_view(&self, view: View, centres: Centres) -> Result<PatchedCloud> {
        let c = &self.config;
        preprocess::patch_view(view, &c.preprocess, centres, c.patches.size, self.template(), Sampling::Cells)
    }

    /// The samples' per-point features on the model's device, where the model scores points by their own features
    /// (`None` otherwise, and where the backbone has none: the learned stages then name the problem).
    pub(crate) fn point_rows(&self, patched: &PatchedCloud) -> Result<Option<Tensor>> {
        match &self.point_feature_radii {
            Some(radii) if self.config.uses_point_features() => {
                Ok(Some(backbone::point_features(radii, patched, self.device)?))
            }
            _ => Ok(None),
        }
    }

    fn prepare(&self, points: &[Point]) -> Result<Prepared> {
        let t = Instant::now();
        let (inliers, kept) = self.inliers(&points.into())?;
        let patched = self.patch(&kept, None)?;
        self.with_rows(inliers, patched, ms(t))
    }

    /// A patched cloud with its per-point feature rows, timed.
    fn with_rows(&self, inliers: geometry::Inliers, patched: PatchedCloud, preprocess_ms: f64) -> Result<Prepared> {
        let t = Instant::now();
        let point_rows = self.point_rows(&patched)?;
        Ok(Prepared { inliers, patched, point_rows, preprocess_ms, rows_ms: ms(t) })
    }

    /// The geometry of several clouds (finite points, sensor frame), concurrently. On a device their FPS runs as
    /// one batch, between the steps before it and those after.
    fn prepare_all(&self, clouds: &[&[Point]]) -> Vec<Result<Prepared>> {
        if self.compute.device_for(Stage::Sampling).is_none() || clouds.len() < 2 {
            return clouds.par_iter().map(|points| self.prepare(points)).collect();
        }
        let viewed: Vec<Result<(geometry::Inliers, View, f64)>> = clouds
            .par_iter()
            .map(|points| {
                let t = Instant::now();
                let (inliers, kept) = self.inliers(&(*points).into())?;
                let view = self.view(&kept, None)?;
                Ok((inliers, view, ms(t)))
            })
            .collect();
        let t = Instant::now();
        let views: Vec<&SharedPoints> = viewed.iter().flatten().map(|(_, view, _)| &view.points).collect();
        let starts: Vec<usize> = views.iter().map(|points| preprocess::sampling_start(points)).collect();
        let sampled = self.compute.farthest_point_sampling_batch(&views, self.config.patches.count, &starts);
        let fps_ms = ms(t) / views.len().max(1) as f64;
        let mut centres = match sampled {
            Ok(centres) => centres.into_iter(),
            Err(e) => {
                let failed = e.to_string();
                return viewed.into_iter().map(|v| v.and_then(|_| Err(ModelError::Batch(failed.clone())))).collect();
            }
        };
        // One list of centres per view, in order.
        let chosen: Vec<Result<_>> =
            viewed.into_iter().map(|v| v.map(|v| (v, centres.next().unwrap_or_default()))).collect();
        chosen
            .into_par_iter()
            .map(|item| {
                let ((inliers, view, view_ms), centres) = item?;
                let t = Instant::now();
                let patched = self.patch_view(view, Centres::Chosen(centres))?;
                self.with_rows(inliers, patched, view_ms + fps_ms + ms(t))
            })
            .collect()
    }

    /// The geometry of several clouds, each checked first (finite, plausible): what
    /// [`Detector::inspect_prepared`] finishes.
    pub fn prepare_clouds(&self, clouds: &[&PointCloud]) -> PreparedClouds {
        let finite: Vec<Result<FinitePoints>> = clouds
            .iter()
            .map(|cloud| {
                let finite = cloud.finite_points()?;
                crate::cloud::check_plausible(&finite.points)?;
                Ok(finite)
            })
            .collect();
        let valid: Vec<&[Point]> = finite.iter().filter_map(|f| f.as_ref().ok().map(|f| f.points.as_slice())).collect();
        let prepared = self.prepare_all(&valid);
        PreparedClouds { finite, prepared }
    }
}

/// The only result of a batch of one.
pub(super) fn only<T>(mut results: Vec<Result<T>>) -> Result<T> {
    results.pop().unwrap_or_else(left_unscored)
}

/// What a cloud of a batch gets if the batch returned fewer results than clouds (it never should).
pub(super) fn left_unscored<T>() -> Result<T> {
    Err(ModelError::Batch("cloud left unscored".into()))
}

impl Detector {
    /// The detector's geometry, for a thread that does not hold the detector.
    pub fn geometry(&self) -> GeometryPart {
        GeometryPart {
            config: self.config.clone(),
            template: self.conditioning.template.clone(),
            point_feature_radii: self.backbone.point_feature_radii().map(<[f32]>::to_vec),
            compute: self.compute,
            device: self.device,
        }
    }

    /// Everything of scoring that does not depend on the scoring configuration (outlier removal, patching,
    /// features and the heads' raw outputs) for several clouds (finite points, sensor frame): their geometry
    /// concurrently, the heads in one batch. One result per cloud, in order; a cloud that cannot be scored
    /// costs only its own result.
    pub fn unscored_batch(&self, clouds: &[&[Point]]) -> Vec<Result<Unscored>> {
        self.unscored_prepared(self.geometry().prepare_all(clouds))
    }

    /// The learned stages of clouds whose geometry is done.
    fn unscored_prepared(&self, prepared: Vec<Result<Prepared>>) -> Vec<Result<Unscored>> {
        let featured: Vec<Result<(Prepared, Features, f64, f64)>> = prepared
            .into_iter()
            .map(|p| {
                let p = p?;
                let (features, backbone_ms, sca_ms) = self.features_of(&p.patched, p.point_rows.as_ref())?;
                Ok((p, features, backbone_ms, sca_ms))
            })
            .collect();
        let t = Instant::now();
        let pairs: Vec<(&PatchedCloud, &Features)> =
            featured.iter().flatten().map(|(p, f, ..)| (&p.patched, f)).collect();
        let count = pairs.len();
        let raws: Vec<Result<RawScores>> = match self.raw_scores_batch(&pairs) {
            Ok(raws) => raws.into_iter().map(Ok).collect(),
            Err(e) => (0..count).map(|_| Err(ModelError::Batch(e.to_string()))).collect(),
        };
        let heads_ms = ms(t) / count.max(1) as f64;
        let mut raws = raws.into_iter();
        featured
            .into_iter()
            .map(|item| {
                let (p, _, backbone_ms, sca_ms) = item?;
                let raw = raws.next().unwrap_or_else(left_unscored)?;
                let times = StageTimes {
                    preprocess_ms: p.preprocess_ms,
                    backbone_ms: p.rows_ms + backbone_ms,
                    sca_ms,
                    heads_ms,
                    projection_ms: 0.0,
                };
                Ok(Unscored { inliers: p.inliers, patched: p.patched, raw, times })
            })
            .collect()
    }

    /// The raw scores of several patched clouds' features. The discriminator runs once per group of clouds with
    /// the same patch count (its attention mixes one cloud's patches, never two clouds'); the point head and
    /// the memory banks once over every cloud's rows.
    pub fn raw_scores_batch(&self, clouds: &[(&PatchedCloud, &Features)]) -> Result<Vec<RawScores>> {
        if clouds.is_empty() {
            return Ok(Vec::new());
        }
        // Every output is made first, then read to the host in one copy (on a GPU, one wait rather than one per head),
        // or kept on the device where the projection runs there.
        let mut outputs = Vec::new();
        let mut patch_counts: Vec<usize> = clouds.iter().map(|(c, _)| c.patch_count()).collect();
        patch_counts.sort_unstable();
        patch_counts.dedup();
        // The discriminator's logits first, one output per group of clouds with the same patch count.
        let mut groups: Vec<(Vec<usize>, usize)> = Vec::new();
        for n in patch_counts {
            let members: Vec<usize> = (0..clouds.len()).filter(|&k| clouds[k].0.patch_count() == n).collect();
            let features = Tensor::stack(&members.iter().map(|&k| &clouds[k].1.patches).collect::<Vec<_>>(), 0);
            let centres = members
                .iter()
                .map(|&k| self.heads.with_capture(&centre_tensor(clouds[k].0, self.device), clouds[k].0.all_round))
                .collect::<Vec<_>>();
            outputs.push(self.heads.logits(&features, &Tensor::cat(&centres, 0)));
            groups.push((members, n));
        }
        let mut output = |t: Tensor| {
            outputs.push(t);
            outputs.len() - 1
        };
        let bank = self.conditioning.has_bank().then(|| {
            let patches = Tensor::cat(&clouds.iter().map(|(_, f)| &f.patches).collect::<Vec<_>>(), 0);
            output(self.conditioning.bank_distances(&patches))
        });
        // Point-level scores once per feature cell (its first sample), for the cell's voxel points.
        let per_cloud_cells: Option<Vec<Tensor>> =
            clouds.iter().map(|(c, f)| f.points.as_ref().map(|p| p.narrow(0, 0, c.cell_count as i64))).collect();
        let point_head = match (&self.heads.point_head, &per_cloud_cells) {
            (Some(head), Some(per_cloud)) => {
                let _guard = tch::no_grad_guard();
                let inputs: Vec<Tensor> =
                    per_cloud.iter().zip(clouds).map(|(x, (c, _))| self.heads.with_capture(x, c.all_round)).collect();
                Some(output(head.forward(&Tensor::cat(&inputs, 0))))
            }
            _ => None,
        };
        let point_bank = match &per_cloud_cells {
            Some(per_cloud) if self.conditioning.has_point_bank() => {
                Some(output(self.conditioning.point_bank_distances(&Tensor::cat(per_cloud, 0))))
            }
            _ => None,
        };
        // Each cloud's piece of the outputs: (output, start, length).
        let mut logits_at = vec![(0, 0, 0); clouds.len()];
        for (at, (members, n)) in groups.iter().enumerate() {
            for (j, &k) in members.iter().enumerate() {
                logits_at[k] = (at, j * n, *n);
            }
        }
        let consecutive = |at: Option<usize>, length: fn(&PatchedCloud) -> usize| {
            let mut end = 0;
            let pieces = clouds.iter().map(|(c, _)| {
                let n = length(c);
                end += n;
                at.map(|at| (at, end - n, n))
            });
            pieces.collect::<Vec<_>>()
        };
        let distances_at = consecutive(bank, PatchedCloud::patch_count);
        let point_logits_at = consecutive(point_head, |c| c.cell_count);
        let point_distances_at = consecutive(point_bank, |c| c.cell_count);
        let outputs: Vec<Tensor> = outputs.iter().map(|t| t.to_kind(Kind::Float).reshape([-1])).collect();
        if self.compute.device_for(Stage::Projection).is_some() {
            // The projection runs on the device too: nothing is read here.
            let piece = |(at, start, n): (usize, usize, usize)| outputs[at].narrow(0, start as i64, n as i64);
            return Ok((0..clouds.len())
                .map(|k| {
                    RawScores::Device(DeviceScores {
                        logits: piece(logits_at[k]),
                        distances: distances_at[k].map(piece),
                        point_logits: point_logits_at[k].map(piece),
                        point_distances: point_distances_at[k].map(piece),
                    })
                })
                .collect());
        }
        let read = crate::transfers::read_together(&outputs.iter().collect::<Vec<_>>())?;
        let piece = |at: Option<(usize, usize, usize)>| -> Vec<f32> {
            at.map_or_else(Vec::new, |(at, start, n)| read[at][start..start + n].iter().map(|&v| v as f32).collect())
        };
        Ok((0..clouds.len())
            .map(|k| {
                let pieces = [Some(logits_at[k]), distances_at[k], point_logits_at[k], point_distances_at[k]];
                RawScores::Host(HostScores::of_cells(clouds[k].0, pieces.map(piece)))
            })
            .collect())
    }

    /// Inspects several clouds in one batch ([`Self::unscored_batch`]) and decides each with `thresholds`: one
    /// result per cloud, in order, each what [`Self::inspect_with`] gives for that cloud alone.
    pub fn inspect_batch(&self, clouds: &[&PointCloud], thresholds: Thresholds) -> Vec<Result<Inspection>> {
        self.inspect_prepared(self.geometry().prepare_clouds(clouds), thresholds)
    }

    /// [`Self::inspect_batch`] of clouds whose geometry is done ([`GeometryPart::prepare_clouds`], with this
    /// detector's geometry).
    pub fn inspect_prepared(&self, clouds: PreparedClouds, thresholds: Thresholds) -> Vec<Result<Inspection>> {
        let PreparedClouds { finite, prepared } = clouds;
        let mut unscored = self.unscored_prepared(prepared).into_iter();
        finite
            .into_iter()
            .map(|f| {
                let finite = f?;
                let unscored = unscored.next().unwrap_or_else(left_unscored)?;
                self.decide(&finite, &unscored, thresholds)
            })
            .collect()
    }

    /// The verdict on one unscored cloud.
    fn decide(&self, finite: &FinitePoints, unscored: &Unscored, thresholds: Thresholds) -> Result<Inspection> {
        let scored = self.point_scores_of(unscored, &self.config.scoring)?;
        let t = Instant::now();
        let (points, scores): (Vec<Point>, Vec<f32>) = (0..finite.points.len())
            .filter(|&i| scored.scored[i])
            .map(|i| (finite.points[i], scored.scores[i]))
            .unzip();
        // Anomalous points a few voxels apart belong to one region.
        let link = 3.0 * self.config.preprocess.voxel_size;
        let verdict = scoring::decide(&points, &scores, self.cloud_score(&scores), thresholds, link)
            .map_err(ModelError::Unsound)?;
        let point_scores = finite.scatter(&scored.scores, f32::NAN);
        let mut times = scored.times;
        times.projection_ms += ms(t);
        Ok(Inspection {
            point_scores,
            cloud_score: verdict.cloud_score,
            thresholds,
            passed: verdict.passed,
            valid_points: points.len(),
            outlier_points: scored.outliers,
            anomalous_points: verdict.anomalous_points,
            defect: verdict.defect,
            regions: verdict.regions,
            patches: scored.patches,
            times,
        })
    }
}
