//! Helpers shared by the tests: the bundled good cell scans as training clouds; for the tests that run real
//! processes over DDS, child processes that die with the test, a spinning r2r node, and an inspect3d_node
//! started with its own name and topics.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The largest difference between two inspections' point scores of one scan; points neither scored (NaN in
/// both) count as equal.
pub fn largest_score_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "scores of the same points");
    a.iter().zip(b).map(|(x, y)| if x.is_nan() && y.is_nan() { 0.0 } else { (x - y).abs() }).fold(0f32, f32::max)
}

/// The two good bundled cell scans (tests/data/cell_scans), as training clouds.
pub fn bundled_good_clouds() -> Vec<inspect3d::train::TrainingCloud> {
    ["000_good", "001_good"]
        .iter()
        .map(|name| {
            let path = repo().join(format!("tests/data/cell_scans/{name}.pcd"));
            let cloud = inspect3d::cloud::read_cloud(&path).unwrap();
            inspect3d::train::TrainingCloud { name: name.to_string(), points: cloud.finite_points().unwrap().points }
        })
        .collect()
}

/// Stops the child process when dropped (SIGTERM, then SIGKILL), so a failing assertion leaves nothing running,
/// nor a killed ROS process's shared-memory segment in /dev/shm.
#[cfg(feature = "ros")]
pub struct Running(pub Child);

#[cfg(feature = "ros")]
impl Drop for Running {
    fn drop(&mut self) {
        inspect3d::ros::stop_child(&mut self.0, Duration::from_secs(10));
    }
}

