//! The inspection service, free of ROS: a bounded queue of incoming scans (when full, the oldest is dropped,
//! counted, and handed back to the caller as a DROPPED report: every scan gets an answer), threads that score
//! them with the active model as a pipeline (the scans waiting together in one batch: several cameras'): two
//! geometry workers each decode the next scans and run their geometry, side by side, while the scoring thread
//! runs the learned stages of the previous ones and reports them in the order they arrived, so the cores stay
//! busy through each stage's serial steps; the active model itself (swapped between scans, so a new model
//! scores the next scan), operator threshold overrides and running statistics. The ROS node
//! (`crate::ros::node`) feeds it messages and publishes what it reports; tests drive it directly.

pub mod config;

use std::collections::{BTreeMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tch::Device;

use crate::cloud::pointcloud2::{self, AddedF32Fields, PointCloud2Layout};
use crate::cloud::{CloudError, PointCloud};
use crate::model::store::{self, Manifest};
use crate::model::{Detector, GeometryPart, Inspection, ModelError, PreparedClouds, Thresholds};
use config::InspectorConfig;

/// The field added to every anomaly cloud.
pub const SCORE_FIELD: &str = "anomaly_score";
/// The packed colour field added on request (PCL's convention: 0x00RRGGBB in the bits of a FLOAT32).
pub const RGB_FIELD: &str = "rgb";

/// Each score's heat-map colour (0 blue … 1 red; grey where NaN), packed as PCL's `rgb` field packs it.
pub fn packed_colours(scores: &[f32]) -> Vec<f32> {
    let [r, g, b] = crate::cloud::ply::heatmap_colours(scores, 0.0, 1.0);
    (0..scores.len()).map(|i| f32::from_bits(u32::from(r[i]) << 16 | u32::from(g[i]) << 8 | u32::from(b[i]))).collect()
}

/// A model ready to score, with where it came from. Owned by the worker thread alone (LibTorch tensors are
/// `Send`, not `Sync`); others see its [`ModelInfo`].
pub struct LoadedModel {
    pub detector: Detector,
    pub manifest: Manifest,
    pub path: PathBuf,
}

impl LoadedModel {
    /// Loads a model folder, applying the configuration's voxel-size and patch-count overrides (0: the model's
    /// own) and its choice of where the geometry runs.
    pub fn load(path: &Path, device: Device, config: &InspectorConfig) -> Result<Self, ModelError> {
        let (detector, manifest) = store::load(path, device)?;
        let (voxel_size, patch_count) = (config.voxel_size, config.patch_count);
        let mut detector = detector.with_device_geometry(config.device_geometry);
        if voxel_size > 0.0 {
            detector.config.preprocess.voxel_size = voxel_size as f32;
        }
        if patch_count > 0 {
            detector.config.patches.count = patch_count as usize;
        }
        detector.config.validate().map_err(ModelError::Config)?;
        Ok(Self { detector, manifest, path: path.to_path_buf() })
    }

    pub fn id(&self) -> &str {
        &self.manifest.model_id
    }

    pub fn info(&self) -> ModelInfo {
        ModelInfo { id: self.manifest.model_id.clone(), path: self.path.clone() }
    }
}

/// What the rest of the node knows about a model.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub id: String,
    pub path: PathBuf,
}

/// Operator overrides of the model's thresholds (`None`: the model's calibrated value).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ThresholdOverrides {
    pub cloud: Option<f32>,
    pub point: Option<f32>,
}

impl ThresholdOverrides {
    pub fn apply(self, calibrated: Thresholds) -> Thresholds {
        Thresholds { cloud: self.cloud.unwrap_or(calibrated.cloud), point: self.point.unwrap_or(calibrated.point) }
    }
}

