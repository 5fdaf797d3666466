//! Training (method step 6): from good clouds to a calibrated detector. Part of the clouds is held out; the
//! voxel size is derived from the others when not set; each training cloud is augmented into a few views and,
//! with a geometric generator, each view gets pseudo-defective copies ([`pseudo_defects`]); their frozen
//! features (backbone → conditioning → SCA) are computed once. The token statistics and the memory bank come
//! from the clean views. Then the adaptor, generator scale, positional MLP and discriminator learn with AdamW
//! (weight decay on the adaptor), a cosine learning-rate schedule and gradient clipping, on patch-wise BCE
//! against the generator's labels. Finally the held-out clouds set the score references and the thresholds.
//! Seeded: the same clouds and seed give the same model.
//! Progress and cancellation go through a [`Monitor`], so the CLI logs and the ROS action reports feedback.

use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use tch::{Kind, Reduction, Tensor, nn, nn::OptimizerConfig};

pub mod camera_views;
pub mod pseudo_defects;

use crate::geometry::{Point, SharedPoints};
use crate::model::conditioning::Reference;
use crate::model::config::{DetectorConfig, GeneratorKind, ScoreSource};
use crate::model::preprocess::{self, Augmentation, Centres, PatchedCloud, Sampling};
use crate::model::store::TrainingSummary;
use crate::model::{Detector, Heads, HostScores, LayerInit, ModelError, Placement, RawScores, Result, sca, scoring};
use crate::transfers::Transfer;

/// Mixed into the training seed for the patch bank's draw.
const BANK_SEED: u64 = 0xBA4C;

/// One good cloud: its finite points in the sensor frame, and where it came from.
pub struct TrainingCloud {
    pub name: String,
    pub points: Vec<Point>,
}

/// A cloud whose defect points are known (`labels[i]` for `points[i]`): with such clouds the point threshold
/// is the one with the best F1 instead of a quantile of good clouds' scores.
pub struct LabelledCloud {
    pub name: String,
    pub points: Vec<Point>,
    pub labels: Vec<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Reading good clouds from bags ([`read_bags`]).
    Reading,
    Preparing,
    Training,
    Calibrating,
    /// Writing the model folder (reported by the caller that saves).
    Saving,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Self::Reading => "reading",
            Self::Preparing => "preparing",
            Self::Training => "training",
            Self::Calibrating => "calibrating",
            Self::Saving => "saving",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub stage: Stage,
    /// 0..1 over the whole training ([`train`]); while reading, over the bags' messages.
    pub fraction: f32,
    pub epoch: usize,
    pub epochs: usize,
    /// Mean loss of the current (or last) epoch.
    pub loss: f32,
    pub clouds_loaded: usize,
    pub eta_s: f32,
}

/// Receives progress; says whether to stop.
pub trait Monitor {
    fn report(&mut self, progress: &Progress);
    fn cancelled(&self) -> bool {
        false
    }
}

/// Logs progress through `tracing`, at most every two seconds and at every stage change and epoch end.
#[derive(Default)]
pub struct LogMonitor {
    last: Option<(Instant, Stage, usize)>,
}

impl Monitor for LogMonitor {
    fn report(&mut self, p: &Progress) {
        let due = match self.last {
            None => true,
            Some((t, stage, epoch)) => stage != p.stage || epoch != p.epoch || t.elapsed().as_secs_f32() > 2.0,
        };
        if due {
            self.last = Some((Instant::now(), p.stage, p.epoch));
            tracing::info!(
                stage = p.stage.name(),
                progress = format!("{:.0}%", 100.0 * p.fraction),
                epoch = format!("{}/{}", p.epoch, p.epochs),
                loss = format!("{:.4}", p.loss),
                eta_s = format!("{:.0}", p.eta_s),
                "training"
            );
        }
    }
}

/// Share of the whole job each stage takes, for the progress fraction (training dominates).
const PREPARE_SHARE: f32 = 0.3;
const TRAIN_SHARE: f32 = 0.6;
/// Points per training cloud sampled to measure its point spacing (for the data-derived voxel).
const SPACING_SAMPLE: usize = 2000;
/// The data-derived voxel is at least this share of the part's diagonal (bounds the cost of dense scans).
const MIN_VOXEL_SHARE_OF_DIAGONAL: f32 = 1.0 / 200.0;

/// One training view through the frozen geometry and backbone: its raw tokens, what SCA needs, (for a
/// pseudo-defective copy) per-patch targets and loss weights, and, with a point head, a sample of its voxel
/// points' raw features with their labels.
struct ViewTokens {
    tokens: Tensor,
    centre_points: Vec<Point>,
    descriptors: crate::geometry::SharedRows<{ crate::geometry::FPFH_BINS }>,
    /// None for a clean view (every patch good).
    targets: Option<(Vec<f32>, Vec<f32>)>,
    points: Option<(Tensor, Tensor)>,
    /// The view's capture input ([`PatchedCloud::all_round`]).
    all_round: bool,
}

