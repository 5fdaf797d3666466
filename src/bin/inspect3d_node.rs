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

#[cfg(feature = "ros")]
fn main() -> ExitCode {
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