/// What became of one scan.
#[derive(Debug)]
pub enum Outcome {
    /// Scored: the verdict, and the anomaly cloud (`None` while anomaly clouds are not wanted, see
    /// [`Inspector::set_clouds_wanted`]).
    Scored {
        inspection: Box<Inspection>,
        anomaly_cloud: Option<AnomalyCloud>,
    },
    /// The message cannot be scored; says what is wrong with it.
    InvalidInput(String),
    NoModel,
    /// Scoring failed for a reason that is not the input's, or gave no sound verdict.
    Failed(String),
    /// Never scored: newer scans arrived while the queue was full.
    Dropped,
}

/// One scan's outcome, with the caller's tag for it (e.g. the message header).
#[derive(Debug)]
pub struct Report<M> {
    pub tag: M,
    pub outcome: Outcome,
    /// Empty without a model.
    pub model_id: String,
    /// The thresholds the scan was (or would have been) judged with; `None` without a model.
    pub thresholds: Option<Thresholds>,
    /// From submission (message receipt) to the end of scoring.
    pub latency_ms: f64,
}

/// Scores a batch with a model: one outcome per scan, in order. Scans a geometry worker could not decode (it
/// panicked) are decoded here; clouds prepared with another model's geometry (one activated while they were
/// prepared), or not prepared, are prepared again with this model's. A scored scan's message moves into its
/// anomaly cloud.
fn inspect_messages<M>(
    model: Option<&(u64, LoadedModel)>,
    scans: &mut [Scan<M>],
    ready: Option<Ready>,
    overrides: ThresholdOverrides,
    clouds: CloudOutput,
) -> Vec<Outcome> {
    let Some((generation, model)) = model else {
        return scans.iter().map(|_| Outcome::NoModel).collect();
    };
    let Ready { decoded, prepared } = ready.unwrap_or_else(|| prepare(scans.iter().map(|scan| &scan.msg), None));
    let prepared = match prepared {
        Some((prepared_by, clouds)) if prepared_by == *generation => clouds,
        _ => model
            .detector
            .geometry()
            .prepare_clouds(&decoded.iter().filter_map(|c| c.as_ref().ok()).collect::<Vec<_>>()),
    };
    let thresholds = overrides.apply(model.detector.thresholds);
    let mut inspections = model.detector.inspect_prepared(prepared, thresholds).into_iter();
    scans
        .iter_mut()
        .zip(decoded)
        .map(|(scan, cloud)| {
            if let Err(problem) = cloud {
                return Outcome::InvalidInput(problem);
            }
            match inspections.next() {
                Some(Ok(inspection)) => with_scores(&mut scan.msg, inspection, clouds),
                Some(Err(e)) if e.is_input_problem() => Outcome::InvalidInput(e.to_string()),
                Some(Err(e)) => Outcome::Failed(e.to_string()),
                None => Outcome::Failed("the batch returned fewer results than scans".into()),
            }
        })
        .collect()
}

/// What the scored outcomes carry besides the verdict.
#[derive(Clone, Copy, Debug)]
struct CloudOutput {
    wanted: bool,
    rgb: bool,
}

/// A scored scan's anomaly cloud, ready to be written out: the input message, which gains a FLOAT32
/// [`SCORE_FIELD`] (the inspection's point scores) and, on request, an [`RGB_FIELD`]. Kept apart until written,
/// so that the writer can put the points straight where they go (the node: into the bytes it publishes).
#[derive(Debug)]
pub struct AnomalyCloud {
    input: PointCloud2Layout,
    added: AddedF32Fields,
    colours: Option<Vec<f32>>,
}

impl AnomalyCloud {
    /// The anomaly cloud's fields, flags and steps (its `data` empty).
    pub fn head(&self) -> &PointCloud2Layout {
        &self.added.head
    }

    /// Appends the anomaly cloud's point data to `out`, `scores` being the inspection's point scores.
    pub fn write_data(&self, scores: &[f32], out: &mut Vec<u8>) -> Result<(), CloudError> {
        let colours = self.colours.as_deref();
        let values: Vec<&[f32]> = std::iter::once(scores).chain(colours).collect();
        self.added.write_data(&self.input, &values, out)
    }

