//! The inspection service, free of ROS: a bounded queue of incoming scans (when full, the oldest is dropped,
//! counted, and handed back to the caller as a DROPPED report: every scan gets an answer), one worker thread
//! that scores them with the active model (the scans waiting together in one batch: several cameras'), the
//! active model itself (swapped between scans, so a new model scores the next scan), operator threshold
//! overrides and running statistics. The ROS node (`crate::ros::node`) feeds it messages and publishes what it
//! reports; tests drive it directly.

pub mod config;

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tch::Device;

use crate::cloud::PointCloud;
use crate::cloud::pointcloud2::{self, PointCloud2Layout};
use crate::model::store::{self, Manifest};
use crate::model::{Detector, Inspection, ModelError, Thresholds};
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
    /// Scored: the verdict, and the input message with the FLOAT32 `anomaly_score` field added.
    Scored {
        inspection: Box<Inspection>,
        anomaly_cloud: PointCloud2Layout,
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

/// Scores messages with a model, in one batch: one outcome per message, in order.
fn inspect_messages(
    model: Option<&LoadedModel>,
    msgs: &[&PointCloud2Layout],
    overrides: ThresholdOverrides,
    rgb: bool,
) -> Vec<Outcome> {
    let Some(model) = model else {
        return msgs.iter().map(|_| Outcome::NoModel).collect();
    };
    let decoded: Vec<Result<PointCloud, String>> =
        msgs.iter().map(|msg| pointcloud2::decode(msg).map_err(|e| e.to_string())).collect();
    let clouds: Vec<&PointCloud> = decoded.iter().filter_map(|c| c.as_ref().ok()).collect();
    let thresholds = overrides.apply(model.detector.thresholds);
    let mut inspections = model.detector.inspect_batch(&clouds, thresholds).into_iter();
    msgs.iter()
        .zip(decoded)
        .map(|(msg, cloud)| {
            if let Err(problem) = cloud {
                return Outcome::InvalidInput(problem);
            }
            match inspections.next() {
                Some(Ok(inspection)) => with_scores(msg, inspection, rgb),
                Some(Err(e)) if e.is_input_problem() => Outcome::InvalidInput(e.to_string()),
                Some(Err(e)) => Outcome::Failed(e.to_string()),
                None => Outcome::Failed("the batch returned fewer results than scans".into()),
            }
        })
        .collect()
}

/// The scored outcome: the input message with the score (and, on request, colour) fields added.
fn with_scores(msg: &PointCloud2Layout, inspection: Inspection, rgb: bool) -> Outcome {
    let colours = if rgb { packed_colours(&inspection.point_scores) } else { Vec::new() };
    let mut fields = vec![(SCORE_FIELD, inspection.point_scores.as_slice())];
    if rgb {
        fields.push((RGB_FIELD, colours.as_slice()));
    }
    match pointcloud2::with_f32_fields(msg, &fields) {
        Ok(anomaly_cloud) => Outcome::Scored { inspection: Box::new(inspection), anomaly_cloud },
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

struct Shared<M> {
    state: Mutex<State<M>>,
    work: Condvar,
    /// The next model to use; the worker takes it before its next scan.
    pending: Mutex<Option<LoadedModel>>,
    /// The model that scores the next scan.
    active: Mutex<Option<ModelInfo>>,
    overrides: Mutex<ThresholdOverrides>,
    /// Whether anomaly clouds also get the packed `rgb` field.
    rgb: std::sync::atomic::AtomicBool,
    depth: usize,
}

/// Locks a mutex even if a thread panicked while holding it: the data behind these locks stays consistent
/// between statements, and the node must keep running.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The running service: submit scans, receive reports through the sink given to [`Inspector::start`].
pub struct Inspector<M: Send + 'static> {
    shared: Arc<Shared<M>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl<M: Send + 'static> Inspector<M> {
    /// Starts the worker thread. `sink` receives every report, on the worker thread, in submission order.
    pub fn start(
        queue_depth: usize,
        model: Option<LoadedModel>,
        overrides: ThresholdOverrides,
        sink: impl FnMut(Report<M>) + Send + 'static,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
                stats: Stats::default(),
                latencies: VecDeque::new(),
            }),
            work: Condvar::new(),
            active: Mutex::new(model.as_ref().map(LoadedModel::info)),
            pending: Mutex::new(model),
            overrides: Mutex::new(overrides),
            rgb: std::sync::atomic::AtomicBool::new(false),
            depth: queue_depth.max(1),
        });
        let worker_shared = shared.clone();
        let worker = std::thread::Builder::new()
            .name("inspect3d-worker".into())
            .spawn(move || work(&worker_shared, sink))
            .expect("spawning the inspection thread");
        Self { shared, worker: Mutex::new(Some(worker)) }
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
        *lock(&self.shared.pending) = Some(model);
        previous
    }

    pub fn active_model(&self) -> Option<ModelInfo> {
        lock(&self.shared.active).clone()
    }

    /// Adds (or stops adding) the packed `rgb` field to the anomaly clouds of the next scans.
    pub fn set_rgb(&self, on: bool) {
        self.shared.rgb.store(on, std::sync::atomic::Ordering::Relaxed);
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
        if let Some(worker) = lock(&self.worker).take() {
            let _ = worker.join();
        }
    }
}