struct Sample {
    features: Tensor,
    centres: Tensor,
    /// (n) targets and weights; clean views: zeros and ones.
    targets: Tensor,
    weights: Tensor,
    clean: bool,
    /// (P, C) conditioned point features and (P) labels, with a point head.
    points: Option<(Tensor, Tensor)>,
    all_round: bool,
}

/// The voxel edge for clouds like these: `factor` × the median nearest-neighbour spacing of their points, at
/// least 1/200 of the part's robust diagonal. Unit-free: the same clouds in metres give 1/1000 of the voxel.
pub fn derive_voxel_size(clouds: &[&TrainingCloud], factor: f32) -> Result<f32> {
    let mut spacings = Vec::new();
    let mut diagonals = Vec::new();
    for cloud in clouds {
        if cloud.points.len() < 2 {
            continue;
        }
        let index = crate::geometry::NeighborIndex::new(&cloud.points)?;
        let step = (cloud.points.len() / SPACING_SAMPLE).max(1);
        for p in cloud.points.iter().step_by(step) {
            // The second neighbour: the first is the point itself (or a duplicate of it).
            if let Some(n) = index.knn(p, 2).get(1)
                && n.squared_distance > 0.0
            {
                spacings.push(n.squared_distance.sqrt());
            }
        }
        diagonals.push(pseudo_defects::robust_diagonal(&cloud.points));
    }
    let spacing = scoring::quantile(&spacings, 0.5);
    let diagonal = scoring::quantile(&diagonals, 0.5);
    let voxel = (factor * spacing).max(MIN_VOXEL_SHARE_OF_DIAGONAL * diagonal);
    if !(voxel.is_finite() && voxel > 0.0) {
        return Err(ModelError::Training("cannot derive a voxel size: the training clouds have no spread".into()));
    }
    tracing::info!(voxel, spacing, diagonal, "voxel size derived from the training clouds");
    Ok(voxel)
}

