//! The real `ros2` command line against inspect3d_node, as an integrator uses it: `ros2 launch` of both launch
//! files from an install prefix laid out as colcon's ament_cargo build installs the package, a scan published
//! (`inspect3d publish`) and its verdict read with `ros2 topic echo --once`, `ros2 param set` of a threshold
//! changing the next verdict, and `ros2 action send_goal --feedback` training from a bag written by `rosbags`.
//! Each test runs on its own ROS_DOMAIN_ID and ROS_HOME; every process it starts, the `ros2 daemon` included, is
//! stopped at the end. Needs the ROS environment with the `ros2` tools (scripts/setup.sh installs them).
#![cfg(feature = "ros")]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

mod common;
use common::{repo, shared_test_bags, unique};

const TIMEOUT: Duration = Duration::from_secs(90);

/// A private ROS world for one test: domain, ROS_HOME, and an install prefix holding the package.
struct RosWorld {
    domain: u32,
    home: tempfile::TempDir,
    prefix: tempfile::TempDir,
    models: tempfile::TempDir,
}

impl RosWorld {
    fn new(slot: u32) -> Self {
        let prefix = tempfile::tempdir().unwrap();
        install_space(prefix.path());
        Self {
            // Up to 101: a higher domain's DDS ports fall in Linux's ephemeral range, where another socket can
            // hold them.
            domain: 10 + (std::process::id() % 45) * 2 + slot,
            home: tempfile::tempdir().unwrap(),
            prefix,
            models: tempfile::tempdir().unwrap(),
        }
    }

    /// `program` with this world's environment.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        let ament = std::env::var("AMENT_PREFIX_PATH").unwrap_or_default();
        command
            .env("ROS_DOMAIN_ID", self.domain.to_string())
            .env("ROS_HOME", self.home.path())
            .env("AMENT_PREFIX_PATH", format!("{}:{ament}", self.prefix.path().display()))
            .env("NO_COLOR", "1")
            // Python's output to a pipe is block-buffered: `ros2 topic echo`'s messages would come late.
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(repo());
        command
    }

    fn ros2(&self, args: &[&str]) -> Output {
        self.command("ros2").args(args).output().expect("run ros2 (is .deps/env.sh sourced?)")
    }

    /// `ros2 param set` on the node; returns what it printed (stdout, then stderr).
    fn param_set(&self, name: &str, value: &str) -> String {
        // Its default wait for the node to be discovered, 1 s, is too short on a loaded CI machine.
        let set = self.ros2(&["param", "set", "--no-daemon", "--timeout", "30", "/inspect3d_node", name, value]);
        format!("{}{}", String::from_utf8_lossy(&set.stdout), String::from_utf8_lossy(&set.stderr))
    }

    /// Starts a process, in a process group of its own, whose output lines arrive on the returned channel.
    fn spawn(&self, program: &str, args: &[&str]) -> (Group, Receiver<String>) {
        use std::os::unix::process::CommandExt;
        let mut command = self.command(program);
        // Ctrl-C on a terminal reaches a process whose SIGINT is at its default. A test runner started as a
        // background job has SIGINT ignored, every child inherits that, and Python (ros2 launch) then never
        // sees the signal: reset it, as a shell on a terminal would have it.
        // SAFETY: signal() is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = command
            .args(args)
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        let lines = read_lines(&mut child);
        (Group(child), lines)
    }

    /// Publishes `scan` on `topic`, once a second, until a verdict on `/inspect3d_node/result` satisfies
    /// `wanted`; returns that verdict as `ros2 topic echo` prints it (earlier verdicts are skipped: one for a scan
    /// scored before a parameter change, say).
    fn verdict_where(
        &self,
        scan: &str,
        topic: &str,
        launch_log: &Receiver<String>,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        let echo_args =
            ["topic", "echo", "--no-daemon", "/inspect3d_node/result", "inspect3d_msgs/msg/InspectionResult"];
        let (_echo, lines) = self.spawn("ros2", &echo_args);
        let file = repo().join("tests/data/cell_scans").join(format!("{scan}.pcd")).display().to_string();
        // One publisher for the whole wait. A publisher started per try sends its scan as soon as it sees the
        // node's subscription and exits; on a loaded machine the node had often not matched it yet, and a
        // best-effort sample from a writer its reader has not matched is dropped — every try, for 90 s.
        let publish = ["publish", "--input", &file, "--topic", topic, "--count", "0", "--rate", "1"];
        let (_publisher, _publisher_log) = self.spawn(env!("CARGO_BIN_EXE_inspect3d"), &publish);
        let deadline = Instant::now() + TIMEOUT;
        let (mut printed, mut message) = (String::new(), String::new());
        while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            printed.push_str(&line);
            printed.push('\n');
            // `ros2 topic echo` ends each message with a line "---".
            if line.trim() == "---" {
                if wanted(&message) {
                    return message;
                }
                message.clear();
            } else {
                message.push_str(&line);
                message.push('\n');
            }
        }
        let node_said: Vec<String> = launch_log.try_iter().collect();
        panic!(
            "no such verdict for {scan} within {TIMEOUT:?}; echo printed:\n{printed}\nros2 launch printed:\n{}",
            node_said.join("\n")
        );
    }
}

impl Drop for RosWorld {
    fn drop(&mut self) {
        // Commands without --no-daemon started one for this domain; nothing may outlive the test.
        let _ = self.ros2(&["daemon", "stop"]);
    }
}

