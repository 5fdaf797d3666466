//! The inspector's settings: what `config/inspector.yaml` holds under `ros__parameters`, with defaults and
//! validation in one place. Pure: the ROS layer turns node parameters into [`ParamValue`]s and calls
//! [`InspectorConfig::from_params`], so a typo or an out-of-range value stops the node at start with its name.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::DeviceChoice;

/// A parameter value as ROS carries it (the types the inspector uses).
#[derive(Clone, Debug, PartialEq)]
pub enum ParamValue {
    Bool(bool),
    Integer(i64),
    Double(f64),
    String(String),
    StringArray(Vec<String>),
    /// No value; also what rcl makes of an empty YAML list.
    NotSet,
    /// Other arrays: never valid for the inspector's parameters.
    Other(&'static str),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InspectorConfig {
    /// sensor_msgs/PointCloud2 from the camera (sensor-data QoS).
    pub input_topic: String,
    /// More cameras for the same node: each scan's result names the topic it came on (`source_topic`), and
    /// `queue_depth` holds per topic, so a fast camera cannot crowd out a slow one.
    pub input_topics: Vec<String>,
    /// The input cloud plus a FLOAT32 `anomaly_score` field.
    pub anomaly_cloud_topic: String,
    /// Also a packed `rgb` field (the score's heat-map colour) for viewers that cannot colour by a field.
    pub anomaly_cloud_rgb: bool,
    /// `reliable` (default) or `best_effort` (remote viewers over a lossy link).
    pub anomaly_cloud_qos: String,
    /// visualization_msgs/MarkerArray: a sphere and a score per anomalous region of a rejected part; cleared
    /// on every other verdict.
    pub defects_topic: String,
    /// inspect3d_msgs/InspectionResult for every scan.
    pub result_topic: String,
    /// Model folder to load at start; empty starts without a model (every scan gets NO_MODEL until one is
    /// activated). Changeable at run time: setting it loads that model and makes it active (roll back).
    pub model_path: String,
    /// Where the training action writes models/<model_name>/.
    pub models_dir: String,
    pub device: DeviceChoice,
    /// Run the per-scan geometry as tensor code on `device` (`geometry::device`) rather than on the host's cores:
    /// for a GPU cell, once `scripts/gpu_check.sh` has shown it faster there (the same verdicts either way).
    pub device_geometry: bool,
    /// Overrides of the model's calibrated thresholds, in [0, 1]; negative keeps the model's. Changeable at
    /// run time.
    pub cloud_threshold: f64,
    pub point_threshold: f64,
    /// Overrides of the model's voxel size (the cloud's unit) and patch count; 0 keeps the model's.
    pub voxel_size: f64,
    pub patch_count: i64,
    /// Queue policy: scans waiting to be scored. When full, the oldest waiting scan is dropped and counted,
    /// so 1 means the newest scan always wins (a cell wants the current part, not a backlog).
    pub queue_depth: i64,
    pub diagnostics_period_s: f64,
    /// Detector configuration (JSON) for models the training action makes; empty: the method's defaults.
    pub training_config: String,
    /// Training action defaults for goals that leave them at 0.
    pub training_epochs: i64,
    pub target_false_reject_rate: f64,
}

impl Default for InspectorConfig {
    fn default() -> Self {
        Self {
            input_topic: "/camera/points".into(),
            input_topics: Vec::new(),
            anomaly_cloud_topic: "~/anomaly_cloud".into(),
            anomaly_cloud_rgb: false,
            anomaly_cloud_qos: "reliable".into(),
            defects_topic: "~/defects".into(),
            result_topic: "~/result".into(),
            model_path: String::new(),
            models_dir: "models".into(),
            device: DeviceChoice::Auto,
            device_geometry: false,
            cloud_threshold: -1.0,
            point_threshold: -1.0,
            voxel_size: 0.0,
            patch_count: 0,
            queue_depth: 1,
            diagnostics_period_s: 1.0,
            training_config: String::new(),
            training_epochs: 0,
            target_false_reject_rate: 0.0,
        }
    }
}

/// Parameters ROS itself may pass to any node; accepted and ignored.
const ROS_OWN: [&str; 1] = ["use_sim_time"];

impl InspectorConfig {
    /// Every parameter name the inspector reads, in the YAML's order.
    pub const NAMES: [&'static str; 20] = [
        "input_topic",
        "input_topics",
        "anomaly_cloud_topic",
        "anomaly_cloud_rgb",
        "anomaly_cloud_qos",
        "defects_topic",
        "result_topic",
        "model_path",
        "models_dir",
        "device",
        "device_geometry",
        "cloud_threshold",
        "point_threshold",
        "voxel_size",
        "patch_count",
        "queue_depth",
        "diagnostics_period_s",
        "training_config",
        "training_epochs",
        "target_false_reject_rate",
    ];

