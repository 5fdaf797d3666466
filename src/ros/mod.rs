//! The ROS 2 layer (r2r). Thin on purpose: it moves message contents (the clouds: their CDR bytes) into the pure
//! types of [`crate::cloud`] and back, and leaves every computation to the library: [`node`] is the inspector node
//! with its training action ([`train_action`]), [`client`] talks to it over DDS (demo replay, benchmarks: [`bench`]
//! for latency and throughput, [`soak`] for hostile input over time).

pub mod bench;
pub mod client;
pub mod node;
pub mod soak;
pub mod train_action;

use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use r2r::sensor_msgs::msg::{PointCloud2, PointField};
use r2r::std_msgs::msg::Header;

use crate::cloud::pointcloud2::{PointCloud2Layout, PointFieldLayout};

/// Moves a message's body into the pure layout type (no copy of the point data).
pub fn layout_from_msg(msg: PointCloud2) -> (Header, PointCloud2Layout) {
    let fields = msg
        .fields
        .into_iter()
        .map(|f| PointFieldLayout { name: f.name, offset: f.offset, datatype: f.datatype, count: f.count })
        .collect();
    let layout = PointCloud2Layout {
        height: msg.height,
        width: msg.width,
        fields,
        is_bigendian: msg.is_bigendian,
        point_step: msg.point_step,
        row_step: msg.row_step,
        data: msg.data,
        is_dense: msg.is_dense,
    };
    (msg.header, layout)
}

pub fn msg_from_layout(header: Header, layout: PointCloud2Layout) -> PointCloud2 {
    let fields = layout
        .fields
        .into_iter()
        .map(|f| PointField { name: f.name, offset: f.offset, datatype: f.datatype, count: f.count })
        .collect();
    PointCloud2 {
        header,
        height: layout.height,
        width: layout.width,
        fields,
        is_bigendian: layout.is_bigendian,
        point_step: layout.point_step,
        row_step: layout.row_step,
        data: layout.data,
        is_dense: layout.is_dense,
    }
}

/// The current wall-clock time as a message stamp.
pub fn now_stamp() -> r2r::builtin_interfaces::msg::Time {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    r2r::builtin_interfaces::msg::Time { sec: now.as_secs() as i32, nanosec: now.subsec_nanos() }
}

/// Stops a child process the way a terminal or `ros2 launch` would: SIGTERM, then SIGKILL if it is still running
/// after `grace`. A ROS process killed outright never destroys its DDS participant, and Fast DDS then leaves the
/// participant's shared-memory segment (64 MiB with config/fastdds.xml) in /dev/shm until `fastdds shm clean`.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(None))
        && let Ok(pid) = libc::pid_t::try_from(child.id())
    {
        // SAFETY: kill() on our own child's pid, which is not yet reaped, so it cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::Relaxed);
}

/// For a command-line loop that runs until stopped (`inspect3d publish --count 0`): from now on SIGINT and SIGTERM
/// only make [`stop_requested`] true, so the loop ends and the ROS context is torn down cleanly (see [`stop_child`]).
pub fn stop_on_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, request_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, request_stop as *const () as libc::sighandler_t);
    }
}

/// Whether SIGINT or SIGTERM arrived since [`stop_on_signals`].
pub fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::Relaxed)
}
