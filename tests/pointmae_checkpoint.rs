//! The whole Point-MAE loading path: a checkpoint in the official `pretrain.pth` layout (written by a Python
//! peer without torch), converted by scripts/convert_pointmae.py, loaded as the backbone; its tokens must equal
//! an independent numpy implementation of Point-MAE's encoder. Broken checkpoints give named errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use inspect3d::cloud::read_cloud;
use inspect3d::model::backbone::Backbone;
use inspect3d::model::config::PreprocessConfig;
use inspect3d::model::preprocess::patch_cloud;
use tch::{Device, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python(args: &[&str]) {
    let out = Command::new("python3").args(args).output().expect("python3 (source .deps/env.sh)");
    assert!(
        out.status.success(),
        "python3 {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_f32(path: &Path, values: &[f32]) {
    std::fs::write(path, values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
}

/// Writes an official-layout checkpoint (width 48, 2 blocks) and converts it; returns the safetensors path.
fn converted(dir: &Path, heads: usize) -> PathBuf {
    let peer = root().join("tests/peers/pointmae_reference.py");
    let ckpt = dir.join("pretrain.pth");
    let out = dir.join("pointmae.safetensors");
    python(&[peer.to_str().unwrap(), "write", ckpt.to_str().unwrap(), "48", "2", &heads.to_string(), "11"]);
    python(&[
        root().join("scripts/convert_pointmae.py").to_str().unwrap(),
        ckpt.to_str().unwrap(),
        out.to_str().unwrap(),
        "--heads",
        &heads.to_string(),
    ]);
    out
}

#[test]
fn converted_official_checkpoint_matches_an_independent_forward_pass() {
    let dir = tempfile::tempdir().unwrap();
    let safetensors = converted(dir.path(), 4);
    let backbone = Backbone::load_point_mae(&safetensors, Device::Cpu).unwrap();
    assert_eq!((backbone.identity.width, backbone.identity.depth, backbone.identity.heads), (48, 2, 4));

    // Patches of a real scan.
    let cloud = read_cloud(&root().join("tests/data/scans/bunny.pcd")).unwrap();
    let points = cloud.finite_points().unwrap().points;
    let cfg = PreprocessConfig { voxel_size: 0.002, ..Default::default() };
    let patched = patch_cloud(&points, &cfg, 16, 8, None, None).unwrap();
    let tokens: Vec<f32> = backbone.tokens(&patched).unwrap().reshape([-1]).try_into().unwrap();

    let (groups, centres, expected) = (dir.path().join("g.f32"), dir.path().join("c.f32"), dir.path().join("t.f32"));
    write_f32(&groups, &patched.relative_groups());
    write_f32(&centres, &patched.centre_points().concat());
    let peer = root().join("tests/peers/pointmae_reference.py");
    python(&[
        peer.to_str().unwrap(),
        "forward",
        dir.path().join("pretrain.pth").to_str().unwrap(),
        "4",
        groups.to_str().unwrap(),
        centres.to_str().unwrap(),
        expected.to_str().unwrap(),
        "16",
        "8",
    ]);
    let expected: Vec<f32> =
        std::fs::read(&expected).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(tokens.len(), expected.len());
    let worst = tokens.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-3, "largest difference from the numpy encoder: {worst}");
}

#[test]
fn broken_checkpoints_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = converted(dir.path(), 4);
    let tensors = Tensor::read_safetensors(&good).unwrap();

    let missing = dir.path().join("missing.safetensors");
    let kept: Vec<_> = tensors
        .iter()
        .filter(|(n, _)| !n.ends_with("blocks.1.mlp.fc2.weight"))
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    Tensor::write_safetensors(&kept, &missing).unwrap();
    let err = Backbone::load_point_mae(&missing, Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("blocks.1.mlp.fc2.weight") && err.contains("missing"), "{err}");

    let reshaped = dir.path().join("reshaped.safetensors");
    let changed: Vec<_> = tensors
        .iter()
        .map(|(n, t)| {
            (n.clone(), if n.ends_with("pos_embed.0.weight") { t.narrow(0, 0, 64) } else { t.shallow_clone() })
        })
        .collect();
    Tensor::write_safetensors(&changed, &reshaped).unwrap();
    let err = Backbone::load_point_mae(&reshaped, Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("pos_embed.0.weight") && err.contains("shape"), "{err}");

    let not_a_checkpoint = dir.path().join("junk.safetensors");
    std::fs::write(&not_a_checkpoint, b"not safetensors").unwrap();
    assert!(Backbone::load_point_mae(&not_a_checkpoint, Device::Cpu).is_err());
}
