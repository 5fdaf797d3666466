//! `inspect3d_node`: subscribes to a camera's PointCloud2 and publishes, for every scan, the cloud with a
//! per-point `anomaly_score` and an InspectionResult; diagnostics about once a second; thresholds and the
//! active model changeable through parameters; the training action (see [`super::train_action`]). Everything
//! it computes happens in [`crate::inspector`] on threads of its own, so the executor keeps answering meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use indexmap::IndexMap;
use r2r::diagnostic_msgs::msg::{DiagnosticArray, DiagnosticStatus, KeyValue};
use r2r::inspect3d_msgs::msg::InspectionResult;
use r2r::std_msgs::msg::Header;
use r2r::visualization_msgs::msg::{Marker, MarkerArray};
use r2r::{Parameter, ParameterValue, QosProfile, RosParams};
use tch::Device;

use super::{now_stamp, train_action};
use crate::cloud::cdr::{self, POINT_CLOUD2};
use crate::inspector::config::{InspectorConfig, ParamValue};
use crate::inspector::{Inspector, LoadedModel, Outcome, Report, ThresholdOverrides};

pub const NODE_NAME: &str = "inspect3d_node";

/// What the node's parts share: the service, its configuration (as currently set) and the device.
pub struct NodeState {
    /// The node's fully qualified name.
    pub name: String,
    pub inspector: Inspector<ScanTag>,
    pub config: Mutex<InspectorConfig>,
    pub device: Device,
}

impl NodeState {
    pub fn config(&self) -> InspectorConfig {
        self.config.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Loads a model folder with the configured overrides and makes it active for the next scan.
    pub fn activate_path(&self, path: &std::path::Path) -> Result<Option<String>, String> {
        let config = self.config();
        let model = LoadedModel::load(path, self.device, &config)
            .map_err(|e| format!("cannot activate {}: {e}", path.display()))?;
        let previous = self.inspector.activate(model);
        self.config.lock().unwrap_or_else(|p| p.into_inner()).model_path = path.display().to_string();
        Ok(previous.map(|m| m.id.clone()))
    }
}

fn param_value(value: &ParameterValue) -> ParamValue {
    match value {
        ParameterValue::Bool(b) => ParamValue::Bool(*b),
        ParameterValue::Integer(i) => ParamValue::Integer(*i),
        ParameterValue::Double(x) => ParamValue::Double(*x),
        ParameterValue::String(s) => ParamValue::String(s.clone()),
        ParameterValue::StringArray(s) => ParamValue::StringArray(s.clone()),
        ParameterValue::NotSet => ParamValue::NotSet,
        _ => ParamValue::Other("an array that is not of strings"),
    }
}

fn ros_value(config: &InspectorConfig, name: &str) -> Option<ParameterValue> {
    let json = serde_json::to_value(config).ok()?;
    Some(match json.get(name)? {
        serde_json::Value::String(s) => ParameterValue::String(s.clone()),
        serde_json::Value::Number(n) if n.is_i64() => ParameterValue::Integer(n.as_i64()?),
        serde_json::Value::Number(n) => ParameterValue::Double(n.as_f64()?),
        serde_json::Value::Bool(b) => ParameterValue::Bool(*b),
        serde_json::Value::Array(items) => {
            ParameterValue::StringArray(items.iter().map(|v| v.as_str().map(str::to_string)).collect::<Option<_>>()?)
        }
        _ => return None,
    })
}

/// The node's parameters as the parameter services see them: every name readable, thresholds and
/// `model_path` settable at run time (validated; a refused set says why), the rest fixed at start.
struct RuntimeParams(Arc<NodeState>);

const SETTABLE: [&str; 3] = ["cloud_threshold", "point_threshold", "model_path"];

impl RosParams for RuntimeParams {
    fn register_parameters(
        &mut self,
        _prefix: &str,
        _param: Option<Parameter>,
        params: &mut IndexMap<String, Parameter>,
    ) -> r2r::Result<()> {
        let config = self.0.config();
        for name in InspectorConfig::NAMES {
            if let Some(value) = ros_value(&config, name) {
                params.insert(name.to_string(), Parameter::new(value));
            }
        }
        Ok(())
    }

    fn get_parameter(&mut self, name: &str) -> r2r::Result<ParameterValue> {
        ros_value(&self.0.config(), name).ok_or_else(|| r2r::Error::InvalidParameterName { name: name.into() })
    }

