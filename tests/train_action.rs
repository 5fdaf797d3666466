//! The `~/train` action of a running inspect3d_node, driven by an r2r action client in this process over DDS,
//! learning from bags written by `rosbags`: train + activate (the next verdict comes from the new model, the node
//! keeps inspecting meanwhile, rollback through the model_path parameter), cancel, and goals that cannot work.
#![cfg(feature = "ros")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use inspect3d::cloud::{pointcloud2, read_cloud};
use inspect3d::ros::client::InspectorClient;
use r2r::inspect3d_msgs::action::TrainModel;
use r2r::{GoalStatus, ParameterValue};

mod common;
use common::{Spinning, TestNode, repo, set_parameters, shared_test_bags, unique};

const TIMEOUT: Duration = Duration::from_secs(120);
const TOPIC: &str = "/scanner/points";

fn bags() -> &'static (tempfile::TempDir, Vec<PathBuf>) {
    shared_test_bags()
}

fn bag(name: &str) -> String {
    bags().0.path().join("bags").join(name).display().to_string()
}

fn defective_scan() -> pointcloud2::PointCloud2Layout {
    pointcloud2::encode(&read_cloud(&repo().join("tests/data/cell_scans/002_sink.pcd")).unwrap())
}

struct Trainer {
    client: r2r::ActionClient<TrainModel::Action>,
    _spin: Spinning,
    runtime: tokio::runtime::Runtime,
}

impl Trainer {
    fn connect(node: &TestNode) -> Self {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let ctx = r2r::Context::create().unwrap();
        let mut client_node = r2r::Node::create(ctx, &unique("train_client"), "").unwrap();
        let client = client_node.create_action_client::<TrainModel::Action>(&format!("{}/train", node.fqn())).unwrap();
        let available = r2r::Node::is_available(&client).unwrap();
        let spin = Spinning::start(client_node);
        runtime
            .block_on(async { tokio::time::timeout(TIMEOUT, available).await })
            .unwrap_or_else(|_| panic!("no ~/train action on {}:\n{}", node.fqn(), node.log_text()))
            .unwrap();
        Self { client, _spin: spin, runtime }
    }

    fn goal(bags: &[&str], name: &str, epochs: u32, rate: f32, activate: bool) -> TrainModel::Goal {
        TrainModel::Goal {
            bag_paths: bags.iter().map(|b| b.to_string()).collect(),
            topic: TOPIC.into(),
            model_name: name.into(),
            epochs,
            target_false_reject_rate: rate,
            activate,
        }
    }

    /// Sends a goal; `during` runs once the goal is accepted, with the goal handle. Returns the final status,
    /// result and every feedback message.
    fn run(
        &self,
        goal: TrainModel::Goal,
        during: impl FnOnce(&r2r::ActionClientGoal<TrainModel::Action>, &tokio::runtime::Runtime),
    ) -> (GoalStatus, TrainModel::Result, Vec<TrainModel::Feedback>) {
        let (handle, result, feedback) =
            self.runtime.block_on(async { self.client.send_goal_request(goal).unwrap().await.unwrap() });
        // The feedback stream stays open as long as the client lives: collect what arrives until the result.
        let collected = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = collected.clone();
        self.runtime.spawn(feedback.for_each(move |f| {
            sink.lock().unwrap().push(f);
            futures::future::ready(())
        }));
        during(&handle, &self.runtime);
        let (status, result) = self
            .runtime
            .block_on(async { tokio::time::timeout(TIMEOUT, result).await })
            .expect("result in time")
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let feedback = collected.lock().unwrap().clone();
        (status, result, feedback)
    }
}

/// The node with the bundled model, writing to `models`, training with a small budget (the action's plumbing
/// is under test here, not the detector's quality: tests/detector.rs trains the default).
fn start_node(models: &Path) -> TestNode {
    let models_dir = format!("models_dir:={}", models.display());
    let quick = format!("training_config:={}", repo().join("tests/data/configs/quick_training.json").display());
    TestNode::start("models/featuretype", &[&models_dir, &quick])
}

