//! The per-scan geometry as tensor code (`inspect3d::geometry::device`, the path a detector on CUDA can take),
//! run here on CPU tensors, against the host's geometry: the same verdicts, and training that learns the same.

mod common;

use std::path::Path;

use inspect3d::cloud::{PointCloud, read_cloud};
use inspect3d::geometry::device::{Compute, Stage};
use inspect3d::model::config::DetectorConfig;
use inspect3d::model::store;
use inspect3d::train;

/// The per-scan geometry as tensor code (`geometry::device`, the detector's path on CUDA), run here on CPU
/// tensors, gives the bundled scans the host's verdicts: same decision and anomalous points, scores within float
/// rounding (measured 2026-12-03: at most 1.7e-6 apart on all six scans).
#[test]
fn the_device_geometry_gives_the_hosts_verdicts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (host, _) = store::load(&root.join("models/featuretype"), tch::Device::Cpu).unwrap();
    let (device, _) = store::load(&root.join("models/featuretype"), tch::Device::Cpu).unwrap();
    let device = device.with_device_geometry(true);
    for name in ["000_good", "000_bulge", "001_missing"] {
        let cloud = read_cloud(&root.join(format!("tests/data/cell_scans/{name}.pcd"))).unwrap();
        let (a, b) = (host.inspect(&cloud).unwrap(), device.inspect(&cloud).unwrap());
        assert_eq!((a.passed, a.anomalous_points), (b.passed, b.anomalous_points), "{name}");
        assert!((a.cloud_score - b.cloud_score).abs() < 1e-4, "{name}: {} vs {}", a.cloud_score, b.cloud_score);
        let worst = common::largest_score_difference(&a.point_scores, &b.point_scores);
        assert!(worst < 1e-4, "{name}: point scores differ by {worst}");
    }
}

/// A placement that keeps some stages on the host and runs the rest as tensor code (what a GPU may do with the
/// small, serial stages) gives the same verdicts too: every other stage on the host, then the others, so each stage
/// hands its results across to and from the other side.
#[test]
fn stages_split_between_host_and_device_give_the_hosts_verdicts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (host, _) = store::load(&root.join("models/featuretype"), tch::Device::Cpu).unwrap();
    let (mut split, _) = store::load(&root.join("models/featuretype"), tch::Device::Cpu).unwrap();
    let cloud = read_cloud(&root.join("tests/data/cell_scans/000_bulge.pcd")).unwrap();
    let expected = host.inspect(&cloud).unwrap();
    for parity in [0, 1] {
        split.compute = Stage::ALL
            .iter()
            .enumerate()
            .filter(|(k, _)| k % 2 == parity)
            .fold(Compute::tensors(tch::Device::Cpu), |compute, (_, &stage)| compute.with_host(stage));
        let got = split.inspect(&cloud).unwrap();
        assert_eq!((got.passed, got.anomalous_points), (expected.passed, expected.anomalous_points), "{parity}");
        assert!((got.cloud_score - expected.cloud_score).abs() < 1e-4, "{parity}");
        let worst = common::largest_score_difference(&got.point_scores, &expected.point_scores);
        assert!(worst < 1e-4, "placement {parity}: point scores differ by {worst}");
    }
}

/// Training with the device geometry (on CPU tensors here) learns what training with the host's learns: the same
/// loss and thresholds up to the float rounding its FPFH sums differ by (measured 2026-12-03: loss 2.258979 vs
/// 2.258973, point threshold 0.190454 vs 0.190460).
#[test]
fn training_with_the_device_geometry_learns_what_the_host_learns() {
    let clouds = common::bundled_good_clouds();
    let mut config = DetectorConfig::default();
    config.training.epochs = 3;
    let train_on = |device_geometry: bool| {
        let placement = inspect3d::model::Placement { device: tch::Device::Cpu, device_geometry };
        train::train(config.clone(), &clouds, &[], placement, &mut train::LogMonitor::default()).unwrap()
    };
    let ((host, host_summary), (device, device_summary)) = (train_on(false), train_on(true));
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-3 * a.abs().max(1e-3);
    assert!(close(host_summary.final_loss, device_summary.final_loss), "{host_summary:?} vs {device_summary:?}");
    assert!(close(host.thresholds.cloud, device.thresholds.cloud), "{:?} vs {:?}", host.thresholds, device.thresholds);
    assert!(close(host.thresholds.point, device.thresholds.point), "{:?} vs {:?}", host.thresholds, device.thresholds);
}

/// Scans scored in one batch with the device geometry (their FPS one batched loop, on CPU tensors here) get what
/// each gets alone; a scan too small to sample costs only its own result.
#[test]
fn a_batch_on_the_device_geometry_gives_each_scan_its_own_verdict() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (detector, _) = store::load(&root.join("models/featuretype"), tch::Device::Cpu).unwrap();
    let detector = detector.with_device_geometry(true);
    let mut clouds: Vec<PointCloud> = ["000_bulge", "001_good"]
        .iter()
        .map(|name| read_cloud(&root.join(format!("tests/data/cell_scans/{name}.pcd"))).unwrap())
        .collect();
    clouds.insert(1, PointCloud::from_xyz(&[[0.0, 0.0, 1.0]; 10]));
    let batch: Vec<&PointCloud> = clouds.iter().collect();
    let together = detector.inspect_batch(&batch, detector.thresholds);
    assert!(together[1].as_ref().is_err_and(|e| e.is_input_problem()), "the small scan is named");
    for k in [0, 2] {
        let (alone, batched) = (detector.inspect(&clouds[k]).unwrap(), together[k].as_ref().unwrap());
        assert_eq!((alone.passed, alone.anomalous_points), (batched.passed, batched.anomalous_points), "scan {k}");
        assert!((alone.cloud_score - batched.cloud_score).abs() < 1e-4, "scan {k}");
        let worst = common::largest_score_difference(&alone.point_scores, &batched.point_scores);
        assert!(worst < 1e-4, "scan {k}: point scores differ by {worst}");
    }
}