impl<M: Send + 'static> Drop for Inspector<M> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn work<M>(shared: &Shared<M>, mut sink: impl FnMut(Report<M>)) {
    let mut model: Option<LoadedModel> = None;
    loop {
        // Every scan waiting (several cameras' latest), up to a batch: scored together, they finish sooner
        // than one after another.
        let scans: Vec<Scan<M>> = {
            let mut state = lock(&shared.state);
            loop {
                if state.closed {
                    return;
                }
                if !state.queue.is_empty() {
                    let n = state.queue.len().min(MAX_BATCH);
                    break state.queue.drain(..n).collect();
                }
                state = shared.work.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        };
        if let Some(next) = lock(&shared.pending).take() {
            model = Some(next);
        }
        let overrides = *lock(&shared.overrides);
        let rgb = shared.rgb.load(std::sync::atomic::Ordering::Relaxed);
        let msgs: Vec<&PointCloud2Layout> = scans.iter().map(|s| &s.msg).collect();
        // A LibTorch error surfaces as a panic in tch; it must cost these scans, not the node.
        let outcomes =
            std::panic::catch_unwind(AssertUnwindSafe(|| inspect_messages(model.as_ref(), &msgs, overrides, rgb)))
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("unknown panic");
                    msgs.iter().map(|_| Outcome::Failed(format!("internal error while scoring: {what}"))).collect()
                });
        let model_id = model.as_ref().map(|m| m.id().to_string()).unwrap_or_default();
        let thresholds = model.as_ref().map(|m| overrides.apply(m.detector.thresholds));
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

    /// A queue of depth 1 whose sink blocks the worker on scan 0's report until released, so later scans pile
    /// up; the receiver sees each report's tag.
    fn held_at_first_scan() -> (Inspector<u32>, mpsc::Sender<()>, mpsc::Receiver<u32>) {
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (tx, rx) = mpsc::channel();
        let inspector = Inspector::start(1, None, ThresholdOverrides::default(), move |r: Report<u32>| {
            if r.tag == 0 {
                let _ = release_rx.recv();
            }
            let _ = tx.send(r.tag);
        });
        (inspector, release_tx, rx)
    }

    #[test]
    fn a_full_queue_drops_the_oldest_waiting_scan() {
        let (inspector, release_tx, rx) = held_at_first_scan();
        assert!(inspector.submit(0, message(&[[0.0, 0.0, 1.0]])).is_none());
        // Wait until the worker has taken scan 0, so the queue is empty when 1, 2, 3 arrive.
        while inspector.stats().no_model == 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let dropped: Vec<u32> =
            (1..4).filter_map(|tag| inspector.submit(tag, message(&[[0.0, 0.0, 1.0]]))).map(|r| r.tag).collect();
        assert_eq!(dropped, vec![1, 2], "each dropped scan is handed back at once");
        release_tx.send(()).unwrap();
        let seen: Vec<u32> = (0..2).map(|_| rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap()).collect();
        assert_eq!(seen, vec![0, 3], "the newest scan wins");
        assert_eq!(inspector.stats().dropped, 2);
    }

    #[test]
    fn each_input_keeps_its_own_queue_depth() {
        let (inspector, release_tx, rx) = held_at_first_scan();
        assert!(inspector.submit_on(0, 0, message(&[[0.0, 0.0, 1.0]])).is_none());
        while inspector.stats().no_model == 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // A fast camera (lane 0) and a slow one (lane 1): the fast one's backlog never drops the slow one's scan.
        let arrivals = [(0, 1), (1, 10), (0, 2), (0, 3), (1, 11)];
        let dropped: Vec<u32> = arrivals
            .into_iter()
            .filter_map(|(lane, tag)| inspector.submit_on(lane, tag, message(&[[0.0, 0.0, 1.0]])))
            .map(|r| r.tag)
            .collect();
        assert_eq!(dropped, vec![1, 2, 10]);
        release_tx.send(()).unwrap();
        let seen: Vec<u32> = (0..3).map(|_| rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap()).collect();
        assert_eq!(seen, vec![0, 3, 11], "the newest of each input, in arrival order");
    }

    #[test]
    fn overrides_replace_only_what_they_set() {
        let calibrated = Thresholds { cloud: 0.6, point: 0.5 };
        let t = ThresholdOverrides { cloud: Some(0.9), point: None }.apply(calibrated);
        assert_eq!(t, Thresholds { cloud: 0.9, point: 0.5 });
    }
}
