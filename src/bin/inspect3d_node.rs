//! `inspect3d_node`: the inspector node a robot cell runs (see `inspect3d::ros::node`).
//! `inspect3d_node --check-config --ros-args --params-file config/inspector.yaml` validates the parameters
//! (and loads the model) and prints the resulting configuration as JSON, without starting the node.

use std::process::ExitCode;

// No `required-features` in Cargo.toml: cargo-ament-build (colcon) would then skip installing this binary,
// because it only counts features named on its command line, not default ones.
#[cfg(not(feature = "ros"))]
fn main() -> ExitCode {
    eprintln!("inspect3d_node: built without the `ros` feature (a default feature); rebuild with it");
    ExitCode::FAILURE
}

/// Allocations of this size and above get their own mapping, returned to the system when freed. glibc's default
/// raises the threshold as the program runs, after which every scan's multi-megabyte buffers come from the heap
/// and fragment it: measured over a 10-minute soak, resident memory grew 8 % after warm-up by default and did
/// not grow with a fixed 4 MiB threshold, at about the same latency (docs/benchmarks.md).
#[cfg(all(feature = "ros", target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: i32 = 4 << 20;

/// Free memory at the top of a heap is kept up to this much before it goes back to the system. Fixing the mmap
/// threshold also fixes this one at glibc's 128 KiB, which handed back and faulted in again most of a scan's
/// working memory on every scan: 60 frames through the node took 312k page faults and the heads 21 ms (median),
/// 48k and 17 ms with this (docs/benchmarks.md).
#[cfg(all(feature = "ros", target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD_BYTES: i32 = 64 << 20;

#[cfg(feature = "ros")]
fn main() -> ExitCode {
    // Before any thread starts, as glibc requires. A refusal (0) leaves glibc's default: nothing to do.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; no other thread exists yet.
    unsafe {
        let _ = libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        let _ = libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
    }
    inspect3d::init_logging();
    let check_only = std::env::args().take_while(|a| a != "--ros-args").any(|a| a == "--check-config");
    match inspect3d::ros::node::run(check_only) {
        Ok(Some(config)) => match serde_json::to_string_pretty(&config) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        },
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inspect3d_node: {e:#}");
            ExitCode::FAILURE
        }
    }
}
