//! Benchmarks: each stage run several times on real data, reported as a Markdown table of median and minimum
//! wall time (medians, because these machines are noisy), with the process's peak memory.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cloud::{self, pointcloud2};
use crate::geometry::device::{Compute, Stage as GeometryStage};
use crate::geometry::{self, Neighborhood, NormalOrientation};
use crate::model::bank::MemoryBank;
use crate::model::config::{BackboneConfig, DetectorConfig, NormalSide};
use crate::model::preprocess::{ALIGN_ITERATIONS, align};
use crate::model::{Detector, centre_tensor, sca, scoring};
use crate::transfers::Copies;

pub struct Stage {
    pub name: String,
    pub detail: String,
    pub samples: Vec<Duration>,
}

impl Stage {
    pub fn median(&self) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        s.get(s.len() / 2).copied().unwrap_or_default()
    }
    pub fn min(&self) -> Duration {
        self.samples.iter().min().copied().unwrap_or_default()
    }
}

pub struct Table {
    pub title: String,
    pub stages: Vec<Stage>,
    pub notes: Vec<String>,
}

impl Table {
    fn new(title: impl Into<String>) -> Self {
        Self { title: title.into(), stages: Vec::new(), notes: Vec::new() }
    }

    /// Runs `f` `repeats` times, records the stage, returns the last result.
    fn stage<T>(&mut self, name: &str, detail: String, repeats: usize, mut f: impl FnMut() -> T) -> T {
        let mut samples = Vec::with_capacity(repeats);
        let mut last = None;
        for _ in 0..repeats.max(1) {
            let t = Instant::now();
            let out = f();
            samples.push(t.elapsed());
            last = Some(out);
        }
        tracing::info!(stage = name, median_ms = ms(samples[samples.len() / 2]), "bench");
        self.stages.push(Stage { name: name.into(), detail, samples });
        last.expect("at least one run")
    }
}

/// A length as a table shows it: four decimals at most, no float noise.
fn length(x: f32) -> String {
    format!("{}", (f64::from(x) * 1e4).round() / 1e4)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "### {}\n", self.title)?;
        writeln!(f, "| stage | work | median ms | min ms | runs |")?;
        writeln!(f, "|---|---|---:|---:|---:|")?;
        for s in &self.stages {
            writeln!(
                f,
                "| {} | {} | {:.2} | {:.2} | {} |",
                s.name,
                s.detail,
                ms(s.median()),
                ms(s.min()),
                s.samples.len()
            )?;
        }
        let total: Duration = self.stages.iter().map(Stage::median).sum();
        writeln!(f, "| **sum of medians** | | **{:.2}** | | |", ms(total))?;
        for note in &self.notes {
            writeln!(f, "\n{note}")?;
        }
        Ok(())
    }
}

/// The host ↔ device copies of one inspection of `cloud`.
fn copies_of(det: &Detector, cloud: &cloud::PointCloud) -> Result<Copies> {
    let before = Copies::so_far();
    det.inspect(cloud)?;
    Ok(Copies::so_far().since(before))
}

fn copies_note(placement: &str, copies: Copies) -> String {
    let kib = |bytes: usize| bytes as f64 / 1024.0;
    format!(
        "Copies in one inspection, {placement}: {} to the device ({:.0} KiB), {} to the host ({:.0} KiB), and {} \
         ops sized by the data (counted on any device: on a GPU each copy is a transfer; each to the host, and each \
         op sized by the data, waits for the kernels queued before it; each to the device is queued from pinned \
         memory).",
        copies.to_device,
        kib(copies.to_device_bytes),
        copies.to_host,
        kib(copies.to_host_bytes),
        copies.sized_by_data
    )
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
pub fn peak_memory_mib() -> Option<f64> {
    peak_memory_mib_of("self")
}

/// Peak resident memory of a process (`self` or a pid), in MiB.
pub fn peak_memory_mib_of(pid: &str) -> Option<f64> {
    memory_mib_of(pid, "VmHWM:")
}

/// A process's resident memory now (VmRSS), MiB.
pub fn resident_memory_mib_of(pid: &str) -> Option<f64> {
    memory_mib_of(pid, "VmRSS:")
}

/// CPU time a process has used so far (user and system, all its threads), in seconds.
pub fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; utime and stime are fields 14 and 15.
    let after_name = stat.rsplit_once(')')?.1;
    let mut fields = after_name.split_whitespace().skip(11);
    let ticks: f64 = fields.next()?.parse::<f64>().ok()? + fields.next()?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (per_second > 0.0).then(|| ticks / per_second)
}

