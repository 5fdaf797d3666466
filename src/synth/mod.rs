//! Synthetic scans of real parts: meshes ([`mesh`]) sampled into point clouds, with defects whose every point
//! is labelled ([`defects`]), and a benchmark in Real3D-AD's layout built from them ([`benchmark`]).

pub mod benchmark;
pub mod camera;
pub mod defects;
pub mod mesh;
pub mod sample;
