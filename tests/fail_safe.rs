//! No input may turn a defective part into a PASS: the findings of a hostile integrator's session, each
//! reproduced with the bundled model and the bundled cell scans, through the same inspection service the node
//! runs (`inspect3d::inspector`), from PointCloud2 bytes to the reported outcome.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use inspect3d::cloud::{PointCloud, pointcloud2, read_cloud};
use inspect3d::geometry::Point;
use inspect3d::inspector::config::InspectorConfig;
use inspect3d::inspector::{Inspector, LoadedModel, Outcome, Report, ThresholdOverrides};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bundled_model() -> LoadedModel {
    LoadedModel::load(&root().join("models/featuretype"), tch::Device::Cpu, &InspectorConfig::default()).unwrap()
}

fn finite_points(path: &Path) -> Vec<Point> {
    read_cloud(path).unwrap().finite_points().unwrap().points
}

fn cell_scan(name: &str) -> Vec<Point> {
    finite_points(&root().join("tests/data/cell_scans").join(format!("{name}.pcd")))
}

/// Scores messages one after another through the inspection service; returns their outcomes in order.
fn inspect_all(messages: Vec<pointcloud2::PointCloud2Layout>) -> Vec<Outcome> {
    let (tx, rx) = mpsc::channel();
    let n = messages.len();
    let inspector =
        Inspector::start(n.max(1), Some(bundled_model()), ThresholdOverrides::default(), move |r: Report<usize>| {
            let _ = tx.send(r);
        });
    for (tag, msg) in messages.into_iter().enumerate() {
        assert!(inspector.submit(tag, msg).is_none(), "the queue holds every message");
    }
    let outcomes: Vec<Outcome> =
        (0..n).map(|_| rx.recv_timeout(Duration::from_secs(300)).expect("a report for every scan").outcome).collect();
    inspector.shutdown();
    outcomes
}

fn message(points: &[Point]) -> pointcloud2::PointCloud2Layout {
    pointcloud2::encode(&PointCloud::from_xyz(points))
}

fn with_point(mut points: Vec<Point>, extra: Point) -> Vec<Point> {
    points.push(extra);
    points
}

fn scored(outcome: &Outcome) -> &inspect3d::model::Inspection {
    match outcome {
        Outcome::Scored { inspection, .. } => inspection,
        other => panic!("expected a verdict, got {other:?}"),
    }
}

fn invalid(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::InvalidInput(why) => why,
        other => panic!("expected INVALID_INPUT, got {other:?}"),
    }
}

#[test]
fn one_absurd_point_cannot_pass_a_defective_part() {
    let sink = cell_scan("002_sink");
    let absurd: [Point; 3] = [[0.0, 0.0, 1e30], [0.0, 0.0, 3e38], [sink[0][0], sink[0][1], 1e25]];
    let mut messages = vec![message(&sink)];
    messages.extend(absurd.iter().map(|&p| message(&with_point(sink.clone(), p))));
    let outcomes = inspect_all(messages);
    let plain = scored(&outcomes[0]);
    assert!(!plain.passed, "the bundled defective scan is rejected");
    for (outcome, point) in outcomes[1..].iter().zip(absurd) {
        let inspection = scored(outcome);
        assert!(!inspection.passed, "{point:?} turned a REJECT into a PASS at {}", inspection.cloud_score);
        assert!(inspection.cloud_score.is_finite());
        assert_eq!(inspection.outlier_points, plain.outlier_points + 1, "{point:?} is counted as an outlier");
        assert!(inspection.point_scores.last().unwrap().is_nan(), "the absurd point's score is NaN");
        assert_eq!(inspection.cloud_score, plain.cloud_score, "{point:?} changed what the part scores");
    }
}