/// Trains and calibrates a detector on good clouds; `validation` (clouds with labelled defects, may be empty)
/// sets the point threshold by F1. `placement`: a device, or a device with the geometry on it too.
pub fn train(
    config: DetectorConfig,
    clouds: &[TrainingCloud],
    validation: &[LabelledCloud],
    placement: impl Into<Placement>,
    monitor: &mut dyn Monitor,
) -> Result<(Detector, TrainingSummary)> {
    let placement = placement.into();
    config.validate().map_err(ModelError::Config)?;
    if clouds.len() < 2 {
        return Err(ModelError::Training(format!(
            "{} good cloud(s): at least 2 are needed (one to learn from, one to calibrate thresholds)",
            clouds.len()
        )));
    }
    let start = Instant::now();
    let tc = config.training.clone();
    let mut rng = StdRng::seed_from_u64(tc.seed);
    tch::manual_seed(tc.seed as i64);
    let mut detector = Detector::new(config.clone(), placement.device)?.with_device_geometry(placement.device_geometry);

    let mut order: Vec<usize> = (0..clouds.len()).collect();
    order.shuffle(&mut rng);
    let held_out =
        ((clouds.len() as f64 * config.scoring.holdout_fraction).round() as usize).clamp(1, clouds.len() - 1);
    let (calibration, training) = order.split_at(held_out);
    if detector.config.preprocess.voxel_size <= 0.0 {
        let used: Vec<&TrainingCloud> = training.iter().map(|&i| &clouds[i]).collect();
        detector.config.preprocess.voxel_size = derive_voxel_size(&used, config.preprocess.voxel_spacing_factor)?;
    }
    // Flying pixels are removed from training clouds as they will be from scans.
    let cleaned = clouds
        .iter()
        .map(|c| {
            let named = |e| ModelError::Training(format!("{}: {e}", c.name));
            let (inliers, kept) = detector.inliers(&c.points).map_err(named)?;
            if inliers.removed > 0 {
                tracing::debug!(cloud = %c.name, removed = inliers.removed, "outliers removed");
            }
            Ok(TrainingCloud { name: c.name.clone(), points: kept.into_vec() })
        })
        .collect::<Result<Vec<_>>>()?;
    let clouds = &cleaned[..];
    if detector.config.preprocess.align {
        // The first training cloud as recorded is the pose every scan is registered to; the other training
        // clouds (never the held-out ones, which must look like scans) fill in what it lacks.
        let first = &clouds[training[0]];
        let others: Vec<&[Point]> = match detector.config.preprocess.fuse_template {
            true => training[1..].iter().map(|&i| clouds[i].points.as_slice()).collect(),
            false => Vec::new(),
        };
        let template = preprocess::PoseTemplate::fused(&first.points, &others, &detector.config.preprocess)
            .map_err(|e| ModelError::Training(format!("template from {}: {e}", first.name)))?;
        tracing::info!(clouds = 1 + others.len(), points = template.points.len(), "pose template");
        detector.conditioning.template = Some(std::sync::Arc::new(template));
    }
    let views = config.preprocess.augment.views_per_cloud.max(1);
    tracing::info!(training = training.len(), held_out, views, backbone = %detector.backbone.identity.kind, "training set");

    let cuts = cut_views_of(&detector, clouds, training, &mut rng)?;
    if detector.config.preprocess.heads_see_capture() && cuts.iter().all(Vec::is_empty) {
        // The capture input tells full scans from the camera views cut from them. Without cut views every
        // training view is of one kind, and a scan that reads as the other (a frame that lost a face to glare or
        // a clamp) would give the heads an input they never learnt.
        detector.config.preprocess.capture_input = false;
        detector.heads = Heads::new(&detector.config, detector.backbone.width(), placement.device, LayerInit::Random)?;
        tracing::info!("capture input off: no camera views were cut from the training clouds");
    }
    let prepared = prepare_views(&detector, clouds, training, cuts, &mut rng, monitor, start)?;
    let samples = condition(&mut detector, prepared)?;
    let epoch_loss = fit_heads(&detector, &samples, training.len(), &mut rng, monitor)?;
    let cloud_scores = calibrate(&mut detector, clouds, calibration, training.len(), epoch_loss, &mut rng, monitor)?;
    if !validation.is_empty() {
        set_point_threshold_by_f1(&mut detector, validation)?;
    }
    let s = &config.scoring;
    tracing::info!(
        cloud = detector.thresholds.cloud,
        point = detector.thresholds.point,
        held_out = calibration.len(),
        "thresholds"
    );
    if calibration.len() as f64 * s.target_false_reject_rate < 1.0 {
        tracing::warn!(
            held_out = calibration.len(),
            rate = s.target_false_reject_rate,
            "too few held-out clouds to resolve the target false-reject rate: a normal tail estimate over their scores sets the cloud threshold (hold out more good clouds for an empirical one)"
        );
    }
    let summary = TrainingSummary {
        clouds_trained: training.len(),
        clouds_held_out: calibration.len(),
        views_per_cloud: views,
        epochs: tc.epochs,
        final_loss: epoch_loss,
        seconds: start.elapsed().as_secs_f64(),
        sources: clouds.iter().take(8).map(|c| c.name.clone()).collect(),
        held_out_cloud_scores: cloud_scores,
    };
    Ok((detector, summary))
}

/// The camera views of each of `clouds[indices]` ([`camera_views::cut_views`]; none of a cloud that already is
/// one sensor's view), in that order.
fn cut_views_of(
    detector: &Detector,
    clouds: &[TrainingCloud],
    indices: &[usize],
    rng: &mut StdRng,
) -> Result<Vec<Vec<Vec<Point>>>> {
    let min_points = 2 * detector.config.patches.size;
    indices
        .iter()
        .map(|&i| {
            camera_views::cut_views(&clouds[i].points, &detector.config.preprocess, min_points, rng)
                .map_err(|e| ModelError::Training(format!("{}: {e}", clouds[i].name)))
        })
        .collect()
}

