//! Training (method step 6): from good clouds to a calibrated detector. Part of the clouds is held out; each
//! training cloud is augmented into a few views whose frozen features (backbone + SCA) are computed once; then
//! the adaptor, generator scale, positional MLP and discriminator learn with AdamW (weight decay on the adaptor),
//! a cosine learning-rate schedule and gradient clipping, on patch-wise BCE against the generator's labels.
//! Finally the held-out clouds set the thresholds. Seeded: the same clouds and seed give the same model.
//! Progress and cancellation go through a [`Monitor`], so the CLI logs and the ROS action reports feedback.

use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use tch::{Device, Reduction, Tensor, nn, nn::OptimizerConfig};

use crate::geometry::Point;
use crate::model::config::DetectorConfig;
use crate::model::preprocess::Augmentation;
use crate::model::store::TrainingSummary;
use crate::model::{Detector, ModelError, Result, centre_tensor, scoring};

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

struct Sample {
    features: Tensor,
    centres: Tensor,
}

/// Trains and calibrates a detector on good clouds; `validation` (clouds with labelled defects, may be empty)
/// sets the point threshold by F1.
pub fn train(
    config: DetectorConfig,
    clouds: &[TrainingCloud],
    validation: &[LabelledCloud],
    device: Device,
    monitor: &mut dyn Monitor,
) -> Result<(Detector, TrainingSummary)> {
    config.validate().map_err(ModelError::Config)?;
    if clouds.len() < 2 {
        return Err(ModelError::Training(format!(
            "{} good cloud(s): at least 2 are needed (one to learn from, one to calibrate thresholds)",
            clouds.len()
        )));
    }
    let start = Instant::now();
    let tc = &config.training;
    let mut rng = StdRng::seed_from_u64(tc.seed);
    tch::manual_seed(tc.seed as i64);
    let mut detector = Detector::new(config.clone(), device)?;

    let mut order: Vec<usize> = (0..clouds.len()).collect();
    order.shuffle(&mut rng);
    let held_out =
        ((clouds.len() as f64 * config.scoring.holdout_fraction).round() as usize).clamp(1, clouds.len() - 1);
    let (calibration, training) = order.split_at(held_out);
    let views = config.preprocess.augment.views_per_cloud.max(1);
    tracing::info!(training = training.len(), held_out, views, backbone = %detector.backbone.identity.kind, "training set");

    // Features of every augmented view, computed once.
    let mut samples: Vec<Sample> = Vec::with_capacity(training.len() * views);
    let total_views = training.len() * views;
    for (k, &i) in training.iter().enumerate() {
        for v in 0..views {
            if monitor.cancelled() {
                return Err(ModelError::Cancelled);
            }
            // The first view is the cloud as recorded, the others augmented.
            let aug = (v > 0).then(|| Augmentation::draw(&config.preprocess.augment, &mut rng));
            let patched = match &aug {
                Some(a) => detector.patch(&clouds[i].points, Some((a, &mut rng))),
                None => detector.patch(&clouds[i].points, None),
            }
            .map_err(|e| ModelError::Training(format!("{}: {e}", clouds[i].name)))?;
            let (features, _, _) = detector.features(&patched)?;
            samples.push(Sample { features, centres: centre_tensor(&patched, device).squeeze_dim(0) });
            let done = samples.len();
            let elapsed = start.elapsed().as_secs_f32();
            monitor.report(&Progress {
                stage: Stage::Preparing,
                fraction: PREPARE_SHARE * done as f32 / total_views as f32,
                epoch: 0,
                epochs: tc.epochs,
                loss: f32::NAN,
                clouds_loaded: k + 1,
                eta_s: elapsed / done as f32 * (total_views - done) as f32,
            });
        }
    }

    // Clouds of different sizes can have fewer patches; batches only stack samples with the same count.
    let mut buckets: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
    for (i, s) in samples.iter().enumerate() {
        buckets.entry(s.features.size()[0]).or_default().push(i);
    }
    let heads = &detector.heads;
    let mut opt = nn::AdamW { beta1: 0.9, beta2: 0.999, wd: 0.0, eps: 1e-8, amsgrad: false }
        .build(&heads.vs, tc.learning_rate)?;
    opt.set_weight_decay_group(0, tc.weight_decay);
    opt.set_weight_decay_group(1, 0.0);
    let steps_per_epoch: usize = buckets.values().map(|b| b.len().div_ceil(tc.batch_size)).sum();
    let train_start = Instant::now();
    let mut epoch_loss = f32::NAN;
    for epoch in 0..tc.epochs {
        let lr = tc.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / tc.epochs as f64).cos());
        opt.set_lr(lr);
        let mut batches: Vec<Vec<usize>> = Vec::new();
        for members in buckets.values() {
            let mut members = members.clone();
            members.shuffle(&mut rng);
            batches.extend(members.chunks(tc.batch_size).map(<[usize]>::to_vec));
        }
        batches.shuffle(&mut rng);
        let (mut sum, mut count) = (0f64, 0usize);
        for (b, batch) in batches.iter().enumerate() {
            if monitor.cancelled() {
                return Err(ModelError::Cancelled);
            }
            let x = Tensor::stack(&batch.iter().map(|&i| samples[i].features.shallow_clone()).collect::<Vec<_>>(), 0);
            let c = Tensor::stack(&batch.iter().map(|&i| samples[i].centres.shallow_clone()).collect::<Vec<_>>(), 0);
            let q = heads.adaptor.forward(&x);
            let (corrupted, labels) = heads.generator.corrupt(&q);
            let c = if heads.generator.batch_factor() == 2 { Tensor::cat(&[&c, &c], 0) } else { c };
            let logits = heads.discriminator.forward_t(&corrupted, &c, true);
            let loss = logits.binary_cross_entropy_with_logits::<Tensor>(&labels, None, None, Reduction::Mean);
            opt.backward_step_clip_norm(&loss, tc.gradient_clip);
            sum += loss.double_value(&[]);
            count += 1;
            let steps_done = epoch * steps_per_epoch + b + 1;
            let per_step = train_start.elapsed().as_secs_f32() / steps_done as f32;
            monitor.report(&Progress {
                stage: Stage::Training,
                fraction: PREPARE_SHARE + TRAIN_SHARE * steps_done as f32 / (tc.epochs * steps_per_epoch) as f32,
                epoch: epoch + 1,
                epochs: tc.epochs,
                loss: (sum / count as f64) as f32,
                clouds_loaded: training.len(),
                eta_s: per_step * (tc.epochs * steps_per_epoch - steps_done) as f32,
            });
        }
        epoch_loss = (sum / count.max(1) as f64) as f32;
        tracing::info!(
            epoch = format!("{}/{}", epoch + 1, tc.epochs),
            loss = format!("{epoch_loss:.4}"),
            lr = format!("{lr:.2e}"),
            gamma = format!("{:.3}", heads.generator.scale().double_value(&[0])),
            "epoch"
        );
    }
    if !epoch_loss.is_finite() {
        return Err(ModelError::Training(format!("the loss diverged ({epoch_loss})")));
    }

    // Thresholds from the held-out good clouds.
    let (mut cloud_scores, mut point_scores) = (Vec::new(), Vec::new());
    for (k, &i) in calibration.iter().enumerate() {
        if monitor.cancelled() {
            return Err(ModelError::Cancelled);
        }
        let (scores, _, _) = detector
            .score_points(&clouds[i].points)
            .map_err(|e| ModelError::Training(format!("{}: {e}", clouds[i].name)))?;
        cloud_scores.push(scores.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        point_scores.extend(scores);
        monitor.report(&Progress {
            stage: Stage::Calibrating,
            fraction: PREPARE_SHARE
                + TRAIN_SHARE
                + (1.0 - PREPARE_SHARE - TRAIN_SHARE) * (k + 1) as f32 / calibration.len() as f32,
            epoch: tc.epochs,
            epochs: tc.epochs,
            loss: epoch_loss,
            clouds_loaded: training.len(),
            eta_s: 0.0,
        });
    }
    let s = &config.scoring;
    detector.thresholds =
        scoring::calibrate(&cloud_scores, &point_scores, s.target_false_reject_rate, s.point_false_positive_rate);
    if !validation.is_empty() {
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
            let (point_scores, _, _) = detector
                .score_points(&cloud.points)
                .map_err(|e| ModelError::Training(format!("{}: {e}", cloud.name)))?;
            scores.extend(point_scores);
            labels.extend(&cloud.labels);
        }
        match scoring::best_f1_threshold(&scores, &labels) {
            Some((threshold, f1)) => {
                tracing::info!(
                    threshold,
                    f1,
                    clouds = validation.len(),
                    "point threshold set by F1 on labelled clouds"
                );
                detector.thresholds.point = threshold;
            }
            None => tracing::warn!(
                "the labelled validation clouds contain no defect points; point threshold left at its quantile"
            ),
        }
    }
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
            "too few held-out clouds to resolve the target false-reject rate: the highest held-out score sets the cloud threshold"
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
