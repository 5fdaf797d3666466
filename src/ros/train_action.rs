//! The `~/train` action (inspect3d_msgs/TrainModel): learns a model from bags of good scans while the node keeps
//! inspecting, reports progress, saves the model atomically to `<models_dir>/<model_name>/` (or, when that
//! exists, the first free `<model_name>-2`, `-3`, …: training never replaces a model) and, when asked,
//! makes it active for the next scan. One job at a time. A goal that cannot work is aborted at once with the
//! reason in `result.message` (an action's rejection carries no reason, and the engineer needs one).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Result;
use futures::{Stream, StreamExt};
use r2r::inspect3d_msgs::action::TrainModel;

use super::node::NodeState;
use crate::bag::{Bag, POINT_CLOUD2};
use crate::model::config::DetectorConfig;
use crate::model::{ModelError, Placement, store};
use crate::train::{self, Monitor, Progress, Stage};

/// Fewest usable clouds: at least one to calibrate on and two to learn from.
pub const MIN_CLOUDS: u64 = 3;

/// Shares of the whole job in the reported progress.
const READ_SHARE: f32 = 0.1;
const SAVE_SHARE: f32 = 0.05;

type GoalRequests = std::pin::Pin<Box<dyn Stream<Item = r2r::ActionServerGoalRequest<TrainModel::Action>> + Send>>;

pub struct TrainServer {
    requests: GoalRequests,
    state: Arc<NodeState>,
    busy: Arc<AtomicBool>,
}

/// What a valid goal asks for.
struct Job {
    bags: Vec<Bag>,
    topic: String,
    name: String,
    /// Where models go; the job's own folder is chosen when it saves (a free name, never an existing model).
    models_dir: PathBuf,
    config: DetectorConfig,
    activate: bool,
}

impl TrainServer {
    pub fn new(node: &mut r2r::Node, state: Arc<NodeState>) -> Result<Self> {
        let requests = node.create_action_server::<TrainModel::Action>("~/train")?;
        Ok(Self { requests: Box::pin(requests), state, busy: Arc::new(AtomicBool::new(false)) })
    }

    pub async fn serve(mut self) {
        while let Some(request) = self.requests.next().await {
            let goal = request.goal.clone();
            let (mut handle, cancels) = match request.accept() {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("accepting a training goal: {e}");
                    continue;
                }
            };
            let job = if self.busy.swap(true, Ordering::SeqCst) {
                Err("a training job is already running; wait for it or cancel it".to_string())
            } else {
                plan(&goal, &self.state).inspect_err(|_| self.busy.store(false, Ordering::SeqCst))
            };
            match job {
                Ok(job) => {
                    tracing::info!(
                        model = job.name,
                        bags = job.bags.len(),
                        topic = job.topic,
                        "training goal accepted"
                    );
                    tokio::spawn(supervise(handle, cancels, job, self.state.clone(), self.busy.clone()));
                }
                Err(reason) => {
                    tracing::warn!(reason, "training goal refused");
                    let result =
                        TrainModel::Result { message: format!("goal refused: {reason}"), ..Default::default() };
                    if let Err(e) = handle.abort(result) {
                        tracing::warn!("answering a refused goal: {e}");
                    }
                }
            }
        }
    }
}