/// Every training view (the first of each cloud as recorded, the others augmented, then the camera views `cuts`
/// of each) and, with a geometric generator, its pseudo-defective copies, through the frozen geometry and
/// backbone.
fn prepare_views(
    detector: &Detector,
    clouds: &[TrainingCloud],
    training: &[usize],
    cuts: Vec<Vec<Vec<Point>>>,
    rng: &mut StdRng,
    monitor: &mut dyn Monitor,
    start: Instant,
) -> Result<Vec<ViewTokens>> {
    let cfg = &detector.config;
    let views = cfg.preprocess.augment.views_per_cloud.max(1);
    let geometric = cfg.generator.kind.geometric();
    let pd = &cfg.generator.pseudo_defects;
    let (count, size) = (cfg.patches.count, cfg.patches.size);
    let mut out = Vec::new();
    let cut = cuts.iter().map(Vec::len).sum::<usize>();
    if cut > 0 {
        tracing::info!(views = cut, "camera views cut from the all-round training clouds");
    }
    let total_views = training.len() * views + cut;
    let mut done = 0;
    for (k, &i) in training.iter().enumerate() {
        let cloud = &clouds[i];
        let named = |e: ModelError| ModelError::Training(format!("{}: {e}", cloud.name));
        // The cloud as recorded, then turned a little; then its camera views (also turned).
        let sources = std::iter::repeat_n(cloud.points.as_slice(), views).chain(cuts[k].iter().map(Vec::as_slice));
        for (v, points) in sources.enumerate() {
            if monitor.cancelled() {
                return Err(ModelError::Cancelled);
            }
            done += 1;
            let aug = (v > 0).then(|| Augmentation::draw(&cfg.preprocess.augment, rng));
            let template = detector.conditioning.template.as_deref().filter(|_| cfg.preprocess.align);
            let compute = detector.compute;
            let view = match &aug {
                Some(a) => preprocess::prepare_view(
                    &points.into(),
                    &cfg.preprocess,
                    size,
                    template,
                    Some((a, &mut *rng)),
                    compute,
                ),
                None => preprocess::prepare_view(&points.into(), &cfg.preprocess, size, template, None, compute),
            }
            .map_err(named)?;
            let patch = |view| {
                let centres = Centres::Sample(count);
                preprocess::patch_view(view, &cfg.preprocess, centres, size, template, Sampling::EveryPoint)
                    .map_err(named)
            };
            if geometric {
                let index = crate::geometry::NeighborIndex::new(&view.points)?;
                let normals = view.normals(&cfg.preprocess, &index);
                for _ in 0..pd.copies_per_view {
                    let defective = pseudo_defects::make(&view.points, &normals, &index, view.voxel, pd, rng);
                    let copy = view.with_points(defective.points);
                    let patched = patch(copy)?;
                    let shares = patched.patch_shares(&defective.touched);
                    let targets = shares.iter().map(|&s| if s >= pd.patch_share { 1.0 } else { 0.0 }).collect();
                    // Patches only grazed by a defect are neither clearly good nor clearly bad: left out.
                    let weights =
                        shares.iter().map(|&s| if s > 0.0 && s < pd.patch_share { 0.0 } else { 1.0 }).collect();
                    out.push(view_tokens(detector, &patched, Some((targets, weights)), &defective.touched, rng)?);
                }
            }
            let patched = patch(view)?;
            let untouched = vec![false; patched.points.len()];
            out.push(view_tokens(detector, &patched, None, &untouched, rng)?);
            let elapsed = start.elapsed().as_secs_f32();
            monitor.report(&Progress {
                stage: Stage::Preparing,
                fraction: PREPARE_SHARE * done as f32 / total_views as f32,
                epoch: 0,
                epochs: cfg.training.epochs,
                loss: f32::NAN,
                clouds_loaded: k + 1,
                eta_s: elapsed / done as f32 * (total_views - done) as f32,
            });
        }
    }
    Ok(out)
}

fn view_tokens(
    detector: &Detector,
    patched: &preprocess::PatchedCloud,
    targets: Option<(Vec<f32>, Vec<f32>)>,
    touched: &[bool],
    rng: &mut StdRng,
) -> Result<ViewTokens> {
    let (tokens, points) = if detector.config.uses_point_features() {
        let all = detector.backbone.point_features(patched)?;
        let device = all.device();
        let tokens = all.index_select(0, &crate::model::backbone::centre_rows(patched, device));
        // Every touched point, and untouched ones at random up to the budget.
        let touched_sample = |s: usize| touched[patched.samples[s] as usize];
        let cells = 0..patched.cell_count;
        let budget = detector.config.point_head.points_per_view;
        let mut picked: Vec<i64> = cells.clone().filter(|&s| touched_sample(s)).map(|s| s as i64).collect();
        let mut others: Vec<i64> = cells.filter(|&s| !touched_sample(s)).map(|s| s as i64).collect();
        others.shuffle(rng);
        picked.extend(others.into_iter().take(budget.saturating_sub(picked.len()).max(budget / 2)));
        let labels: Vec<f32> = picked.iter().map(|&s| f32::from(u8::from(touched_sample(s as usize)))).collect();
        let rows = all.index_select(0, &Tensor::from_slice(&picked).upload(device));
        (tokens, Some((rows, Tensor::from_slice(&labels).upload(device))))
    } else {
        (detector.backbone.tokens(patched)?, None)
    };
    Ok(ViewTokens {
        tokens,
        centre_points: patched.centre_points(),
        descriptors: patched.descriptors.clone(),
        targets,
        points,
        all_round: patched.all_round,
    })
}

