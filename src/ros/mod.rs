//! The ROS 2 layer (r2r). Thin on purpose: it moves message contents into the pure types of [`crate::cloud`]
//! and back, and leaves every computation to the library: [`node`] is the inspector node with its training
//! action ([`train_action`]), [`client`]
//! talks to it over DDS (demo replay, benchmarks: [`bench`] for latency and throughput, [`soak`] for hostile
//! input over time).

pub mod bench;
pub mod client;
pub mod node;
pub mod soak;
pub mod train_action;

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
