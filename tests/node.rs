//! inspect3d_node as a robot cell runs it: a separate process, started from config/inspector.yaml with its own
//! name and input topic; this test process talks to it over real DDS (scans in, results and anomaly clouds
//! out, parameter services, diagnostics, signals). Needs the ROS environment (source .deps/env.sh).
#![cfg(feature = "ros")]

use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use inspect3d::cloud::pointcloud2::{self, PointCloud2Layout, PointFieldLayout};
use inspect3d::cloud::{PointCloud, read_cloud};
use inspect3d::inspector::SCORE_FIELD;
use inspect3d::model::store;
use inspect3d::ros::client::InspectorClient;
use r2r::inspect3d_msgs::msg::InspectionResult;
use r2r::{ParameterValue, QosProfile};

mod common;
use common::{Spinning, TestNode, repo, set_parameters, unique};

const TIMEOUT: Duration = Duration::from_secs(60);
const MODEL: &str = "models/featuretype";

fn scan(name: &str) -> PointCloud {
    read_cloud(&repo().join("tests/data/cell_scans").join(format!("{name}.pcd"))).unwrap()
}

fn connect(node: &TestNode) -> InspectorClient {
    InspectorClient::connect(&node.fqn(), &node.input_topic, TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}\nnode log:\n{}", node.log_text()))
}

/// A cell's verdict consumer alone: the node skips the anomaly clouds nobody receives, and sends them again as
/// soon as someone subscribes (RViz, a bag recording), with the same verdicts either way.
#[test]
fn verdicts_come_without_an_anomaly_cloud_subscriber_and_clouds_return_with_one() {
    let node = TestNode::start(MODEL, &[]);
    let sent = pointcloud2::encode(&scan("002_sink"));
    let mut results_only = InspectorClient::connect_for_results(&node.fqn(), &node.input_topic, TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}\nnode log:\n{}", node.log_text()));
    let (alone, _) = results_only.inspect(&sent, TIMEOUT).unwrap();
    assert_eq!(alone.status, InspectionResult::REJECT as u8, "{}", alone.message);
    assert!(results_only.cloud_for(results_only.last_stamp(), Duration::ZERO).is_none());

    let mut viewer = connect(&node);
    let (watched, _) = viewer.inspect(&sent, TIMEOUT).unwrap();
    assert_eq!((watched.status, watched.score), (alone.status, alone.score));
    let cloud = viewer.cloud_for(viewer.last_stamp(), TIMEOUT).expect("the anomaly cloud, once someone subscribes");
    assert_eq!(cloud.layout.width * cloud.layout.height, sent.width * sent.height);
}

#[test]
fn scans_get_verdicts_and_anomaly_clouds_equal_to_the_library() {
    let node = TestNode::start(MODEL, &[]);
    let mut client = connect(&node);
    let (detector, manifest) = store::load(&repo().join(MODEL), tch::Device::Cpu).unwrap();
    for name in ["000_good", "002_sink"] {
        let cloud = scan(name);
        let sent = pointcloud2::encode(&cloud);
        let (result, _) = client.inspect(&sent, TIMEOUT).unwrap();
        let expected = detector.inspect(&cloud).unwrap();
        assert_eq!(result.model_id, manifest.model_id);
        assert_eq!(result.passed, expected.passed, "{name}: {}", result.message);
        let status = if expected.passed { InspectionResult::PASS as u8 } else { InspectionResult::REJECT as u8 };
        assert_eq!(result.status, status, "{name}");
        assert!(
            (result.score - expected.cloud_score).abs() < 1e-5,
            "{name}: {} vs {}",
            result.score,
            expected.cloud_score
        );
        assert_eq!(result.threshold, manifest.thresholds.cloud);
        assert_eq!(result.valid_points as usize, expected.valid_points);
        assert_eq!(result.anomalous_points as usize, expected.anomalous_points);
        assert!(result.latency_ms > 0.0);
        assert_eq!(result.header.frame_id, "camera");

        let anomaly = client.cloud_for(client.last_stamp(), TIMEOUT).expect("anomaly cloud");
        assert_eq!(anomaly.frame_id, "camera");
        let layout = anomaly.layout;
        assert_eq!((layout.width, layout.height), (640, 480), "organised stays organised");
        assert_eq!(layout.fields[..sent.fields.len()], sent.fields[..], "input fields keep their layout");
        let added = layout.fields.last().unwrap();
        assert_eq!((added.name.as_str(), added.datatype, added.count), (SCORE_FIELD, 7, 1));
        let scored = pointcloud2::decode(&layout).unwrap();
        let positions = scored.positions().unwrap();
        assert_eq!(positions.len(), cloud.len());
        let field = scored.field(SCORE_FIELD).unwrap();
        for (i, (p, want)) in positions.iter().zip(&expected.point_scores).enumerate() {
            let got = field.value(i, 0) as f32;
            if p.iter().all(|c| c.is_finite()) {
                assert!((got - want).abs() < 1e-5, "{name} point {i}: {got} vs {want}");
            } else {
                assert!(got.is_nan(), "{name} point {i} is NaN but scored {got}");
            }
        }
    }
}