/// Checks a goal against the bags and the node's settings; everything that can be known before training.
fn plan(goal: &TrainModel::Goal, state: &NodeState) -> Result<Job, String> {
    let config = state.config();
    let name = goal.model_name.trim();
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("model_name '{name}' must be 1–64 letters, digits, '-' or '_'"));
    }
    let rate = goal.target_false_reject_rate;
    if !(rate == 0.0 || (rate > 0.0 && rate <= 0.5)) {
        return Err(format!("target_false_reject_rate {rate} must be in (0, 0.5], or 0 for the default"));
    }
    if goal.bag_paths.is_empty() {
        return Err("bag_paths is empty".into());
    }
    if goal.topic.is_empty() {
        return Err("topic is empty".into());
    }
    let mut clouds = 0;
    let mut bags = Vec::new();
    for path in &goal.bag_paths {
        let bag = Bag::open(std::path::Path::new(path)).map_err(|e| e.to_string())?;
        clouds += bag.check_topic(&goal.topic, POINT_CLOUD2).map_err(|e| e.to_string())?;
        bags.push(bag);
    }
    if clouds < MIN_CLOUDS {
        return Err(format!(
            "too few clouds: {clouds} on {} in the bags, at least {MIN_CLOUDS} are needed (some are held out to \
             calibrate the thresholds)",
            goal.topic
        ));
    }
    let mut detector = match config.training_config.trim() {
        "" => DetectorConfig::default(),
        path => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("training_config {path}: {e}"))?;
            DetectorConfig::from_json(&text).map_err(|e| format!("training_config {path}: {e}"))?
        }
    };
    match (goal.epochs, config.training_epochs) {
        (0, 0) => {}
        (0, default) => detector.training.epochs = default as usize,
        (epochs, _) => detector.training.epochs = epochs as usize,
    }
    if rate > 0.0 {
        detector.scoring.target_false_reject_rate = f64::from(rate);
    } else if config.target_false_reject_rate > 0.0 {
        detector.scoring.target_false_reject_rate = config.target_false_reject_rate;
    }
    detector.validate().map_err(|e| format!("training configuration: {e}"))?;
    Ok(Job {
        bags,
        topic: goal.topic.clone(),
        name: name.to_string(),
        models_dir: PathBuf::from(&config.models_dir),
        config: detector,
        activate: goal.activate,
    })
}

/// Turns training progress into feedback (at most ~5 per second, and at every stage change) and carries the
/// cancel flag into the training loop.
struct ActionMonitor {
    feedback: tokio::sync::mpsc::UnboundedSender<TrainModel::Feedback>,
    cancelled: Arc<AtomicBool>,
    last: Option<(Instant, &'static str)>,
}

impl Monitor for ActionMonitor {
    fn report(&mut self, p: &Progress) {
        let (stage, progress) = match p.stage {
            Stage::Reading => ("reading", READ_SHARE * p.fraction),
            // Feature extraction is the first part of training.
            Stage::Preparing | Stage::Training => {
                ("training", READ_SHARE + (1.0 - READ_SHARE - SAVE_SHARE) * p.fraction)
            }
            Stage::Calibrating => ("calibrating", READ_SHARE + (1.0 - READ_SHARE - SAVE_SHARE) * p.fraction),
            Stage::Saving => ("saving", 1.0 - SAVE_SHARE),
        };
        let due = match self.last {
            None => true,
            Some((t, s)) => s != stage || t.elapsed().as_secs_f32() > 0.2,
        };
        if !due {
            return;
        }
        self.last = Some((Instant::now(), stage));
        let _ = self.feedback.send(TrainModel::Feedback {
            stage: stage.into(),
            progress: progress.clamp(0.0, 1.0),
            epoch: p.epoch as u32,
            epochs: p.epochs as u32,
            loss: p.loss,
            clouds_loaded: p.clouds_loaded as u32,
            eta_s: p.eta_s,
        });
    }

    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

async fn supervise(
    mut handle: r2r::ActionServerGoal<TrainModel::Action>,
    mut cancels: impl Stream<Item = r2r::ActionServerCancelRequest> + Unpin,
    job: Job,
    state: Arc<NodeState>,
    busy: Arc<AtomicBool>,
) {
    let cancelled = Arc::new(AtomicBool::new(false));
    let (feedback_tx, mut feedback) = tokio::sync::mpsc::unbounded_channel();
    let (done_tx, mut done) = tokio::sync::oneshot::channel();
    let mut monitor = ActionMonitor { feedback: feedback_tx, cancelled: cancelled.clone(), last: None };
    let worker_state = state.clone();
    let spawned = std::thread::Builder::new().name("inspect3d-train".into()).spawn(move || {
        let outcome = in_background(|| run(job, &worker_state, &mut monitor));
        let _ = done_tx.send(outcome);
    });
    if let Err(e) = spawned {
        let _ =
            handle.abort(TrainModel::Result { message: format!("cannot start training: {e}"), ..Default::default() });
        busy.store(false, Ordering::SeqCst);
        return;
    }
    let outcome = loop {
        tokio::select! {
            Some(fb) = feedback.recv() => {
                if let Err(e) = handle.publish_feedback(fb) {
                    tracing::debug!("training feedback: {e}");
                }
            }
            Some(request) = cancels.next() => {
                tracing::info!("training cancel requested");
                request.accept();
                cancelled.store(true, Ordering::Relaxed);
            }
            outcome = &mut done => break outcome.unwrap_or_else(|_| Err(ModelError::Training("the training thread died".into()))),
        }
    };
    let answered = match outcome {
        Ok(result) => {
            tracing::info!(model = result.model_id, path = result.model_path, "training done");
            handle.succeed(result)
        }
        Err(ModelError::Cancelled) => {
            tracing::info!("training cancelled; nothing saved");
            handle.cancel(TrainModel::Result {
                message: "cancelled: nothing was saved and the active model is unchanged".into(),
                ..Default::default()
            })
        }
        Err(e) => {
            tracing::warn!("training failed: {e}");
            handle.abort(TrainModel::Result { message: format!("training failed: {e}"), ..Default::default() })
        }
    };
    if let Err(e) = answered {
        tracing::warn!("answering the training goal: {e}");
    }
    busy.store(false, Ordering::SeqCst);
}

/// Runs `work` so that inspection keeps priority: this thread at a lower scheduling priority (LibTorch's worker
/// threads it starts inherit it), and the geometry on a one-thread pool of its own, also at the lower priority.
/// (`tch::set_num_threads` would not do: LibTorch keeps that number process-wide, inspection included.)
fn in_background<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    fn lower_priority() {
        // SAFETY: plain syscalls on the calling thread's own id.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 10);
        }
    }
    lower_priority();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).start_handler(|_| lower_priority()).build();
    match pool {
        Ok(pool) => pool.install(work),
        Err(_) => work(),
    }
}