fn memory_mib_of(pid: &str, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[derive(Clone, Debug)]
pub struct GeometryBench {
    pub voxel: f32,
    pub centres: usize,
    pub group_size: usize,
    pub normal_radius: f32,
    pub normal_max_nn: usize,
    pub fpfh_radius: f32,
    pub median_radius: f32,
    pub repeats: usize,
}

impl GeometryBench {
    /// Sizes for a depth-camera frame in metres: 5 mm voxels, the method's n = 1024 patches of k = 32.
    pub fn for_voxel(voxel: f32, repeats: usize) -> Self {
        Self {
            voxel,
            centres: 1024,
            group_size: 32,
            normal_radius: 4.0 * voxel,
            normal_max_nn: 30,
            fpfh_radius: 5.0 * voxel,
            median_radius: 3.0 * voxel,
            repeats,
        }
    }
}

/// Per-stage timings of the geometry every scan goes through, on a cloud file or a simulated scan.
pub fn geometry(input: &BenchInput, cfg: &GeometryBench) -> Result<Table> {
    let r = cfg.repeats;
    let (cloud, name) = input.load()?;
    let mut table = Table::new(format!("Geometry stages on {name} (voxel {})", cfg.voxel));
    if let BenchInput::File(path) = input {
        table.stage("cloud file read", "file → cloud".into(), r, || cloud::read_cloud(path))?;
    }
    let n_in = cloud.len();
    let layout = table.stage("PointCloud2 encode", format!("{}×{} points", cloud.width, cloud.height), r, || {
        pointcloud2::encode(&cloud)
    });
    table.stage("PointCloud2 decode", format!("{} bytes", layout.data.len()), r, || pointcloud2::decode(&layout))?;
    let finite = table.stage("drop non-finite", format!("{n_in} points"), r, || cloud.finite_points())?;
    // The voxel stage's description needs its output size, so it is written once the stage has run.
    let grid = table.stage("voxel grid", String::new(), r, || geometry::voxel_downsample(&finite.points, cfg.voxel))?;
    let points = &grid.points;
    if let Some(stage) = table.stages.last_mut() {
        stage.detail = format!("{} → {} points", finite.points.len(), points.len());
    }
    let index =
        table.stage("k-d tree", format!("{} points", points.len()), r, || geometry::NeighborIndex::new(points))?;
    let centres = table.stage("FPS", format!("{} centres", cfg.centres), r, || {
        geometry::farthest_point_sampling(points, cfg.centres, 0)
    });
    let centre_points: Vec<_> = centres.iter().map(|&i| points[i as usize]).collect();
    table.stage("kNN grouping", format!("{} × {}", centre_points.len(), cfg.group_size), r, || {
        index.group(&centre_points, cfg.group_size)
    });
    let neighborhood = Neighborhood::Hybrid { radius: cfg.normal_radius, max_nn: cfg.normal_max_nn };
    let normals = table.stage(
        "normals (PCA)",
        format!("{} points, r {}, ≤ {} nn", points.len(), length(cfg.normal_radius), cfg.normal_max_nn),
        r,
        || geometry::estimate_normals(points, &index, neighborhood, NormalOrientation::TowardsViewpoint([0.0; 3])),
    );
    table.stage("FPFH at centres", format!("{} centres, r {}", centres.len(), length(cfg.fpfh_radius)), r, || {
        geometry::fpfh_at(points, &normals, &index, cfg.fpfh_radius, &centres)
    })?;
    // Not a pipeline stage (only the centres need FPFH): the work Open3D's FPFH does, for the comparison.
    table.stage("FPFH, every point", format!("{} points, r {}", points.len(), length(cfg.fpfh_radius)), r, || {
        geometry::fpfh(points, &normals, &index, cfg.fpfh_radius)
    })?;
    let scores: Vec<f32> = (0..points.len()).map(|i| (i % 97) as f32).collect();
    table.stage("median filter", format!("{} points, r {}", points.len(), length(cfg.median_radius)), r, || {
        geometry::median_filter(points, &scores, &index, cfg.median_radius)
    })?;
    outliers_and_registration(&mut table, Compute::Host, &finite.points, points, &normals, &index, cfg)?;
    table.notes.push(format!(
        "Peak memory (VmHWM): {:.0} MiB. Normals, FPFH and the median filter run on {} threads.",
        peak_memory_mib().unwrap_or(f64::NAN),
        rayon::current_num_threads()
    ));
    Ok(table)
}

/// Two stages that run before the voxel points' geometry, by `compute` with its copies: outlier removal of the
/// finite points (the detector's default rule) and the registration of the voxel points, turned 1° and moved a
/// voxel, to themselves as the template, as the detector registers a scan ([`align`]).
fn outliers_and_registration(
    table: &mut Table,
    compute: Compute,
    finite: &[geometry::Point],
    points: &[geometry::Point],
    normals: &[geometry::Point],
    index: &geometry::NeighborIndex,
    cfg: &GeometryBench,
) -> Result<()> {
    let r = cfg.repeats;
    let rule = DetectorConfig::default().preprocess.outliers.rule(cfg.voxel);
    table.stage("outlier removal", format!("{} points, link {} voxels", finite.len(), rule.link_voxels), r, || {
        compute.inliers(&finite.into(), &rule, |_| Ok::<_, geometry::GeometryError>(()))
    })?;
    let isolation = geometry::registration::isolation(points, index);
    // As the detector keeps its template: the copy on the device made once, by the first registration.
    let (shared_points, shared_normals) = (geometry::SharedPoints::from(points), geometry::SharedPoints::from(normals));
    let template =
        geometry::Template { points: &shared_points, normals: &shared_normals, index, isolation: &isolation };
    let (sin, cos) = 1f32.to_radians().sin_cos();
    let turned = [[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]];
    let pose = geometry::Rigid { rotation: turned, translation: [cfg.voxel, 0.0, 0.0] };
    let moved: Vec<geometry::Point> = points.iter().map(|&p| pose.apply(p)).collect();
    let detail = format!("{} voxel points, sampled as the detector does, {ALIGN_ITERATIONS} steps", points.len());
    table.stage("registration (ICP)", detail, r, || align(&moved.as_slice().into(), &template, cfg.voxel, compute))?;
    Ok(())
}

/// The same stages as [`geometry`] as tensor code (`geometry::device`) on CUDA where LibTorch sees a GPU, else on
/// the CPU; each stage ends with its result on the host, so GPU work is timed to completion. FPS also runs on a
/// batch of four copies of the cloud, the way several waiting scans would go.
pub fn device_geometry(input: &BenchInput, cfg: &GeometryBench) -> Result<Table> {
    use geometry::device;
    let r = cfg.repeats;
    let torch_device = tch::Device::cuda_if_available();
    let (cloud, name) = input.load()?;
    let finite = cloud.finite_points()?;
    let mut table = Table::new(format!("Device geometry on {name} (voxel {}, {torch_device:?})", cfg.voxel));
    let host_points = finite.points.clone();
    let input_points = table.stage("copy in", format!("{} points", host_points.len()), r, || {
        device::points_tensor(&host_points, torch_device)
    });
    let voxels = table.stage("voxel grid", String::new(), r, || {
        Ok::<_, geometry::GeometryError>(device::voxel_grid(&input_points, cfg.voxel, |_| Vec::new())?.0)
    })?;
    let (points, representative) = (voxels.centroids, voxels.representative);
    let n = points.size()[0];
    if let Some(stage) = table.stages.last_mut() {
        stage.detail = format!("{} → {n} points", host_points.len());
    }
    let centres = table.stage("FPS", format!("{} centres", cfg.centres), r, || {
        let chosen = device::farthest_point_sampling(&points.unsqueeze(0), &[n], cfg.centres as i64, &[0]);
        chosen.view(-1).narrow(0, 0, n.min(cfg.centres as i64)).to_device(tch::Device::Cpu)
    });
    let four = tch::Tensor::stack(&[&points, &points, &points, &points], 0);
    let _ = table.stage("FPS, batch of 4", format!("4 × {} centres", cfg.centres), r, || {
        device::farthest_point_sampling(&four, &[n; 4], cfg.centres as i64, &[0; 4]).to_device(tch::Device::Cpu)
    });
    let centres = centres.to_device(torch_device);
    let centre_points = points.index_select(0, &centres);
    let _ = table.stage("kNN grouping", format!("{} × {}", cfg.centres, cfg.group_size), r, || {
        device::knn(&points, &centre_points, cfg.group_size as i64, 4.0 * cfg.voxel).index.to_device(tch::Device::Cpu)
    });
    let orientation = NormalOrientation::TowardsViewpoint([0.0; 3]);
    let normals = table.stage("normals (PCA)", format!("{n} points, {} nn", cfg.normal_max_nn), r, || {
        let normals = device::normals(&points, cfg.normal_max_nn as i64, cfg.normal_radius, orientation);
        let _ = normals.to_device(tch::Device::Cpu);
        normals
    });
    // Each search stage builds its grid, as the detector does for a new cloud.
    let grid = |radius: f32| device::CellGrid::new(&points, radius).ok_or(geometry::GeometryError::Empty);
    let _ =
        table.stage("FPFH at centres", format!("{} centres, r {}", cfg.centres, length(cfg.fpfh_radius)), r, || {
            let hist = device::fpfh_at(&grid(cfg.fpfh_radius)?, &normals, cfg.fpfh_radius, &centres);
            Ok::<_, geometry::GeometryError>(hist.to_device(tch::Device::Cpu))
        })?;
    let scores = tch::Tensor::arange(n, (tch::Kind::Float, torch_device)).remainder(97);
    let _ = table.stage("median filter", format!("{n} points, r {}", length(cfg.median_radius)), r, || {
        device::median_filter(&grid(cfg.median_radius)?, &scores, cfg.median_radius)
            .map(|m| m.to_device(tch::Device::Cpu))
    })?;
    // Registration's template: the voxel points with their normals, on the host (as the detector keeps it).
    let grid = geometry::voxel_downsample(&host_points, cfg.voxel)?;
    let index = geometry::NeighborIndex::new(&grid.points)?;
    let neighbours = Neighborhood::Knn(cfg.normal_max_nn);
    let host_normals = geometry::estimate_normals(&grid.points, &index, neighbours, orientation);
    let compute = Compute::tensors(torch_device);
    outliers_and_registration(&mut table, compute, &host_points, &grid.points, &host_normals, &index, cfg)?;
    table.stage("copy out", format!("{} scores", host_points.len()), r, || {
        Vec::<f32>::try_from(scores.index_select(0, &representative).to_device(tch::Device::Cpu))
    })?;
    table.notes.push(
        "Tensor code (`geometry::device`): searches over the 27 cells around each query. Normals here are plain \
         kNN (the detector's); the host table's are hybrid radius-kNN."
            .into(),
    );
    Ok(table)
}

/// Our geometry stages against Open3D's equivalents on the same points with the same thread count.
pub struct Comparison {
    pub title: String,
    /// Stage, our median, Open3D's median (ms).
    pub rows: Vec<(String, f64, f64)>,
    pub notes: Vec<String>,
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "### {}\n", self.title)?;
        writeln!(f, "| stage | ours median ms | Open3D median ms | ours / Open3D |")?;
        writeln!(f, "|---|---:|---:|---:|")?;
        for (stage, ours, theirs) in &self.rows {
            writeln!(f, "| {stage} | {ours:.2} | {theirs:.2} | {:.2} |", ours / theirs)?;
        }
        for note in &self.notes {
            writeln!(f, "\n{note}")?;
        }
        Ok(())
    }
}