#[test]
fn several_cameras_feed_one_node_and_each_result_names_its_topic() {
    let right = format!("/{}/right/points", unique("cell"));
    let node = TestNode::start(MODEL, &[&format!("input_topics:=[{right}]")]);
    let mut left_camera = connect(&node);
    let mut right_camera = InspectorClient::connect(&node.fqn(), &right, TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}\nnode log:\n{}", node.log_text()));
    for (camera, topic, name, passed) in
        [(&mut left_camera, &node.input_topic, "000_good", true), (&mut right_camera, &right, "002_sink", false)]
    {
        let (result, _) = camera.inspect(&pointcloud2::encode(&scan(name)), TIMEOUT).unwrap();
        assert_eq!(&result.source_topic, topic, "{name}");
        assert_eq!(result.passed, passed, "{name} on {topic}: {}", result.message);
    }
}

/// The labelled points of a bundled defective scan (tests/data/cell_scans/defects).
fn defect_points(name: &str) -> Vec<[f32; 3]> {
    let text =
        std::fs::read_to_string(repo().join("tests/data/cell_scans/defects").join(format!("{name}.xyz"))).unwrap();
    text.lines()
        .map(|l| {
            let v: Vec<f32> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
            [v[0], v[1], v[2]]
        })
        .collect()
}

