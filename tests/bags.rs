//! The rosbag2 reader on bags written by independent writers (`rosbags`; Foxglove's `mcap` for lz4 chunks):
//! MCAP with zstd and lz4 chunks, sqlite3, a split bag, rosbag2's file and message zstd compression of both
//! storages; wrong topics and types; broken bags; and the CLI
//! training from a bag. Needs the Python tools from scripts/setup.sh (python3 with rosbags and mcap).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Command;

use inspect3d::bag::{Bag, BagError, POINT_CLOUD2, StampedCloud};
use inspect3d::cloud::{pointcloud2, read_cloud};

mod common;
use common::{repo, shared_test_bags};

const TOPIC: &str = "/scanner/points";

fn bags() -> &'static (tempfile::TempDir, Vec<PathBuf>) {
    shared_test_bags()
}

fn bag_dir(name: &str) -> PathBuf {
    bags().0.path().join("bags").join(name)
}

fn read_all(bag: &Bag) -> Result<Vec<StampedCloud>, BagError> {
    let mut clouds = Vec::new();
    bag.for_each_point_cloud(TOPIC, |c| {
        clouds.push(c);
        ControlFlow::Continue(())
    })?;
    Ok(clouds)
}

#[test]
fn every_storage_gives_back_the_recorded_scans_in_order() {
    let sources = &bags().1;
    let compressed = ["mcap_file_zstd", "sqlite3_file_zstd", "mcap_message_zstd", "sqlite3_message_zstd"];
    for storage in ["mcap_zstd", "mcap_lz4", "sqlite3", "split"].into_iter().chain(compressed) {
        let bag = Bag::open(&bag_dir(storage)).unwrap();
        assert_eq!(bag.check_topic(TOPIC, POINT_CLOUD2).unwrap(), sources.len() as u64, "{storage}");
        if storage == "split" {
            assert_eq!(bag.files().len(), 2);
        }
        let clouds = read_all(&bag).unwrap();
        assert_eq!(clouds.len(), sources.len(), "{storage}");
        for (k, (message, source)) in clouds.iter().zip(sources).enumerate() {
            assert_eq!((message.stamp_sec, message.stamp_nanosec), (1_700_000_000 + k as i32, 0), "{storage} {k}");
            assert_eq!(message.frame_id, "camera");
            assert_eq!((message.layout.width, message.layout.height), (640, 480), "organised");
            let got = pointcloud2::decode(&message.layout).unwrap().positions().unwrap();
            let want = read_cloud(source).unwrap().positions().unwrap();
            assert_eq!(got.len(), want.len());
            let same = got.iter().zip(&want).all(|(a, b)| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
            assert!(same, "{storage} message {k} differs from {}", source.display());
        }
    }
    // File-compressed storage is streamed to a temporary copy while read, and the copy removed after.
    let leftovers = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("inspect3d-{}-", std::process::id())))
        .count();
    assert_eq!(leftovers, 0, "decompressed copies left in the temporary folder");
}

#[test]
fn a_reader_can_stop_early() {
    let bag = Bag::open(&bag_dir("split")).unwrap();
    let mut seen = 0;
    bag.for_each_point_cloud(TOPIC, |_| {
        seen += 1;
        if seen == 3 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    })
    .unwrap();
    assert_eq!(seen, 3);
}

#[test]
fn wrong_topics_and_types_are_named() {
    let bag = Bag::open(&bag_dir("mcap_zstd")).unwrap();
    let missing = bag.check_topic("/camera/points", POINT_CLOUD2).unwrap_err().to_string();
    assert!(missing.contains("no topic /camera/points") && missing.contains("/scanner/points"), "{missing}");
    let wrong = bag.for_each_point_cloud("/status", |_| ControlFlow::Continue(())).unwrap_err().to_string();
    assert!(wrong.contains("std_msgs/msg/String") && wrong.contains("not sensor_msgs/msg/PointCloud2"), "{wrong}");
}