    /// The anomaly cloud as a message body.
    pub fn layout(&self, scores: &[f32]) -> Result<PointCloud2Layout, CloudError> {
        let mut data = Vec::new();
        self.write_data(scores, &mut data)?;
        Ok(PointCloud2Layout { data, ..self.added.head.clone() })
    }
}

/// The scored outcome, with the anomaly cloud when wanted. Whether the message can carry the scores is checked
/// either way, so that a scan's verdict does not depend on who listens.
fn with_scores(msg: &mut PointCloud2Layout, inspection: Inspection, clouds: CloudOutput) -> Outcome {
    let names: &[&str] = if clouds.rgb { &[SCORE_FIELD, RGB_FIELD] } else { &[SCORE_FIELD] };
    match AddedF32Fields::plan(msg, names) {
        Ok(added) => {
            let anomaly_cloud = clouds.wanted.then(|| AnomalyCloud {
                input: std::mem::take(msg),
                added,
                colours: clouds.rgb.then(|| packed_colours(&inspection.point_scores)),
            });
            Outcome::Scored { inspection: Box::new(inspection), anomaly_cloud }
        }
        Err(e) => Outcome::InvalidInput(e.to_string()),
    }
}

/// Counters since start and recent latencies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub received: u64,
    pub passed: u64,
    pub rejected: u64,
    pub invalid: u64,
    pub no_model: u64,
    pub failed: u64,
    /// Scans dropped unscored because newer ones arrived while the queue was full.
    pub dropped: u64,
    pub waiting: usize,
    /// Over the scans scored in the last [`LATENCY_WINDOW`]; NaN when there were none.
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
}

impl Stats {
    pub fn scored(&self) -> u64 {
        self.passed + self.rejected
    }
}

/// Latency percentiles cover this much recent time, so a slow spell does not colour them for long.
pub const LATENCY_WINDOW: Duration = Duration::from_secs(60);
/// The most waiting scans the worker scores in one batch (memory grows with the batch).
const MAX_BATCH: usize = 8;
/// Threads preparing scans side by side: while one runs a serial step of its geometry, the other's parallel
/// steps use the cores it leaves.
const GEOMETRY_WORKERS: usize = 2;
/// At most this many latencies are kept within the window (above 160 Hz the window is shorter).
const LATENCY_SAMPLES: usize = 10_000;

/// The median and 95th percentile (nearest rank) of some values; NaN for none.
pub fn median_and_p95(mut values: Vec<f64>) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    values.sort_unstable_by(f64::total_cmp);
    let pick = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (pick(0.5), pick(0.95))
}

struct Scan<M> {
    /// Which input it came on: the queue depth holds per lane.
    lane: usize,
    tag: M,
    msg: PointCloud2Layout,
    received: Instant,
}

struct State<M> {
    queue: VecDeque<Scan<M>>,
    /// Batches taken from the queue so far: each batch's number, which orders the reports.
    taken: u64,
    closed: bool,
    stats: Stats,
    /// When each recent scan was scored, and its latency.
    latencies: VecDeque<(Instant, f64)>,
}

impl<M> State<M> {
    fn forget_old_latencies(&mut self, now: Instant) {
        while self.latencies.front().is_some_and(|(t, _)| now.duration_since(*t) > LATENCY_WINDOW)
            || self.latencies.len() > LATENCY_SAMPLES
        {
            self.latencies.pop_front();
        }
    }
}

/// Scans taken from the queue together, with what a geometry worker made of them: what it hands the scoring
/// thread. `ready` is `None` where the worker panicked: the scoring thread then does that work again and
/// reports what goes wrong.
struct Batch<M> {
    scans: Vec<Scan<M>>,
    ready: Option<Ready>,
}

/// Prepared batches on their way to the scoring thread, which takes them in the order their scans left the
/// queue, whichever geometry worker finishes first.
struct Handoff<M> {
    state: Mutex<HandoffState<M>>,
    changed: Condvar,
}

