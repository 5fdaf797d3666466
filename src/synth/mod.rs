//! Synthetic scans of real parts: meshes ([`mesh`]) sampled into point clouds, with defects whose every point
//! is labelled ([`defects`]). The benchmark generator builds on these.

pub mod defects;
pub mod mesh;
pub mod sample;
