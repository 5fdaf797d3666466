//! `inspect3d`: the command line. Each subcommand is a thin edge over the library: parse arguments, call it,
//! print the result, add context to errors.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use inspect3d::bench::BenchInput;
use inspect3d::cloud::{self, pcd, ply};
use inspect3d::geometry::{self, Neighborhood, NormalOrientation};
use inspect3d::model::config::DetectorConfig;
use inspect3d::model::{DeviceChoice, Placement, store};
use inspect3d::train;

#[derive(Parser)]
#[command(name = "inspect3d", version = VERSION, about = "Surface-defect detection on 3D point clouds")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The version line: the package's and the LibTorch it links (with the CUDA that LibTorch was built for).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "; LibTorch ", env!("INSPECT3D_LIBTORCH"));

#[derive(Subcommand)]
enum Command {
    /// Converts a cloud between PCD and PLY (all fields kept).
    Convert {
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        #[arg(long, value_enum, default_value_t = Encoding::Binary)]
        encoding: Encoding,
    },
    /// Loads a cloud, runs the geometry stages on it and prints a JSON summary; optionally writes a PLY coloured
    /// by surface variation (flat = blue, edges and noise = red).
    Describe {
        #[arg(long)]
        input: PathBuf,
        /// Voxel size in the cloud's unit.
        #[arg(long, default_value_t = 0.005)]
        voxel: f32,
        #[arg(long)]
        heatmap: Option<PathBuf>,
    },
    /// Learns a model from good clouds (a folder of .pcd/.ply, or rosbag2 bags) and calibrates its thresholds.
    Train {
        /// Folder of point clouds of defect-free parts.
        #[arg(long, conflicts_with = "bag", required_unless_present = "bag")]
        data: Option<PathBuf>,
        /// rosbag2 bag folders (MCAP or sqlite3) recorded from defect-free parts; repeatable.
        #[arg(long, requires = "topic")]
        bag: Vec<PathBuf>,
        /// The sensor_msgs/msg/PointCloud2 topic to read from the bags.
        #[arg(long)]
        topic: Option<String>,
        /// Model folder to write (replaced atomically if it exists).
        #[arg(long)]
        out: PathBuf,
        /// JSON configuration (see docs/detector.md); absent keys keep the method's defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        epochs: Option<usize>,
        /// Voxel size in the clouds' unit.
        #[arg(long)]
        voxel: Option<f32>,
        /// Folder of clouds with defects and a per-point `label` field: sets the point threshold by best F1.
        #[arg(long)]
        validation: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
        device: DeviceChoice,
        /// Run the per-cloud geometry of training as tensor code on the device (`geometry::device`).
        #[arg(long)]
        device_geometry: bool,
    },
    /// Scores a cloud with a model and prints the verdict as JSON.
    Infer {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        input: PathBuf,
        /// Writes a PLY heatmap of the point scores.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
        device: DeviceChoice,
        /// Run the per-scan geometry as tensor code on the device (`geometry::device`) instead of the host's.
        #[arg(long)]
        device_geometry: bool,
    },
    /// Writes a benchmark in Real3D-AD's layout from CAD meshes: good training scans, good and defective test
    /// scans (bulges and sinks, every point labelled). Full 360° scans.
    Synth {
        /// Mesh files or folders of them (STL, OBJ, PLY). Default: the bundled real parts.
        #[arg(long)]
        meshes: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// JSON benchmark configuration (counts, points, noise, defect sizes, seed).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Evaluates methods on a dataset in Real3D-AD's layout and prints per-class tables (object and point
    /// AUROC/AUPR, clouds per second).
    Eval {
        #[arg(long)]
        data: PathBuf,
        /// Comma-separated: ours, ours-scoring (the same trained model under every other scoring choice: score
        /// source, point-level mix, object score), btf-raw, btf-fpfh, patchcore (PatchCore(FPFH+Raw)).
        #[arg(long, default_value = "ours,btf-raw,btf-fpfh,patchcore")]
        methods: String,
        /// Detector configuration for `ours` (JSON).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Voxel size of the baselines; 0: derived from each class's training clouds, as the detector does.
        #[arg(long, default_value_t = 0.0)]
        voxel: f32,
        /// Folder for report.md and report.json.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Instead of --methods: the method's ablations (method.md's switches, the paper's Table 3, and this
        /// project's additions).
        #[arg(long)]
        ablations: bool,
        /// Multiply every coordinate by this factor before evaluating (0.001: the same data in metres), to check
        /// that nothing depends on the unit.
        #[arg(long, default_value_t = 1.0)]
        scale_data: f32,
        #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
        device: DeviceChoice,
    },
    /// Merges the report.json of several `eval --report` runs (e.g. one process per class) into one table,
    /// printed and written to OUT/table.md with OUT/summary.png (the means per method as bars).
    Report {
        #[arg(long, required = true, num_args = 1..)]
        merge: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Prints a model's manifest.
    Info {
        #[arg(long)]
        model: PathBuf,
    },
    /// Prints a per-stage timing table.
    Bench {
        #[arg(value_enum, default_value_t = Suite::Geometry)]
        suite: Suite,
        /// A cloud file. Default: geometry, the bundled 640×480 depth-camera frame and a simulated 60k-point scan of
        /// a bundled CAD part; detector, the part scan (a cell crops its frames to the part).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Voxel size in the cloud's unit. Default: geometry, 0.005 (metres) for the frame and 0.75 (mm) for the part
        /// scan; detector, 0.75 for the part scan and derived from the cloud (as training does) for a file.
        #[arg(long)]
        voxel: Option<f32>,
        #[arg(long, default_value_t = 7)]
        repeats: usize,
        /// geometry: also time Open3D's equivalent stages on the same points (`scripts/open3d_stages.py`, Python
        /// with Open3D) and print a ratio table.
        #[arg(long, value_enum)]
        compare: Option<Compare>,
        /// geometry: also time the stages as tensor code (`geometry::device`, CUDA where present); detector: run
        /// the detector's geometry that way.
        #[arg(long)]
        device_geometry: bool,
        /// detector: clouds in each throughput row (one at a time, and in one batch). Default 4.
        #[arg(long)]
        batch: Option<usize>,
        /// soak: how long to run.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// soak: scans published per second (default 30); node: the rate its floods offer (default 20). Offered more
        /// than the node sustains, the sustained column is the node's capacity (the publisher, on the same host,
        /// works more too).
        #[arg(long)]
        rate: Option<f64>,
        /// node, soak: the model the node loads. Default: the bundled models/featuretype.
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Sends recorded scans to a running inspect3d_node over DDS, one at a time, and prints each verdict as it
    /// arrives (scan, verdict, score, defect location, latency); optionally writes PLY heatmaps of the anomaly
    /// clouds.
    #[cfg(feature = "ros")]
    Replay {
        /// Scan files (.pcd/.ply) or folders of them, sent in name order.
        #[arg(long, required = true, num_args = 1..)]
        scans: Vec<PathBuf>,
        #[arg(long, default_value = "/camera/points")]
        topic: String,
        /// The node's name (its results arrive on <node>/result and <node>/anomaly_cloud).
        #[arg(long, default_value = "/inspect3d_node")]
        node: String,
        #[arg(long)]
        heatmaps: Option<PathBuf>,
        /// How long to wait for the node and for each result, seconds.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
    /// Publishes a cloud file as sensor_msgs/PointCloud2 (for replaying recorded scans and for tests).
    #[cfg(feature = "ros")]
    Publish {
        #[arg(long)]
        input: PathBuf,
        #[arg(long, default_value = "/points")]
        topic: String,
        #[arg(long, default_value = "camera")]
        frame_id: String,
        /// Messages to send; 0 sends until interrupted.
        #[arg(long, default_value_t = 10)]
        count: u32,
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        /// Wait until this many subscribers are matched before sending.
        #[arg(long, default_value_t = 0)]
        wait_for_subscribers: usize,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Encoding {
    Ascii,
    Binary,
    Compressed,
}

/// What `bench --compare` measures against.
#[derive(Clone, Copy, ValueEnum)]
enum Compare {
    /// Open3D (Python), the same stages on the same points.
    Open3d,
}

#[derive(Clone, Copy, ValueEnum)]
enum Suite {
    /// Point-cloud decoding and the geometry stages.
    Geometry,
    /// The detector's stages, peak memory and the training step.
    Detector,
    /// inspect3d_node end to end over DDS: latency, sustained scans per second, peak memory (a 640×480 frame
    /// and a dense 100k-point scan, the bundled model).
    #[cfg(feature = "ros")]
    Node,
    /// inspect3d_node under a long stream of the bundled scans mixed with hostile inputs (see --minutes,
    /// --rate): every scan's fate, wrong verdicts, latency, memory over time.
    #[cfg(feature = "ros")]
    Soak,
}

/// The 640×480 depth-camera frame shipped with the project.
const BUNDLED_FRAME: &str = "tests/data/scans/frame_20121214T142255.814212.pcd";
/// A real CAD part shipped with the project.
const BUNDLED_PART: &str = "tests/data/meshes/featuretype.STL";
/// The model shipped with the project (trained on frames of the bundled part).
#[cfg(feature = "ros")]
const BUNDLED_MODEL: &str = "models/featuretype";

fn main() -> Result<()> {
    inspect3d::init_logging();
    match Cli::parse().command {
        Command::Convert { input, output, encoding } => convert(&input, &output, encoding),
        Command::Describe { input, voxel, heatmap } => describe(&input, voxel, heatmap.as_deref()),
        Command::Train { data, bag, topic, out, config, epochs, voxel, validation, device, device_geometry } => {
            let source = match (data, topic) {
                (Some(dir), _) => TrainingSource::Folder(dir),
                (None, Some(topic)) => TrainingSource::Bags(bag, topic),
                (None, None) => bail!("--data or --bag with --topic is required"),
            };
            let placement = Placement { device: device.resolve()?, device_geometry };
            train_model(&source, &out, config.as_deref(), epochs, voxel, validation.as_deref(), placement)
        }
        Command::Infer { model, input, out, device, device_geometry } => {
            infer(&model, &input, out.as_deref(), device, device_geometry)
        }
        Command::Synth { meshes, out, config, seed } => synth(meshes, &out, config.as_deref(), seed),
        Command::Eval { data, methods, config, voxel, report, ablations, scale_data, device } => {
            let run = EvalRun { methods: &methods, config: config.as_deref(), voxel, ablations, scale: scale_data };
            evaluate(&data, &run, report.as_deref(), device)
        }
        Command::Info { model } => {
            let manifest = store::read_manifest(&model)?;
            println!("{}", serde_json::to_string_pretty(&manifest)?);
            Ok(())
        }
        Command::Report { merge, out } => merge_reports(&merge, &out),
        Command::Bench { suite, input, voxel, repeats, compare, device_geometry, batch, minutes, rate, model } => {
            anyhow::ensure!(
                compare.is_none() || matches!(suite, Suite::Geometry),
                "--compare applies to the geometry suite only"
            );
            anyhow::ensure!(
                batch.is_none() || matches!(suite, Suite::Detector),
                "--batch applies to the detector suite only"
            );
            let batch = batch.unwrap_or(4);
            anyhow::ensure!(batch > 0, "--batch must be at least 1");
            // Only the node and soak suites (ROS) read these.
            #[cfg(not(feature = "ros"))]
            let _ = (minutes, rate, model);
            let bundled = |file: &str| Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let table = match suite {
                Suite::Geometry => {
                    // Default: the real 640×480 frame (metres) and a 60k-point part scan (millimetres).
                    let (frame, mesh) = (bundled(BUNDLED_FRAME), bundled(BUNDLED_PART));
                    let runs = match &input {
                        Some(path) => vec![(BenchInput::File(path), voxel.unwrap_or(0.005))],
                        None => vec![
                            (BenchInput::File(&frame), voxel.unwrap_or(0.005)),
                            (BenchInput::SimulatedPart { mesh: &mesh, points: 60_000 }, voxel.unwrap_or(0.75)),
                        ],
                    };
                    for (source, voxel) in runs {
                        let cfg = inspect3d::bench::GeometryBench::for_voxel(voxel, repeats);
                        let table = inspect3d::bench::geometry(&source, &cfg)?;
                        println!("{table}");
                        if compare.is_some() {
                            println!("{}", inspect3d::bench::compare_open3d(&source, &cfg, &table, &bundled(""))?);
                        }
                        if device_geometry {
                            println!("{}", inspect3d::bench::device_geometry(&source, &cfg)?);
                        }
                    }
                    return Ok(());
                }
                Suite::Detector => {
                    let mesh = bundled(BUNDLED_PART);
                    let (source, voxel) = match &input {
                        Some(path) => (BenchInput::File(path), voxel),
                        None => (BenchInput::SimulatedPart { mesh: &mesh, points: 60_000 }, voxel.or(Some(0.75))),
                    };
                    inspect3d::bench::detector(&source, voxel, repeats, device_geometry, batch)?
                }
                #[cfg(feature = "ros")]
                Suite::Node => {
                    // In metres, like the bundled model's frames: the part 0.1 m across, 0.05 mm noise.
                    let part = inspect3d::synth::mesh::Mesh::read(&bundled(BUNDLED_PART))?.normalised(0.1);
                    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
                    let dense = inspect3d::synth::sample::sample_surface(&part, 100_000, 5e-5, &mut rng);
                    let frame = match &input {
                        Some(path) => path.clone(),
                        None => bundled("tests/data/cell_scans/000_good.pcd"),
                    };
                    let inputs = [
                        inspect3d::ros::bench::NodeBenchInput {
                            name: format!("640×480 organised frame ({})", frame.display()),
                            cloud: cloud::read_cloud(&frame)?,
                        },
                        inspect3d::ros::bench::NodeBenchInput {
                            name: "dense 100k-point scan of the part".into(),
                            cloud: cloud::PointCloud::from_xyz(&dense.points),
                        },
                    ];
                    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
                    let model = node_model(model.as_deref(), repo)?;
                    let rate = positive_rate(rate, 20.0)?;
                    let table = inspect3d::ros::bench::node(repo, &model, &inputs, repeats, rate, 10.0)?;
                    println!("{table}");
                    return Ok(());
                }
                #[cfg(feature = "ros")]
                Suite::Soak => {
                    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
                    let rate = positive_rate(rate, 30.0)?;
                    anyhow::ensure!(minutes > 0.0, "--minutes must be > 0");
                    let model = node_model(model.as_deref(), repo)?;
                    println!("{}", inspect3d::ros::soak::soak(repo, &model, minutes, rate)?);
                    return Ok(());
                }
            };
            println!("{table}");
            Ok(())
        }
        #[cfg(feature = "ros")]
        Command::Replay { scans, topic, node, heatmaps, timeout } => {
            replay(&scans, &topic, &node, heatmaps.as_deref(), timeout)
        }
        #[cfg(feature = "ros")]
        Command::Publish { input, topic, frame_id, count, rate, wait_for_subscribers } => {
            publish(&input, &topic, &frame_id, count, rate, wait_for_subscribers)
        }
    }
}

/// The model folder a benchmarked node loads, absolute (the node runs in another working directory).
#[cfg(feature = "ros")]
fn node_model(model: Option<&Path>, repo: &Path) -> Result<PathBuf> {
    let model = model.map_or_else(|| repo.join(BUNDLED_MODEL), Path::to_path_buf);
    std::fs::canonicalize(&model).with_context(|| format!("the model folder {} (--model)", model.display()))
}

/// `--rate`, or the suite's default; refused unless positive.
#[cfg(feature = "ros")]
fn positive_rate(rate: Option<f64>, default: f64) -> Result<f64> {
    let rate = rate.unwrap_or(default);
    anyhow::ensure!(rate > 0.0, "--rate must be > 0");
    Ok(rate)
}

enum TrainingSource {
    Folder(PathBuf),
    Bags(Vec<PathBuf>, String),
}

fn train_model(
    source: &TrainingSource,
    out: &Path,
    config: Option<&Path>,
    epochs: Option<usize>,
    voxel: Option<f32>,
    validation: Option<&Path>,
    placement: Placement,
) -> Result<()> {
    let mut cfg = read_detector_config(config)?;
    if let Some(e) = epochs {
        cfg.training.epochs = e;
    }
    if let Some(v) = voxel {
        cfg.preprocess.voxel_size = v;
    }
    let clouds = match source {
        TrainingSource::Folder(dir) => train::load_cloud_dir(dir)?,
        TrainingSource::Bags(paths, topic) => {
            let bags = paths.iter().map(|p| inspect3d::bag::Bag::open(p)).collect::<Result<Vec<_>, _>>()?;
            let read = train::read_bags(&bags, topic, &mut train::LogMonitor::default())?;
            if !read.skipped.is_empty() {
                tracing::warn!(skipped = read.skipped.len(), "recorded clouds without usable points were skipped");
            }
            read.clouds
        }
    };
    tracing::info!(clouds = clouds.len(), "loaded good clouds");
    let labelled = match validation {
        Some(dir) => train::load_labelled_dir(dir)?,
        None => Vec::new(),
    };
    let (detector, summary) = train::train(cfg, &clouds, &labelled, placement, &mut train::LogMonitor::default())?;
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("model");
    let manifest = store::save(&detector, out, name, summary)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "model_id": manifest.model_id,
            "model_path": out.display().to_string(),
            "cloud_threshold": manifest.thresholds.cloud,
            "point_threshold": manifest.thresholds.point,
            "clouds_trained": manifest.training.clouds_trained,
            "clouds_held_out": manifest.training.clouds_held_out,
            "final_loss": manifest.training.final_loss,
            "seconds": manifest.training.seconds,
        }))?
    );
    Ok(())
}

fn read_detector_config(path: Option<&Path>) -> Result<DetectorConfig> {
    match path {
        Some(path) => Ok(DetectorConfig::from_json(
            &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("{}", path.display()))?),
        None => Ok(DetectorConfig::default()),
    }
}

fn synth(meshes: Vec<PathBuf>, out: &Path, config: Option<&Path>, seed: Option<u64>) -> Result<()> {
    use inspect3d::synth::benchmark::{BenchmarkConfig, generate};
    let mut cfg: BenchmarkConfig = match config {
        Some(path) => {
            serde_json::from_str(&std::fs::read_to_string(path)?).with_context(|| format!("{}", path.display()))?
        }
        None => BenchmarkConfig::default(),
    };
    if let Some(s) = seed {
        cfg.seed = s;
    }
    let sources =
        if meshes.is_empty() { vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/meshes")] } else { meshes };
    let mut files = Vec::new();
    for source in sources {
        if source.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&source)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(cloud::extension(p).as_str(), "stl" | "obj" | "ply"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(source);
        }
    }
    if files.is_empty() {
        bail!("no STL, OBJ or PLY meshes found");
    }
    let classes = generate(&files, out, &cfg)?;
    println!(
        "{}",
        serde_json::to_string_pretty(
            &serde_json::json!({ "out": out.display().to_string(), "classes": classes.len(), "config": cfg })
        )?
    );
    Ok(())
}

/// What `eval` runs: which methods, with which configuration, on data in which unit.
struct EvalRun<'a> {
    methods: &'a str,
    config: Option<&'a Path>,
    voxel: f32,
    ablations: bool,
    scale: f32,
}

fn evaluate(data: &Path, run: &EvalRun, report: Option<&Path>, device: DeviceChoice) -> Result<()> {
    use inspect3d::eval::{self, Method, baselines};
    let EvalRun { methods, config, voxel, ablations, scale } = *run;
    anyhow::ensure!(scale > 0.0 && scale.is_finite(), "--scale-data must be a number > 0, got {scale}");
    let detector_config = read_detector_config(config)?;
    let baseline = baselines::BaselineConfig { voxel, ..Default::default() };
    let methods: Vec<Method> = if ablations {
        eval::ablations(&detector_config)
    } else {
        let mut chosen = Vec::new();
        for m in methods.split(',') {
            match m.trim() {
                "ours" => chosen.push(Method::Ours("Ours".into(), Box::new(detector_config.clone()))),
                "ours-scoring" => chosen.extend(eval::score_variants(&detector_config, "Ours · ")),
                "btf-raw" => chosen.push(Method::Baseline(baselines::Baseline::BtfRaw, baseline.clone())),
                "btf-fpfh" => chosen.push(Method::Baseline(baselines::Baseline::BtfFpfh, baseline.clone())),
                "patchcore" => chosen.push(Method::Baseline(baselines::Baseline::PatchCoreFpfhRaw, baseline.clone())),
                other => anyhow::bail!("unknown method '{other}' (ours, ours-scoring, btf-raw, btf-fpfh, patchcore)"),
            }
        }
        chosen
    };
    let device = device.resolve()?;
    if let Some(dir) = report {
        std::fs::create_dir_all(dir)?;
    }
    let mut results = Vec::new();
    let mut figures = String::new();
    let dirs = eval::dataset::class_dirs(data)?;
    for (k, dir) in dirs.iter().enumerate() {
        let class = eval::dataset::load_class(dir)?.scaled(scale);
        tracing::info!(class = class.name, progress = format!("{}/{}", k + 1, dirs.len()), "class");
        let evaluations = eval::evaluate_class(&class, &methods, device, &mut train::LogMonitor::default())?;
        if let Some(dir) = report {
            figures.push_str(&eval::write_figures(dir, &class, &evaluations)?);
        }
        results.extend(evaluations.into_iter().map(|e| e.result));
    }
    let mut table = eval::markdown(&results);
    if ablations {
        table = format!("#### Ablations (means over classes)\n\n{}\n{table}", eval::ablation_table(&results));
    }
    println!("{table}");
    if let Some(dir) = report {
        let classes = dirs.len();
        eval::summary_chart(&results, &format!("Means over {classes} class(es)"))
            .write_png(&dir.join("summary.png"))?;
        std::fs::write(
            dir.join("report.md"),
            format!("{table}\n![means per method](summary.png)\n\n### Figures\n\n{figures}"),
        )?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&results)?)?;
    }
    Ok(())
}

