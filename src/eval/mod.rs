//! Evaluation as Real3D-AD's official code does it: datasets in its layout ([`dataset`]), its metrics
//! ([`metrics`]), baselines run on the same data ([`baselines`]), and a per-class report.

pub mod baselines;
pub mod dataset;
pub mod metrics;
pub mod plot;

use std::time::Instant;

use serde::Serialize;
use tch::Device;

use crate::geometry::Point;
use crate::model::Result;
use crate::model::config::DetectorConfig;
use crate::train::{self, Monitor};
use baselines::{Baseline, BaselineBank, BaselineConfig};
use dataset::ClassData;

pub enum Method {
    /// The detector under a name ("Ours", or an ablation's label).
    Ours(String, Box<DetectorConfig>),
    Baseline(Baseline, BaselineConfig),
}

impl Method {
    pub fn name(&self) -> String {
        match self {
            Self::Ours(name, _) => name.clone(),
            Self::Baseline(b, _) => b.name().into(),
        }
    }
}

/// The variants of the paper's Table 3 (method.md's switches) and of this project's additions (generators,
/// conditioning, positions, score source, object score), each a copy of `base` with one thing changed, then
/// the paper's own configuration.
pub fn ablations(base: &DetectorConfig) -> Vec<Method> {
    use crate::model::config::{BackboneConfig, DiscriminatorKind, Fusion, GeneratorKind};
    let variant = |name: &str, change: &dyn Fn(&mut DetectorConfig)| {
        let mut c = base.clone();
        change(&mut c);
        Method::Ours(name.into(), Box::new(c))
    };
    let width = match &base.backbone {
        BackboneConfig::Fpfh { width, .. } | BackboneConfig::RandomPointMae { width, .. } => *width,
        BackboneConfig::MultiscaleFpfh { radii_voxels } => crate::model::backbone::multiscale_width(radii_voxels.len()),
        BackboneConfig::PointMae { .. } => 384,
    };
    let heads = base.discriminator.heads;
    vec![
        Method::Ours("Ours (full)".into(), Box::new(base.clone())),
        variant("−SCA", &|c| c.sca.enabled = false),
        variant("−FA", &|c| c.adaptor.enabled = false),
        variant("Discriminator (SimpleNet)", &|c| c.discriminator.kind = DiscriminatorKind::Mlp),
        variant("No global step", &|c| c.sca.global_step = false),
        variant("With snapping (β = 0.5)", &|c| c.sca.snapping = 0.5),
        variant("Geometry only", &|c| c.sca.fusion = Fusion::GeometryOnly),
        variant("Feature only", &|c| c.sca.fusion = Fusion::FeatureOnly),
        // Point-MAE tokens describe patches only: no per-point features for the point head or bank.
        variant("Random Point-MAE backbone", &|c| {
            c.backbone = BackboneConfig::RandomPointMae { width, depth: 12, heads, seed: 1 };
            c.point_head.enabled = false;
            c.conditioning.point_bank_size = 0;
        }),
        variant("Generator: selective (paper)", &|c| c.generator.kind = GeneratorKind::Selective),
        variant("Generator: AFG (SimpleNet)", &|c| c.generator.kind = GeneratorKind::SimpleNet),
        variant("Generator: geometric", &|c| c.generator.kind = GeneratorKind::Geometric),
        variant("Generator: geometric+selective", &|c| c.generator.kind = GeneratorKind::GeometricSelective),
        variant("Point head off (point bank alone)", &|c| c.point_head.enabled = false),
        variant("Point bank off (point head alone)", &|c| c.conditioning.point_bank_size = 0),
        variant("Point level off (patch scores only)", &|c| c.scoring.point_weight = 0.0),
        variant("Conditioning off", &|c| c.conditioning.standardise = false),
        variant("Alignment off", &|c| c.preprocess.align = false),
        variant("Template: first cloud only (not fused)", &|c| c.preprocess.fuse_template = false),
        variant("Camera views of all-round clouds off", &|c| c.preprocess.augment.camera_views = 0),
        variant("Template counts through the camera", &|c| c.preprocess.template_visibility = true),
        variant("Capture input off", &|c| c.preprocess.capture_input = false),
        variant("Positions off", &|c| c.discriminator.positional = false),
    ]
    .into_iter()
    .chain(score_variants(base, ""))
    .chain([Method::Ours("Paper (config/paper.json)".into(), Box::new(paper_with_budget_of(base)))])
    // A switch already at the base's setting is the full row: no second training of the same model.
    .enumerate()
    .filter(|(i, m)| *i == 0 || !matches!(m, Method::Ours(_, c) if **c == *base))
    .map(|(_, m)| m)
    .collect()
}

