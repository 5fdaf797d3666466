//! Evaluation as Real3D-AD's official code does it: datasets in its layout ([`dataset`]), its metrics
//! ([`metrics`]), and baselines to compare against ([`baselines`]).

pub mod metrics;