/// What colcon-ros-cargo installs for the package (lib/inspect3d/<binaries>, share/inspect3d/{launch, config,
/// models, package.xml}, the ament index marker), as links to this build and this checkout.
fn install_space(prefix: &Path) {
    let lib = prefix.join("lib/inspect3d");
    let share = prefix.join("share/inspect3d");
    let index = prefix.join("share/ament_index/resource_index/packages");
    for dir in [&lib, &share, &index] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(index.join("inspect3d"), "").unwrap();
    let link = |from: &Path, to: &Path| std::os::unix::fs::symlink(from, to).unwrap();
    link(Path::new(env!("CARGO_BIN_EXE_inspect3d_node")), &lib.join("inspect3d_node"));
    link(Path::new(env!("CARGO_BIN_EXE_inspect3d")), &lib.join("inspect3d"));
    // ros2 launch searches the launch folder without following a linked folder: linked files, as colcon's
    // --symlink-install makes them.
    std::fs::create_dir(share.join("launch")).unwrap();
    for file in std::fs::read_dir(repo().join("launch")).unwrap() {
        let file = file.unwrap();
        link(&file.path(), &share.join("launch").join(file.file_name()));
    }
    for entry in ["config", "models", "package.xml"] {
        link(&repo().join(entry), &share.join(entry));
    }
}

/// A process leading its own group (`ros2 launch` and the node it starts): when dropped, the group gets SIGINT,
/// then SIGKILL if it is still there, so a failing test leaves no node behind.
struct Group(Child);

impl Group {
    fn signal(&self, signal: &str) {
        // Quiet: the group is often gone already.
        let _ = Command::new("kill").args([signal, "--", &format!("-{}", self.0.id())]).stderr(Stdio::null()).status();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            self.signal("-INT");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && self.0.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // The leader may be gone while a child it started is not.
        self.signal("-KILL");
        let _ = self.0.wait();
    }
}

fn read_lines(child: &mut Child) -> Receiver<String> {
    let (tx, rx) = channel();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let err_tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = err_tx.send(line);
        }
    });
    rx
}

/// Waits for a line containing `wanted`, collecting everything seen (for the failure message).
fn wait_for_line(lines: &Receiver<String>, wanted: &str, seen: &mut String) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(wanted) {
            return true;
        }
    }
    false
}

/// SIGINT to the leader alone, as Ctrl-C sends it; the process must then end by itself.
fn interrupt(process: &mut Group) -> std::process::ExitStatus {
    let pid = process.0.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = process.0.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "process {pid} still running 60 s after SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn launch(world: &RosWorld, file: &str, topic: &str) -> (Group, Receiver<String>) {
    let models = format!("models_dir:={}", world.models.path().display());
    let (mut process, lines) =
        world.spawn("ros2", &["launch", "inspect3d", file, &format!("input_topic:={topic}"), &models, "device:=cpu"]);
    let mut seen = String::new();
    if !wait_for_line(&lines, "starting with the model", &mut seen) {
        let _ = process.0.kill();
        panic!("ros2 launch inspect3d {file} did not start the node:\n{seen}");
    }
    (process, lines)
}

#[test]
fn ros2_launch_py_then_topic_echo_param_set_and_action_send_goal() {
    let world = RosWorld::new(0);
    let topic = format!("/{}/camera/points", unique("cli"));
    let (mut launched, log) = launch(&world, "inspector.launch.py", &topic);

    let verdict = world.verdict_where("002_sink", &topic, &log, |v| v.contains("status:"));
    assert!(verdict.contains("passed: false") && verdict.contains("status: 1"), "{verdict}");
    assert!(verdict.contains(&format!("source_topic: {topic}")), "{verdict}");

    let said = world.param_set("cloud_threshold", "1.0");
    assert!(said.contains("Set parameter successful"), "{said}");
    // The first verdict after the change may be of a scan scored before it.
    let passed = world.verdict_where("002_sink", &topic, &log, |v| v.contains("passed: true"));
    assert!(passed.contains("status: 0"), "threshold 1.0 passes all:\n{passed}");
    let said = world.param_set("queue_depth", "3");
    assert!(said.contains("fixed while running"), "the node's refusal comes back: {said}");

    let bag = shared_test_bags().0.path().join("bags/mcap_zstd");
    let goal = format!(
        "{{bag_paths: ['{}'], topic: /scanner/points, model_name: cli_model, epochs: 2, \
         target_false_reject_rate: 0.1, activate: false}}",
        bag.display()
    );
    let (mut send_goal, lines) = world.spawn(
        "ros2",
        &["action", "send_goal", "--feedback", "/inspect3d_node/train", "inspect3d_msgs/action/TrainModel", &goal],
    );
    let mut seen = String::new();
    assert!(wait_for_line(&lines, "Feedback:", &mut seen), "no feedback from send_goal:\n{seen}");
    assert!(wait_for_line(&lines, "stage:", &mut seen), "feedback without a stage:\n{seen}");
    // Ctrl-C on send_goal cancels the goal: nothing is saved.
    interrupt(&mut send_goal);
    let saved = || std::fs::read_dir(world.models.path()).unwrap().count();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && saved() > 0 {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(saved(), 0, "a cancelled goal leaves nothing in models_dir:\n{seen}");

    let status = interrupt(&mut launched);
    assert!(status.success(), "ros2 launch ended with {status} after SIGINT");
}

#[test]
fn ros2_launch_xml_starts_the_same_node() {
    let world = RosWorld::new(1);
    let topic = format!("/{}/camera/points", unique("cli_xml"));
    let (mut launched, log) = launch(&world, "inspector.launch.xml", &topic);
    let verdict = world.verdict_where("000_good", &topic, &log, |v| v.contains("status:"));
    assert!(verdict.contains("passed: true") && verdict.contains("status: 0"), "{verdict}");
    let status = interrupt(&mut launched);
    assert!(status.success(), "ros2 launch ended with {status} after SIGINT");
}
