//! The detector end to end on a real part: simulated scans of a CAD mesh from tests/data/meshes train a model;
//! a scan with a bulge scores higher where the bulge is; the model folder round-trips and refuses tampering;
//! the CLI trains, infers and describes a model.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use inspect3d::cloud::{PointCloud, pcd, read_cloud};
use inspect3d::geometry::Point;
use inspect3d::model::config::{DetectorConfig, NormalSide};
use inspect3d::model::{Inspection, store};
use inspect3d::synth::{defects, mesh::Mesh, sample};
use inspect3d::train::{self, TrainingCloud};
use rand::SeedableRng;

const PART: &str = "tests/data/meshes/featuretype.STL";

fn part() -> Mesh {
    Mesh::read(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(PART)).unwrap().normalised(100.0)
}

/// A scan of the part (100 mm across): 12k surface points with 0.05 mm noise; optionally a 2 mm bulge of
/// radius 8 mm in the middle of the top face. Returns the points and the defect mask.
fn scan(mesh: &Mesh, seed: u64, bulge: bool) -> (Vec<Point>, Vec<bool>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut s = sample::sample_surface(mesh, 12_000, 0.05, &mut rng);
    let mask = if bulge {
        let centre = *s
            .points
            .iter()
            .filter(|p| p[2] > 0.0)
            .min_by(|a, b| (a[0].abs() + a[1].abs()).total_cmp(&(b[0].abs() + b[1].abs())))
            .unwrap();
        defects::bump(&mut s.points, &s.normals, centre, 8.0, 2.0)
    } else {
        vec![false; s.points.len()]
    };
    (s.points, mask)
}

/// The shipped default (voxel derived from the data, multi-scale FPFH tokens, geometric pseudo-defects, fused
/// score), made small enough to train in seconds on two cores.
fn small_config() -> DetectorConfig {
    let mut c = DetectorConfig::default();
    c.preprocess.normals_face = NormalSide::Outward;
    c.scoring.holdout_fraction = 0.34;
    c
}

/// Point AUROC of scores against a mask (ties count half).
fn auroc(scores: &[f32], mask: &[bool]) -> f64 {
    inspect3d::eval::metrics::auroc(scores, mask).unwrap()
}

fn good_clouds(mesh: &Mesh) -> Vec<TrainingCloud> {
    (0..9).map(|i| TrainingCloud { name: format!("good{i}"), points: scan(mesh, i, false).0 }).collect()
}

fn mean(v: impl Iterator<Item = f32>) -> f32 {
    let (s, n) = v.fold((0.0, 0), |(s, n), x| (s + x, n + 1));
    s / n as f32
}

/// (mean score on the defect, mean elsewhere, enrichment: the share of defect points among the top 1 % of
/// scores over their share of the cloud).
fn localisation(inspection: &Inspection, mask: &[bool]) -> (f32, f32, f32) {
    let s = &inspection.point_scores;
    let inside = mean(s.iter().zip(mask).filter(|(_, m)| **m).map(|(s, _)| *s));
    let outside = mean(s.iter().zip(mask).filter(|(_, m)| !**m).map(|(s, _)| *s));
    let mut order: Vec<usize> = (0..s.len()).collect();
    order.sort_unstable_by(|&a, &b| s[b].total_cmp(&s[a]));
    let top = &order[..s.len() / 100];
    let top_share = top.iter().filter(|&&i| mask[i]).count() as f32 / top.len() as f32;
    let base_share = mask.iter().filter(|m| **m).count() as f32 / mask.len() as f32;
    (inside, outside, top_share / base_share)
}