#[test]
fn a_goal_trains_saves_and_activates_a_model_while_the_node_keeps_inspecting() {
    let models = tempfile::tempdir().unwrap();
    let node = start_node(models.path());
    let mut inspector = InspectorClient::connect(&node.fqn(), &node.input_topic, TIMEOUT).unwrap();
    let (before, _) = inspector.inspect(&defective_scan(), TIMEOUT).unwrap();
    assert!(before.model_id.starts_with("featuretype-"));
    let trainer = Trainer::connect(&node);
    let goal = Trainer::goal(&[&bag("mcap_zstd"), &bag("sqlite3")], "cell_a", 40, 0.1, true);
    let mut during_training = None;
    let (status, result, feedback) = trainer.run(goal, |_, _| {
        // Scans keep being scored, by the old model, while the new one trains (reading the bags alone takes
        // longer than scoring a scan).
        during_training = Some(inspector.inspect(&defective_scan(), TIMEOUT).unwrap().0);
    });
    assert_eq!(status, GoalStatus::Succeeded, "{}\n{}", result.message, node.log_text());
    assert!(result.success);
    let during_training = during_training.expect("a verdict while training");
    assert!(during_training.status <= 1, "{}", during_training.message);
    assert_eq!(during_training.model_id, before.model_id, "scored by the old model while training");
    assert_eq!(result.previous_model_id, before.model_id);
    assert_eq!(result.clouds_used + result.clouds_held_out, 10, "five scans in each bag");
    assert!(result.cloud_threshold > 0.0 && result.cloud_threshold <= 1.0);
    let path = PathBuf::from(&result.model_path);
    assert_eq!(path, models.path().join("cell_a"));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["model_id"], result.model_id.as_str());
    assert_eq!(manifest["config"]["scoring"]["target_false_reject_rate"].as_f64().unwrap() as f32, 0.1);
    assert!(result.message.contains(&format!("ros2 param set {} model_path", node.fqn())), "{}", result.message);

    let stages: Vec<&str> = feedback.iter().map(|f| f.stage.as_str()).collect();
    for stage in ["reading", "training", "calibrating", "saving"] {
        assert!(stages.contains(&stage), "no {stage} feedback in {stages:?}");
    }
    assert!(feedback.windows(2).all(|w| w[0].progress <= w[1].progress + 1e-6), "progress goes back");
    assert!(feedback.iter().any(|f| f.stage == "reading" && f.clouds_loaded > 0));
    assert!(feedback.iter().any(|f| f.stage == "training" && f.epochs == 40 && f.epoch >= 1 && f.loss.is_finite()));

    let (after, _) = inspector.inspect(&defective_scan(), TIMEOUT).unwrap();
    assert_eq!(after.model_id, result.model_id, "the next scan is scored by the new model");

    // Retraining under the active model's name never replaces it: the new one gets a folder of its own, and
    // the rollback hint names the folder that really holds the previous model.
    let again = Trainer::goal(&[&bag("mcap_lz4")], "cell_a", 2, 0.1, true);
    let (status, second, _) = trainer.run(again, |_, _| {});
    assert_eq!(status, GoalStatus::Succeeded, "{}", second.message);
    assert_eq!(PathBuf::from(&second.model_path), models.path().join("cell_a-2"));
    assert!(second.message.contains("already exists"), "{}", second.message);
    assert_eq!(second.previous_model_id, result.model_id);
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(kept["model_id"], result.model_id.as_str(), "the active model's folder was replaced");
    assert!(
        second.message.contains(&format!("model_path {}", path.display())),
        "rollback hint should name {}: {}",
        path.display(),
        second.message
    );

    // Roll back through the parameter; the new model stays on disk.
    let featuretype = repo().join("models/featuretype").display().to_string();
    let set =
        trainer.runtime.block_on(set_parameters(&node.fqn(), &[("model_path", ParameterValue::String(featuretype))]));
    assert_eq!(set, vec![(true, String::new())]);
    let (rolled_back, _) = inspector.inspect(&defective_scan(), TIMEOUT).unwrap();
    assert_eq!(rolled_back.model_id, before.model_id);
    assert!(path.join("manifest.json").is_file());
}