/// The ways of turning one trained model's raw outputs into scores (score source, point-level mix, object
/// score), each a copy of `base` named `prefix` + the choice; those equal to `base` are left out. They cost no
/// training: [`evaluate_class`] scores them all with one model.
pub fn score_variants(base: &DetectorConfig, prefix: &str) -> Vec<Method> {
    use crate::model::config::{ObjectScore, ScoreSource};
    let variant = |name: &str, change: &dyn Fn(&mut DetectorConfig)| {
        let mut c = base.clone();
        change(&mut c);
        Method::Ours(format!("{prefix}{name}"), Box::new(c))
    };
    let mut variants = vec![
        variant("Score: discriminator only", &|c| c.scoring.source = ScoreSource::Discriminator),
        variant("Score: bank only", &|c| c.scoring.source = ScoreSource::Bank),
        variant("Score: fused", &|c| c.scoring.source = ScoreSource::Fused),
        variant("Object score: max", &|c| c.scoring.object_score = ObjectScore::Max),
        variant("Object score: top 1 % mean", &|c| c.scoring.object_score = ObjectScore::TopMean),
    ];
    if base.point_head.enabled && base.conditioning.point_bank_size > 0 {
        variants.push(variant("Point level: head only", &|c| c.scoring.point_bank_weight = 0.0));
        variants.push(variant("Point level: bank only", &|c| c.scoring.point_bank_weight = 1.0));
    }
    variants.retain(|m| !matches!(m, Method::Ours(_, c) if **c == *base));
    variants
}

/// The paper's choices with `base`'s budget (patches, views, epochs, hold-out, normals), so the row compares
/// methods, not training lengths.
fn paper_with_budget_of(base: &DetectorConfig) -> DetectorConfig {
    let mut c = paper_config();
    c.patches = base.patches.clone();
    c.training = base.training.clone();
    c.scoring.holdout_fraction = base.scoring.holdout_fraction;
    c.preprocess.normals_face = base.preprocess.normals_face;
    c.preprocess.voxel_size = base.preprocess.voxel_size;
    c.preprocess.augment.views_per_cloud = base.preprocess.augment.views_per_cloud;
    c
}

/// The paper's pipeline as method.md reads it (first implementation): FPFH tokens projected to 256, feature-
/// noise generator, discriminator only, max object score; the voxel derived from the data like every model.
pub fn paper_config() -> DetectorConfig {
    serde_json::from_str(include_str!("../../config/paper.json")).expect("config/paper.json is valid")
}

/// The paper's Table 3 layout: one row per variant, means over classes.
pub fn ablation_table(results: &[ClassResult]) -> String {
    let mut out = String::from(
        "| variant | point AUROC | point AUPR | object AUROC | object AUPR | clouds/s |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let mut seen: Vec<&str> = Vec::new();
    for r in results {
        if seen.contains(&r.method.as_str()) {
            continue;
        }
        seen.push(&r.method);
        let of =
            |get: fn(&ClassResult) -> Option<f64>| cell(mean(results.iter().filter(|x| x.method == r.method).map(get)));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.method,
            of(|x| x.point_auroc),
            of(|x| x.point_ap),
            of(|x| x.object_auroc),
            of(|x| x.object_ap),
            of(|x| Some(x.clouds_per_second)),
        ));
    }
    out
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ClassResult {
    pub method: String,
    pub class: String,
    pub object_auroc: Option<f64>,
    pub object_ap: Option<f64>,
    pub point_auroc: Option<f64>,
    pub point_ap: Option<f64>,
    pub clouds_per_second: f64,
    pub test_clouds: usize,
    /// Point AUROC over the good test clouds and the defective ones of each kind (from the cloud's name,
    /// `NNN_kind`).
    pub point_auroc_by_kind: std::collections::BTreeMap<String, f64>,
}

/// The defect kind in a test cloud's name (`003_pit` → `pit`).
fn kind_of(name: &str) -> &str {
    name.split_once('_').map_or(name, |(_, kind)| kind)
}

/// One method on one class: the numbers, and every test point's score (for figures).
pub struct ClassEvaluation {
    pub result: ClassResult,
    pub scores: Vec<Vec<f32>>,
}