#[test]
fn a_bulge_scores_higher_and_the_model_folder_round_trips() {
    inspect3d::init_logging();
    let mesh = part();
    // A labelled scan (another sampling with the same bulge) sets the point threshold by best F1.
    let (vpoints, vmask) = scan(&mesh, 50, true);
    let validation = [train::LabelledCloud { name: "validation".into(), points: vpoints, labels: vmask }];
    let (detector, summary) = train::train(
        small_config(),
        &good_clouds(&mesh),
        &validation,
        tch::Device::Cpu,
        &mut train::LogMonitor::default(),
    )
    .unwrap();
    assert!(summary.final_loss.is_finite() && summary.clouds_held_out == 3 && summary.clouds_trained == 6);
    let (points, mask) = scan(&mesh, 100, true);
    let defective = detector.inspect(&PointCloud::from_xyz(&points)).unwrap();
    let clean = detector.inspect(&PointCloud::from_xyz(&scan(&mesh, 101, false).0)).unwrap();
    let (inside, outside, enrichment) = localisation(&defective, &mask);
    let point_auroc = auroc(&defective.point_scores, &mask);
    println!(
        "defect mean {inside:.4}, elsewhere {outside:.4}, top-1% enrichment {enrichment:.1}×, point AUROC {point_auroc:.3}; cloud scores defective {:.4}, clean {:.4}; {:?}; voxel {}",
        defective.cloud_score, clean.cloud_score, defective.thresholds, detector.config.preprocess.voxel_size
    );
    // The trained model ranks the bulge above most of its part. Measured here: point AUROC 0.85, the bulge's
    // mean score 1.9× the rest; the very highest scores of this 12k-point scan still fall elsewhere (top-1 %
    // enrichment 0; docs/detector.md "Known weak spots"), so the top and the cloud scores are not asserted.
    assert!(point_auroc > 0.75, "point AUROC {point_auroc}");
    assert!(inside > 1.5 * outside, "defect {inside} vs elsewhere {outside}");
    // The voxel came from the data: 3 point spacings of a 12k-point scan of a 100 mm part, about 1.6 mm.
    let voxel = detector.config.preprocess.voxel_size;
    assert!((0.5..3.0).contains(&voxel), "derived voxel {voxel}");
    assert!(defective.point_scores.iter().all(|s| (0.0..=1.0).contains(s)));

    // The model folder: save, load, same scores bit for bit.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("featuretype");
    let manifest = store::save(&detector, &path, "featuretype", summary).unwrap();
    let (loaded, read) = store::load(&path, tch::Device::Cpu).unwrap();
    assert_eq!(read, manifest);
    assert!(manifest.model_id.starts_with("featuretype-"));
    let again = loaded.inspect(&PointCloud::from_xyz(&points)).unwrap();
    assert_eq!(again.point_scores, defective.point_scores);
    assert_eq!(again.thresholds, defective.thresholds);
    // Saving over an existing model replaces it whole; no staging folders are left behind.
    store::save(&loaded, &path, "featuretype", Default::default()).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    // Tampering and damage are named.
    let check = |what: &str, expect: &str| {
        let err = store::load(&path, tch::Device::Cpu).err().unwrap_or_else(|| panic!("{what} loaded")).to_string();
        assert!(err.contains(expect), "{what}: {err}");
    };
    let heads = path.join("heads.safetensors");
    let original = std::fs::read(&heads).unwrap();
    let mut changed = original.clone();
    let last = changed.len() - 1;
    changed[last] ^= 0x55;
    std::fs::write(&heads, &changed).unwrap();
    check("changed weights", "does not match the manifest's hash");
    std::fs::write(&heads, &original).unwrap();
    let manifest_path = path.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path).unwrap();
    let current = format!("\"format_version\": {}", inspect3d::model::store::FORMAT_VERSION);
    std::fs::write(&manifest_path, text.replace(&current, "\"format_version\": 99")).unwrap();
    check("future format", "format version 99");
    std::fs::write(&manifest_path, text.replace(&current, "\"format_version\": 1")).unwrap();
    check("a model from before conditioning", "no token conditioning statistics");
    std::fs::write(&manifest_path, text.replace("\"kind\": \"multiscale_fpfh\"", "\"kind\": \"pointnet9\"")).unwrap();
    check("unknown backbone", "pointnet9");
    // A manifest from before the capture input reads as trained without it (its heads are one input narrower).
    assert!(manifest.config.preprocess.capture_input);
    std::fs::write(&manifest_path, text.replace("\"capture_input\": true,", "")).unwrap();
    assert!(!store::read_manifest(&path).unwrap().config.preprocess.capture_input);
    std::fs::write(&manifest_path, &text).unwrap();
    // The conditioning statistics live in the folder; a folder without them is refused, naming them.
    let conditioning = path.join("conditioning.safetensors");
    let stats = std::fs::read(&conditioning).unwrap();
    assert!(stats.len() > 4 * 99 * 2, "mean and std of 99 dimensions and the bank are stored");
    std::fs::remove_file(&conditioning).unwrap();
    check("no conditioning statistics", "conditioning.safetensors is missing");
    std::fs::write(&conditioning, &stats).unwrap();
    std::fs::remove_file(&manifest_path).unwrap();
    check("no manifest", "manifest.json");
}

