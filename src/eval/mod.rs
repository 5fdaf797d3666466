//! Evaluation as Real3D-AD's official code does it: datasets in its layout ([`dataset`]), its metrics
//! ([`metrics`]), baselines run on the same data ([`baselines`]), and a per-class report.

pub mod baselines;
pub mod dataset;
pub mod metrics;

use std::time::Instant;

use serde::Serialize;
use tch::Device;

use crate::model::config::DetectorConfig;
use crate::model::Result;
use crate::train::{self, Monitor};
use baselines::{Baseline, BaselineConfig, MemoryBank};
use dataset::ClassData;

pub enum Method {
    Ours(Box<DetectorConfig>),
    Baseline(Baseline, BaselineConfig),
}

impl Method {
    pub fn name(&self) -> String {
        match self {
            Self::Ours(_) => "Ours".into(),
            Self::Baseline(b, _) => b.name().into(),
        }
    }
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

/// Fits `method` on a class's training clouds and scores its test clouds.
pub fn evaluate_class(class: &ClassData, method: &Method, device: Device, monitor: &mut dyn Monitor) -> Result<ClassResult> {
    let scorer: Box<dyn Fn(&[crate::geometry::Point]) -> Result<Vec<f32>>> = match method {
        Method::Ours(cfg) => {
            let clouds = class.train.iter().map(|c| train::TrainingCloud { name: c.name.clone(), points: c.points.clone() }).collect();
            let (detector, _) = train::train((**cfg).clone(), clouds, &[], device, monitor)?;
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
    let cloud_scores: Vec<f32> = all_scores.iter().map(|s| s.iter().copied().fold(f32::NEG_INFINITY, f32::max)).collect();
    let cloud_labels: Vec<bool> = class.test.iter().map(dataset::TestCloud::is_defective).collect();
    let mut pooled: Vec<f32> = all_scores.concat();
    metrics::min_max_normalise(&mut pooled);
    let pooled_labels: Vec<bool> = class.test.iter().flat_map(|c| c.labels.iter().copied()).collect();
    Ok(ClassResult {
        method: method.name(),
        class: class.name.clone(),
        object_auroc: metrics::auroc(&cloud_scores, &cloud_labels),
        object_ap: metrics::average_precision(&cloud_scores, &cloud_labels),
        point_auroc: metrics::auroc(&pooled, &pooled_labels),
        point_ap: metrics::average_precision(&pooled, &pooled_labels),
        clouds_per_second,
        test_clouds: class.test.len(),
    })
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
        out.push_str(&format!("#### {title}\n\n| class | {} |\n|---|{}\n", methods.join(" | "), "---:|".repeat(methods.len())));
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