/// Fits every method on a class's training clouds and scores its test clouds; results in the order given.
/// Detector configurations that differ only in scoring choices ([`DetectorConfig::training_key`]) share one
/// trained model and one pass of features over the test clouds (their clouds/s counts the shared pass).
pub fn evaluate_class(
    class: &ClassData,
    methods: &[Method],
    device: Device,
    monitor: &mut dyn Monitor,
) -> Result<Vec<ClassEvaluation>> {
    let mut done: Vec<Option<ClassEvaluation>> = methods.iter().map(|_| None).collect();
    for (i, method) in methods.iter().enumerate() {
        if done[i].is_some() {
            continue;
        }
        tracing::info!(class = class.name, method = method.name(), "evaluating");
        match method {
            Method::Ours(_, cfg) => {
                let key = cfg.training_key();
                let group: Vec<(usize, &DetectorConfig)> = methods
                    .iter()
                    .enumerate()
                    .skip(i)
                    .filter_map(|(j, m)| match m {
                        Method::Ours(_, c) if c.training_key() == key => Some((j, &**c)),
                        _ => None,
                    })
                    .collect();
                let configs: Vec<&DetectorConfig> = group.iter().map(|(_, c)| *c).collect();
                for ((j, _), evaluation) in group.iter().zip(evaluate_detector(class, &configs, device, monitor)?) {
                    done[*j] = Some(evaluation);
                }
            }
            Method::Baseline(kind, cfg) => done[i] = Some(evaluate_baseline(class, *kind, cfg)?),
        }
    }
    Ok(done
        .into_iter()
        .zip(methods)
        .filter_map(|(e, m)| {
            e.map(|mut e| {
                e.result.method = m.name();
                e
            })
        })
        .collect())
}

/// Test clouds scored per batch ([`crate::model::Detector::unscored_batch`]).
const EVAL_BATCH: usize = 4;

/// Trains one detector for configurations that share a training key (the first one's settings, with a patch
/// bank when any of them scores with one), then scores the test clouds under each one's scoring.
fn evaluate_detector(
    class: &ClassData,
    configs: &[&DetectorConfig],
    device: Device,
    monitor: &mut dyn Monitor,
) -> Result<Vec<ClassEvaluation>> {
    use crate::model::config::ScoreSource;
    let mut training = configs[0].clone();
    if let Some(with_bank) = configs.iter().find(|c| c.scoring.source != ScoreSource::Discriminator) {
        training.scoring.source = with_bank.scoring.source;
    }
    let (detector, _) = train::train(training, &class.train, &[], device, monitor)?;
    let mut shared_seconds = 0.0;
    let mut own_seconds = vec![0.0; configs.len()];
    let mut scored: Vec<Vec<(Vec<f32>, f32)>> = vec![Vec::with_capacity(class.test.len()); configs.len()];
    for clouds in class.test.chunks(EVAL_BATCH) {
        let start = Instant::now();
        let points: Vec<&[Point]> = clouds.iter().map(|c| c.points.as_slice()).collect();
        let batch = detector.unscored_batch(&points);
        shared_seconds += start.elapsed().as_secs_f64();
        for unscored in batch {
            let unscored = unscored?;
            for (k, cfg) in configs.iter().enumerate() {
                let start = Instant::now();
                let scores = detector.point_scores_of(&unscored, &cfg.scoring)?;
                let cloud_score = crate::model::scoring::cloud_score(&scores.scores, &cfg.scoring);
                scored[k].push((scores.outliers_lowest(), cloud_score));
                own_seconds[k] += start.elapsed().as_secs_f64();
            }
        }
    }
    let n = class.test.len() as f64;
    Ok(scored
        .into_iter()
        .zip(own_seconds)
        .map(|(s, own)| class_evaluation(class, s, n / (shared_seconds + own)))
        .collect())
}

/// Fits a baseline's memory bank on the training clouds and scores the test clouds (cloud score: the max).
fn evaluate_baseline(class: &ClassData, kind: Baseline, cfg: &BaselineConfig) -> Result<ClassEvaluation> {
    let mut cfg = cfg.clone();
    if cfg.voxel <= 0.0 {
        // The same data-derived voxel the detector uses, so every method sees the same resolution.
        let clouds: Vec<&train::TrainingCloud> = class.train.iter().collect();
        cfg.voxel = train::derive_voxel_size(&clouds, DetectorConfig::default().preprocess.voxel_spacing_factor)?;
    }
    let bank = BaselineBank::fit(kind, &cfg, &class.train)?;
    let start = Instant::now();
    let mut scored = Vec::with_capacity(class.test.len());
    for cloud in &class.test {
        let scores = bank.score(&cloud.points)?;
        let cloud_score = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        scored.push((scores, cloud_score));
    }
    let clouds_per_second = class.test.len() as f64 / start.elapsed().as_secs_f64();
    Ok(class_evaluation(class, scored, clouds_per_second))
}

