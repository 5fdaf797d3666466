//! The inspection service's pipeline (`inspect3d::inspector`: one thread prepares the next scans' geometry while
//! another scores the previous ones) with the bundled model and the bundled cell scans: it reports what the
//! detector gives for each scan alone, in order, and a model activated while a scan is being prepared scores
//! that scan with its own geometry.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use inspect3d::cloud::{PointCloud, pointcloud2, read_cloud};
use inspect3d::inspector::config::InspectorConfig;
use inspect3d::inspector::{Inspector, LoadedModel, Outcome, Report, SCORE_FIELD, ThresholdOverrides};
use inspect3d::model::Inspection;

const SCANS: [&str; 6] = ["000_good", "000_bulge", "001_good", "001_missing", "002_sink", "003_dent"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bundled_model(patch_count: i64) -> LoadedModel {
    let config = InspectorConfig { patch_count, ..InspectorConfig::default() };
    LoadedModel::load(&root().join("models/featuretype"), tch::Device::Cpu, &config).unwrap()
}

fn cell_scan(name: &str) -> PointCloud {
    read_cloud(&root().join("tests/data/cell_scans").join(format!("{name}.pcd"))).unwrap()
}

fn scored(report: &Report<usize>) -> &Inspection {
    match &report.outcome {
        Outcome::Scored { inspection, .. } => inspection,
        other => panic!("scan {}: expected a verdict, got {other:?}", report.tag),
    }
}

/// The largest difference between two score lists (NaN equal to NaN; a NaN against a number counts as infinite).
fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| match (x.is_nan(), y.is_nan()) {
            (true, true) => 0.0,
            (false, false) => (x - y).abs(),
            _ => f32::INFINITY,
        })
        .fold(0.0, f32::max)
}

fn assert_same_inspection(got: &Inspection, alone: &Inspection, what: &str) {
    assert_eq!(
        (got.passed, got.patches, got.valid_points),
        (alone.passed, alone.patches, alone.valid_points),
        "{what}"
    );
    let difference = largest_difference(&got.point_scores, &alone.point_scores);
    assert!(difference < 1e-5, "{what}: point scores differ by {difference}");
}

#[test]
fn the_pipeline_reports_what_the_detector_gives_for_each_scan_alone() {
    let alone: Vec<Inspection> = {
        let model = bundled_model(0);
        SCANS.iter().map(|name| model.detector.inspect(&cell_scan(name)).unwrap()).collect()
    };
    let (tx, rx) = mpsc::channel();
    // Deep enough that no scan is dropped: scans arriving together are prepared and scored in batches.
    let inspector = Inspector::start(SCANS.len(), Some(bundled_model(0)), ThresholdOverrides::default(), move |r| {
        let _ = tx.send(r);
    });
    for (tag, name) in SCANS.iter().enumerate() {
        assert!(inspector.submit(tag, pointcloud2::encode(&cell_scan(name))).is_none());
    }
    for (tag, expected) in alone.iter().enumerate() {
        let report = rx.recv_timeout(Duration::from_secs(300)).expect("a report for every scan");
        assert_eq!(report.tag, tag, "reports come in arrival order");
        assert_same_inspection(scored(&report), expected, SCANS[tag]);
    }
    assert_eq!(inspector.stats().scored(), SCANS.len() as u64);
}

/// Waits until `done` holds, polling.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(300), "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_model_activated_while_a_scan_is_prepared_scores_it_with_its_own_geometry() {
    // The same model with half the patches: a scan prepared with the first model's geometry has the wrong
    // patches for the second.
    let expected = bundled_model(256).detector.inspect(&cell_scan("001_good")).unwrap();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (tx, rx) = mpsc::channel();
    let inspector =
        Inspector::start(1, Some(bundled_model(0)), ThresholdOverrides::default(), move |r: Report<usize>| {
            if r.tag == 0 {
                let _ = release_rx.recv();
            }
            let _ = tx.send(r);
        });
    // Scan 0 holds the scoring thread in its report; scan 1 goes to a geometry worker, which prepares it with
    // the first model's geometry and then waits for the scoring thread.
    assert!(inspector.submit(0, pointcloud2::encode(&cell_scan("000_good"))).is_none());
    wait_until("scan 0 is scored", || inspector.stats().scored() == 1);
    assert!(inspector.submit(1, pointcloud2::encode(&cell_scan("001_good"))).is_none());
    wait_until("scan 1 is taken from the queue", || inspector.stats().waiting == 0);
    std::thread::sleep(Duration::from_millis(200));
    inspector.activate(bundled_model(256));
    release_tx.send(()).unwrap();
    let first = rx.recv_timeout(Duration::from_secs(300)).unwrap();
    assert_eq!((first.tag, scored(&first).patches), (0, 512), "scan 0: the first model");
    let second = rx.recv_timeout(Duration::from_secs(300)).unwrap();
    assert_eq!(second.tag, 1);
    assert_same_inspection(scored(&second), &expected, "scan 1 with the second model");
}

#[test]
fn without_an_anomaly_cloud_wanted_scans_get_the_same_verdicts_and_a_message_that_cannot_carry_scores_is_refused() {
    let (tx, rx) = mpsc::channel();
    let inspector = Inspector::start(4, Some(bundled_model(0)), ThresholdOverrides::default(), move |r| {
        let _ = tx.send(r);
    });
    let scan = pointcloud2::encode(&cell_scan("000_bulge"));
    // A message that already has a field named like the score, of another type: no score can be added to it.
    let mut clashing = scan.clone();
    clashing.fields.push(pointcloud2::PointFieldLayout {
        name: inspect3d::inspector::SCORE_FIELD.into(),
        offset: 0,
        datatype: 2, // UINT8
        count: 1,
    });
    let next = |wanted: bool, tag: usize, msg: &pointcloud2::PointCloud2Layout| {
        inspector.set_clouds_wanted(wanted);
        assert!(inspector.submit(tag, msg.clone()).is_none());
        let report = rx.recv_timeout(Duration::from_secs(300)).expect("a report");
        assert_eq!(report.tag, tag);
        report
    };
    let with_cloud = next(true, 0, &scan);
    let without_cloud = next(false, 1, &scan);
    match (&with_cloud.outcome, &without_cloud.outcome) {
        (
            Outcome::Scored { inspection: a, anomaly_cloud: Some(cloud) },
            Outcome::Scored { inspection: b, anomaly_cloud: None },
        ) => {
            assert_same_inspection(b, a, "000_bulge without its anomaly cloud");
            let cloud = cloud.layout(&a.point_scores).unwrap();
            assert_eq!(cloud, pointcloud2::with_f32_fields(&scan, &[(SCORE_FIELD, &a.point_scores)]).unwrap());
            assert_eq!(cloud.width * cloud.height, scan.width * scan.height);
        }
        _ => panic!("expected a scored scan with its anomaly cloud, then one scored without"),
    }
    for (tag, wanted) in [(2, true), (3, false)] {
        let refused = next(wanted, tag, &clashing);
        assert!(
            matches!(&refused.outcome, Outcome::InvalidInput(why) if why.contains("another type")),
            "clouds wanted: {wanted}: {:?}",
            refused.outcome
        );
    }
}
