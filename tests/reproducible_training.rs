//! Training draws its initial weights, dropout and pseudo-defect noise from LibTorch's random generator, which is
//! one per process; loading a model must not draw from it, or a model swapped into the node while its training
//! action runs would change what that training learns. Its own test binary (its own process): another test
//! training beside it would draw from the same generator.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use inspect3d::model::config::DetectorConfig;
use inspect3d::model::{Detector, store};
use inspect3d::train;

/// The heads' weights by name.
fn weights(detector: &Detector) -> Vec<(String, Vec<f32>)> {
    let mut named: Vec<(String, Vec<f32>)> = detector
        .heads
        .vs
        .variables()
        .into_iter()
        .map(|(name, t)| (name, Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

#[test]
fn loading_models_meanwhile_does_not_change_what_training_learns() {
    let root = common::repo();
    let clouds = common::bundled_good_clouds();
    let mut config = DetectorConfig::default();
    config.training.epochs = 3;
    let train_once =
        || train::train(config.clone(), &clouds, &[], tch::Device::Cpu, &mut train::LogMonitor::default()).unwrap();
    let (alone, alone_summary) = train_once();
    let training_done = AtomicBool::new(false);
    let ((beside, beside_summary), loads) = std::thread::scope(|s| {
        let loader = s.spawn(|| {
            let mut loads = 0;
            while !training_done.load(Ordering::Relaxed) {
                store::load(&root.join("models/featuretype"), tch::Device::Cpu).unwrap();
                loads += 1;
            }
            loads
        });
        let trained = train_once();
        training_done.store(true, Ordering::Relaxed);
        (trained, loader.join().unwrap())
    });
    assert!(loads > 0, "no model was loaded while training ran");
    assert_eq!(alone_summary.final_loss, beside_summary.final_loss, "{loads} loads meanwhile");
    assert!(weights(&alone) == weights(&beside), "the heads' weights differ after {loads} loads meanwhile");
}
