//! A client of the inspector node over DDS: publishes scans on the node's input topic and collects its results
//! and anomaly clouds. The demo's `inspect3d replay` and the node benchmark (`inspect3d bench node`) use it.
//! Scans go out and anomaly clouds come in as CDR bytes, as a camera driver's and `ros2 bag record`'s do: on one
//! host the client shares the cores with the node it measures, so it costs no more than it must.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TrySendError, channel, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use r2r::QosProfile;
use r2r::builtin_interfaces::msg::Time;
use r2r::inspect3d_msgs::msg::InspectionResult;

use crate::cloud::cdr::{self, POINT_CLOUD2, StampedCloud};
use crate::cloud::pointcloud2::PointCloud2Layout;

/// Longer than the node needs for one scan on a CPU, so a resend is only for a lost message.
const RESEND_AFTER: Duration = Duration::from_secs(10);

/// Anomaly clouds kept until read; newer ones are dropped while this many wait.
const UNREAD_CLOUDS: usize = 8;

pub struct InspectorClient {
    publisher: r2r::PublisherUntyped,
    /// The scan being sent, serialized (kept from scan to scan).
    scan_bytes: Vec<u8>,
    results: Receiver<(InspectionResult, Instant)>,
    /// Anomaly clouds as CDR bytes, decoded when asked for.
    clouds: Receiver<Vec<u8>>,
    last_stamp: Time,
    stop: Arc<AtomicBool>,
    spinner: Option<std::thread::JoinHandle<()>>,
    _runtime: tokio::runtime::Runtime,
}

impl InspectorClient {
    /// Connects to the node named `node` (e.g. `/inspect3d_node`) through its input topic; waits until the node
    /// subscribes (at most `timeout`). Receives the node's anomaly clouds as well as its results.
    pub fn connect(node_name: &str, input_topic: &str, timeout: Duration) -> Result<Self> {
        Self::connect_with(node_name, input_topic, timeout, true)
    }

    /// [`Self::connect`], receiving results only, as the cell's verdict consumer does: while nothing else
    /// subscribes to the node's anomaly clouds, the node does not build them.
    pub fn connect_for_results(node_name: &str, input_topic: &str, timeout: Duration) -> Result<Self> {
        Self::connect_with(node_name, input_topic, timeout, false)
    }