fn merge_reports(reports: &[PathBuf], out: &Path) -> Result<()> {
    use inspect3d::eval::{self, ClassResult};
    let mut results: Vec<ClassResult> = Vec::new();
    for path in reports {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut some: Vec<ClassResult> =
            serde_json::from_str(&text).with_context(|| format!("{} is not an eval report.json", path.display()))?;
        results.append(&mut some);
    }
    let table = eval::markdown(&results);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("table.md"), &table)?;
    let classes: std::collections::BTreeSet<&str> = results.iter().map(|r| r.class.as_str()).collect();
    let title = format!("Means over {} class(es)", classes.len());
    eval::summary_chart(&results, &title).write_png(&out.join("summary.png"))?;
    println!("{table}");
    Ok(())
}

fn infer(
    model: &Path,
    input: &Path,
    heatmap: Option<&Path>,
    device: DeviceChoice,
    device_geometry: bool,
) -> Result<()> {
    let (detector, manifest) = store::load(model, device.resolve()?)?;
    let detector = detector.with_device_geometry(device_geometry);
    let cloud = cloud::read_cloud(input)?;
    let start = Instant::now();
    let inspection = detector.inspect(&cloud).with_context(|| format!("inspecting {}", input.display()))?;
    let latency_ms = start.elapsed().as_secs_f64() * 1e3;
    if let Some(path) = heatmap {
        let high = inspection.thresholds.point.max(inspection.cloud_score);
        write_score_heatmap(path, &cloud, &inspection.point_scores, high)?;
    }
    let mut verdict = serde_json::to_value(&inspection)?;
    verdict["input"] = input.display().to_string().into();
    verdict["model_id"] = manifest.model_id.into();
    verdict["latency_ms"] = latency_ms.into();
    println!("{}", serde_json::to_string_pretty(&verdict)?);
    Ok(())
}