fn run(job: Job, state: &NodeState, monitor: &mut ActionMonitor) -> Result<TrainModel::Result, ModelError> {
    let started = Instant::now();
    let read = train::read_bags(&job.bags, &job.topic, monitor)?;
    if (read.clouds.len() as u64) < MIN_CLOUDS {
        return Err(ModelError::Training(format!(
            "only {} usable clouds ({} skipped: {}); at least {MIN_CLOUDS} are needed",
            read.clouds.len(),
            read.skipped.len(),
            read.skipped.first().map_or("", String::as_str)
        )));
    }
    let placement = Placement { device: state.device, device_geometry: state.config().device_geometry };
    let (detector, summary) = train::train(job.config, &read.clouds, &[], placement, monitor)?;
    monitor.report(&Progress {
        stage: Stage::Saving,
        fraction: 1.0,
        epoch: summary.epochs,
        epochs: summary.epochs,
        loss: summary.final_loss,
        clouds_loaded: read.clouds.len(),
        eta_s: 0.0,
    });
    if monitor.cancelled() {
        return Err(ModelError::Cancelled);
    }
    let out = store::free_model_dir(&job.models_dir, &job.name);
    let manifest = store::save(&detector, &out, &job.name, summary)?;
    let previous = state.inspector.active_model();
    let mut notes = vec![format!(
        "trained on {} clouds, {} held out, in {:.0} s",
        manifest.training.clouds_trained,
        manifest.training.clouds_held_out,
        started.elapsed().as_secs_f64()
    )];
    if manifest.training.clouds_held_out < 20 {
        notes.push(format!(
            "only {} held-out clouds: the cloud threshold is set by their highest score, not by the target rate; \
             record more good parts for a calibrated rate",
            manifest.training.clouds_held_out
        ));
    }
    if !read.skipped.is_empty() {
        notes.push(format!("{} recorded clouds without usable points were skipped", read.skipped.len()));
    }
    if out.file_name().and_then(|n| n.to_str()) != Some(job.name.as_str()) {
        notes.push(format!("a model named {} already exists: saved as {}", job.name, out.display()));
    }
    if job.activate {
        state.activate_path(&out).map_err(ModelError::Training)?;
        notes.push("active from the next scan".into());
    }
    if let Some(previous) = &previous {
        notes.push(format!("roll back with: ros2 param set {} model_path {}", state.name, previous.path.display()));
    }
    Ok(TrainModel::Result {
        success: true,
        model_id: manifest.model_id,
        model_path: out.display().to_string(),
        cloud_threshold: manifest.thresholds.cloud,
        point_threshold: manifest.thresholds.point,
        clouds_used: manifest.training.clouds_trained as u32,
        clouds_held_out: manifest.training.clouds_held_out as u32,
        previous_model_id: previous.map(|m| m.id.clone()).unwrap_or_default(),
        message: notes.join("; "),
    })
}