struct HandoffState<M> {
    prepared: BTreeMap<u64, Batch<M>>,
    /// The number of the batch the scoring thread takes next.
    next: u64,
    /// Geometry workers still running; none and nothing prepared: the scoring thread ends.
    workers: usize,
    /// The scoring thread has ended (it panicked): nobody will take a batch.
    scoring_ended: bool,
}

impl<M> Handoff<M> {
    fn new(workers: usize) -> Self {
        let state = HandoffState { prepared: BTreeMap::new(), next: 0, workers, scoring_ended: false };
        Self { state: Mutex::new(state), changed: Condvar::new() }
    }

    /// Hands batch `number` over and waits until the scoring thread takes it: no slack, newer scans wait in the
    /// queue, where the newest wins. False once nobody will take it.
    fn deliver(&self, number: u64, batch: Batch<M>) -> bool {
        let mut state = lock(&self.state);
        state.prepared.insert(number, batch);
        self.changed.notify_all();
        while state.next <= number && !state.scoring_ended {
            state = wait(&self.changed, state);
        }
        !state.scoring_ended
    }

    /// The next batch in order; `None` once every geometry worker has ended and delivered what it took.
    fn take(&self) -> Option<Batch<M>> {
        let mut state = lock(&self.state);
        loop {
            let next = state.next;
            if let Some(batch) = state.prepared.remove(&next) {
                state.next += 1;
                self.changed.notify_all();
                return Some(batch);
            }
            if state.workers == 0 {
                return None;
            }
            state = wait(&self.changed, state);
        }
    }

    fn worker_ended(&self) {
        lock(&self.state).workers -= 1;
        self.changed.notify_all();
    }
}

/// Tells the geometry workers, when dropped, that the scoring thread has ended.
struct ScoringEnds<'a, M>(&'a Handoff<M>);

impl<M> Drop for ScoringEnds<'_, M> {
    fn drop(&mut self) {
        lock(&self.0.state).scoring_ended = true;
        self.0.changed.notify_all();
    }
}

/// Scans decoded and through their geometry.
struct Ready {
    decoded: Vec<Result<PointCloud, String>>,
    /// The decoded clouds' geometry, with the generation of the model whose geometry it is; `None` where no
    /// model was active.
    prepared: Option<(u64, PreparedClouds)>,
}

/// Decodes scans and, given a model's geometry, prepares the clouds that decoded.
fn prepare<'a>(
    messages: impl Iterator<Item = &'a PointCloud2Layout>,
    geometry: Option<(u64, Arc<GeometryPart>)>,
) -> Ready {
    let decoded: Vec<Result<PointCloud, String>> =
        messages.map(|msg| pointcloud2::decode(msg).map_err(|e| e.to_string())).collect();
    let prepared = geometry.map(|(generation, geometry)| {
        let clouds: Vec<&PointCloud> = decoded.iter().filter_map(|c| c.as_ref().ok()).collect();
        (generation, geometry.prepare_clouds(&clouds))
    });
    Ready { decoded, prepared }
}

/// The model the scoring thread takes next and the geometry that goes with it, each with the model's
/// generation (activations counted from 1): changed together, under one lock.
#[derive(Default)]
struct Models {
    pending: Option<(u64, LoadedModel)>,
    geometry: Option<(u64, Arc<GeometryPart>)>,
    generation: u64,
}

impl Models {
    fn activate(&mut self, model: LoadedModel) {
        self.generation += 1;
        self.geometry = Some((self.generation, Arc::new(model.detector.geometry())));
        self.pending = Some((self.generation, model));
    }
}

struct Shared<M> {
    state: Mutex<State<M>>,
    work: Condvar,
    /// The next model to use (the scoring thread takes it before its next batch) and the geometry that the
    /// geometry workers prepare scans with.
    models: Mutex<Models>,
    /// The model that scores the next scan.
    active: Mutex<Option<ModelInfo>>,
    overrides: Mutex<ThresholdOverrides>,
    /// Whether scored outcomes carry the anomaly cloud.
    clouds_wanted: AtomicBool,
    /// Whether anomaly clouds also get the packed `rgb` field.
    rgb: AtomicBool,
    /// Geometry workers preparing a batch now.
    busy_workers: AtomicUsize,
    depth: usize,
}