#[test]
fn cancel_stops_training_with_nothing_saved_and_the_model_unchanged() {
    let models = tempfile::tempdir().unwrap();
    let node = start_node(models.path());
    let trainer = Trainer::connect(&node);
    let goal = Trainer::goal(&[&bag("mcap_lz4")], "never_saved", 100_000, 0.0, true);
    let (status, result, _) = trainer.run(goal, |handle, runtime| {
        // Cancel once training is under way.
        std::thread::sleep(Duration::from_secs(3));
        runtime.block_on(async { handle.cancel().unwrap().await }).unwrap();
    });
    assert_eq!(status, GoalStatus::Canceled, "{}", result.message);
    assert!(!result.success);
    assert!(result.message.contains("nothing was saved"), "{}", result.message);
    let left: Vec<_> = std::fs::read_dir(models.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "cancel left {left:?} in the models folder");
    let mut inspector = InspectorClient::connect(&node.fqn(), &node.input_topic, TIMEOUT).unwrap();
    let (after, _) = inspector.inspect(&defective_scan(), TIMEOUT).unwrap();
    assert!(after.model_id.starts_with("featuretype-"), "active model changed: {}", after.model_id);
}

#[test]
fn goals_that_cannot_work_are_refused_with_the_reason() {
    let models = tempfile::tempdir().unwrap();
    let node = start_node(models.path());
    let trainer = Trainer::connect(&node);
    let few = tempfile::tempdir().unwrap();
    let few_scans = few.path().join("few");
    std::fs::create_dir_all(&few_scans).unwrap();
    let status = std::process::Command::new("python3")
        .arg(repo().join("tests/peers/write_bags.py"))
        .arg(&few_scans)
        .arg(TOPIC)
        .args(&bags().1[..2])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let truncated = few.path().join("truncated");
    std::fs::create_dir_all(&truncated).unwrap();
    for entry in std::fs::read_dir(bag("mcap_lz4")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let keep = if path.extension().is_some_and(|e| e == "mcap") { bytes.len() / 3 } else { bytes.len() };
        std::fs::write(truncated.join(path.file_name().unwrap()), &bytes[..keep]).unwrap();
    }
    let good = bag("sqlite3");
    let db3 = std::fs::read_dir(&good)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "db3"))
        .expect("the sqlite3 bag's .db3 file");
    let cases = [
        (Trainer::goal(&["/no/such/bag"], "m", 2, 0.0, false), "no such bag folder"),
        (Trainer::goal(&[&db3.display().to_string()], "m", 2, 0.0, false), "is a file, not a bag folder"),
        (
            TrainModel::Goal { topic: "/camera/points".into(), ..Trainer::goal(&[&good], "m", 2, 0.0, false) },
            "no topic /camera/points",
        ),
        (
            TrainModel::Goal { topic: "/status".into(), ..Trainer::goal(&[&bag("mcap_zstd")], "m", 2, 0.0, false) },
            "std_msgs/msg/String",
        ),
        (Trainer::goal(&[&good], "m", 2, 0.9, false), "target_false_reject_rate"),
        (Trainer::goal(&[&good], "../escape", 2, 0.0, false), "model_name"),
        (Trainer::goal(&[], "m", 2, 0.0, false), "bag_paths is empty"),
        (Trainer::goal(&[&few_scans.join("sqlite3").display().to_string()], "m", 2, 0.0, false), "too few clouds"),
        (Trainer::goal(&[&truncated.display().to_string()], "m", 2, 0.0, false), "MCAP"),
    ];
    for (goal, reason) in cases {
        let (status, result, _) = trainer.run(goal, |_, _| {});
        assert_eq!(status, GoalStatus::Aborted, "{reason}: {}", result.message);
        assert!(!result.success);
        assert!(result.message.contains(reason), "'{}' should say '{reason}'", result.message);
    }
    assert_eq!(std::fs::read_dir(models.path()).unwrap().count(), 0, "a refused goal wrote into the models folder");
}