fn run(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_inspect3d")).args(args).output().expect("run inspect3d");
    assert!(out.status.success(), "inspect3d {args:?}:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("inspect3d {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

fn write_pcd(path: &Path, points: &[Point]) {
    pcd::write(path, &PointCloud::from_xyz(points), pcd::PcdEncoding::BinaryCompressed).unwrap();
}

#[test]
fn the_cli_trains_infers_and_describes() {
    let mesh = part();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("good");
    std::fs::create_dir(&data).unwrap();
    for (i, cloud) in good_clouds(&mesh).iter().enumerate() {
        write_pcd(&data.join(format!("scan{i}.pcd")), &cloud.points);
    }
    // The CLI's plumbing, not the detector's quality (the test above): a short training.
    let mut quick = small_config();
    quick.preprocess.augment.views_per_cloud = 1;
    // Camera views of these all-round scans are the test above's (the shipped default); here they would only
    // multiply the plumbing's training time.
    quick.preprocess.augment.camera_views = 0;
    quick.patches.count = 256;
    quick.training.epochs = 3;
    let config = dir.path().join("config.json");
    std::fs::write(&config, serde_json::to_string(&quick).unwrap()).unwrap();
    let model = dir.path().join("models/featuretype");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    // A validation folder of scans with a per-point label field.
    let validation = dir.path().join("validation");
    std::fs::create_dir(&validation).unwrap();
    let (vpoints, vmask) = scan(&mesh, 50, true);
    let mut labelled = PointCloud::from_xyz(&vpoints);
    labelled
        .set_field(inspect3d::cloud::Field::from_u8("label", &vmask.iter().map(|&m| u8::from(m)).collect::<Vec<_>>()))
        .unwrap();
    pcd::write(&validation.join("bulge.pcd"), &labelled, pcd::PcdEncoding::Binary).unwrap();
    let trained = run(&[
        "train",
        "--data",
        &s(&data),
        "--out",
        &s(&model),
        "--config",
        &s(&config),
        "--validation",
        &s(&validation),
        "--device",
        "cpu",
    ]);
    assert!(trained["cloud_threshold"].as_f64().unwrap().is_finite());

    let (defective, clean) = (dir.path().join("defective.pcd"), dir.path().join("clean.pcd"));
    write_pcd(&defective, &scan(&mesh, 100, true).0);
    write_pcd(&clean, &scan(&mesh, 101, false).0);
    let heatmap = dir.path().join("heat.ply");
    let bad =
        run(&["infer", "--model", &s(&model), "--input", &s(&defective), "--out", &s(&heatmap), "--device", "cpu"]);
    let good = run(&["infer", "--model", &s(&model), "--input", &s(&clean), "--device", "cpu"]);
    for verdict in [&bad, &good] {
        assert!(
            verdict["passed"].is_boolean() && verdict["cloud_score"].is_number() && verdict["latency_ms"].is_number()
        );
        assert_eq!(verdict["model_id"], trained["model_id"]);
    }
    let heat = read_cloud(&heatmap).unwrap();
    assert_eq!(heat.len(), 12_000);
    assert!(heat.field("anomaly_score").is_some() && heat.field("red").is_some());

    let info = run(&["info", "--model", &s(&model)]);
    assert_eq!(info["model_id"], trained["model_id"]);
    assert_eq!(info["config"]["patches"]["count"], 256);
    assert!(info["config"]["preprocess"]["voxel_size"].as_f64().unwrap() > 0.0, "the derived voxel is stored");

    let missing = Command::new(env!("CARGO_BIN_EXE_inspect3d"))
        .args(["infer", "--model", &s(&dir.path().join("nope")), "--input", &s(&clean)])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("manifest.json"));
}

/// The demo's promise, checked on the bundled model and scans: every good scan passes, every defective one is
/// rejected, and the reported defect centre lies within the defect: inside the sphere of its labelled points
/// (tests/data/cell_scans/defects), or within two voxels of one of them (a missing chunk's labels are its cavity
/// and rim, possibly cut off by the frame).
#[test]
fn the_bundled_model_rejects_each_defective_scan_at_its_defect() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (detector, _) = store::load(&root.join("models/featuretype"), tch::Device::Cpu).unwrap();
    // Taught from camera frames only: no views were cut, so training turned the capture input off (a frame that
    // lost a face reads as partial, an input such heads never learnt).
    assert!(!detector.config.preprocess.capture_input, "the bundled model sees the capture input");
    let scans = root.join("tests/data/cell_scans");
    let mut seen = 0;
    for path in inspect3d::cloud::cloud_files(&scans).unwrap() {
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let inspection = detector.inspect(&read_cloud(&path).unwrap()).unwrap();
        println!(
            "{name}: passed {} score {:.3} defect {:?}",
            inspection.passed, inspection.cloud_score, inspection.defect
        );
        seen += 1;
        if name.ends_with("good") {
            assert!(inspection.passed, "{name}: a good scan rejected at {}", inspection.cloud_score);
            continue;
        }
        assert!(!inspection.passed, "{name}: a defective scan passed at {}", inspection.cloud_score);
        let text = std::fs::read_to_string(scans.join("defects").join(format!("{name}.xyz"))).unwrap();
        let defect: Vec<Point> = text
            .lines()
            .map(|l| {
                let v: Vec<f32> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
                [v[0], v[1], v[2]]
            })
            .collect();
        let n = defect.len() as f32;
        let centre = (0..3).map(|k| defect.iter().map(|p| p[k]).sum::<f32>() / n).collect::<Vec<_>>();
        let distance = |a: &[f32], b: &[f32]| (0..3).map(|k| (a[k] - b[k]).powi(2)).sum::<f32>().sqrt();
        let radius = defect.iter().map(|p| distance(p, &centre)).fold(0f32, f32::max);
        let reported = inspection.defect.unwrap_or_else(|| panic!("{name}: rejected without a defect region"));
        let off = distance(&reported.centroid, &centre);
        let to_nearest = defect.iter().map(|p| distance(p, &reported.centroid)).fold(f32::INFINITY, f32::min);
        let voxel = detector.config.preprocess.voxel_size;
        assert!(
            off <= radius || to_nearest <= 2.0 * voxel,
            "{name}: reported centre {:?} is {off:.1} from the defect's centre (radius {radius:.1}) and {to_nearest:.1} from its nearest point",
            reported.centroid
        );
    }
    assert_eq!(seen, 6);
}

/// Several cameras' scans scored in one batch get what each gets alone; a bad scan in the batch costs only its
/// own result.
#[test]
fn a_batch_gives_each_scan_the_verdict_it_gets_alone() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (detector, _) = store::load(&root.join("models/featuretype"), tch::Device::Cpu).unwrap();
    let mut clouds: Vec<PointCloud> = inspect3d::cloud::cloud_files(&root.join("tests/data/cell_scans"))
        .unwrap()
        .iter()
        .map(|path| read_cloud(path).unwrap())
        .collect();
    clouds.insert(2, PointCloud::from_xyz(&[[0.0, 0.0, 1.0]; 10]));
    let batch: Vec<&PointCloud> = clouds.iter().collect();
    let together = detector.inspect_batch(&batch, detector.thresholds);
    assert_eq!(together.len(), clouds.len());
    for (k, (cloud, batched)) in clouds.iter().zip(&together).enumerate() {
        let alone = detector.inspect(cloud);
        let (alone, batched) = match (alone, batched) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(a), Err(b)) => {
                assert!(k == 2 && a.is_input_problem(), "cloud {k}: {a}");
                assert_eq!(a.to_string(), b.to_string());
                continue;
            }
            (a, b) => panic!("cloud {k}: alone {:?}, batched {:?}", a.map(|i| i.passed), b.as_ref().map(|i| i.passed)),
        };
        assert_eq!(alone.passed, batched.passed, "cloud {k}");
        assert!((alone.cloud_score - batched.cloud_score).abs() < 1e-4, "cloud {k}");
        let worst = common::largest_score_difference(&alone.point_scores, &batched.point_scores);
        assert!(worst < 1e-3, "cloud {k}: point scores differ by {worst}");
    }
}

#[test]
fn the_version_names_the_libtorch_it_links() {
    let out = Command::new(env!("CARGO_BIN_EXE_inspect3d")).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.starts_with(&format!("inspect3d {}; LibTorch 2.", env!("CARGO_PKG_VERSION"))), "{text}");
    assert!(text.contains("CUDA") || text.contains("CPU build"), "{text}");
}

/// The detector benchmark runs end to end (its numbers are measured, not asserted here): it once broke when
/// verdicts began refusing the NaN thresholds of an untrained detector.
#[test]
fn the_detector_benchmark_prints_its_table() {
    let out = Command::new(env!("CARGO_BIN_EXE_inspect3d"))
        .args(["bench", "detector", "--input", "tests/data/cell_scans/000_good.pcd", "--repeats", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = [
        "| whole inspection |",
        "| throughput, one at a time |",
        "| throughput, batched |",
        "| whole inspection, config/paper.json |",
        "| training step |",
    ];
    for row in rows {
        assert!(text.contains(row), "no row {row} in:\n{text}");
    }
}