/// Fits the token statistics on the clean views, runs SCA on every view's conditioned tokens, and keeps the
/// clean features as the memory bank when the score uses it.
fn condition(detector: &mut Detector, prepared: Vec<ViewTokens>) -> Result<Vec<Sample>> {
    if detector.heads.sees_capture {
        let all_round = prepared.iter().filter(|v| v.all_round).count();
        tracing::info!(all_round, partial = prepared.len() - all_round, "training views by capture");
    }
    // Statistics of clean views: of their points' features where there are any (more rows, same space), else
    // of their tokens.
    let clean: Vec<Tensor> = prepared
        .iter()
        .filter(|v| v.targets.is_none())
        .map(|v| v.points.as_ref().map_or_else(|| v.tokens.shallow_clone(), |(rows, _)| rows.shallow_clone()))
        .collect();
    detector.conditioning.fit_standardisation(&clean);
    let device = detector.device;
    let mut samples = Vec::with_capacity(prepared.len());
    for view in prepared {
        let tokens = detector.condition(view.tokens);
        let points = view.points.map(|(rows, labels)| (detector.condition(rows), labels));
        let centres = SharedPoints::from(view.centre_points.as_slice());
        let features = sca::aggregate(&detector.config.sca, &tokens, &centres, &view.descriptors);
        let n = view.centre_points.len();
        // The copy SCA made of the centres, if it made one.
        let centres = detector.heads.with_capture(&centres.on(device), view.all_round);
        let clean = view.targets.is_none();
        let (targets, weights) = view.targets.unwrap_or_else(|| (vec![0.0; n], vec![1.0; n]));
        samples.push(Sample {
            features,
            centres,
            targets: Tensor::from_slice(&targets).upload(device),
            weights: Tensor::from_slice(&weights).upload(device),
            clean,
            points,
            all_round: view.all_round,
        });
    }
    if detector.config.scoring.source != ScoreSource::Discriminator {
        let clean_features: Vec<Tensor> =
            samples.iter().filter(|s| s.clean).map(|s| s.features.shallow_clone()).collect();
        // Its own draw, so that a model scored without a bank trains exactly as one scored with it.
        let mut bank_rng = StdRng::seed_from_u64(detector.config.training.seed ^ BANK_SEED);
        detector.conditioning.fit_bank(&clean_features, detector.config.conditioning.bank_size, &mut bank_rng);
        tracing::info!(entries = detector.conditioning.bank.len(), "memory bank");
    }
    let point_bank_size = detector.config.conditioning.point_bank_size;
    if point_bank_size > 0 && samples.iter().any(|s| s.clean && s.points.is_some()) {
        let clean_points: Vec<Tensor> =
            samples.iter().filter(|s| s.clean).filter_map(|s| s.points.as_ref().map(|p| p.0.shallow_clone())).collect();
        detector.conditioning.fit_point_bank(&clean_points, point_bank_size);
        tracing::info!(entries = detector.conditioning.point_bank.len(), "point memory bank (coreset)");
    }
    Ok(samples)
}

/// The references (discriminator, bank, point head, point bank) of held-out clouds' raw scores; a score that
/// none of them has keeps `unchanged`'s.
fn references(raw: &[&(PatchedCloud, RawScores)], unchanged: [Reference; 4]) -> Result<[Reference; 4]> {
    let raw = raw.iter().map(|(cloud, scores)| scores.on_host(cloud)).collect::<Result<Vec<_>>>()?;
    let getters: [fn(&HostScores) -> &Vec<f32>; 4] =
        [|r| &r.logits, |r| &r.distances, |r| &r.point_logits, |r| &r.point_distances];
    let mut out = unchanged;
    for (reference, get) in out.iter_mut().zip(getters) {
        let pooled: Vec<f32> = raw.iter().flat_map(|r| get(r).iter().copied()).collect();
        if !pooled.is_empty() {
            *reference = Reference::from_scores(&pooled);
        }
    }
    Ok(out)
}