#[test]
fn defect_markers_mark_each_region_of_a_rejected_part_and_clear_on_a_pass() {
    use r2r::visualization_msgs::msg::{Marker, MarkerArray};
    let node = TestNode::start(MODEL, &["anomaly_cloud_rgb:=true"]);
    let ctx = r2r::Context::create().unwrap();
    let mut viewer = r2r::Node::create(ctx, &unique("viewer"), "").unwrap();
    let mut markers =
        viewer.subscribe::<MarkerArray>(&format!("{}/defects", node.fqn()), QosProfile::default()).unwrap();
    let _spin = Spinning::start(viewer);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut client = connect(&node);
    let mut next_markers =
        || runtime.block_on(async { tokio::time::timeout(TIMEOUT, markers.next()).await }).unwrap().unwrap().markers;
    let in_ns = |all: &[Marker], ns: &str| all.iter().filter(|m| m.ns == ns).cloned().collect::<Vec<_>>();

    let (result, _) = client.inspect(&pointcloud2::encode(&scan("002_sink")), TIMEOUT).unwrap();
    assert!(!result.passed, "{}", result.message);
    let array = next_markers();
    assert_eq!(array[0].action, Marker::DELETEALL as i32, "the previous part's markers go first");
    let (spheres, texts) = (in_ns(&array, "inspect3d_defects"), in_ns(&array, "inspect3d_scores"));
    assert!(!spheres.is_empty() && spheres.len() == texts.len(), "{} spheres, {} scores", spheres.len(), texts.len());
    assert!(spheres.iter().all(|m| m.type_ == Marker::SPHERE as i32 && m.header.frame_id == "camera"));
    // The strongest region sits on the labelled defect: its centre within the defect's own extent.
    let defect = defect_points("002_sink");
    let n = defect.len() as f64;
    let centre = [0, 1, 2].map(|k| defect.iter().map(|p| f64::from(p[k])).sum::<f64>() / n);
    let distance = |p: [f64; 3], q: [f64; 3]| (0..3).map(|k| (p[k] - q[k]).powi(2)).sum::<f64>().sqrt();
    let extent = defect.iter().map(|p| distance(p.map(f64::from), centre)).fold(0.0, f64::max);
    let strongest = &spheres[0].pose.position;
    let off = distance([strongest.x, strongest.y, strongest.z], centre);
    assert!(off <= extent, "strongest region {off:.1} from the defect's centre (its extent {extent:.1})");
    let cloud = client.cloud_for(client.last_stamp(), TIMEOUT).expect("anomaly cloud");
    assert!(
        cloud.layout.fields.iter().any(|f| f.name == "rgb" && f.datatype == 7),
        "anomaly_cloud_rgb adds a FLOAT32 rgb"
    );

    let (result, _) = client.inspect(&pointcloud2::encode(&scan("000_good")), TIMEOUT).unwrap();
    assert!(result.passed, "{}", result.message);
    let array = next_markers();
    assert_eq!(array.len(), 1, "a pass only clears: {array:?}");
    assert_eq!(array[0].action, Marker::DELETEALL as i32);
}

fn xyz_layout(points: &[[f32; 3]]) -> PointCloud2Layout {
    pointcloud2::encode(&PointCloud::from_xyz(points))
}

#[test]
fn bad_messages_get_invalid_input_and_the_node_keeps_running() {
    let mut node = TestNode::start(MODEL, &[]);
    let mut client = connect(&node);
    let mut truncated = xyz_layout(&[[0.0, 0.0, 1.0]; 100]);
    truncated.data.truncate(600);
    let mut no_z = xyz_layout(&[[0.0, 0.0, 1.0]; 100]);
    no_z.fields.retain(|f| f.name != "z");
    let mut bad_offset = xyz_layout(&[[0.0, 0.0, 1.0]; 100]);
    bad_offset.fields.push(PointFieldLayout { name: "intensity".into(), offset: 40, datatype: 7, count: 1 });
    let cases: Vec<(&str, PointCloud2Layout, &str)> = vec![
        ("truncated data", truncated, "data"),
        ("no z field", no_z, "z"),
        ("field past the point record", bad_offset, "intensity"),
        ("all NaN", xyz_layout(&[[f32::NAN; 3]; 50]), "finite"),
        ("empty", xyz_layout(&[]), ""),
        ("too few points", xyz_layout(&[[0.0, 0.0, 1.0], [0.1, 0.0, 1.0]]), "points"),
    ];
    let calibrated = store::read_manifest(&repo().join(MODEL)).unwrap().thresholds.cloud;
    for (what, layout, mentions) in cases {
        let (result, _) = client.inspect(&layout, TIMEOUT).unwrap();
        assert_eq!(result.threshold, calibrated, "{what}: the threshold it would have been judged by");
        assert_eq!(result.status, InspectionResult::INVALID_INPUT as u8, "{what}: {}", result.message);
        assert!(!result.passed, "{what}");
        assert!(result.score.is_nan(), "{what}");
        assert!(result.message.starts_with("invalid input: "), "{what}: {}", result.message);
        assert!(result.message.contains(mentions), "{what}: '{}' should mention '{mentions}'", result.message);
    }
    assert!(node.process.0.try_wait().unwrap().is_none(), "the node exited:\n{}", node.log_text());
    let (result, _) = client.inspect(&pointcloud2::encode(&scan("000_good")), TIMEOUT).unwrap();
    assert!(result.status <= 1, "a good scan after bad ones is scored: {}", result.message);
}