/// A PLY of the cloud's finite points coloured by their anomaly scores (one per point of `cloud`) up to `high`.
fn write_score_heatmap(path: &Path, cloud: &cloud::PointCloud, scores: &[f32], high: f32) -> Result<()> {
    let finite = cloud.finite_points()?;
    let kept: Vec<f32> = finite.source_index.iter().map(|&i| scores[i as usize]).collect();
    ply::write(
        path,
        &ply::heatmap_cloud(&finite.points, "anomaly_score", &kept, 0.0, high)?,
        ply::PlyEncoding::BinaryLittleEndian,
    )?;
    Ok(())
}

fn convert(input: &Path, output: &Path, encoding: Encoding) -> Result<()> {
    let cloud = cloud::read_cloud(input)?;
    match cloud::extension(output).as_str() {
        "pcd" => pcd::write(
            output,
            &cloud,
            match encoding {
                Encoding::Ascii => pcd::PcdEncoding::Ascii,
                Encoding::Binary => pcd::PcdEncoding::Binary,
                Encoding::Compressed => pcd::PcdEncoding::BinaryCompressed,
            },
        )?,
        "ply" => ply::write(
            output,
            &cloud,
            match encoding {
                Encoding::Ascii => ply::PlyEncoding::Ascii,
                Encoding::Binary | Encoding::Compressed => ply::PlyEncoding::BinaryLittleEndian,
            },
        )?,
        other => bail!("{}: unknown output extension '{other}' (pcd, ply)", output.display()),
    }
    tracing::info!(points = cloud.len(), output = %output.display(), "converted");
    Ok(())
}