    /// Builds the configuration from parameters over the defaults, then validates it. Unknown names and wrong
    /// types are errors (a typo in the YAML must not silently keep a default).
    pub fn from_params<'a>(params: impl IntoIterator<Item = (&'a str, ParamValue)>) -> Result<Self, String> {
        let mut config = Self::default();
        for (name, value) in params {
            if !ROS_OWN.contains(&name) {
                config.set(name, value)?;
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Sets one parameter (type-checked, not yet validated as a whole).
    pub fn set(&mut self, name: &str, value: ParamValue) -> Result<(), String> {
        fn text(name: &str, v: ParamValue) -> Result<String, String> {
            match v {
                ParamValue::String(s) => Ok(s),
                other => Err(format!("parameter {name} must be a string, got {other:?}")),
            }
        }
        fn texts(name: &str, v: ParamValue) -> Result<Vec<String>, String> {
            match v {
                ParamValue::StringArray(s) => Ok(s),
                ParamValue::NotSet => Ok(Vec::new()),
                other => Err(format!("parameter {name} must be a list of strings, got {other:?}")),
            }
        }
        fn boolean(name: &str, v: ParamValue) -> Result<bool, String> {
            match v {
                ParamValue::Bool(b) => Ok(b),
                other => Err(format!("parameter {name} must be true or false, got {other:?}")),
            }
        }
        fn number(name: &str, v: ParamValue) -> Result<f64, String> {
            match v {
                ParamValue::Double(x) => Ok(x),
                ParamValue::Integer(i) => Ok(i as f64),
                other => Err(format!("parameter {name} must be a number, got {other:?}")),
            }
        }
        fn integer(name: &str, v: ParamValue) -> Result<i64, String> {
            match v {
                ParamValue::Integer(i) => Ok(i),
                other => Err(format!("parameter {name} must be an integer, got {other:?}")),
            }
        }
        match name {
            "input_topic" => self.input_topic = text(name, value)?,
            "input_topics" => self.input_topics = texts(name, value)?,
            "anomaly_cloud_topic" => self.anomaly_cloud_topic = text(name, value)?,
            "anomaly_cloud_rgb" => self.anomaly_cloud_rgb = boolean(name, value)?,
            "anomaly_cloud_qos" => self.anomaly_cloud_qos = text(name, value)?,
            "defects_topic" => self.defects_topic = text(name, value)?,
            "result_topic" => self.result_topic = text(name, value)?,
            "model_path" => self.model_path = text(name, value)?,
            "models_dir" => self.models_dir = text(name, value)?,
            "device" => {
                self.device = match text(name, value)?.as_str() {
                    "auto" => DeviceChoice::Auto,
                    "cpu" => DeviceChoice::Cpu,
                    "cuda" => DeviceChoice::Cuda,
                    other => return Err(format!("parameter device must be auto, cpu or cuda, got '{other}'")),
                }
            }
            "device_geometry" => self.device_geometry = boolean(name, value)?,
            "cloud_threshold" => self.cloud_threshold = number(name, value)?,
            "point_threshold" => self.point_threshold = number(name, value)?,
            "voxel_size" => self.voxel_size = number(name, value)?,
            "patch_count" => self.patch_count = integer(name, value)?,
            "queue_depth" => self.queue_depth = integer(name, value)?,
            "diagnostics_period_s" => self.diagnostics_period_s = number(name, value)?,
            "training_config" => self.training_config = text(name, value)?,
            "training_epochs" => self.training_epochs = integer(name, value)?,
            "target_false_reject_rate" => self.target_false_reject_rate = number(name, value)?,
            other => return Err(format!("unknown parameter '{other}' (known: {})", Self::NAMES.join(", "))),
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), String> {
        for (name, topic) in [
            ("input_topic", &self.input_topic),
            ("anomaly_cloud_topic", &self.anomaly_cloud_topic),
            ("defects_topic", &self.defects_topic),
            ("result_topic", &self.result_topic),
        ] {
            check_topic(topic).map_err(|e| format!("parameter {name} '{topic}': {e}"))?;
        }
        for (k, topic) in self.input_topics.iter().enumerate() {
            check_topic(topic).map_err(|e| format!("parameter input_topics '{topic}': {e}"))?;
            if *topic == self.input_topic || self.input_topics[..k].contains(topic) {
                return Err(format!("parameter input_topics: '{topic}' is named twice"));
            }
        }
        if !["reliable", "best_effort"].contains(&self.anomaly_cloud_qos.as_str()) {
            return Err(format!(
                "parameter anomaly_cloud_qos must be reliable or best_effort, got '{}'",
                self.anomaly_cloud_qos
            ));
        }
        let threshold_ok = |t: f64| t < 0.0 || (0.0..=1.0).contains(&t);
        let checks = [
            (!self.models_dir.trim().is_empty(), "models_dir must not be empty".to_string()),
            (
                threshold_ok(self.cloud_threshold),
                format!("cloud_threshold must be in [0, 1] (negative: the model's), got {}", self.cloud_threshold),
            ),
            (
                threshold_ok(self.point_threshold),
                format!("point_threshold must be in [0, 1] (negative: the model's), got {}", self.point_threshold),
            ),
            (
                self.voxel_size >= 0.0 && self.voxel_size.is_finite(),
                format!("voxel_size must be >= 0 (0: the model's), got {}", self.voxel_size),
            ),
            (
                self.patch_count == 0 || self.patch_count >= 8,
                format!("patch_count must be 0 (the model's) or at least 8, got {}", self.patch_count),
            ),
            (
                (1..=1000).contains(&self.queue_depth),
                format!("queue_depth must be in 1..=1000, got {}", self.queue_depth),
            ),
            (
                self.diagnostics_period_s > 0.0 && self.diagnostics_period_s.is_finite(),
                format!("diagnostics_period_s must be > 0, got {}", self.diagnostics_period_s),
            ),
            (
                (0..=100_000).contains(&self.training_epochs),
                format!(
                    "training_epochs must be in 0..=100000 (0: the method's default), got {}",
                    self.training_epochs
                ),
            ),
            (
                self.target_false_reject_rate == 0.0
                    || (self.target_false_reject_rate > 0.0 && self.target_false_reject_rate <= 0.5),
                format!(
                    "target_false_reject_rate must be in (0, 0.5] (0: the method's default), got {}",
                    self.target_false_reject_rate
                ),
            ),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err(format!("parameter {message}")),
            None => Ok(()),
        }
    }

    /// Every topic scans come on: `input_topic`, then `input_topics`.
    pub fn inputs(&self) -> Vec<&str> {
        std::iter::once(self.input_topic.as_str()).chain(self.input_topics.iter().map(String::as_str)).collect()
    }

    /// The model to load at start, if any.
    pub fn initial_model(&self) -> Option<PathBuf> {
        (!self.model_path.trim().is_empty()).then(|| PathBuf::from(&self.model_path))
    }

    /// A threshold override, if the parameter sets one.
    pub fn threshold_override(value: f64) -> Option<f32> {
        (value >= 0.0).then_some(value as f32)
    }
}

/// ROS topic name rules (rcl's), enough to catch typos before rcl answers with a bare error code.
fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("empty".into());
    }
    let body = topic.strip_prefix("~/").or_else(|| topic.strip_prefix('/')).unwrap_or(topic);
    if body.is_empty() || body.ends_with('/') || body.contains("//") {
        return Err("empty name segment".into());
    }
    for segment in body.split('/') {
        if segment.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("segment '{segment}' starts with a digit"));
        }
        if let Some(c) = segment.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_')) {
            return Err(format!("character '{c}' is not allowed (letters, digits, '_', '/')"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(InspectorConfig::default().validate(), Ok(()));
    }

    #[test]
    fn params_override_defaults_and_typos_are_named() {
        let config = InspectorConfig::from_params([
            ("input_topic", ParamValue::String("/cell3/points".into())),
            ("cloud_threshold", ParamValue::Integer(1)),
            ("queue_depth", ParamValue::Integer(4)),
            ("use_sim_time", ParamValue::Bool(false)),
            ("device_geometry", ParamValue::Bool(true)),
        ])
        .unwrap();
        assert_eq!(config.input_topic, "/cell3/points");
        assert!(config.device_geometry);
        assert_eq!(config.cloud_threshold, 1.0);
        assert_eq!(config.queue_depth, 4);
        let typo = InspectorConfig::from_params([("input_topik", ParamValue::String("/x".into()))]).unwrap_err();
        assert!(typo.contains("unknown parameter 'input_topik'"), "{typo}");
        let wrong_type = InspectorConfig::from_params([("queue_depth", ParamValue::Double(1.5))]).unwrap_err();
        assert!(wrong_type.contains("queue_depth must be an integer"), "{wrong_type}");
        let range = InspectorConfig::from_params([("point_threshold", ParamValue::Double(1.5))]).unwrap_err();
        assert!(range.contains("point_threshold must be in [0, 1]"), "{range}");
        let device = InspectorConfig::from_params([("device", ParamValue::String("gpu".into()))]).unwrap_err();
        assert!(device.contains("auto, cpu or cuda"), "{device}");
        let flag = InspectorConfig::from_params([("device_geometry", ParamValue::String("yes".into()))]).unwrap_err();
        assert!(flag.contains("device_geometry must be true or false"), "{flag}");
        let cameras = ParamValue::StringArray(vec!["/cell3/left/points".into(), "/cell3/right/points".into()]);
        let config = InspectorConfig::from_params([("input_topics", cameras)]).unwrap();
        assert_eq!(config.inputs(), ["/camera/points", "/cell3/left/points", "/cell3/right/points"]);
        let twice = ParamValue::StringArray(vec!["/camera/points".into()]);
        let twice = InspectorConfig::from_params([("input_topics", twice)]).unwrap_err();
        assert!(twice.contains("named twice"), "{twice}");
        let not_a_list = InspectorConfig::from_params([("input_topics", ParamValue::String("/a".into()))]).unwrap_err();
        assert!(not_a_list.contains("must be a list of strings"), "{not_a_list}");
    }

    #[test]
    fn topic_names_are_checked() {
        for good in ["/camera/points", "~/result", "points", "/a_1/b2"] {
            assert_eq!(check_topic(good), Ok(()), "{good}");
        }
        for bad in ["", "/", "/a//b", "/a/", "/1a", "/a b", "/a-b"] {
            assert!(check_topic(bad).is_err(), "{bad}");
        }
    }
}