#[test]
fn without_a_model_scans_get_no_model_until_one_is_set_and_thresholds_change_at_run_time() {
    let node = TestNode::start("''", &[]);
    let mut client = connect(&node);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sink = pointcloud2::encode(&scan("002_sink"));
    let (result, _) = client.inspect(&sink, TIMEOUT).unwrap();
    assert_eq!(result.status, InspectionResult::NO_MODEL as u8, "{}", result.message);
    assert!(result.message.contains("model_path"), "{}", result.message);

    let refused = runtime.block_on(set_parameters(
        &node.fqn(),
        &[("model_path", ParameterValue::String("models/no_such_model".into()))],
    ));
    assert!(!refused[0].0 && refused[0].1.contains("no_such_model"), "{refused:?}");
    let set = runtime.block_on(set_parameters(&node.fqn(), &[("model_path", ParameterValue::String(MODEL.into()))]));
    assert_eq!(set, vec![(true, String::new())]);
    let (result, _) = client.inspect(&sink, TIMEOUT).unwrap();
    assert_eq!(result.status, InspectionResult::REJECT as u8, "the bundled model rejects the sink: {}", result.message);
    assert!(result.model_id.starts_with("featuretype-"));

    let refused = runtime.block_on(set_parameters(&node.fqn(), &[("cloud_threshold", ParameterValue::Double(1.5))]));
    assert!(!refused[0].0 && refused[0].1.contains("[0, 1]"), "{refused:?}");
    let fixed = runtime.block_on(set_parameters(&node.fqn(), &[("queue_depth", ParameterValue::Integer(3))]));
    assert!(!fixed[0].0 && fixed[0].1.contains("restart"), "{fixed:?}");
    let set = runtime.block_on(set_parameters(&node.fqn(), &[("cloud_threshold", ParameterValue::Double(1.0))]));
    assert_eq!(set, vec![(true, String::new())]);
    let (result, _) = client.inspect(&sink, TIMEOUT).unwrap();
    assert_eq!((result.status, result.threshold), (InspectionResult::PASS as u8, 1.0), "{}", result.message);
}

/// The node's next diagnostics status (its own entry in /diagnostics).
fn node_diagnostics(node: &TestNode) -> r2r::diagnostic_msgs::msg::DiagnosticStatus {
    let ctx = r2r::Context::create().unwrap();
    let mut listener = r2r::Node::create(ctx, &unique("diag_listener"), "").unwrap();
    let mut diagnostics = listener
        .subscribe::<r2r::diagnostic_msgs::msg::DiagnosticArray>("/diagnostics", QosProfile::default())
        .unwrap();
    let _spin = Spinning::start(listener);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let wanted = format!("{}: inspector", node.fqn());
    let deadline = Instant::now() + TIMEOUT;
    loop {
        assert!(Instant::now() < deadline, "no diagnostics from {}", node.fqn());
        let array =
            runtime.block_on(async { tokio::time::timeout(TIMEOUT, diagnostics.next()).await }).unwrap().unwrap();
        if let Some(status) = array.status.into_iter().find(|s| s.name == wanted) {
            return status;
        }
    }
}

fn diagnostic_value(status: &r2r::diagnostic_msgs::msg::DiagnosticStatus, key: &str) -> String {
    status.values.iter().find(|kv| kv.key == key).map(|kv| kv.value.clone()).unwrap()
}