    fn connect_with(node_name: &str, input_topic: &str, timeout: Duration, with_clouds: bool) -> Result<Self> {
        let ctx = r2r::Context::create().context("creating the ROS context (is the ROS environment sourced?)")?;
        // Unique, so several clients (tests, a replay beside a benchmark) do not share a node name.
        static CLIENTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!("inspect3d_client_{}_{}", std::process::id(), CLIENTS.fetch_add(1, Ordering::Relaxed));
        let mut node = r2r::Node::create(ctx, &name, "")?;
        let publisher = node.create_publisher_untyped(input_topic, POINT_CLOUD2, QosProfile::sensor_data())?;
        let mut result_stream =
            node.subscribe::<InspectionResult>(&format!("{node_name}/result"), QosProfile::default())?;
        let cloud_stream = match with_clouds {
            true => {
                Some(node.subscribe_raw(&format!("{node_name}/anomaly_cloud"), POINT_CLOUD2, QosProfile::default())?)
            }
            false => None,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let (result_tx, results) = channel();
        // Anomaly clouds are megabytes each: unread ones beyond a few are dropped, so a client that never asks for
        // them (the benchmarks, the soak) does not hold every one (a 10-minute soak grew to 12 GB before this).
        let (cloud_tx, clouds) = sync_channel(UNREAD_CLOUDS);
        runtime.spawn(async move {
            while let Some(result) = result_stream.next().await {
                if result_tx.send((result, Instant::now())).is_err() {
                    break;
                }
            }
        });
        if let Some(mut cloud_stream) = cloud_stream {
            runtime.spawn(async move {
                while let Some(cloud) = cloud_stream.next().await {
                    if let Err(TrySendError::Disconnected(_)) = cloud_tx.try_send(cloud) {
                        break;
                    }
                }
            });
        }
        // Ready when the node subscribes to our scans and we see its result publisher; then a moment for the
        // readers to match the writers (best-effort scans sent before that are lost).
        let deadline = Instant::now() + timeout;
        let result_topic = format!("{node_name}/result");
        while publisher.get_inter_process_subscription_count().unwrap_or(0) == 0
            || node.get_publishers_info_by_topic(&result_topic, false).map_or(true, |p| p.is_empty())
        {
            if Instant::now() > deadline {
                bail!(
                    "{node_name} not found (no subscriber on {input_topic}, no publisher on {result_topic}) within {timeout:?}: is it running?"
                );
            }
            node.spin_once(Duration::from_millis(20));
        }
        let settle = Instant::now() + Duration::from_millis(300);
        while Instant::now() < settle {
            node.spin_once(Duration::from_millis(20));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let spin_stop = stop.clone();
        let spinner = std::thread::spawn(move || {
            while !spin_stop.load(Ordering::Relaxed) {
                node.spin_once(Duration::from_millis(10));
            }
        });
        Ok(Self {
            publisher,
            scan_bytes: Vec::new(),
            results,
            clouds,
            last_stamp: Time::default(),
            stop,
            spinner: Some(spinner),
            _runtime: runtime,
        })
    }

    /// Publishes a scan stamped `stamp` (the key that pairs it with its result).
    pub fn send(&mut self, layout: &PointCloud2Layout, frame_id: &str, stamp: Time) -> Result<()> {
        publish_cloud(&self.publisher, &mut self.scan_bytes, layout, frame_id, stamp).context("publishing a scan")
    }

    /// Sends a scan and waits for its result, sending it again while none comes (scans travel best-effort, as a
    /// camera's do, so one can be lost). Returns the result and the round-trip time.
    pub fn inspect(&mut self, layout: &PointCloud2Layout, timeout: Duration) -> Result<(InspectionResult, Duration)> {
        let stamp = unique_stamp(&mut self.last_stamp);
        let sent = Instant::now();
        loop {
            self.send(layout, "camera", stamp.clone())?;
            if let Some((result, arrived)) = self.result_for(&stamp, RESEND_AFTER.min(timeout)) {
                return Ok((result, arrived - sent));
            }
            if sent.elapsed() >= timeout {
                bail!("no result within {timeout:?}");
            }
            tracing::warn!("no result yet; sending the scan again");
        }
    }

    /// The stamp of the last scan sent by [`Self::inspect`].
    pub fn last_stamp(&self) -> &Time {
        &self.last_stamp
    }

    /// The next result whose stamp is `stamp` (others are skipped), with when it arrived.
    pub fn result_for(&self, stamp: &Time, timeout: Duration) -> Option<(InspectionResult, Instant)> {
        first_matching(&self.results, timeout, |(result, _)| result.header.stamp == *stamp)
    }

    /// Any result, within `timeout`.
    pub fn next_result(&self, timeout: Duration) -> Option<(InspectionResult, Instant)> {
        self.results.recv_timeout(timeout).ok()
    }

    /// The anomaly cloud stamped `stamp`, within `timeout` (`None` at once for a client connected for results
    /// only, or if what arrived does not decode).
    pub fn cloud_for(&self, stamp: &Time, timeout: Duration) -> Option<StampedCloud> {
        let deadline = Instant::now() + timeout;
        loop {
            let bytes = self.clouds.recv_timeout(deadline.checked_duration_since(Instant::now())?).ok()?;
            // Decoded where the bytes lie: a cloud passed over costs no copy of its points.
            match cdr::decode_point_cloud_owned(bytes) {
                Ok(cloud) if (cloud.stamp_sec, cloud.stamp_nanosec) == (stamp.sec, stamp.nanosec) => {
                    return Some(cloud);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("an anomaly cloud that does not decode: {e}"),
            }
        }
    }
}

/// Publishes `layout` stamped `stamp` in `frame_id` through an untyped PointCloud2 publisher, serialized into
/// `bytes` (a buffer kept from message to message).
pub fn publish_cloud(
    publisher: &r2r::PublisherUntyped,
    bytes: &mut Vec<u8>,
    layout: &PointCloud2Layout,
    frame_id: &str,
    stamp: Time,
) -> r2r::Result<()> {
    cdr::encode_layout_into(bytes, (stamp.sec, stamp.nanosec), frame_id, layout);
    publisher.publish_raw(bytes)
}

/// The first message from `messages` that `wanted` accepts within `timeout`; the others are dropped.
fn first_matching<T>(messages: &Receiver<T>, timeout: Duration, wanted: impl Fn(&T) -> bool) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let message = messages.recv_timeout(deadline.checked_duration_since(Instant::now())?).ok()?;
        if wanted(&message) {
            return Some(message);
        }
    }
}

impl Drop for InspectorClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(spinner) = self.spinner.take() {
            let _ = spinner.join();
        }
    }
}

/// A distinct stamp per message: the wall clock, nudged past the previous one.
pub fn unique_stamp(previous: &mut Time) -> Time {
    let mut stamp = super::now_stamp();
    if (stamp.sec, stamp.nanosec) <= (previous.sec, previous.nanosec) {
        stamp = if previous.nanosec < 999_999_999 {
            Time { sec: previous.sec, nanosec: previous.nanosec + 1 }
        } else {
            Time { sec: previous.sec + 1, nanosec: 0 }
        };
    }
    *previous = stamp.clone();
    stamp
}

/// The status constant's name.
pub fn status_name(status: u8) -> &'static str {
    match status {
        s if s == InspectionResult::PASS as u8 => "PASS",
        s if s == InspectionResult::REJECT as u8 => "REJECT",
        s if s == InspectionResult::INVALID_INPUT as u8 => "INVALID_INPUT",
        s if s == InspectionResult::NO_MODEL as u8 => "NO_MODEL",
        s if s == InspectionResult::DROPPED as u8 => "DROPPED",
        _ => "ERROR",
    }
}