/// Locks a mutex even if a thread panicked while holding it: the data behind these locks stays consistent
/// between statements, and the node must keep running.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`Condvar::wait`], likewise past a poisoned lock.
fn wait<'a, T>(changed: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    changed.wait(guard).unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The running service: submit scans, receive reports through the sink given to [`Inspector::start`].
pub struct Inspector<M: Send + 'static> {
    shared: Arc<Shared<M>>,
    /// The geometry workers, then the scoring thread.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl<M: Send + 'static> Inspector<M> {
    /// Starts the geometry and scoring threads. `sink` receives every report, on the scoring thread, in
    /// submission order.
    pub fn start(
        queue_depth: usize,
        model: Option<LoadedModel>,
        overrides: ThresholdOverrides,
        sink: impl FnMut(Report<M>) + Send + 'static,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                taken: 0,
                closed: false,
                stats: Stats::default(),
                latencies: VecDeque::new(),
            }),
            work: Condvar::new(),
            active: Mutex::new(model.as_ref().map(LoadedModel::info)),
            models: Mutex::new(Models::default()),
            overrides: Mutex::new(overrides),
            clouds_wanted: AtomicBool::new(true),
            rgb: AtomicBool::new(false),
            busy_workers: AtomicUsize::new(0),
            depth: queue_depth.max(1),
        });
        if let Some(model) = model {
            lock(&shared.models).activate(model);
        }
        let handoff = Arc::new(Handoff::new(GEOMETRY_WORKERS));
        let mut threads: Vec<JoinHandle<()>> = (0..GEOMETRY_WORKERS)
            .map(|k| {
                let (shared, handoff) = (shared.clone(), handoff.clone());
                std::thread::Builder::new()
                    .name(format!("inspect3d-geometry-{k}"))
                    .spawn(move || prepare_scans(&shared, &handoff))
                    .expect("spawning a geometry thread")
            })
            .collect();
        let scoring_shared = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("inspect3d-scoring".into())
                .spawn(move || score_scans(&scoring_shared, &handoff, sink))
                .expect("spawning the scoring thread"),
        );
        Self { shared, threads: Mutex::new(threads) }
    }

    /// Queues a scan from the only input (lane 0); see [`Self::submit_on`].
    #[must_use = "a dropped scan's report must be published"]
    pub fn submit(&self, tag: M, msg: PointCloud2Layout) -> Option<Report<M>> {
        self.submit_on(0, tag, msg)
    }

    /// Queues a scan that came on input `lane` (one per camera topic). When that lane already has the queue
    /// depth waiting, its oldest waiting scan is dropped, counted, and returned as a DROPPED report for the
    /// caller to publish (the sink belongs to the worker, which may be busy for a while). Scans are scored in
    /// arrival order whatever their lane.
    #[must_use = "a dropped scan's report must be published"]
    pub fn submit_on(&self, lane: usize, tag: M, msg: PointCloud2Layout) -> Option<Report<M>> {
        let mut state = lock(&self.shared.state);
        state.stats.received += 1;
        let waiting = state.queue.iter().filter(|s| s.lane == lane).count();
        let dropped = if waiting >= self.shared.depth {
            state.queue.iter().position(|s| s.lane == lane).and_then(|i| state.queue.remove(i))
        } else {
            None
        };
        if dropped.is_some() {
            state.stats.dropped += 1;
        }
        state.queue.push_back(Scan { lane, tag, msg, received: Instant::now() });
        self.shared.work.notify_one();
        drop(state);
        let active = lock(&self.shared.active).as_ref().map(|m| m.id.clone()).unwrap_or_default();
        dropped.map(|scan| Report {
            tag: scan.tag,
            outcome: Outcome::Dropped,
            model_id: active,
            thresholds: None,
            latency_ms: scan.received.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Makes a model active for the next scan; returns the previous one.
    pub fn activate(&self, model: LoadedModel) -> Option<ModelInfo> {
        tracing::info!(model = model.id(), path = %model.path.display(), "model active");
        let previous = lock(&self.shared.active).replace(model.info());
        lock(&self.shared.models).activate(model);
        previous
    }

    pub fn active_model(&self) -> Option<ModelInfo> {
        lock(&self.shared.active).clone()
    }

    /// Adds (or stops adding) the packed `rgb` field to the anomaly clouds of the next scans.
    pub fn set_rgb(&self, on: bool) {
        self.shared.rgb.store(on, Ordering::Relaxed);
    }

    /// Builds (or stops building) the anomaly clouds of the next scans. Building one copies the whole input
    /// message; the node stops while nothing subscribes to them.
    pub fn set_clouds_wanted(&self, wanted: bool) {
        self.shared.clouds_wanted.store(wanted, Ordering::Relaxed);
    }

    pub fn set_overrides(&self, overrides: ThresholdOverrides) {
        *lock(&self.shared.overrides) = overrides;
    }

    pub fn stats(&self) -> Stats {
        let mut state = lock(&self.shared.state);
        state.forget_old_latencies(Instant::now());
        let mut stats = state.stats.clone();
        stats.waiting = state.queue.len();
        (stats.latency_p50_ms, stats.latency_p95_ms) = median_and_p95(state.latencies.iter().map(|l| l.1).collect());
        stats
    }

    /// Finishes (and reports) the scan in progress, drops the waiting ones and stops the worker.
    pub fn shutdown(&self) {
        {
            let mut state = lock(&self.shared.state);
            state.closed = true;
            state.queue.clear();
        }
        self.shared.work.notify_all();
        // The geometry workers stop once they have handed over what they took; the scoring thread when it has
        // reported all of it.
        for thread in lock(&self.threads).drain(..) {
            let _ = thread.join();
        }
    }
}

impl<M: Send + 'static> Drop for Inspector<M> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The waiting scans (several cameras' latest, up to a batch) and the batch's number, once there are any; `None`
/// once closed.
fn take_waiting<M>(shared: &Shared<M>) -> Option<(u64, Vec<Scan<M>>)> {
    let mut state = lock(&shared.state);
    loop {
        if state.closed {
            return None;
        }
        if !state.queue.is_empty() {
            let n = state.queue.len().min(MAX_BATCH);
            let number = state.taken;
            state.taken += 1;
            return Some((number, state.queue.drain(..n).collect()));
        }
        state = wait(&shared.work, state);
    }
}

/// The pipeline's first stage: decodes the waiting scans and runs their geometry with the active model's, then
/// hands them to the scoring thread (waiting for it to finish the previous batch). Scored together, scans
/// waiting together finish sooner than one after another.
fn prepare_scans<M>(shared: &Shared<M>, handoff: &Handoff<M>) {
    // While the other worker is busy too, the two already fill both cores: a scan's parallel steps then run on
    // this worker's own thread, sparing the shared pool's fork–join waits (docs/benchmarks.md: 23.9 against
    // 21.3 frames/s). A scan alone still gets every core.
    let own_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().ok();
    while let Some((number, scans)) = take_waiting(shared) {
        let geometry = lock(&shared.models).geometry.clone();
        let others_busy = shared.busy_workers.fetch_add(1, Ordering::SeqCst) > 0;
        let messages: Vec<&PointCloud2Layout> = scans.iter().map(|scan| &scan.msg).collect();
        let run = || std::panic::catch_unwind(AssertUnwindSafe(|| prepare(messages.into_iter(), geometry))).ok();
        let ready = match &own_thread {
            Some(pool) if others_busy => pool.install(run),
            _ => run(),
        };
        shared.busy_workers.fetch_sub(1, Ordering::SeqCst);
        if !handoff.deliver(number, Batch { scans, ready }) {
            break;
        }
    }
    handoff.worker_ended();
}

/// The pipeline's second stage: the learned stages and the verdicts of each prepared batch, reported in order.
/// Ends when the geometry workers have.
fn score_scans<M>(shared: &Shared<M>, handoff: &Handoff<M>, mut sink: impl FnMut(Report<M>)) {
    // However this thread ends (a sink that panics included), no worker waits for it any longer.
    let _ending = ScoringEnds(handoff);
    let mut model: Option<(u64, LoadedModel)> = None;
    while let Some(batch) = handoff.take() {
        if let Some(next) = lock(&shared.models).pending.take() {
            model = Some(next);
        }
        let overrides = *lock(&shared.overrides);
        let clouds = CloudOutput {
            wanted: shared.clouds_wanted.load(Ordering::Relaxed),
            rgb: shared.rgb.load(Ordering::Relaxed),
        };
        let Batch { mut scans, ready } = batch;
        // A LibTorch error surfaces as a panic in tch; it must cost these scans, not the node.
        let inspect = || inspect_messages(model.as_ref(), &mut scans, ready, overrides, clouds);
        let outcomes = std::panic::catch_unwind(AssertUnwindSafe(inspect)).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            scans.iter().map(|_| Outcome::Failed(format!("internal error while scoring: {what}"))).collect()
        });
        let model_id = model.as_ref().map(|(_, m)| m.id().to_string()).unwrap_or_default();
        let thresholds = model.as_ref().map(|(_, m)| overrides.apply(m.detector.thresholds));
        for (scan, outcome) in scans.into_iter().zip(outcomes) {
            let latency_ms = scan.received.elapsed().as_secs_f64() * 1e3;
            {
                let mut state = lock(&shared.state);
                let stats = &mut state.stats;
                match &outcome {
                    Outcome::Scored { inspection, .. } if inspection.passed => stats.passed += 1,
                    Outcome::Scored { .. } => stats.rejected += 1,
                    Outcome::InvalidInput(_) => stats.invalid += 1,
                    Outcome::NoModel => stats.no_model += 1,
                    Outcome::Failed(_) => stats.failed += 1,
                    Outcome::Dropped => {}
                }
                if matches!(outcome, Outcome::Scored { .. }) {
                    let now = Instant::now();
                    state.latencies.push_back((now, latency_ms));
                    state.forget_old_latencies(now);
                }
            }
            sink(Report { tag: scan.tag, outcome, model_id: model_id.clone(), thresholds, latency_ms });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::PointCloud;
    use std::sync::mpsc;

    fn message(points: &[[f32; 3]]) -> PointCloud2Layout {
        pointcloud2::encode(&PointCloud::from_xyz(points))
    }

    #[test]
    fn without_a_model_every_scan_is_reported_no_model() {
        let (tx, rx) = mpsc::channel();
        let inspector = Inspector::start(4, None, ThresholdOverrides::default(), move |r: Report<u32>| {
            let _ = tx.send(r);
        });
        for tag in 0..3 {
            assert!(inspector.submit(tag, message(&[[0.0, 0.0, 1.0]])).is_none());
        }
        for tag in 0..3 {
            let report = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
            assert_eq!(report.tag, tag);
            assert!(matches!(report.outcome, Outcome::NoModel));
            assert!(report.model_id.is_empty());
        }
        let stats = inspector.stats();
        assert_eq!((stats.received, stats.no_model, stats.dropped), (3, 3, 0));
        assert!(stats.latency_p50_ms.is_nan());
        inspector.shutdown();
    }

    /// A queue of depth 1 whose sink blocks the scoring thread on scan 0's report until released, with scans
    /// 100 and 101 taken by the geometry workers and waiting for the scoring thread: later scans pile up in the
    /// queue. The receiver sees each report's tag.
    fn held_at_first_scan() -> (Inspector<u32>, mpsc::Sender<()>, mpsc::Receiver<u32>) {
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (tx, rx) = mpsc::channel();
        let inspector = Inspector::start(1, None, ThresholdOverrides::default(), move |r: Report<u32>| {
            if r.tag == 0 {
                let _ = release_rx.recv();
            }
            let _ = tx.send(r.tag);
        });
        assert!(inspector.submit(0, message(&[[0.0, 0.0, 1.0]])).is_none());
        while inspector.stats().no_model == 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for tag in [100, 101] {
            assert!(inspector.submit(tag, message(&[[0.0, 0.0, 1.0]])).is_none());
            while inspector.stats().waiting > 0 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        (inspector, release_tx, rx)
    }

    #[test]
    fn a_full_queue_drops_the_oldest_waiting_scan() {
        let (inspector, release_tx, rx) = held_at_first_scan();
        let dropped: Vec<u32> =
            (1..4).filter_map(|tag| inspector.submit(tag, message(&[[0.0, 0.0, 1.0]]))).map(|r| r.tag).collect();
        assert_eq!(dropped, vec![1, 2], "each dropped scan is handed back at once");
        release_tx.send(()).unwrap();
        let seen: Vec<u32> = (0..4).map(|_| rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap()).collect();
        assert_eq!(seen, vec![0, 100, 101, 3], "the scans being prepared, in order, then the newest");
        assert_eq!(inspector.stats().dropped, 2);
    }

    #[test]
    fn each_input_keeps_its_own_queue_depth() {
        let (inspector, release_tx, rx) = held_at_first_scan();
        // A fast camera (lane 0) and a slow one (lane 1): the fast one's backlog never drops the slow one's scan.
        let arrivals = [(0, 1), (1, 10), (0, 2), (0, 3), (1, 11)];
        let dropped: Vec<u32> = arrivals
            .into_iter()
            .filter_map(|(lane, tag)| inspector.submit_on(lane, tag, message(&[[0.0, 0.0, 1.0]])))
            .map(|r| r.tag)
            .collect();
        assert_eq!(dropped, vec![1, 2, 10]);
        release_tx.send(()).unwrap();
        let seen: Vec<u32> = (0..5).map(|_| rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap()).collect();
        assert_eq!(seen, vec![0, 100, 101, 3, 11], "the newest of each input, in arrival order");
    }

    #[test]
    fn batches_reach_the_scoring_thread_in_the_order_they_were_taken() {
        let handoff = Arc::new(Handoff::<u32>::new(2));
        let batch = |tag| Batch {
            scans: vec![Scan { lane: 0, tag, msg: message(&[]), received: Instant::now() }],
            ready: None,
        };
        // A worker delivering batch `number`, then ending; it returns whether its batch was taken.
        let worker = |number: u64| {
            let handoff = handoff.clone();
            std::thread::spawn(move || {
                let taken = handoff.deliver(number, batch(number as u32));
                handoff.worker_ended();
                taken
            })
        };
        // Batch 1 is ready first; batch 0's worker is still busy.
        let second = worker(1);
        while lock(&handoff.state).prepared.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let first = worker(0);
        let tags: Vec<u32> = std::iter::from_fn(|| handoff.take()).map(|b| b.scans[0].tag).collect();
        assert_eq!(tags, vec![0, 1]);
        assert!(first.join().unwrap() && second.join().unwrap(), "both taken");
        // A worker whose batch nobody will take (the scoring thread ended) stops waiting.
        handoff.state.lock().unwrap().workers = 1;
        drop(ScoringEnds(&handoff));
        assert!(!handoff.deliver(2, batch(2)));
    }

    #[test]
    fn overrides_replace_only_what_they_set() {
        let calibrated = Thresholds { cloud: 0.6, point: 0.5 };
        let t = ThresholdOverrides { cloud: Some(0.9), point: None }.apply(calibrated);
        assert_eq!(t, Thresholds { cloud: 0.9, point: 0.5 });
    }
}