/// Patch-wise BCE with positives and negatives weighing the same, whatever their counts (pseudo-defective
/// patches are a small minority); entries of weight 0 are left out.
fn balanced_bce(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> Tensor {
    let positives: Tensor = targets * weights;
    let negatives: Tensor = (1.0 - targets) * weights;
    let w = &positives * 0.5 / positives.sum(Kind::Float).clamp_min(1.0)
        + &negatives * 0.5 / negatives.sum(Kind::Float).clamp_min(1.0);
    logits.binary_cross_entropy_with_logits::<Tensor>(targets, Some(w), None, Reduction::Sum)
}

/// The epochs: AdamW (weight decay on the adaptor), cosine schedule, clipping. Returns the last epoch's loss.
fn fit_heads(
    detector: &Detector,
    samples: &[Sample],
    clouds_trained: usize,
    rng: &mut StdRng,
    monitor: &mut dyn Monitor,
) -> Result<f32> {
    let tc = &detector.config.training;
    let kind = detector.config.generator.kind;
    // The paper's generators learn from clean views only; the geometric ones from every view.
    let usable: Vec<usize> = (0..samples.len()).filter(|&i| kind.geometric() || samples[i].clean).collect();
    // Clouds of different sizes can have fewer patches; batches only stack samples with the same count.
    let mut buckets: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
    for &i in &usable {
        buckets.entry(samples[i].features.size()[0]).or_default().push(i);
    }
    let heads = &detector.heads;
    let mut opt = nn::AdamW { beta1: 0.9, beta2: 0.999, wd: 0.0, eps: 1e-8, amsgrad: false }
        .build(&heads.vs, tc.learning_rate)?;
    opt.set_weight_decay_group(0, tc.weight_decay);
    opt.set_weight_decay_group(1, 0.0);
    let steps_per_epoch: usize = buckets.values().map(|b| b.len().div_ceil(tc.batch_size)).sum();
    let train_start = Instant::now();
    let mut epoch_loss = f32::NAN;
    let stack = |batch: &[usize], get: fn(&Sample) -> &Tensor| {
        Tensor::stack(&batch.iter().map(|&i| get(&samples[i]).shallow_clone()).collect::<Vec<_>>(), 0)
    };
    for epoch in 0..tc.epochs {
        let lr = tc.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / tc.epochs as f64).cos());
        opt.set_lr(lr);
        let mut batches: Vec<Vec<usize>> = Vec::new();
        for members in buckets.values() {
            let mut members = members.clone();
            members.shuffle(rng);
            batches.extend(members.chunks(tc.batch_size).map(<[usize]>::to_vec));
        }
        batches.shuffle(rng);
        let (mut sum, mut count) = (0f64, 0usize);
        for (b, batch) in batches.iter().enumerate() {
            if monitor.cancelled() {
                return Err(ModelError::Cancelled);
            }
            let x = stack(batch, |s| &s.features);
            let c = stack(batch, |s| &s.centres);
            let q = heads.adaptor.forward(&x);
            let loss = match kind {
                GeneratorKind::Selective | GeneratorKind::SimpleNet => {
                    let (corrupted, labels) = heads.generator.corrupt(&q);
                    let c = if heads.generator.batch_factor() == 2 { Tensor::cat(&[&c, &c], 0) } else { c };
                    let logits = heads.discriminator.forward_t(&corrupted, &c, true);
                    logits.binary_cross_entropy_with_logits::<Tensor>(&labels, None, None, Reduction::Mean)
                }
                GeneratorKind::Geometric | GeneratorKind::GeometricSelective => {
                    let mut targets = stack(batch, |s| &s.targets);
                    let weights = stack(batch, |s| &s.weights);
                    let q = if kind == GeneratorKind::GeometricSelective {
                        // Feature noise on the clean views' tokens only; it adds negatives, never hides a
                        // geometric label.
                        let clean: Vec<f32> = batch.iter().map(|&i| f32::from(u8::from(samples[i].clean))).collect();
                        let clean = Tensor::from_slice(&clean).upload(q.device()).reshape([-1, 1]);
                        let (corrupted, mask) = heads.generator.corrupt(&q);
                        let mask = mask * &clean;
                        targets = targets.maximum(&mask);
                        &q + (corrupted - &q) * mask.unsqueeze(-1)
                    } else {
                        q
                    };
                    let logits = heads.discriminator.forward_t(&q, &c, true);
                    balanced_bce(&logits, &targets, &weights)
                }
            };
            let loss = match &heads.point_head {
                Some(head) => {
                    let rows = Tensor::cat(
                        &batch
                            .iter()
                            .filter_map(|&i| {
                                samples[i].points.as_ref().map(|p| heads.with_capture(&p.0, samples[i].all_round))
                            })
                            .collect::<Vec<_>>(),
                        0,
                    );
                    let labels = Tensor::cat(
                        &batch
                            .iter()
                            .filter_map(|&i| samples[i].points.as_ref().map(|p| p.1.shallow_clone()))
                            .collect::<Vec<_>>(),
                        0,
                    );
                    loss + balanced_bce(&head.forward(&rows), &labels, &labels.ones_like())
                }
                None => loss,
            };
            opt.backward_step_clip_norm(&loss, tc.gradient_clip);
            sum += loss.download().double_value(&[]);
            count += 1;
            let steps_done = epoch * steps_per_epoch + b + 1;
            let per_step = train_start.elapsed().as_secs_f32() / steps_done as f32;
            monitor.report(&Progress {
                stage: Stage::Training,
                fraction: PREPARE_SHARE + TRAIN_SHARE * steps_done as f32 / (tc.epochs * steps_per_epoch) as f32,
                epoch: epoch + 1,
                epochs: tc.epochs,
                loss: (sum / count as f64) as f32,
                clouds_loaded: clouds_trained,
                eta_s: per_step * (tc.epochs * steps_per_epoch - steps_done) as f32,
            });
        }
        epoch_loss = (sum / count.max(1) as f64) as f32;
        tracing::info!(
            epoch = format!("{}/{}", epoch + 1, tc.epochs),
            loss = format!("{epoch_loss:.4}"),
            lr = format!("{lr:.2e}"),
            "epoch"
        );
    }
    if !epoch_loss.is_finite() {
        return Err(ModelError::Training(format!("the loss diverged ({epoch_loss})")));
    }
    Ok(epoch_loss)
}