/// The metrics of one method's (point scores, cloud score) per test cloud; the caller names the method.
fn class_evaluation(class: &ClassData, scored: Vec<(Vec<f32>, f32)>, clouds_per_second: f64) -> ClassEvaluation {
    let (all_scores, cloud_scores): (Vec<Vec<f32>>, Vec<f32>) = scored.into_iter().unzip();
    let cloud_labels: Vec<bool> = class.test.iter().map(dataset::TestCloud::is_defective).collect();
    let mut pooled: Vec<f32> = all_scores.concat();
    metrics::min_max_normalise(&mut pooled);
    let pooled_labels: Vec<bool> = class.test.iter().flat_map(|c| c.labels.iter().copied()).collect();
    let mut point_auroc_by_kind = std::collections::BTreeMap::new();
    let kinds: std::collections::BTreeSet<&str> =
        class.test.iter().filter(|c| c.is_defective()).map(|c| kind_of(&c.name)).collect();
    for kind in kinds {
        let (mut scores, mut labels) = (Vec::new(), Vec::new());
        let mut offset = 0;
        for cloud in &class.test {
            let n = cloud.labels.len();
            if !cloud.is_defective() || kind_of(&cloud.name) == kind {
                scores.extend_from_slice(&pooled[offset..offset + n]);
                labels.extend_from_slice(&cloud.labels);
            }
            offset += n;
        }
        if let Some(auroc) = metrics::auroc(&scores, &labels) {
            point_auroc_by_kind.insert(kind.to_string(), auroc);
        }
    }
    let result = ClassResult {
        method: String::new(),
        class: class.name.clone(),
        object_auroc: metrics::auroc(&cloud_scores, &cloud_labels),
        object_ap: metrics::average_precision(&cloud_scores, &cloud_labels),
        point_auroc: metrics::auroc(&pooled, &pooled_labels),
        point_ap: metrics::average_precision(&pooled, &pooled_labels),
        clouds_per_second,
        test_clouds: class.test.len(),
        point_auroc_by_kind,
    };
    ClassEvaluation { result, scores: all_scores }
}

/// Writes a class's figures into `dir` (point-level ROC and PR curves of every method, its AUROC or AP in the
/// legend; the first two defective test clouds rendered per method next to their ground truth) and returns their
/// Markdown. Scoring variants of ours (`Ours · …`) are in the tables, not in the figures.
pub fn write_figures(
    dir: &std::path::Path,
    class: &ClassData,
    evaluations: &[ClassEvaluation],
) -> std::io::Result<String> {
    let shown: Vec<&ClassEvaluation> = evaluations.iter().filter(|e| !e.result.method.contains(" · ")).collect();
    let labels: Vec<bool> = class.test.iter().flat_map(|c| c.labels.iter().copied()).collect();
    let pooled = |e: &ClassEvaluation| {
        let mut s: Vec<f32> = e.scores.concat();
        metrics::min_max_normalise(&mut s);
        s
    };
    type CurveOf = fn(&[f32], &[bool]) -> Vec<(f32, f32)>;
    let curves = |curve: CurveOf, metric: &str, value: fn(&ClassResult) -> Option<f64>| {
        shown
            .iter()
            .map(|e| plot::Curve {
                label: format!("{} ({metric} {})", e.result.method, cell(value(&e.result))),
                points: curve(&pooled(e), &labels),
            })
            .collect::<Vec<_>>()
    };
    let name = &class.name;
    let roc = curves(plot::roc_curve, "AUROC", |r| r.point_auroc);
    let title = format!("Point-level ROC, {name}");
    plot::curves(&title, ("false positive rate", "true positive rate"), &roc, true)
        .write_png(&dir.join(format!("roc_{name}.png")))?;
    let pr = curves(plot::pr_curve, "AP", |r| r.point_ap);
    let title = format!("Point-level precision-recall, {name}");
    plot::curves(&title, ("recall", "precision"), &pr, false).write_png(&dir.join(format!("pr_{name}.png")))?;
    let mut md = format!("#### {name}\n\n![ROC {name}](roc_{name}.png) ![PR {name}](pr_{name}.png)\n\n");
    for (i, cloud) in class.test.iter().enumerate().filter(|(_, c)| c.is_defective()).take(2) {
        for (k, e) in shown.iter().enumerate() {
            let file = format!("heat_{name}_{}_{k}.png", cloud.name);
            let title = format!("{} on {name}/{}", e.result.method, cloud.name);
            plot::heatmap_render(&title, &cloud.points, &e.scores[i], &cloud.labels).write_png(&dir.join(&file))?;
            md.push_str(&format!("![{} on {}]({file})\n\n", e.result.method, cloud.name));
        }
    }
    Ok(md)
}