/// Spins the node on its own thread until dropped. Dropping stops the thread and waits for it, so the node is
/// destroyed inside the test: a node still spinning while the process exits crashes rcl's teardown (SIGSEGV).
#[cfg(feature = "ros")]
pub struct Spinning {
    run: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[cfg(feature = "ros")]
impl Spinning {
    pub fn start(mut node: r2r::Node) -> Self {
        let run = Arc::new(AtomicBool::new(true));
        let flag = run.clone();
        let thread = std::thread::spawn(move || {
            while flag.load(Ordering::Relaxed) {
                node.spin_once(Duration::from_millis(20));
            }
        });
        Self { run, thread: Some(thread) }
    }
}

#[cfg(feature = "ros")]
impl Drop for Spinning {
    fn drop(&mut self) {
        self.run.store(false, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A name unique to this process and call, for nodes and topics.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A running inspect3d_node with its own name and input topic; `extra` are more `-p name:=value` overrides.
#[cfg(feature = "ros")]
pub struct TestNode {
    pub process: Running,
    pub name: String,
    pub input_topic: String,
    pub log: PathBuf,
    _log_dir: tempfile::TempDir,
}

#[cfg(feature = "ros")]
impl TestNode {
    pub fn start(model_path: &str, extra: &[&str]) -> Self {
        let name = unique("inspector");
        let input_topic = format!("/{name}/camera/points");
        let log_dir = tempfile::tempdir().expect("a folder for the node's log");
        let log = log_dir.path().join("node.log");
        let mut args: Vec<String> = vec![
            "--ros-args".into(),
            "--params-file".into(),
            repo().join("config/inspector.yaml").display().to_string(),
            "-r".into(),
            format!("__node:={name}"),
            "-p".into(),
            format!("input_topic:={input_topic}"),
            "-p".into(),
            format!("model_path:={model_path}"),
        ];
        for e in extra {
            args.push("-p".into());
            args.push(e.to_string());
        }
        let child = Command::new(env!("CARGO_BIN_EXE_inspect3d_node"))
            .args(&args)
            .current_dir(repo())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("node log file"))
            .spawn()
            .expect("start inspect3d_node");
        Self { process: Running(child), name, input_topic, log, _log_dir: log_dir }
    }

    pub fn fqn(&self) -> String {
        format!("/{}", self.name)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One set of test bags (five frames) per test binary: writing them takes a few seconds.
pub fn shared_test_bags() -> &'static (tempfile::TempDir, Vec<PathBuf>) {
    static BAGS: std::sync::OnceLock<(tempfile::TempDir, Vec<PathBuf>)> = std::sync::OnceLock::new();
    BAGS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a folder for test bags");
        let scans = write_test_bags(dir.path(), 5, 11);
        (dir, scans)
    })
}

/// Bags of simulated depth-camera frames of a real part, written by the independent writers of
/// tests/peers/write_bags.py (mcap_zstd, mcap_lz4, sqlite3, split; topic `/scanner/points`), in `dir`. Returns
/// the binary PCD files the messages came from, in message order.
pub fn write_test_bags(dir: &Path, frames: usize, seed: u64) -> Vec<PathBuf> {
    let bin = env!("CARGO_BIN_EXE_inspect3d");
    let synth = dir.join("synth");
    let config = dir.join("synth.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"train": {frames}, "test_good": 1, "test_defective": 1, "modes": ["camera"], "seed": {seed}, "unit_scale": 0.001}}"#
        ),
    )
    .unwrap();
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("run a helper");
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(Command::new(bin)
        .args(["synth", "--meshes"])
        .arg(repo().join("tests/data/meshes/featuretype.STL"))
        .arg("--out")
        .arg(&synth)
        .arg("--config")
        .arg(&config));
    let mut scans = Vec::new();
    let mut frames_in: Vec<PathBuf> =
        std::fs::read_dir(synth.join("featuretype_camera/train")).unwrap().map(|e| e.unwrap().path()).collect();
    frames_in.sort();
    for frame in frames_in {
        let binary = dir.join(frame.file_name().unwrap());
        run(Command::new(bin)
            .arg("convert")
            .arg("--input")
            .arg(&frame)
            .arg("--output")
            .arg(&binary)
            .args(["--encoding", "binary"]));
        scans.push(binary);
    }
    run(Command::new("python3")
        .arg(repo().join("tests/peers/write_bags.py"))
        .arg(dir.join("bags"))
        .arg("/scanner/points")
        .args(&scans));
    scans
}

#[cfg(feature = "ros")]
fn parameter_value_msg(value: &r2r::ParameterValue) -> r2r::rcl_interfaces::msg::ParameterValue {
    use r2r::rcl_interfaces::msg::{ParameterType, ParameterValue as Msg};
    match value {
        r2r::ParameterValue::Double(x) => {
            Msg { type_: ParameterType::PARAMETER_DOUBLE as u8, double_value: *x, ..Default::default() }
        }
        r2r::ParameterValue::Integer(i) => {
            Msg { type_: ParameterType::PARAMETER_INTEGER as u8, integer_value: *i, ..Default::default() }
        }
        r2r::ParameterValue::String(s) => {
            Msg { type_: ParameterType::PARAMETER_STRING as u8, string_value: s.clone(), ..Default::default() }
        }
        other => panic!("not used here: {other:?}"),
    }
}

/// Sets parameters through the node's SetParameters service; returns (successful, reason) per parameter.
#[cfg(feature = "ros")]
pub async fn set_parameters(node: &str, values: &[(&str, r2r::ParameterValue)]) -> Vec<(bool, String)> {
    use r2r::rcl_interfaces::srv::SetParameters;
    const TIMEOUT: Duration = Duration::from_secs(60);
    let ctx = r2r::Context::create().unwrap();
    let mut client_node = r2r::Node::create(ctx, &unique("param_client"), "").unwrap();
    let client = client_node
        .create_client::<SetParameters::Service>(&format!("{node}/set_parameters"), r2r::QosProfile::default())
        .unwrap();
    let available = r2r::Node::is_available(&client).unwrap();
    let _spin = Spinning::start(client_node);
    tokio::time::timeout(TIMEOUT, available).await.expect("parameter service").unwrap();
    let request = SetParameters::Request {
        parameters: values
            .iter()
            .map(|(name, value)| r2r::rcl_interfaces::msg::Parameter {
                name: name.to_string(),
                value: parameter_value_msg(value),
            })
            .collect(),
    };
    let response = tokio::time::timeout(TIMEOUT, client.request(&request).unwrap()).await.unwrap().unwrap();
    response.results.into_iter().map(|r| (r.successful, r.reason)).collect()
}