    fn check_parameter(&self, name: &str, value: &ParameterValue) -> r2r::Result<()> {
        self.candidate(name, value).map(|_| ())
    }

    fn set_parameter(&mut self, name: &str, value: &ParameterValue) -> r2r::Result<()> {
        let candidate = self.candidate(name, value)?;
        let refused = |msg: String| r2r::Error::ParameterValueConv { name: name.into(), msg };
        if name == "model_path" {
            let previous = self.0.activate_path(std::path::Path::new(&candidate.model_path)).map_err(refused)?;
            tracing::info!(path = candidate.model_path, previous, "model_path set: model activated");
            return Ok(());
        }
        self.0.inspector.set_overrides(overrides(&candidate));
        tracing::info!(
            cloud = candidate.cloud_threshold,
            point = candidate.point_threshold,
            "threshold overrides set (negative: the model's)"
        );
        *self.0.config.lock().unwrap_or_else(|p| p.into_inner()) = candidate;
        Ok(())
    }
}

impl RuntimeParams {
    /// The configuration with one parameter changed, if that change is allowed and valid.
    fn candidate(&self, name: &str, value: &ParameterValue) -> r2r::Result<InspectorConfig> {
        let refused = |msg: String| r2r::Error::ParameterValueConv { name: name.into(), msg };
        if !InspectorConfig::NAMES.contains(&name) {
            return Err(r2r::Error::InvalidParameterName { name: name.into() });
        }
        if !SETTABLE.contains(&name) {
            return Err(refused(format!(
                "fixed while running (settable: {}); change it in the YAML and restart",
                SETTABLE.join(", ")
            )));
        }
        let mut config = self.0.config();
        config.set(name, param_value(value)).map_err(refused)?;
        config.validate().map_err(refused)?;
        if name == "model_path" && config.initial_model().is_none() {
            return Err(refused("an empty model_path cannot be activated".into()));
        }
        Ok(config)
    }
}

fn overrides(config: &InspectorConfig) -> ThresholdOverrides {
    ThresholdOverrides {
        cloud: InspectorConfig::threshold_override(config.cloud_threshold),
        point: InspectorConfig::threshold_override(config.point_threshold),
    }
}

/// Reads and validates the node's parameters (from `--ros-args --params-file` and `-p`).
fn read_config(node: &r2r::Node) -> Result<InspectorConfig> {
    let params = node.params.lock().unwrap_or_else(|p| p.into_inner());
    let values: Vec<(String, ParamValue)> = params.iter().map(|(k, p)| (k.clone(), param_value(&p.value))).collect();
    InspectorConfig::from_params(values.iter().map(|(k, v)| (k.as_str(), v.clone())))
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
}

/// What the node remembers of a scan until its result goes out.
pub struct ScanTag {
    pub header: Header,
    pub topic: String,
}

fn result_message(report: &Report<ScanTag>) -> InspectionResult {
    let mut result = InspectionResult {
        header: report.tag.header.clone(),
        source_topic: report.tag.topic.clone(),
        model_id: report.model_id.clone(),
        latency_ms: report.latency_ms as f32,
        score: f32::NAN,
        threshold: report.thresholds.map_or(f32::NAN, |t| t.cloud),
        ..Default::default()
    };
    match &report.outcome {
        Outcome::Scored { inspection, .. } => {
            result.passed = inspection.passed;
            result.status =
                if inspection.passed { InspectionResult::PASS as u8 } else { InspectionResult::REJECT as u8 };
            result.score = inspection.cloud_score;
            result.valid_points = inspection.valid_points as u32;
            result.outlier_points = inspection.outlier_points as u32;
            result.anomalous_points = inspection.anomalous_points as u32;
            result.anomalous_fraction = inspection.anomalous_points as f32 / inspection.valid_points.max(1) as f32;
            if let Some(defect) = &inspection.defect {
                let [x, y, z] = defect.centroid;
                result.defect_centroid = r2r::geometry_msgs::msg::Point { x: x.into(), y: y.into(), z: z.into() };
                result.defect_extent = defect.extent;
            }
            if !inspection.passed {
                result.message = format!(
                    "score {:.3} above {:.3}; {} anomalous points",
                    inspection.cloud_score, inspection.thresholds.cloud, inspection.anomalous_points
                );
            }
        }
        Outcome::InvalidInput(why) => {
            result.status = InspectionResult::INVALID_INPUT as u8;
            result.message = format!("invalid input: {why}");
        }
        Outcome::NoModel => {
            result.status = InspectionResult::NO_MODEL as u8;
            result.message = "no model loaded: set the model_path parameter or train one with ~/train".into();
        }
        Outcome::Failed(why) => {
            result.status = InspectionResult::ERROR as u8;
            result.message = why.clone();
        }
        Outcome::Dropped => {
            result.status = InspectionResult::DROPPED as u8;
            result.message = "dropped unscored: newer scans arrived while the queue was full (queue_depth)".into();
        }
    }
    result
}

/// Where the node's answers go.
#[derive(Clone)]
struct Outputs {
    results: r2r::Publisher<InspectionResult>,
    /// Anomaly clouds go out as the CDR bytes [`cdr::encode_point_cloud_into`] writes.
    clouds: r2r::PublisherUntyped,
    defects: r2r::Publisher<MarkerArray>,
}

/// Most regions drawn for one scan (strongest first): a noisy scan must not flood a viewer.
const MAX_MARKED_REGIONS: usize = 32;

/// Publishes a report's verdict, then (when scored) its anomaly cloud, serialized into `cloud_bytes` (a buffer
/// kept from scan to scan), then the defect markers: the regions of a rejected part, nothing for any other verdict
/// (a dropped scan leaves the markers of the scan shown).
fn publish_report(out: &Outputs, report: Report<ScanTag>, cloud_bytes: &mut Vec<u8>) {
    // The verdict first: the robot waits on it, not on the (large) anomaly cloud.
    let result = result_message(&report);
    if let Err(e) = out.results.publish(&result) {
        tracing::warn!("publishing the result: {e}");
    }
    tracing::info!(
        status = result.status,
        score = result.score,
        latency_ms = format!("{:.0}", result.latency_ms),
        message = result.message,
        "scan"
    );
    let regions = match &report.outcome {
        Outcome::Dropped => return,
        Outcome::Scored { inspection, .. } if !inspection.passed => inspection.regions.as_slice(),
        _ => &[],
    };
    let header = &report.tag.header;
    let markers = defect_markers(header, regions);
    if let Outcome::Scored { inspection, anomaly_cloud: Some(cloud) } = &report.outcome {
        let stamp = (header.stamp.sec, header.stamp.nanosec);
        let written = cdr::encode_point_cloud_into(cloud_bytes, stamp, &header.frame_id, cloud.head(), |out| {
            cloud.write_data(&inspection.point_scores, out)
        });
        match written {
            Ok(()) => {
                if let Err(e) = out.clouds.publish_raw(cloud_bytes) {
                    tracing::warn!("publishing the anomaly cloud: {e}");
                }
            }
            Err(e) => tracing::warn!("writing the anomaly cloud: {e}"),
        }
    }
    if let Err(e) = out.defects.publish(&markers) {
        tracing::warn!("publishing the defect markers: {e}");
    }
}

/// RViz markers for defect regions in the scan's frame: first a DELETEALL (so the previous part's are gone),
/// then per region a translucent red sphere as wide as the region and a text with its peak score above it.
fn defect_markers(header: &Header, regions: &[crate::model::scoring::DefectRegion]) -> MarkerArray {
    use r2r::geometry_msgs::msg::{Point as RosPoint, Pose, Quaternion, Vector3};
    use r2r::std_msgs::msg::ColorRGBA;
    let clear = Marker { header: header.clone(), action: Marker::DELETEALL as i32, ..Default::default() };
    let mut markers = vec![clear];
    for (id, region) in regions.iter().take(MAX_MARKED_REGIONS).enumerate() {
        let [x, y, z] = region.centroid.map(f64::from);
        // A region of one point has extent 0; it still needs a visible size.
        let diameter = f64::from(2.0 * region.extent).max(1e-3);
        let added = |ns: &str, type_: i32, lift: f64| Marker {
            header: header.clone(),
            ns: ns.into(),
            id: id as i32,
            type_,
            action: Marker::ADD as i32,
            pose: Pose {
                position: RosPoint { x, y, z: z + lift },
                orientation: Quaternion { w: 1.0, ..Default::default() },
            },
            ..Default::default()
        };
        markers.push(Marker {
            scale: Vector3 { x: diameter, y: diameter, z: diameter },
            color: ColorRGBA { r: 1.0, g: 0.1, b: 0.1, a: 0.5 },
            ..added("inspect3d_defects", Marker::SPHERE as i32, 0.0)
        });
        markers.push(Marker {
            scale: Vector3 { z: diameter / 2.0, ..Default::default() },
            color: ColorRGBA { r: 1.0, g: 1.0, b: 1.0, a: 1.0 },
            text: format!("{:.2}", region.peak),
            ..added("inspect3d_scores", Marker::TEXT_VIEW_FACING as i32, diameter)
        });
    }
    MarkerArray { markers }
}

fn diagnostics(state: &NodeState, name: &str, stamp: r2r::builtin_interfaces::msg::Time) -> DiagnosticArray {
    let stats = state.inspector.stats();
    let model = state.inspector.active_model();
    let (level, message) = match &model {
        None => (DiagnosticStatus::WARN as u8, "no model loaded".to_string()),
        Some(_) if stats.failed > 0 => {
            (DiagnosticStatus::WARN as u8, format!("{} scans failed to score", stats.failed))
        }
        Some(m) => (DiagnosticStatus::OK as u8, format!("inspecting with {}", m.id)),
    };
    let entry = |key: &str, value: String| KeyValue { key: key.into(), value };
    let device = format!("{:?}", state.device).to_lowercase();
    DiagnosticArray {
        header: Header { stamp, frame_id: String::new() },
        status: vec![DiagnosticStatus {
            level,
            name: format!("{name}: inspector"),
            message,
            hardware_id: device.clone(),
            values: vec![
                entry("model_id", model.as_ref().map(|m| m.id.clone()).unwrap_or_default()),
                entry("model_path", model.as_ref().map(|m| m.path.display().to_string()).unwrap_or_default()),
                entry("device", device),
                entry("scans_received", stats.received.to_string()),
                entry("scans_scored", stats.scored().to_string()),
                entry("scans_rejected", stats.rejected.to_string()),
                entry("scans_invalid", stats.invalid.to_string()),
                entry("scans_dropped", stats.dropped.to_string()),
                entry("scans_failed", stats.failed.to_string()),
                entry("scans_waiting", stats.waiting.to_string()),
                entry("latency_p50_ms", format!("{:.1}", stats.latency_p50_ms)),
                entry("latency_p95_ms", format!("{:.1}", stats.latency_p95_ms)),
            ],
        }],
    }
}

/// Runs the node until SIGINT or SIGTERM. With `check_only`, validates the parameters (and loads the model)
/// and returns the configuration without starting anything.
pub fn run(check_only: bool) -> Result<Option<InspectorConfig>> {
    let ctx = ros_context()?;
    let mut node = r2r::Node::create(ctx, NODE_NAME, "").context("creating the node")?;
    let config = read_config(&node)?;
    let device = config.device.resolve()?;
    let model = match config.initial_model() {
        Some(path) => Some(
            LoadedModel::load(&path, device, &config)
                .with_context(|| format!("parameter model_path: loading {}", path.display()))?,
        ),
        None => None,
    };
    if check_only {
        return Ok(Some(config));
    }
    let name = node.fully_qualified_name()?;
    tracing::info!(node = name, device = ?device, "starting");
    match &model {
        // After a restart the node always starts with the configured model, whatever was activated before:
        // the parameters are the cell's record of what it inspects with.
        Some(m) => tracing::info!(
            model = m.id(),
            path = %m.path.display(),
            "starting with the model of parameter model_path (a model activated at run time is not remembered across restarts)"
        ),
        None => tracing::warn!("no model_path: every scan gets NO_MODEL until a model is trained or activated"),
    }
    for leftover in crate::model::store::remove_staging_leftovers(std::path::Path::new(&config.models_dir)) {
        tracing::warn!(path = %leftover.display(), "removed an unfinished model folder left by a killed training job");
    }

    let cloud_qos = match config.anomaly_cloud_qos.as_str() {
        "best_effort" => QosProfile::default().best_effort(),
        _ => QosProfile::default(),
    };
    let outputs = Outputs {
        results: node.create_publisher::<InspectionResult>(&config.result_topic, QosProfile::default())?,
        clouds: node.create_publisher_untyped(&config.anomaly_cloud_topic, POINT_CLOUD2, cloud_qos)?,
        defects: node.create_publisher::<MarkerArray>(&config.defects_topic, QosProfile::default())?,
    };
    let diagnostics_pub = node.create_publisher::<DiagnosticArray>("/diagnostics", QosProfile::default())?;
    let for_dropped = outputs.clone();
    let mut cloud_bytes = Vec::new();
    let inspector = Inspector::start(config.queue_depth as usize, model, overrides(&config), move |report| {
        publish_report(&outputs, report, &mut cloud_bytes)
    });
    inspector.set_rgb(config.anomaly_cloud_rgb);
    let state = Arc::new(NodeState { name: name.clone(), inspector, config: Mutex::new(config.clone()), device });

    let mut inputs = Vec::new();
    for topic in config.inputs() {
        // As CDR bytes, decoded where they are: no message struct, no second copy of the points.
        let scans = node
            .subscribe_raw(topic, POINT_CLOUD2, QosProfile::sensor_data())
            .with_context(|| format!("subscribing to {topic}"))?;
        inputs.push((topic.to_string(), scans));
    }
    let (param_handler, mut param_events) =
        node.make_derived_parameter_handler(Arc::new(Mutex::new(RuntimeParams(state.clone()))))?;
    let trainer = train_action::TrainServer::new(&mut node, state.clone())?;

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let spin_stop = stop.clone();
    let spinner = std::thread::Builder::new().name("ros-spin".into()).spawn(move || {
        while !spin_stop.load(Ordering::Relaxed) {
            node.spin_once(Duration::from_millis(20));
        }
    })?;

    runtime.block_on(async {
        tokio::spawn(param_handler);
        tokio::spawn(async move { while param_events.next().await.is_some() {} });
        for (lane, (topic, mut scans)) in inputs.into_iter().enumerate() {
            let (intake, outputs) = (state.clone(), for_dropped.clone());
            tokio::spawn(async move {
                while let Some(bytes) = scans.next().await {
                    let scan = match cdr::decode_point_cloud_owned(bytes) {
                        Ok(scan) => scan,
                        // A message not even its header can be read from (no stamp to answer with): what rcl
                        // would have refused to take from a typed subscription.
                        Err(e) => {
                            tracing::warn!(topic, "a message on the input topic is not a PointCloud2: {e}");
                            continue;
                        }
                    };
                    let layout = scan.layout;
                    tracing::debug!(topic, points = layout.width as usize * layout.height as usize, "scan received");
                    let stamp = r2r::builtin_interfaces::msg::Time { sec: scan.stamp_sec, nanosec: scan.stamp_nanosec };
                    let tag = ScanTag { header: Header { stamp, frame_id: scan.frame_id }, topic: topic.clone() };
                    // Nobody to receive this scan's anomaly cloud (no RViz, no bag recording it): skip building
                    // and sending ~5 MB per frame. An error counts as a subscriber.
                    let listeners = outputs.clouds.get_inter_process_subscription_count().unwrap_or(1);
                    intake.inspector.set_clouds_wanted(listeners > 0);
                    if let Some(dropped) = intake.inspector.submit_on(lane, tag, layout) {
                        // A dropped scan has no anomaly cloud to write.
                        publish_report(&outputs, dropped, &mut Vec::new());
                    }
                }
            });
        }
        let diag_state = state.clone();
        let period = Duration::from_secs_f64(config.diagnostics_period_s);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            loop {
                ticks.tick().await;
                if let Err(e) = diagnostics_pub.publish(&diagnostics(&diag_state, &name, now_stamp())) {
                    tracing::warn!("publishing diagnostics: {e}");
                }
            }
        });
        tokio::spawn(trainer.serve());
        wait_for_signal().await
    })?;

    tracing::info!("shutting down");
    runtime.shutdown_timeout(Duration::from_secs(2));
    // The scan in progress is finished and published while the node still exists.
    state.inspector.shutdown();
    stop.store(true, Ordering::Relaxed);
    if spinner.join().is_err() {
        bail!("the ROS spin thread panicked");
    }
    Ok(None)
}

/// The ROS context. r2r panics on `--ros-args` that rcl cannot parse (e.g. `-p model_path:=` without a value);
/// that becomes an error saying which argument, instead of a panic trace.
fn ros_context() -> Result<r2r::Context> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let created = std::panic::catch_unwind(r2r::Context::create);
    std::panic::set_hook(hook);
    match created {
        Ok(ctx) => ctx.context("creating the ROS context (is the ROS environment sourced?)"),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            bail!("the ROS arguments were refused: {what}")
        }
    }
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = interrupt.recv() => tracing::info!("SIGINT"),
        _ = terminate.recv() => tracing::info!("SIGTERM"),
    }
    Ok(())
}
