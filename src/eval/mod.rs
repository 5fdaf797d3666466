//! Evaluation as Real3D-AD's official code does it: datasets in its layout ([`dataset`]), its metrics
//! ([`metrics`]), baselines run on the same data ([`baselines`]), and a per-class report.

pub mod baselines;
pub mod dataset;
pub mod metrics;
pub mod plot;

use std::time::Instant;

use serde::Serialize;
use tch::Device;

use crate::model::Result;
use crate::model::config::DetectorConfig;
use crate::train::{self, Monitor};
use baselines::{Baseline, BaselineConfig, MemoryBank};
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

/// The variants of the paper's Table 3 (method.md's switches), each a copy of `base` with one thing changed.
pub fn ablations(base: &DetectorConfig) -> Vec<Method> {
    use crate::model::config::{BackboneConfig, DiscriminatorKind, Fusion, GeneratorKind};
    let variant = |name: &str, change: &dyn Fn(&mut DetectorConfig)| {
        let mut c = base.clone();
        change(&mut c);
        Method::Ours(name.into(), Box::new(c))
    };
    let width = match &base.backbone {
        BackboneConfig::Fpfh { width, .. } | BackboneConfig::RandomPointMae { width, .. } => *width,
        BackboneConfig::PointMae { .. } => 384,
    };
    vec![
        Method::Ours("Ours (full)".into(), Box::new(base.clone())),
        variant("−SCA", &|c| c.sca.enabled = false),
        variant("−FA", &|c| c.adaptor.enabled = false),
        variant("AFG (SimpleNet)", &|c| c.generator.kind = GeneratorKind::SimpleNet),
        variant("Discriminator (SimpleNet)", &|c| c.discriminator.kind = DiscriminatorKind::Mlp),
        variant("No global step", &|c| c.sca.global_step = false),
        variant("With snapping (β = 0.5)", &|c| c.sca.snapping = 0.5),
        variant("Geometry only", &|c| c.sca.fusion = Fusion::GeometryOnly),
        variant("Feature only", &|c| c.sca.fusion = Fusion::FeatureOnly),
        variant("Random Point-MAE backbone", &|c| {
            c.backbone = BackboneConfig::RandomPointMae { width, depth: 12, heads: 4, seed: 1 }
        }),
    ]
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

#[derive(Clone, Debug, Serialize)]
pub struct ClassResult {
    pub method: String,
    pub class: String,
    pub object_auroc: Option<f64>,
    pub object_ap: Option<f64>,
    pub point_auroc: Option<f64>,
    pub point_ap: Option<f64>,
    pub clouds_per_second: f64,
    pub test_clouds: usize,
}

/// Scores every point of a cloud.
type Scorer = dyn Fn(&[crate::geometry::Point]) -> Result<Vec<f32>>;

/// One method on one class: the numbers, and every test point's score (for figures).
pub struct ClassEvaluation {
    pub result: ClassResult,
    pub scores: Vec<Vec<f32>>,
}

/// Fits `method` on a class's training clouds and scores its test clouds.
pub fn evaluate_class(
    class: &ClassData,
    method: &Method,
    device: Device,
    monitor: &mut dyn Monitor,
) -> Result<ClassEvaluation> {
    let scorer: Box<Scorer> = match method {
        Method::Ours(_, cfg) => {
            let (detector, _) = train::train((**cfg).clone(), &class.train, &[], device, monitor)?;
            Box::new(move |points| Ok(detector.score_points(points)?.0))
        }
        Method::Baseline(kind, cfg) => {
            let bank = MemoryBank::fit(*kind, cfg, &class.train)?;
            Box::new(move |points| bank.score(points))
        }
    };
    let start = Instant::now();
    let mut all_scores = Vec::with_capacity(class.test.len());
    for cloud in &class.test {
        all_scores.push(scorer(&cloud.points)?);
    }
    let clouds_per_second = class.test.len() as f64 / start.elapsed().as_secs_f64();
    let cloud_scores: Vec<f32> =
        all_scores.iter().map(|s| s.iter().copied().fold(f32::NEG_INFINITY, f32::max)).collect();
    let cloud_labels: Vec<bool> = class.test.iter().map(dataset::TestCloud::is_defective).collect();
    let mut pooled: Vec<f32> = all_scores.concat();
    metrics::min_max_normalise(&mut pooled);
    let pooled_labels: Vec<bool> = class.test.iter().flat_map(|c| c.labels.iter().copied()).collect();
    let result = ClassResult {
        method: method.name(),
        class: class.name.clone(),
        object_auroc: metrics::auroc(&cloud_scores, &cloud_labels),
        object_ap: metrics::average_precision(&cloud_scores, &cloud_labels),
        point_auroc: metrics::auroc(&pooled, &pooled_labels),
        point_ap: metrics::average_precision(&pooled, &pooled_labels),
        clouds_per_second,
        test_clouds: class.test.len(),
    };
    Ok(ClassEvaluation { result, scores: all_scores })
}

/// Writes a class's figures into `dir` (point-level ROC and PR curves of every method; the first two defective
/// test clouds rendered per method next to their ground truth) and returns their Markdown.
pub fn write_figures(
    dir: &std::path::Path,
    class: &ClassData,
    evaluations: &[ClassEvaluation],
) -> std::io::Result<String> {
    let labels: Vec<bool> = class.test.iter().flat_map(|c| c.labels.iter().copied()).collect();
    let pooled = |e: &ClassEvaluation| {
        let mut s: Vec<f32> = e.scores.concat();
        metrics::min_max_normalise(&mut s);
        s
    };
    let roc: Vec<_> = evaluations.iter().map(|e| plot::roc_curve(&pooled(e), &labels)).collect();
    let pr: Vec<_> = evaluations.iter().map(|e| plot::pr_curve(&pooled(e), &labels)).collect();
    let name = &class.name;
    plot::curves(&roc, true).write_png(&dir.join(format!("roc_{name}.png")))?;
    plot::curves(&pr, false).write_png(&dir.join(format!("pr_{name}.png")))?;
    let legend: Vec<String> = evaluations
        .iter()
        .enumerate()
        .map(|(k, e)| {
            let [r, g, b] = plot::PALETTE[k % plot::PALETTE.len()];
            format!("{} = rgb({r}, {g}, {b})", e.result.method)
        })
        .collect();
    let mut md = format!(
        "#### {name}\n\nPoint-level ROC (left) and PR (right); {}.\n\n![ROC {name}](roc_{name}.png) ![PR {name}](pr_{name}.png)\n\n",
        legend.join(", ")
    );
    for (i, cloud) in class.test.iter().enumerate().filter(|(_, c)| c.is_defective()).take(2) {
        for (k, e) in evaluations.iter().enumerate() {
            let file = format!("heat_{name}_{}_{k}.png", cloud.name);
            plot::heatmap_render(&cloud.points, &e.scores[i], &cloud.labels).write_png(&dir.join(&file))?;
            md.push_str(&format!(
                "{} on {} (scores left, ground truth right):\n\n![{}]({file})\n\n",
                e.result.method, cloud.name, cloud.name
            ));
        }
    }
    Ok(md)
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
    out
}
