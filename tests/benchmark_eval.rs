//! A small benchmark made from a real CAD part by `inspect3d synth`, in Real3D-AD's layout, evaluated by
//! `inspect3d eval` with ours and the BTF baselines on the same data.

use std::path::{Path, PathBuf};
use std::process::Command;

use inspect3d::eval::dataset;

fn inspect3d(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_inspect3d")).args(args).output().expect("run inspect3d");
    assert!(out.status.success(), "inspect3d {args:?}:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Writes `text` to `dir/name`; returns the path.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `inspect3d synth` of one bundled mesh with a benchmark configuration (JSON) into `dir/bench`.
fn synth(dir: &Path, mesh: &str, config: &str) -> PathBuf {
    let root = dir.join("bench");
    let mesh = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/meshes").join(mesh);
    let config = write(dir, "bench.json", config);
    inspect3d(&["synth", "--meshes", &s(&mesh), "--out", &s(&root), "--config", &s(&config)]);
    root
}

#[test]
fn synth_writes_real3d_ad_layout_and_eval_compares_methods() {
    let dir = tempfile::tempdir().unwrap();
    let bench = r#"{"train": 3, "test_good": 2, "test_defective": 4, "points": 10000, "seed": 3}"#;
    let root = synth(dir.path(), "angle_block.STL", bench);

    let class = dataset::load_class(&root.join("angle_block")).unwrap();
    assert_eq!((class.train.len(), class.test.len()), (3, 6));
    let defective = class.test.iter().filter(|c| c.is_defective()).count();
    assert_eq!(defective, 4, "every defective scan has labelled points");
    assert!(class.test.iter().all(|c| c.points.len() == c.labels.len() && c.points.len() == 10_000));

    let detector_cfg = write(
        dir.path(),
        "detector.json",
        r#"{"preprocess": {"normals_face": "outward", "augment": {"views_per_cloud": 2}},
            "patches": {"count": 128}, "training": {"epochs": 10}}"#,
    );
    let report = dir.path().join("report");
    let table = inspect3d(&[
        "eval",
        "--data",
        &s(&root),
        "--config",
        &s(&detector_cfg),
        "--report",
        &s(&report),
        "--device",
        "cpu",
    ]);
    assert!(table.contains("| angle_block |") && table.contains("BTF(FPFH)") && table.contains("**mean**"), "{table}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap()).unwrap();
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 8, "4 methods (ours, BTF(Raw), BTF(FPFH), PatchCore) × 2 classes");
    for r in results {
        for key in ["object_auroc", "object_ap", "point_auroc", "point_ap"] {
            let v = r[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {r}"));
            assert!((0.0..=1.0).contains(&v), "{key} = {v}");
        }
    }
    let fpfh = results.iter().find(|r| r["method"] == "BTF(FPFH)").unwrap();
    assert!(
        fpfh["point_auroc"].as_f64().unwrap() > 0.75,
        "BTF(FPFH) should localise simulated bulges and sinks: {fpfh}"
    );
}

/// `ours-scoring` scores the default model's scoring variants with one training; each must equal a model
/// trained and scored with that choice on its own.
#[test]
fn scoring_variants_share_one_training_and_match_their_own_model() {
    let dir = tempfile::tempdir().unwrap();
    let bench =
        r#"{"train": 3, "test_good": 1, "test_defective": 2, "points": 5000, "seed": 5, "modes": ["full_scan"]}"#;
    let root = synth(dir.path(), "round.stl", bench);
    let config = |scoring: &str| {
        write(
            dir.path(),
            &format!("detector{}.json", scoring.len()),
            &format!(
                r#"{{"preprocess": {{"normals_face": "outward", "augment": {{"views_per_cloud": 1}}}},
                    "patches": {{"count": 64, "size": 16}}, "training": {{"epochs": 3}},
                    "scoring": {{"holdout_fraction": 0.5{scoring}}}}}"#
            ),
        )
    };
    let results = |cfg: &Path, methods: &str, report: &str| -> Vec<serde_json::Value> {
        let report = dir.path().join(report);
        let (cfg, report_arg) = (s(cfg), s(&report));
        inspect3d(&["eval", "--data", &s(&root), "--config", &cfg, "--methods", methods, "--report", &report_arg]);
        let text = std::fs::read_to_string(report.join("report.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap().as_array().unwrap().clone()
    };
    let shared = results(&config(""), "ours,ours-scoring", "shared");
    let names: Vec<&str> = shared.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert!(names.contains(&"Ours · Score: fused") && names.contains(&"Ours · Object score: max"));
    let own = results(&config(r#", "source": "fused""#), "ours", "own");
    let variant = shared.iter().find(|r| r["method"] == "Ours · Score: fused").unwrap();
    for key in ["object_auroc", "point_auroc", "point_ap"] {
        assert!(variant[key].is_f64(), "{key} missing: {variant}");
        assert_eq!(variant[key], own[0][key], "{key}: shared training {variant} vs its own model {}", own[0]);
    }
}

#[test]
fn malformed_ground_truth_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let gt = dir.path().join("x.txt");
    std::fs::write(&gt, "1 2 3 0\n4 5 6\n").unwrap();
    let err = dataset::read_ground_truth(&gt).err().unwrap().to_string();
    assert!(err.contains("line 2") && err.contains("3 numbers"), "{err}");
    std::fs::write(&gt, "1 2 3 zero\n").unwrap();
    assert!(dataset::read_ground_truth(&gt).err().unwrap().to_string().contains("line 1"));
    let (points, labels) = {
        std::fs::write(&gt, "1 2 3 0\n4 5 6 1\n").unwrap();
        dataset::read_ground_truth(&gt).unwrap()
    };
    assert_eq!((points[1], labels), ([4.0, 5.0, 6.0], vec![false, true]));
}

#[test]
fn ablation_mode_runs_every_switch() {
    let dir = tempfile::tempdir().unwrap();
    let bench =
        r#"{"train": 2, "test_good": 1, "test_defective": 2, "points": 5000, "seed": 4, "modes": ["full_scan"]}"#;
    let root = synth(dir.path(), "round.stl", bench);
    let detector_cfg = write(
        dir.path(),
        "detector.json",
        r#"{"preprocess": {"normals_face": "outward", "augment": {"views_per_cloud": 1, "camera_views": 1}},
            "patches": {"count": 64, "size": 16}, "generator": {"pseudo_defects": {"copies_per_view": 1}},
            "training": {"epochs": 3}, "scoring": {"holdout_fraction": 0.5}}"#,
    );
    let table =
        inspect3d(&["eval", "--data", &s(&root), "--config", &s(&detector_cfg), "--ablations", "--device", "cpu"]);
    for variant in [
        "Ours (full)",
        "−SCA",
        "−FA",
        "Discriminator (SimpleNet)",
        "No global step",
        "Geometry only",
        "Feature only",
        "Random Point-MAE backbone",
        "Generator: selective (paper)",
        "Generator: AFG (SimpleNet)",
        "Generator: geometric+selective",
        "Point head off (point bank alone)",
        "Point bank off (point head alone)",
        "Point level off (patch scores only)",
        "Conditioning off",
        "Alignment off",
        "Template: first cloud only (not fused)",
        "Camera views of all-round clouds off",
        "Template counts through the camera",
        "Positions off",
        "Score: fused",
        "Score: bank only",
        "Object score: max",
        "Point level: head only",
        "Point level: bank only",
        "Paper (config/paper.json)",
    ] {
        assert!(table.contains(&format!("| {variant} |")), "{variant} missing:\n{table}");
    }
    // A switch already at the default's setting is the full row, not a second training of the same model.
    for same_as_full in ["Generator: geometric |", "Score: discriminator only |", "Object score: top 1 % mean |"] {
        assert!(!table.contains(same_as_full), "{same_as_full} duplicates the full row:\n{table}");
    }
}

/// `full_then_camera` writes `<part>_cross`: full training scans, and camera frames moved into the part's frame,
/// where they lie on the part the training scans show.
#[test]
fn cross_classes_train_on_full_scans_and_test_on_camera_frames_in_the_part_frame() {
    let dir = tempfile::tempdir().unwrap();
    let bench = r#"{"train": 2, "test_good": 1, "test_defective": 1, "points": 20000, "seed": 6,
                    "modes": ["full_then_camera"], "defects": ["bulge"]}"#;
    let root = synth(dir.path(), "featuretype.STL", bench);
    let class = dataset::load_class(&root.join("featuretype_cross")).unwrap();
    assert!(class.train.iter().all(|c| c.points.len() == 20_000), "training clouds are full scans");
    let trained: Vec<[f32; 3]> = class.train.iter().flat_map(|c| c.points.iter().copied()).collect();
    let index = inspect3d::geometry::NeighborIndex::new(&trained).unwrap();
    for test in &class.test {
        // A camera frame: fewer points than a full scan, one side of the part.
        assert!(test.points.len() > 5_000 && test.points.len() < 200_000, "{} points", test.points.len());
        let mut distances: Vec<f32> = test.points.iter().map(|p| index.nearest(p).squared_distance.sqrt()).collect();
        distances.sort_by(f32::total_cmp);
        // The part is 100 mm; the frame's misalignment is at most 2° and 1 mm, the training scans' spacing ~0.4 mm.
        let median = distances[distances.len() / 2];
        assert!(median < 3.0, "{}: median distance to the training scans {median} mm", test.name);
    }
    assert!(class.test.iter().any(|c| c.is_defective()));
}
