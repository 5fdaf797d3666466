//! The evaluation metrics agree with scikit-learn (what Real3D-AD's official code calls) on fixed arrays, ties
//! and heavy imbalance included.

use std::process::Command;

use inspect3d::eval::metrics::{auroc, average_precision};

fn sklearn(scores: &[f32], labels: &[bool]) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let (s, l) = (dir.path().join("s.f32"), dir.path().join("l.u8"));
    std::fs::write(&s, scores.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    std::fs::write(&l, labels.iter().map(|&b| u8::from(b)).collect::<Vec<u8>>()).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/sklearn_metrics.py");
    let out = Command::new("python3").arg(script).arg(&s).arg(&l).output().expect("python3 with scikit-learn");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Vec<f64> = text.split_whitespace().map(|x| x.parse().unwrap()).collect();
    (v[0], v[1])
}

#[test]
fn auroc_and_ap_match_scikit_learn() {
    // A fixed pseudo-random set: a point-level-like pool (2 % positives, quantised scores with many ties) and an
    // object-level-like one (few samples).
    let mut state = 12345u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as f32 / (1u64 << 31) as f32
    };
    let n = 20_000;
    let labels: Vec<bool> = (0..n).map(|i| i % 50 == 0).collect();
    let scores: Vec<f32> =
        labels.iter().map(|&l| ((next() + if l { 0.3 } else { 0.0 }) * 64.0).round() / 64.0).collect();
    let small_scores = [0.9, 0.1, 0.8, 0.8, 0.3, 0.55, 0.2, 0.8];
    let small_labels = [true, false, true, false, false, true, false, true];
    for (scores, labels) in [(&scores[..], &labels[..]), (&small_scores[..], &small_labels[..])] {
        let (ref_auroc, ref_ap) = sklearn(scores, labels);
        let (a, p) = (auroc(scores, labels).unwrap(), average_precision(scores, labels).unwrap());
        println!("auroc {a:.9} vs sklearn {ref_auroc:.9}; ap {p:.9} vs sklearn {ref_ap:.9}");
        assert!((a - ref_auroc).abs() < 1e-9 && (p - ref_ap).abs() < 1e-9);
    }
}