/// Runs `scripts/open3d_stages.py` (under `root`) with Python on the same finite points and parameters as
/// [`geometry`], with as many OpenMP threads as this process has rayon threads, and sets its medians against
/// `ours` stage by stage.
pub fn compare_open3d(input: &BenchInput, cfg: &GeometryBench, ours: &Table, root: &Path) -> Result<Comparison> {
    let (cloud, name) = input.load()?;
    let finite = cloud.finite_points()?;
    let raw: Vec<u8> = finite.points.iter().flatten().flat_map(|c| c.to_le_bytes()).collect();
    let points_file = std::env::temp_dir().join(format!("inspect3d-bench-{}.f32", std::process::id()));
    std::fs::write(&points_file, raw).with_context(|| format!("writing {}", points_file.display()))?;
    let params = serde_json::json!({
        "voxel": cfg.voxel, "centres": cfg.centres, "group_size": cfg.group_size,
        "normal_radius": cfg.normal_radius, "normal_max_nn": cfg.normal_max_nn,
        "fpfh_radius": cfg.fpfh_radius, "repeats": cfg.repeats.max(1),
    });
    let threads = rayon::current_num_threads();
    let script = root.join("scripts/open3d_stages.py");
    let output = std::process::Command::new("python3")
        .arg(&script)
        .arg(&points_file)
        .arg(params.to_string())
        .env("OMP_NUM_THREADS", threads.to_string())
        .output()
        .with_context(|| format!("running python3 {}", script.display()));
    let _ = std::fs::remove_file(&points_file);
    let output = output?;
    anyhow::ensure!(
        output.status.success(),
        "{} failed (is Open3D installed? `pip install open3d`): {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).context("reading Open3D's timings")?;
    let median = |times: &serde_json::Value| -> Option<f64> {
        let mut t: Vec<f64> = times.as_array()?.iter().filter_map(serde_json::Value::as_f64).collect();
        t.sort_by(f64::total_cmp);
        t.get(t.len() / 2).copied()
    };
    let rows = ours
        .stages
        .iter()
        .filter_map(|s| Some((s.name.clone(), ms(s.median()), median(report["stages"].get(&s.name)?)?)))
        .collect();
    let version = report["version"].as_str().unwrap_or("?");
    let voxels = report["sizes"]["voxel grid"].as_u64().unwrap_or(0);
    Ok(Comparison {
        title: format!("Ours against Open3D {version} on {name} ({threads} threads each)"),
        rows,
        notes: vec![format!(
            "Same points and parameters; Open3D's voxel grid keeps {voxels} points (its grid origin differs), its \
             kNN is the tensor API's batched search (index + query), its FPFH covers every point (the pipeline \
             needs it at the centres only, row \"FPFH at centres\" above)."
        )],
    })
}

/// What a benchmark runs on.
pub enum BenchInput<'a> {
    /// A cloud file.
    File(&'a Path),
    /// A simulated scan of a CAD part: `points` surface points of the mesh scaled to 100 mm across.
    SimulatedPart { mesh: &'a Path, points: usize },
}

impl BenchInput<'_> {
    /// The cloud, and how the tables name it.
    pub fn load(&self) -> Result<(cloud::PointCloud, String)> {
        Ok(match self {
            Self::File(path) => (
                cloud::read_cloud(path).with_context(|| format!("reading {}", path.display()))?,
                path.display().to_string(),
            ),
            Self::SimulatedPart { mesh, points } => {
                let part = crate::synth::mesh::Mesh::read(mesh)?.normalised(100.0);
                let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
                let scan = crate::synth::sample::sample_surface(&part, *points, 0.05, &mut rng);
                (
                    cloud::PointCloud::from_xyz(&scan.points),
                    format!("a simulated {points}-point scan of {} (100 mm)", mesh.display()),
                )
            }
        })
    }
}

/// Turned, jittered copies of the scan whose point features make the benchmark's point bank.
const BANK_COPIES: usize = 4;

/// Per-stage latency of the detector on one cloud (CPU unless LibTorch sees a GPU), peak memory, and the
/// training step. Weights are untrained (timing does not depend on their values); the Point-MAE row uses the
/// public release's size (C = 384, 12 blocks, 6 heads) with random weights.
/// `voxel` in the cloud's unit; `None` derives it from the cloud as training does. The throughput rows inspect
/// `batch` copies of the cloud.
pub fn detector(
    input: &BenchInput,
    voxel: Option<f32>,
    repeats: usize,
    device_geometry: bool,
    batch: usize,
) -> Result<Table> {
    let r = repeats;
    let device = tch::Device::cuda_if_available();
    let (cloud, name) = input.load()?;
    let finite = cloud.finite_points()?;
    let mut cfg = DetectorConfig::default();
    let voxel = match voxel {
        Some(v) => v,
        None => {
            let cloud = crate::train::TrainingCloud { name: name.clone(), points: finite.points.clone() };
            crate::train::derive_voxel_size(&[&cloud], cfg.preprocess.voxel_spacing_factor)?
        }
    };
    cfg.preprocess.voxel_size = voxel;
    cfg.preprocess.normals_face = NormalSide::Outward;
    let mut det = Detector::new(cfg.clone(), device)?.with_device_geometry(device_geometry);
    // Thresholds as a trained model has them (an untrained one's are NaN, which gives no verdict); their values
    // do not change the cost.
    let thresholds = crate::model::Thresholds { cloud: 0.5, point: 0.5 };
    det.thresholds = thresholds;
    // A template to register to (the scan itself, as a trained model's first training cloud would be).
    det.conditioning.template =
        Some(std::sync::Arc::new(crate::model::preprocess::PoseTemplate::from_cloud(&finite.points, &cfg.preprocess)?));
    // Full memory banks of the configured sizes, so their searches cost what a trained model's do. The point bank
    // as training keeps one: a coreset of the point features of turned, jittered copies of the scan (its search
    // depends on how the rows lie). The patch bank, only where the configuration scores with it (a trained model
    // has none otherwise), of random rows: searched with the full product.
    let width = det.backbone.width() as i64;
    let patch_bank = tch::Tensor::randn([cfg.conditioning.bank_size as i64, width], (tch::Kind::Float, device));
    if cfg.scoring.source != crate::model::config::ScoreSource::Discriminator {
        det.conditioning.bank = MemoryBank::new(patch_bank.shallow_clone());
    }
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
    let mut copies = Vec::new();
    for _ in 0..BANK_COPIES {
        let turn = crate::model::preprocess::Augmentation::draw(&cfg.preprocess.augment, &mut rng);
        let copy = det.patch(&finite.points, Some((&turn, &mut rng)))?;
        copies.push(det.backbone.point_features(&copy)?.narrow(0, 0, copy.cell_count as i64));
    }
    let rows =
        crate::model::conditioning::greedy_coreset(&tch::Tensor::cat(&copies, 0), cfg.conditioning.point_bank_size);
    det.conditioning.point_bank = MemoryBank::new(rows);
    let (n, k) = (cfg.patches.count, cfg.patches.size);
    let mut table = Table::new(format!(
        "Detector stages on {name} (n = {n}, k = {k}, voxel {voxel}, device {device:?}, geometry {:?})",
        det.compute
    ));
    let patched = table.stage(
        "pre-processing",
        format!("{} points → voxel, registration, FPS, kNN, normals, FPFH", finite.points.len()),
        r,
        || det.patch(&finite.points, None),
    )?;
    let tokens = table.stage(
        &format!("backbone: {} tokens", det.backbone.identity.kind),
        format!("{} patches → C = {width}", patched.patch_count()),
        r,
        || det.tokens(&patched),
    )?;
    let mut mae_cfg = DetectorConfig {
        backbone: BackboneConfig::RandomPointMae { width: 384, depth: 12, heads: 6, seed: 1 },
        ..cfg.clone()
    };
    mae_cfg.point_head.enabled = false;
    mae_cfg.conditioning.point_bank_size = 0;
    let mae = Detector::new(mae_cfg, device)?;
    let _ = table
        .stage("backbone: Point-MAE", "C = 384, 12 blocks, 6 heads".into(), r, || mae.backbone.tokens(&patched))?;
    let centres = patched.shared_centre_points(device);
    let refined = table.stage(
        "SCA",
        format!("{} prototypes, {} Sinkhorn iterations", (0.1 * n as f32).round(), cfg.sca.sinkhorn_iterations),
        r,
        || sca::aggregate(&cfg.sca, &tokens, &centres, &patched.descriptors),
    );
    let centre_t = det.heads.with_capture(&centre_tensor(&patched, device), patched.all_round);
    let x = refined.unsqueeze(0);
    let adapted = table.stage("adaptor", "C → C/2 → C".into(), r, || {
        let _g = tch::no_grad_guard();
        det.heads.adaptor.forward(&x)
    });
    let scores =
        table.stage("discriminator", format!("attention ({} heads) + MLP head", cfg.discriminator.heads), r, || {
            det.heads.discriminator.scores(&adapted, &centre_t)
        });
    let work =
        format!("{} random entries, nearest of each patch (scoring.source fused or bank)", cfg.conditioning.bank_size);
    let patch_bank = MemoryBank::new(patch_bank);
    let _ = table.stage("patch memory bank", work, r, || patch_bank.nearest_distances(&refined));
    let scores: Vec<f32> = scores.squeeze_dim(0).to_device(tch::Device::Cpu).try_into()?;
    let radius = cfg.scoring.median_radius_voxels * patched.voxel;
    table.stage(
        "projection + median filter",
        format!("{} voxel points → {} input points", patched.points.len(), finite.points.len()),
        r,
        || scoring::project_to_points(&patched, &scores, radius).map(|s| patched.grid.spread(&s)),
    )?;
    let points = table.stage(
        "point features",
        format!("{} samples of {} voxel points, {width} numbers each", patched.samples.len(), patched.points.len()),
        r,
        || det.backbone.point_features(&patched),
    )?;
    let cells = points.narrow(0, 0, patched.cell_count as i64);
    let head_cells = det.heads.with_capture(&cells, patched.all_round);
    if let Some(head) = &det.heads.point_head {
        let work = format!("MLP {width} → {:?} → 1 per feature cell ({})", cfg.point_head.hidden, patched.cell_count);
        let _ = table.stage("point head", work, r, || {
            let _g = tch::no_grad_guard();
            head.forward(&head_cells)
        });
    }
    if det.conditioning.has_point_bank() {
        let work = format!(
            "{} entries (coreset of {BANK_COPIES} turned copies), nearest of each feature cell",
            det.conditioning.point_bank.len()
        );
        let _ = table.stage("point bank", work, r, || det.conditioning.point_bank_distances(&cells));
    }
    table.stage("whole inspection", "cloud → point scores + verdict".into(), r, || det.inspect(&cloud))?;
    if device_geometry {
        // Each stage back on the host in turn, then every one: what each costs or saves on the device within the
        // whole inspection, so one run on a GPU shows which to keep there.
        let on_device = det.compute;
        for stage in GeometryStage::ALL {
            det.compute = on_device.with_host(stage);
            let name = format!("whole inspection, {} on the host", stage.name());
            table.stage(&name, "the rest of the geometry as tensor code".into(), r, || det.inspect(&cloud))?;
        }
        det.compute = Compute::Host;
        let name = "whole inspection, geometry on the host";
        table.stage(name, "the learned stages still on the detector's device".into(), r, || det.inspect(&cloud))?;
        table.notes.push(copies_note("geometry on the host", copies_of(&det, &cloud)?));
        det.compute = on_device;
    }
    let placement = if device_geometry { "geometry as tensor code" } else { "geometry on the host" };
    table.notes.push(copies_note(placement, copies_of(&det, &cloud)?));
    let clouds: Vec<&cloud::PointCloud> = vec![&cloud; batch];
    table.stage("throughput, one at a time", format!("{batch} clouds, one at a time"), r, || {
        clouds.iter().map(|c| det.inspect(c)).collect::<Result<Vec<_>, _>>()
    })?;
    table.stage("throughput, batched", format!("the same {batch} clouds, one inspect_batch"), r, || {
        det.inspect_batch(&clouds, thresholds).into_iter().collect::<Result<Vec<_>, _>>()
    })?;
    let rate = |name: &str| {
        let s = table.stages.iter().find(|s| s.name == name).map_or(f64::NAN, |s| s.median().as_secs_f64());
        batch as f64 / s
    };
    table.notes.push(format!(
        "Throughput ({batch} clouds): {:.2} scans/s one at a time, {:.2} scans/s batched ({:.2}×).",
        rate("throughput, one at a time"),
        rate("throughput, batched"),
        rate("throughput, batched") / rate("throughput, one at a time")
    ));
    let mut paper = crate::eval::paper_config();
    paper.preprocess.voxel_size = voxel;
    paper.preprocess.normals_face = NormalSide::Outward;
    let mut paper = Detector::new(paper, device)?.with_device_geometry(device_geometry);
    paper.thresholds = thresholds;
    table.stage(
        "whole inspection, config/paper.json",
        "the paper's pipeline (the detector before issue 10)".into(),
        r,
        || paper.inspect(&cloud),
    )?;
    // One optimiser step on a batch of 8 clouds' cached features.
    let batch = cfg.training.batch_size as i64;
    let xb = refined.unsqueeze(0).repeat([batch, 1, 1]);
    let cb = centre_t.repeat([batch, 1, 1]);
    let mut opt = tch::nn::OptimizerConfig::build(tch::nn::AdamW::default(), &det.heads.vs, 1e-4)?;
    table.stage("training step", format!("batch {batch}, forward + backward + AdamW"), r, || {
        let q = det.heads.adaptor.forward(&xb);
        let (corrupted, labels) = det.heads.generator.corrupt(&q);
        let logits = det.heads.discriminator.forward_t(&corrupted, &cb, true);
        let loss = logits.binary_cross_entropy_with_logits::<tch::Tensor>(&labels, None, None, tch::Reduction::Mean);
        opt.backward_step_clip_norm(&loss, 1.0);
    });
    table.notes.push(format!(
        "Peak memory (VmHWM): {:.0} MiB. LibTorch threads: {}; geometry on {} rayon threads. The whole-inspection \
         rows use the default configuration unless named.",
        peak_memory_mib().unwrap_or(f64::NAN),
        tch::get_num_threads(),
        rayon::current_num_threads()
    ));
    Ok(table)
}