fn describe(input: &Path, voxel: f32, heatmap: Option<&Path>) -> Result<()> {
    let start = Instant::now();
    let cloud = cloud::read_cloud(input)?;
    let finite = cloud.finite_points().with_context(|| format!("{}", input.display()))?;
    let grid = geometry::voxel_downsample(&finite.points, voxel)?;
    let index = geometry::NeighborIndex::new(&grid.points)?;
    let surface = geometry::estimate_surface(
        &grid.points,
        &index,
        Neighborhood::Hybrid { radius: 4.0 * voxel, max_nn: 30 },
        NormalOrientation::TowardsViewpoint([0.0; 3]),
    );
    let (low, high) = geometry::bounds(&finite.points);
    let mut sorted = surface.variation.clone();
    sorted.sort_unstable_by(f32::total_cmp);
    let p95 = sorted[(sorted.len() * 95 / 100).min(sorted.len() - 1)];
    if let Some(path) = heatmap {
        let per_point = grid.spread(&surface.variation);
        ply::write(
            path,
            &ply::heatmap_cloud(&finite.points, "surface_variation", &per_point, 0.0, p95)?,
            ply::PlyEncoding::BinaryLittleEndian,
        )?;
    }
    let summary = serde_json::json!({
        "input": input.display().to_string(),
        "points": cloud.len(),
        "width": cloud.width,
        "height": cloud.height,
        "fields": cloud.fields().iter().map(|f| format!("{}:{:?}x{}", f.name, f.scalar, f.count)).collect::<Vec<_>>(),
        "finite_points": finite.points.len(),
        "bounding_box": { "min": low, "max": high },
        "voxel": voxel,
        "voxel_points": grid.points.len(),
        "surface_variation_p95": p95,
        "heatmap": heatmap.map(|p| p.display().to_string()),
        "seconds": start.elapsed().as_secs_f64(),
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

#[cfg(feature = "ros")]
fn publish(input: &Path, topic: &str, frame_id: &str, count: u32, rate: f64, wait_for: usize) -> Result<()> {
    use inspect3d::cloud::pointcloud2;
    use r2r::QosProfile;

    if !(rate.is_finite() && rate > 0.0) {
        bail!("--rate must be > 0, got {rate}");
    }
    let cloud = cloud::read_cloud(input)?;
    let layout = pointcloud2::encode(&cloud);
    let ctx = r2r::Context::create().context("creating the ROS context (is the ROS environment sourced?)")?;
    let mut node = r2r::Node::create(ctx, "inspect3d_publisher", "").context("creating the node")?;
    let publisher = node
        .create_publisher_untyped(topic, inspect3d::cloud::cdr::POINT_CLOUD2, QosProfile::sensor_data())
        .with_context(|| format!("advertising {topic}"))?;
    let mut bytes = Vec::new();
    let period = std::time::Duration::from_secs_f64(1.0 / rate);
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while publisher.get_inter_process_subscription_count().unwrap_or(0) < wait_for {
        if Instant::now() > deadline {
            bail!("no {wait_for} subscriber(s) on {topic} within 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    inspect3d::ros::stop_on_signals();
    let mut sent = 0u32;
    let mut next = Instant::now();
    while (count == 0 || sent < count) && !inspect3d::ros::stop_requested() {
        // Sleeps, not spin_once: with nothing to wait on (no subscription, no timer), rcl_wait returns at once,
        // and waiting in it would keep a core busy.
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        next += period;
        let stamp = inspect3d::ros::now_stamp();
        inspect3d::ros::client::publish_cloud(&publisher, &mut bytes, &layout, frame_id, stamp)
            .context("publishing")?;
        sent += 1;
    }
    tracing::info!(sent, topic, points = cloud.len(), "published");
    Ok(())
}

#[cfg(feature = "ros")]
fn replay(sources: &[PathBuf], topic: &str, node: &str, heatmaps: Option<&Path>, timeout: f64) -> Result<()> {
    use inspect3d::cloud::pointcloud2;
    use inspect3d::ros::client::{InspectorClient, status_name};
    use std::io::Write;

    if !(timeout.is_finite() && timeout > 0.0) {
        bail!("--timeout must be > 0, got {timeout}");
    }
    let timeout = std::time::Duration::from_secs_f64(timeout);
    let mut files = Vec::new();
    for source in sources {
        if source.is_dir() {
            files.extend(cloud::cloud_files(source)?);
        } else {
            files.push(source.clone());
        }
    }
    if files.is_empty() {
        bail!("no .pcd or .ply scans in {sources:?}");
    }
    if let Some(dir) = heatmaps {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut client = match heatmaps {
        Some(_) => InspectorClient::connect(node, topic, timeout)?,
        None => InspectorClient::connect_for_results(node, topic, timeout)?,
    };
    println!("| scan | points | verdict | score | threshold | anomalous | defect centre (extent) | latency ms |");
    println!("|---|---:|---|---:|---:|---:|---|---:|");
    let mut latencies = Vec::new();
    let mut verdicts = std::collections::BTreeMap::<&str, usize>::new();
    for file in &files {
        let scan = cloud::read_cloud(file)?;
        let (result, round_trip) = client
            .inspect(&pointcloud2::encode(&scan), timeout)
            .with_context(|| format!("inspecting {}", file.display()))?;
        let stamp = client.last_stamp().clone();
        let name = file.file_stem().and_then(|s| s.to_str()).unwrap_or("?");
        let status = status_name(result.status);
        *verdicts.entry(status).or_default() += 1;
        latencies.push(round_trip.as_secs_f64() * 1e3);
        let defect = if result.anomalous_points > 0 {
            let c = &result.defect_centroid;
            // In the scan's unit: two significant digits of the extent, whether metres or millimetres.
            let d = (1.0 - f64::from(result.defect_extent).max(1e-9).log10().floor()).clamp(0.0, 6.0) as usize;
            format!("({:.d$}, {:.d$}, {:.d$}) ({:.d$})", c.x, c.y, c.z, result.defect_extent)
        } else {
            "-".into()
        };
        println!(
            "| {name} | {} | {status} | {:.3} | {:.3} | {} | {defect} | {:.0} |",
            scan.len(),
            result.score,
            result.threshold,
            result.anomalous_points,
            latencies[latencies.len() - 1]
        );
        if !result.message.is_empty() && result.status > 1 {
            println!("|   | | {} | | | | | |", result.message);
        }
        std::io::stdout().flush()?;
        if let Some(dir) = heatmaps
            && let Some(anomaly) = client.cloud_for(&stamp, std::time::Duration::from_secs(5))
        {
            let scored = pointcloud2::decode(&anomaly.layout)?;
            let field = scored.field(inspect3d::inspector::SCORE_FIELD).context("anomaly cloud without scores")?;
            let scores: Vec<f32> = (0..scored.len()).map(|i| field.value(i, 0) as f32).collect();
            let high = result.threshold.max(result.score).max(f32::MIN_POSITIVE);
            write_score_heatmap(&dir.join(format!("{name}.ply")), &scored, &scores, high)?;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let summary: Vec<String> = verdicts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!(
        "\n{} scans: {}; round-trip latency median {:.0} ms{}",
        files.len(),
        summary.join(", "),
        latencies[latencies.len() / 2],
        heatmaps.map(|d| format!("; heatmaps in {}", d.display())).unwrap_or_default()
    );
    Ok(())
}