/// The evaluation's means per method as grouped bars (object and point AUROC and AUPR).
pub fn summary_chart(results: &[ClassResult], title: &str) -> plot::Canvas {
    type Metric = fn(&ClassResult) -> Option<f64>;
    let metrics: [(&str, Metric); 4] = [
        ("object AUROC", |r| r.object_auroc),
        ("object AUPR", |r| r.object_ap),
        ("point AUROC", |r| r.point_auroc),
        ("point AUPR", |r| r.point_ap),
    ];
    let mut methods: Vec<&str> = Vec::new();
    for r in results {
        if !methods.contains(&r.method.as_str()) && !r.method.contains(" · ") {
            methods.push(&r.method);
        }
    }
    let bars: Vec<(String, Vec<Option<f64>>)> = methods
        .iter()
        .map(|m| {
            let of = |get: Metric| mean(results.iter().filter(|r| r.method == *m).map(get));
            (m.to_string(), metrics.iter().map(|(_, get)| of(*get)).collect())
        })
        .collect();
    let names: Vec<&str> = metrics.iter().map(|(n, _)| *n).collect();
    plot::bar_chart(title, &names, &bars)
}

fn cell(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{x:.3}"))
}

fn mean(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// One Markdown table per metric family: rows are classes (and the mean), columns the methods.
pub fn markdown(results: &[ClassResult]) -> String {
    let mut methods: Vec<&str> = Vec::new();
    let mut classes: Vec<&str> = Vec::new();
    for r in results {
        if !methods.contains(&r.method.as_str()) {
            methods.push(&r.method);
        }
        if !classes.contains(&r.class.as_str()) {
            classes.push(&r.class);
        }
    }
    let find = |m: &str, c: &str| results.iter().find(|r| r.method == m && r.class == c);
    let mut out = String::new();
    type Metric = fn(&ClassResult) -> Option<f64>;
    let tables: [(&str, Metric); 5] = [
        ("Object AUROC", |r| r.object_auroc),
        ("Object AUPR", |r| r.object_ap),
        ("Point AUROC", |r| r.point_auroc),
        ("Point AUPR", |r| r.point_ap),
        ("Clouds per second", |r| Some(r.clouds_per_second)),
    ];
    for (title, get) in tables {
        out.push_str(&format!(
            "#### {title}\n\n| class | {} |\n|---|{}\n",
            methods.join(" | "),
            "---:|".repeat(methods.len())
        ));
        for c in &classes {
            let row: Vec<String> = methods.iter().map(|m| cell(find(m, c).and_then(get))).collect();
            out.push_str(&format!("| {c} | {} |\n", row.join(" | ")));
        }
        let means: Vec<String> = methods
            .iter()
            .map(|m| cell(mean(results.iter().filter(|r| r.method == *m).map(get))))
            .map(|s| format!("**{s}**"))
            .collect();
        out.push_str(&format!("| **mean** | {} |\n\n", means.join(" | ")));
    }
    let kinds: std::collections::BTreeSet<&str> =
        results.iter().flat_map(|r| r.point_auroc_by_kind.keys().map(String::as_str)).collect();
    if !kinds.is_empty() {
        out.push_str(&format!(
            "#### Point AUROC by defect kind (mean over classes)\n\n| kind | {} |\n|---|{}\n",
            methods.join(" | "),
            "---:|".repeat(methods.len())
        ));
        for kind in kinds {
            let row: Vec<String> = methods
                .iter()
                .map(|m| {
                    cell(mean(
                        results.iter().filter(|r| r.method == *m).map(|r| r.point_auroc_by_kind.get(kind).copied()),
                    ))
                })
                .collect();
            out.push_str(&format!("| {kind} | {} |\n", row.join(" | ")));
        }
        out.push('\n');
    }
    out
}