#[test]
fn diagnostics_report_the_model_counts_and_latency() {
    let node = TestNode::start(MODEL, &["diagnostics_period_s:=0.2"]);
    let mut client = connect(&node);
    let good = pointcloud2::encode(&scan("000_good"));
    for _ in 0..2 {
        client.inspect(&good, TIMEOUT).unwrap();
    }
    let status = node_diagnostics(&node);
    let value = |key: &str| diagnostic_value(&status, key);
    assert_eq!(status.level, r2r::diagnostic_msgs::msg::DiagnosticStatus::OK as u8, "{}", status.message);
    assert!(value("model_id").starts_with("featuretype-"));
    assert_eq!(value("scans_scored"), "2");
    assert_eq!(value("scans_dropped"), "0");
    assert_eq!(value("device"), "cpu");
    assert!(value("latency_p50_ms").parse::<f64>().unwrap() > 0.0);
    assert!(value("latency_p95_ms").parse::<f64>().unwrap() >= value("latency_p50_ms").parse::<f64>().unwrap());
}

#[test]
fn every_received_scan_gets_a_result_even_when_dropped() {
    let node = TestNode::start(MODEL, &["diagnostics_period_s:=0.2"]);
    let mut client = connect(&node);
    let good = pointcloud2::encode(&scan("000_good"));
    // Eight scans at once: the node scores one, keeps the newest waiting, drops the rest, and answers each.
    let mut stamp = r2r::builtin_interfaces::msg::Time::default();
    let sent: Vec<_> = (0..8).map(|_| inspect3d::ros::client::unique_stamp(&mut stamp)).collect();
    for s in &sent {
        client.send(&good, "camera", s.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut statuses = Vec::new();
    while let Some((result, _)) = client.next_result(Duration::from_secs(20)) {
        assert!(sent.contains(&result.header.stamp), "a result for a scan never sent");
        if result.status == InspectionResult::DROPPED as u8 {
            assert!(!result.passed && result.message.contains("queue"), "{}", result.message);
        }
        statuses.push(result.status);
    }
    let dropped = statuses.iter().filter(|&&s| s == InspectionResult::DROPPED as u8).count();
    let status = node_diagnostics(&node);
    let received: usize = diagnostic_value(&status, "scans_received").parse().unwrap();
    assert!(dropped > 0, "no scan was dropped: {statuses:?} (the node received {received})");
    assert_eq!(statuses.len(), received, "one result per received scan: {statuses:?}");
    assert_eq!(diagnostic_value(&status, "scans_dropped"), dropped.to_string());
}

#[test]
fn sigterm_and_sigint_stop_the_node_cleanly() {
    for signal in ["-TERM", "-INT"] {
        let mut node = TestNode::start(MODEL, &[]);
        drop(connect(&node));
        let pid = node.process.0.id().to_string();
        assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = node.process.0.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "still running 20 s after {signal}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = node.log_text();
        assert!(status.success(), "{signal}: exit {status:?}\n{log}");
        assert!(log.contains("shutting down"));
        assert!(log.contains("starting with the model of parameter model_path"), "{log}");
        assert!(!log.contains('\x1b'), "colour codes in a log written to a file:\n{log}");
    }
}

#[test]
fn bad_configuration_stops_the_node_at_start_naming_the_parameter() {
    let node_bin = env!("CARGO_BIN_EXE_inspect3d_node");
    let params = repo().join("config/inspector.yaml");
    let run = |extra: &[&str]| {
        let mut args = vec!["--check-config", "--ros-args", "--params-file", params.to_str().unwrap()];
        for e in extra {
            args.extend(["-p", e]);
        }
        Command::new(node_bin).args(&args).current_dir(repo()).output().unwrap()
    };
    let ok = run(&[]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let config: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(config["input_topic"], "/camera/points");
    assert_eq!(config["model_path"], MODEL);
    for (extra, named) in [
        ("queue_depth:=0", "queue_depth"),
        ("cloud_threshold:=2.0", "cloud_threshold"),
        ("device:=tpu", "device"),
        ("input_topic:=/bad topic", "input_topic"),
        ("model_path:=models/missing", "model_path"),
        ("qeue_depth:=2", "qeue_depth"),
        ("model_path:=", "model_path"),
    ] {
        let out = run(&[extra]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra} was accepted");
        assert!(stderr.contains(named), "{extra}: error should name {named}: {stderr}");
    }
}