#[test]
fn a_flying_pixel_neither_rejects_a_good_part_nor_changes_its_scoring() {
    let good = cell_scan("000_good");
    let centre = good[good.len() / 2];
    // Behind the part along the camera's axis (z grows away from the sensor; metres): 0.4, 2 and 10 m.
    let behind: Vec<Point> = [0.4, 2.0, 10.0].iter().map(|d| [centre[0], centre[1], centre[2] + d]).collect();
    let mut messages = vec![message(&good)];
    messages.extend(behind.iter().map(|&p| message(&with_point(good.clone(), p))));
    let outcomes = inspect_all(messages);
    let plain = scored(&outcomes[0]);
    assert!(plain.passed, "the bundled good scan passes");
    for (outcome, point) in outcomes[1..].iter().zip(&behind) {
        let inspection = scored(outcome);
        // The same points are scored as without the pixel: the same verdict, the same work, no stall.
        assert!(inspection.passed, "{point:?} rejected a good part at {}", inspection.cloud_score);
        assert_eq!((inspection.cloud_score, inspection.valid_points), (plain.cloud_score, plain.valid_points));
        assert_eq!(inspection.outlier_points, plain.outlier_points + 1);
        assert_eq!(inspection.anomalous_points, plain.anomalous_points);
    }
}

#[test]
fn bytes_in_the_wrong_order_are_invalid_input_not_a_verdict() {
    let mut messages = Vec::new();
    for name in ["000_good", "002_sink"] {
        let mut lie = message(&cell_scan(name));
        lie.is_bigendian = true; // the floats are little-endian
        messages.push(lie);
    }
    for outcome in inspect_all(messages) {
        assert!(invalid(&outcome).contains("is_bigendian"), "{outcome:?}");
    }
}

#[test]
fn the_wrong_unit_and_tiny_clouds_get_the_right_hint() {
    // The bundled scans and model are in metres, as a camera driver publishes them.
    let good = cell_scan("000_good");
    let millimetres: Vec<Point> = good.iter().map(|p| p.map(|c| c * 1000.0)).collect();
    let kilometres: Vec<Point> = good.iter().map(|p| p.map(|c| c * 0.001)).collect();
    // A real Kinect frame, in metres like the model, of a whole room.
    let kinect = finite_points(&root().join("tests/data/scans/frame_20121214T142255.814212.pcd"));
    let outcomes = inspect_all(vec![
        message(&millimetres),
        message(&kilometres),
        message(&kinect),
        message(&good[..1]),
        message(&good[..3]),
    ]);
    for outcome in &outcomes[..2] {
        let why = invalid(outcome);
        assert!(why.contains("another unit"), "{why}");
    }
    let why = invalid(&outcomes[2]);
    assert!(why.contains("another scene") || why.contains("larger than the part"), "{why}");
    // Both scales are named: the scan's (about 1000× the part's) and the part's.
    let why = invalid(&outcomes[0]);
    assert!(why.contains("units across but the part the model learnt spans 0.1"), "{why}");
    for (outcome, n) in outcomes[3..].iter().zip([1, 3]) {
        let why = invalid(outcome);
        assert!(why.contains(&format!("has {n} usable points")) && !why.contains("voxel"), "{why}");
    }
}

#[test]
fn a_model_whose_weights_went_nan_gives_an_error_never_a_pass() {
    let model = bundled_model();
    {
        let _guard = tch::no_grad_guard();
        for (_, mut tensor) in model.detector.heads.vs.variables() {
            let _ = tensor.fill_(f64::NAN);
        }
    }
    let (tx, rx) = mpsc::channel();
    let inspector = Inspector::start(1, Some(model), ThresholdOverrides::default(), move |r: Report<()>| {
        let _ = tx.send(r);
    });
    assert!(inspector.submit((), message(&cell_scan("000_good"))).is_none());
    let report = rx.recv_timeout(Duration::from_secs(300)).unwrap();
    match report.outcome {
        Outcome::Failed(why) => assert!(why.contains("not sound") && why.contains("not finite"), "{why}"),
        other => panic!("expected ERROR, got {other:?}"),
    }
    assert_eq!(inspector.stats().failed, 1, "counted for /diagnostics");
}

#[test]
fn data_longer_than_the_layout_is_refused() {
    let mut long = message(&cell_scan("000_good")[..2000]);
    long.data.extend([0u8; 12]);
    let outcomes = inspect_all(vec![long]);
    assert!(invalid(&outcomes[0]).contains("does not describe this data"));
}
