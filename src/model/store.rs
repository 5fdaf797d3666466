//! A model on disk is a folder: `heads.safetensors` (the trained weights), `backbone.safetensors` (the frozen
//! token source, so the folder is self-contained), `conditioning.safetensors` (token statistics, memory bank,
//! score references) and `manifest.json` (configuration, thresholds, backbone
//! identity and hashes, training summary, format version, creation time). It is written under a temporary
//! name and renamed into place, so a crash never leaves half a model; loading checks everything and names
//! what is wrong.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Device;

use crate::geometry::device::Compute;

use super::backbone::{Backbone, BackboneIdentity};
use super::conditioning::Conditioning;
use super::config::DetectorConfig;
use super::{Detector, Heads, LayerInit, ModelError, Result, Thresholds, copy_into, tensors_from_bytes};

/// 2: token conditioning (`conditioning.safetensors`) and data-derived voxel sizes.
pub const FORMAT_VERSION: u32 = 3;
const MANIFEST: &str = "manifest.json";
const HEADS: &str = "heads.safetensors";
const BACKBONE: &str = "backbone.safetensors";
const CONDITIONING: &str = "conditioning.safetensors";

/// What the training saw; recorded for the people who will wonder later.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    pub clouds_trained: usize,
    pub clouds_held_out: usize,
    pub views_per_cloud: usize,
    pub epochs: usize,
    pub final_loss: f32,
    pub seconds: f64,
    /// Where the clouds came from (files or bag topics), at most a few.
    pub sources: Vec<String>,
    /// Held-out good clouds' scores, from which the thresholds were set.
    pub held_out_cloud_scores: Vec<f32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub model_id: String,
    pub created_unix: u64,
    pub created_utc: String,
    pub config: DetectorConfig,
    pub thresholds: Thresholds,
    pub backbone: BackboneIdentity,
    pub backbone_sha256: String,
    pub heads_sha256: String,
    pub conditioning_sha256: String,
    pub training: TrainingSummary,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_file(path: &Path) -> Result<String> {
    Ok(sha256_hex(&std::fs::read(path).map_err(io(path))?))
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (civil-from-days, proleptic Gregorian).
fn utc_string(unix: u64) -> String {
    let (days, secs) = ((unix / 86_400) as i64, unix % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io { path: path.display().to_string(), source }
}

/// Writes the detector to `dir` atomically; returns its manifest. An existing model at `dir` is replaced only
/// once the new one is complete.
pub fn save(detector: &Detector, dir: &Path, name: &str, training: TrainingSummary) -> Result<Manifest> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let leaf = dir.file_name().and_then(|n| n.to_str()).unwrap_or("model");
    let staging = parent.join(format!(".{leaf}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let written = (|| -> Result<Manifest> {
        detector.backbone.save(&staging.join(BACKBONE))?;
        detector
            .heads
            .vs
            .save(staging.join(HEADS))
            .map_err(|e| ModelError::Model { path: staging.display().to_string(), problem: e.to_string() })?;
        detector.conditioning.save(&staging.join(CONDITIONING))?;
        let created_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let heads_sha256 = sha256_file(&staging.join(HEADS))?;
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            model_id: format!("{name}-{}", &heads_sha256[..8]),
            created_unix,
            created_utc: utc_string(created_unix),
            config: detector.config.clone(),
            thresholds: detector.thresholds,
            backbone: detector.backbone.identity.clone(),
            backbone_sha256: sha256_file(&staging.join(BACKBONE))?,
            heads_sha256,
            conditioning_sha256: sha256_file(&staging.join(CONDITIONING))?,
            training,
        };
        let text = serde_json::to_string_pretty(&manifest)
            .map_err(|e| ModelError::Model { path: MANIFEST.into(), problem: e.to_string() })?;
        std::fs::write(staging.join(MANIFEST), text).map_err(io(&staging))?;
        Ok(manifest)
    })();
    let manifest = match written {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    // Swap in: the old model (if any) moves aside first, so at every moment `dir` is absent or complete.
    let retired = parent.join(format!(".{leaf}.old-{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &retired).map_err(io(dir))?;
    }
    std::fs::rename(&staging, dir).map_err(io(dir))?;
    let _ = std::fs::remove_dir_all(&retired);
    Ok(manifest)
}

/// The folder a new model named `name` goes to under `models_dir`: `<name>` when free, else the first free
/// `<name>-2`, `<name>-3`, …, so training never replaces a model (least of all the active one).
pub fn free_model_dir(models_dir: &Path, name: &str) -> PathBuf {
    let first = models_dir.join(name);
    if !first.exists() {
        return first;
    }
    (2u32..).map(|k| models_dir.join(format!("{name}-{k}"))).find(|dir| !dir.exists()).unwrap_or(first)
}

/// Removes what a killed save left behind in `models_dir` (`.name.partial-PID`, `.name.old-PID` of processes
/// no longer running); returns the paths removed. A model folder itself is never touched.
pub fn remove_staging_leftovers(models_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(models_dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = staging_owner(&name) else { continue };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if !alive && std::fs::remove_dir_all(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed.sort();
    removed
}

/// The process id in a staging folder's name (`.name.partial-PID` or `.name.old-PID`).
fn staging_owner(file_name: &str) -> Option<u32> {
    let rest = file_name.strip_prefix('.')?;
    let (_, suffix) = rest.rsplit_once('.')?;
    let pid = suffix.strip_prefix("partial-").or_else(|| suffix.strip_prefix("old-"))?;
    pid.parse().ok()
}

pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let bad = |problem: String| ModelError::Model { path: dir.display().to_string(), problem };
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot read {MANIFEST}: {e}")))?;
    let mut value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("{MANIFEST} is not JSON: {e}")))?;
    match value.get("format_version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(FORMAT_VERSION) => {}
        Some(1) => {
            return Err(bad(format!(
                "format version 1 has no token conditioning statistics ({CONDITIONING}); retrain the model with this version"
            )));
        }
        Some(2) => {
            return Err(bad("format version 2 predates the template-surface numbers of the tokens (105 wide, not \
                 102); retrain the model with this version"
                .into()));
        }
        Some(v) => {
            return Err(bad(format!("format version {v} is not supported (this build reads {FORMAT_VERSION})")));
        }
        None => return Err(bad(format!("{MANIFEST} has no format_version"))),
    }
    // Models from before the capture input were trained without it (their heads are one input narrower).
    if let Some(preprocess) = value.pointer_mut("/config/preprocess").and_then(|p| p.as_object_mut()) {
        preprocess.entry("capture_input").or_insert(serde_json::Value::Bool(false));
    }
    serde_json::from_value(value).map_err(|e| bad(format!("{MANIFEST}: {e}")))
}

/// Loads a model folder, checking hashes, backbone identity, tensor names and shapes.
pub fn load(dir: &Path, device: Device) -> Result<(Detector, Manifest)> {
    let bad = |problem: String| ModelError::Model { path: dir.display().to_string(), problem };
    let manifest = read_manifest(dir)?;
    manifest.config.validate().map_err(|e| bad(format!("manifest configuration: {e}")))?;
    // Each file is read once: hashed, then decoded from the same bytes.
    let mut contents = Vec::new();
    let files = [
        (BACKBONE, &manifest.backbone_sha256),
        (HEADS, &manifest.heads_sha256),
        (CONDITIONING, &manifest.conditioning_sha256),
    ];
    for (file, expected) in files {
        let bytes = std::fs::read(dir.join(file)).map_err(|e| match (file, e.kind()) {
            (CONDITIONING, std::io::ErrorKind::NotFound) => {
                bad(format!("{file} is missing: the model has no token conditioning statistics; retrain it"))
            }
            _ => bad(format!("{file}: {e}")),
        })?;
        if &sha256_hex(&bytes) != expected {
            return Err(bad(format!("{file} does not match the manifest's hash (changed or corrupt)")));
        }
        contents.push(bytes);
    }
    let backbone = Backbone::load_saved(&manifest.backbone, &contents[0], &dir.join(BACKBONE), device)
        .map_err(|e| bad(format!("backbone: {e}")))?;
    let mut heads = Heads::new(&manifest.config, backbone.width(), device, LayerInit::Zeros)?;
    let tensors = tensors_from_bytes(&contents[1]).map_err(|e| bad(format!("{HEADS}: {e}")))?;
    copy_into(&mut heads.vs, &tensors).map_err(|e| bad(format!("{HEADS}: {e}")))?;
    if manifest.config.preprocess.voxel_size <= 0.0 {
        return Err(bad("the manifest's configuration has no voxel size (training derives one)".into()));
    }
    let conditioning = Conditioning::from_bytes(&contents[2], backbone.width(), &manifest.config.preprocess, device)
        .map_err(|e| bad(format!("{CONDITIONING}: {e}")))?;
    let detector = Detector {
        config: manifest.config.clone(),
        backbone,
        conditioning,
        heads,
        thresholds: manifest.thresholds,
        device,
        compute: Compute::Host,
    };
    Ok((detector, manifest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_strings() {
        assert_eq!(utc_string(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_string(1_796_000_000), "2026-11-30T00:53:20Z");
        assert_eq!(utc_string(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn new_models_never_take_an_existing_folder_and_only_dead_staging_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(free_model_dir(dir.path(), "part"), dir.path().join("part"));
        std::fs::create_dir(dir.path().join("part")).unwrap();
        std::fs::create_dir(dir.path().join("part-2")).unwrap();
        assert_eq!(free_model_dir(dir.path(), "part"), dir.path().join("part-3"));
        // PID 4294967 is above Linux's pid_max: never running. Our own staging is in use.
        let dead = [".part.partial-4294967", ".part.old-4294967"];
        let alive = format!(".part.partial-{}", std::process::id());
        for name in dead.iter().copied().chain([alive.as_str(), ".hidden", "part.partial-x"]) {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        let removed = remove_staging_leftovers(dir.path());
        assert_eq!(removed, vec![dir.path().join(dead[1]), dir.path().join(dead[0])]);
        for kept in ["part", "part-2", alive.as_str(), ".hidden", "part.partial-x"] {
            assert!(dir.path().join(kept).exists(), "{kept} kept");
        }
    }
}