fn copy_bag(name: &str, to: &Path) -> PathBuf {
    let target = to.join(name);
    std::fs::create_dir_all(&target).unwrap();
    for entry in std::fs::read_dir(bag_dir(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, target.join(path.file_name().unwrap())).unwrap();
    }
    target
}

fn storage_file(dir: &Path, extension: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == extension))
        .unwrap()
}

#[test]
fn broken_bags_give_errors_naming_the_file_and_the_problem() {
    let scratch = tempfile::tempdir().unwrap();
    let error = |dir: &Path| match Bag::open(dir) {
        Err(e) => e.to_string(),
        Ok(bag) => read_all(&bag).unwrap_err().to_string(),
    };

    let truncated = copy_bag("mcap_zstd", scratch.path());
    let file = storage_file(&truncated, "mcap");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let message = error(&truncated);
    assert!(message.contains(file.to_str().unwrap()) && message.contains("MCAP"), "{message}");

    let not_mcap = copy_bag("mcap_lz4", scratch.path());
    std::fs::write(storage_file(&not_mcap, "mcap"), b"this is not an MCAP file at all").unwrap();
    let message = error(&not_mcap);
    assert!(message.contains("mcap_lz4.mcap") && message.contains("not a readable MCAP file"), "{message}");

    let corrupt_db = copy_bag("sqlite3", scratch.path());
    std::fs::write(storage_file(&corrupt_db, "db3"), vec![0x5a; 8192]).unwrap();
    let message = error(&corrupt_db);
    assert!(message.contains("sqlite3.db3") && message.contains("not a readable rosbag2 sqlite3 file"), "{message}");

    let corrupt_zstd = copy_bag("mcap_file_zstd", scratch.path());
    std::fs::write(storage_file(&corrupt_zstd, "zstd"), b"not zstd").unwrap();
    let message = error(&corrupt_zstd);
    assert!(message.contains("mcap_file_zstd.mcap.zstd") && message.contains("not a readable zstd file"), "{message}");

    let no_file = copy_bag("split", scratch.path());
    std::fs::remove_file(no_file.join("split_1.mcap")).unwrap();
    let message = error(&no_file);
    assert!(message.contains("split_1.mcap is missing"), "{message}");

    let no_metadata = copy_bag("sqlite3", &scratch.path().join("again"));
    std::fs::remove_file(no_metadata.join("metadata.yaml")).unwrap();
    assert!(error(&no_metadata).contains("cannot read metadata.yaml"));

    let bad_metadata = copy_bag("mcap_lz4", &scratch.path().join("again"));
    std::fs::write(bad_metadata.join("metadata.yaml"), "rosbag2_bagfile_information: [1, 2").unwrap();
    assert!(error(&bad_metadata).contains("metadata.yaml: not rosbag2 metadata"));

    assert!(error(&scratch.path().join("nothing_here")).contains("no such bag folder"));
}

#[test]
fn the_cli_trains_from_bags() {
    let out = tempfile::tempdir().unwrap();
    let model = out.path().join("from_bags");
    let run = Command::new(env!("CARGO_BIN_EXE_inspect3d"))
        .args(["train", "--bag"])
        .arg(bag_dir("sqlite3"))
        .arg("--bag")
        .arg(bag_dir("mcap_lz4"))
        .args(["--topic", TOPIC, "--epochs", "2", "--device", "cpu", "--config"])
        .arg(repo().join("config/detector.json"))
        .arg("--out")
        .arg(&model)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let used = summary["clouds_trained"].as_u64().unwrap() + summary["clouds_held_out"].as_u64().unwrap();
    assert_eq!(used, 10, "both bags' five scans");
    assert!(model.join("manifest.json").is_file());

    let wrong = Command::new(env!("CARGO_BIN_EXE_inspect3d"))
        .args(["train", "--bag"])
        .arg(bag_dir("sqlite3"))
        .args(["--topic", "/status", "--out"])
        .arg(out.path().join("never"))
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("no topic /status"));
    assert!(!out.path().join("never").exists());
}