/// Score references and thresholds from the held-out good clouds; returns their cloud scores.
fn calibrate(
    detector: &mut Detector,
    clouds: &[TrainingCloud],
    calibration: &[usize],
    clouds_trained: usize,
    epoch_loss: f32,
    rng: &mut StdRng,
    monitor: &mut dyn Monitor,
) -> Result<Vec<f32>> {
    let epochs = detector.config.training.epochs;
    // The held-out clouds and, of an all-round one, its own camera views (cut as training cut the others'), so
    // the references and thresholds know what an inspection view scores.
    let mut scans: Vec<(&str, std::borrow::Cow<[Point]>)> = Vec::new();
    for (&i, cuts) in calibration.iter().zip(cut_views_of(detector, clouds, calibration, rng)?) {
        let cloud = &clouds[i];
        scans.push((&cloud.name, cloud.points.as_slice().into()));
        scans.extend(cuts.into_iter().map(|cut| (cloud.name.as_str(), cut.into())));
    }
    let mut raw = Vec::with_capacity(scans.len());
    for (k, (name, points)) in scans.iter().enumerate() {
        if monitor.cancelled() {
            return Err(ModelError::Cancelled);
        }
        raw.push(detector.raw_scores(points).map_err(|e| ModelError::Training(format!("{name}: {e}")))?);
        monitor.report(&Progress {
            stage: Stage::Calibrating,
            fraction: PREPARE_SHARE
                + TRAIN_SHARE
                + (1.0 - PREPARE_SHARE - TRAIN_SHARE) * (k + 1) as f32 / scans.len() as f32,
            epoch: epochs,
            epochs,
            loss: epoch_loss,
            clouds_loaded: clouds_trained,
            eta_s: 0.0,
        });
    }
    // Where the heads see the capture and the held-out clouds were cut into camera views, each kind's scores
    // are put on a scale of its own kind's: the views' borders would otherwise set the scale of the full scans.
    let (partial_views, all_round): (Vec<_>, Vec<_>) = raw.iter().partition(|r| !r.0.all_round);
    let by_kind = detector.heads.sees_capture
        && scans.len() > calibration.len()
        && !partial_views.is_empty()
        && !all_round.is_empty();
    let own_kind = if by_kind { all_round } else { raw.iter().collect() };
    let c = &mut detector.conditioning;
    c.partial_view_references = None;
    [c.discriminator_reference, c.bank_reference, c.point_reference, c.point_bank_reference] =
        references(&own_kind, c.references(true))?;
    if by_kind {
        c.partial_view_references = Some(references(&partial_views, c.references(true))?);
    }
    let (mut cloud_scores, mut point_scores) = (Vec::new(), Vec::new());
    for (patched, raw) in &raw {
        let scores = patched.grid.spread(&detector.voxel_scores(patched, raw, &detector.config.scoring)?);
        cloud_scores.push(detector.cloud_score(&scores));
        point_scores.extend(scores);
    }
    let s = &detector.config.scoring;
    detector.thresholds =
        scoring::calibrate(&cloud_scores, &point_scores, s.target_false_reject_rate, s.point_false_positive_rate);
    Ok(cloud_scores)
}

fn set_point_threshold_by_f1(detector: &mut Detector, validation: &[LabelledCloud]) -> Result<()> {
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    for cloud in validation {
        if cloud.labels.len() != cloud.points.len() {
            return Err(ModelError::Training(format!(
                "{}: {} labels for {} points",
                cloud.name,
                cloud.labels.len(),
                cloud.points.len()
            )));
        }
        let scored =
            detector.score_points(&cloud.points).map_err(|e| ModelError::Training(format!("{}: {e}", cloud.name)))?;
        scores.extend(scored.outliers_lowest());
        labels.extend(&cloud.labels);
    }
    match scoring::best_f1_threshold(&scores, &labels) {
        Some((threshold, f1)) => {
            tracing::info!(threshold, f1, clouds = validation.len(), "point threshold set by F1 on labelled clouds");
            detector.thresholds.point = threshold;
        }
        None => tracing::warn!(
            "the labelled validation clouds contain no defect points; point threshold left at its quantile"
        ),
    }
    Ok(())
}

