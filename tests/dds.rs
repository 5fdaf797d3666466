//! PointCloud2 over real DDS between processes: `inspect3d publish` (r2r) and an rclpy peer send, this test
//! process receives with r2r and decodes. Needs the ROS environment (source .deps/env.sh). Each test uses topics
//! named after its process id, so parallel runs do not hear each other.
#![cfg(feature = "ros")]

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use futures::StreamExt;
use inspect3d::cloud::{pointcloud2, read_cloud};
use r2r::QosProfile;
use r2r::sensor_msgs::msg::PointCloud2;

mod common;
use common::{Running, Spinning};

async fn first_message(topic: &str, sender: Child) -> PointCloud2 {
    let _sender = Running(sender);
    let ctx = r2r::Context::create().expect("ROS context (source .deps/env.sh)");
    let mut node = r2r::Node::create(ctx, &format!("dds_test_{}", std::process::id()), "").unwrap();
    let mut sub = node.subscribe::<PointCloud2>(topic, QosProfile::sensor_data()).unwrap();
    let _spin = Spinning::start(node);
    tokio::time::timeout(Duration::from_secs(60), sub.next())
        .await
        .unwrap_or_else(|_| panic!("no PointCloud2 on {topic} within 60 s"))
        .expect("subscription stream ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_frame_published_by_another_process_decodes_unchanged() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/scans/frame_20121214T142255.814212.pcd");
    let topic = format!("/inspect3d_test_{}/points", std::process::id());
    let publisher = Command::new(env!("CARGO_BIN_EXE_inspect3d"))
        .args(["publish", "--input"])
        .arg(&path)
        .args(["--topic", &topic, "--frame-id", "test_camera", "--count", "0", "--rate", "4"])
        .spawn()
        .expect("start inspect3d publish");
    let msg = first_message(&topic, publisher).await;
    assert_eq!(msg.header.frame_id, "test_camera");
    assert_eq!((msg.width, msg.height), (640, 480));
    let (_, layout) = inspect3d::ros::layout_from_msg(msg);
    let received = pointcloud2::decode(&layout).unwrap();
    let expected = read_cloud(&path).unwrap();
    assert_eq!(received.fields().len(), expected.fields().len());
    for (a, b) in received.fields().iter().zip(expected.fields()) {
        assert_eq!(a.name, b.name);
        assert!(a.bytes() == b.bytes(), "field {} changed on the way", a.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_endian_padded_cloud_from_rclpy_decodes() {
    let topic = format!("/inspect3d_test_{}/foreign", std::process::id());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/publish_cloud.py");
    let peer = Command::new("python3").arg(script).arg(&topic).spawn().expect("start the rclpy peer");
    let msg = first_message(&topic, peer).await;
    let (_, layout) = inspect3d::ros::layout_from_msg(msg);
    assert!(layout.is_bigendian && layout.row_step > layout.width * layout.point_step);
    let cloud = pointcloud2::decode(&layout).unwrap();
    assert_eq!((cloud.width, cloud.height), (4, 3));
    let xyz = cloud.positions().unwrap();
    // The peer's point (row r, column c) is (c + 0.25, r − 1, 2.5·(c + r)); (1, 2) is a NaN hole.
    for r in 0..3 {
        for c in 0..4 {
            let p = xyz[r * 4 + c];
            if (r, c) == (1, 2) {
                assert!(p.iter().all(|v| v.is_nan()), "hole kept in place");
            } else {
                assert_eq!(p, [c as f32 + 0.25, r as f32 - 1.0, 2.5 * (c + r) as f32]);
            }
        }
    }
    let intensity = cloud.field("intensity").unwrap();
    assert_eq!((intensity.count, intensity.value(5, 1)), (2, -5.0 * 3.0));
    let finite = cloud.finite_points().unwrap();
    assert_eq!(finite.points.len(), 11);
    assert_eq!(finite.source_index[6], 7);
}
