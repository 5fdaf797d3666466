//! inspect3d: unsupervised surface-defect detection on 3D point clouds for robotic inspection cells.
//!
//! The crate is laid out by pipeline stage:
//! - [`bag`]: rosbag2 bags (MCAP and sqlite3) and CDR decoding of recorded PointCloud2 messages;
//! - [`cloud`]: point clouds and their encodings (PointCloud2 byte layouts, PCD, PLY);
//! - [`geometry`]: outlier removal, voxel grid, normalisation, sampling, neighbourhoods, normals, FPFH, median filter;
//! - [`model`]: the detector's stages (backbone, SCA, adaptor, generator, discriminator, scoring) and model files;
//! - [`train`]: learning from good clouds and calibrating thresholds;
//! - [`inspector`]: the inspection service (scan queue, worker thread, active model, statistics), free of ROS;
//! - [`eval`]: Real3D-AD's evaluation protocol, metrics and baselines;
//! - [`synth`]: simulated scans of real parts (meshes, surface sampling, labelled defects);
//! - [`bench`]: the benchmark tables printed by `inspect3d bench`;
//! - [`transfers`]: host ↔ device copies of tensors, counted;
//! - [`ros`] (feature `ros`): the thin ROS 2 layer (r2r message conversion); nothing below it knows about ROS.

pub mod bag;
pub mod bench;
pub mod cloud;
pub mod eval;
pub mod geometry;
pub mod inspector;
pub mod model;
#[cfg(feature = "ros")]
pub mod ros;
pub mod synth;
pub mod train;
pub mod transfers;

/// Logs to stderr through `tracing`, filtered by `RUST_LOG` (default `info`); colours only on a terminal and
/// without `NO_COLOR` (no-color.org), so logs written to files and pipes stay plain text.
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(colour).with_writer(std::io::stderr).try_init();
}