/// Reads every `.pcd` and `.ply` file in a folder (sorted by name) as good clouds.
pub fn load_cloud_dir(dir: &std::path::Path) -> Result<Vec<TrainingCloud>> {
    let files = crate::cloud::cloud_files(dir)?;
    if files.is_empty() {
        return Err(ModelError::Training(format!("{}: no .pcd or .ply files", dir.display())));
    }
    files
        .iter()
        .map(|path| {
            let cloud = crate::cloud::read_cloud(path)?;
            let finite = cloud.finite_points().map_err(|e| e.in_file(path))?;
            Ok(TrainingCloud { name: path.display().to_string(), points: finite.points })
        })
        .collect()
}

/// Reads every `.pcd`/`.ply` file in a folder as a labelled cloud: a per-point field `label` (non-zero = defect)
/// is required.
pub fn load_labelled_dir(dir: &std::path::Path) -> Result<Vec<LabelledCloud>> {
    let files = crate::cloud::cloud_files(dir)?;
    files
        .iter()
        .map(|path| {
            let cloud = crate::cloud::read_cloud(path)?;
            let label = cloud
                .field("label")
                .ok_or_else(|| ModelError::Training(format!("{}: no per-point 'label' field", path.display())))?;
            let finite = cloud.finite_points().map_err(|e| e.in_file(path))?;
            let labels = finite.source_index.iter().map(|&i| label.value(i as usize, 0) != 0.0).collect();
            Ok(LabelledCloud { name: path.display().to_string(), points: finite.points, labels })
        })
        .collect()
}

/// Good clouds read from bags, and the messages that could not be used.
pub struct BagClouds {
    pub clouds: Vec<TrainingCloud>,
    /// "bag#index: why" for each PointCloud2 that decoded but had no usable points.
    pub skipped: Vec<String>,
}

/// Reads every PointCloud2 of `topic` from the (opened) bags, in order, as good clouds. A storage or CDR error
/// stops with an error naming the file; a message without finite points is skipped and listed.
pub fn read_bags(bags: &[crate::bag::Bag], topic: &str, monitor: &mut dyn Monitor) -> Result<BagClouds> {
    use std::ops::ControlFlow;
    let mut expected = 0;
    for bag in bags {
        expected += bag.check_topic(topic, crate::bag::POINT_CLOUD2)?;
    }
    let mut out = BagClouds { clouds: Vec::new(), skipped: Vec::new() };
    let mut cancelled = false;
    for bag in bags {
        let mut index = 0;
        bag.for_each_point_cloud(topic, |message| {
            let name = format!("{}#{index}", bag.dir.display());
            index += 1;
            match crate::cloud::pointcloud2::decode(&message.layout).and_then(|c| c.finite_points()) {
                Ok(finite) => out.clouds.push(TrainingCloud { name, points: finite.points }),
                Err(e) => out.skipped.push(format!("{name}: {e}")),
            }
            let loaded = out.clouds.len() + out.skipped.len();
            monitor.report(&Progress {
                stage: Stage::Reading,
                fraction: loaded as f32 / expected.max(1) as f32,
                epoch: 0,
                epochs: 0,
                loss: f32::NAN,
                clouds_loaded: out.clouds.len(),
                eta_s: f32::NAN,
            });
            cancelled = monitor.cancelled();
            if cancelled { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })?;
        if cancelled {
            return Err(ModelError::Cancelled);
        }
    }
    for skipped in &out.skipped {
        tracing::warn!(message = skipped, "skipped a recorded cloud");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wavy 40 × 40 sheet of spacing `step`.
    fn sheet(step: f32) -> TrainingCloud {
        let points = (0..40)
            .flat_map(|i| (0..40).map(move |j| (i as f32, j as f32)))
            .map(|(i, j)| [i * step, j * step, (0.3 * i).sin() * step])
            .collect();
        TrainingCloud { name: "sheet".into(), points }
    }

    #[test]
    fn the_voxel_follows_the_data_in_any_unit() {
        let mm = derive_voxel_size(&[&sheet(0.5)], 3.0).unwrap();
        let m = derive_voxel_size(&[&sheet(0.0005)], 3.0).unwrap();
        assert!((mm - 1.5).abs() < 0.05, "3 spacings of 0.5 mm: {mm}");
        assert!((m / mm - 0.001).abs() < 1e-6, "metres {m} vs millimetres {mm}");
        let flat = TrainingCloud { name: "one point".into(), points: vec![[1.0; 3]; 5] };
        assert!(derive_voxel_size(&[&flat], 3.0).is_err());
    }
}
