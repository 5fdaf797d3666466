//! Datasets in Real3D-AD's layout: `<class>/train/*.pcd` (good), `<class>/test/*.pcd` (good and defective),
//! `<class>/gt/<name>.txt` with `x y z label` rows. As the official loader does, a defective test cloud's points
//! come from its ground-truth file; a test cloud without one is good (all labels 0).

use std::path::{Path, PathBuf};

use crate::cloud::{CloudError, read_cloud};
use crate::geometry::Point;
use crate::model::{ModelError, Result};
use crate::train::TrainingCloud;

pub struct TestCloud {
    pub name: String,
    pub points: Vec<Point>,
    pub labels: Vec<bool>,
}

impl TestCloud {
    pub fn is_defective(&self) -> bool {
        self.labels.iter().any(|l| *l)
    }
}

pub struct ClassData {
    pub name: String,
    pub train: Vec<TrainingCloud>,
    pub test: Vec<TestCloud>,
}

impl ClassData {
    /// The same class in another unit: every coordinate times `factor` (e.g. 0.001 for millimetres → metres).
    pub fn scaled(mut self, factor: f32) -> Self {
        let scale = |points: &mut Vec<Point>| points.iter_mut().for_each(|p| *p = p.map(|c| c * factor));
        self.train.iter_mut().for_each(|c| scale(&mut c.points));
        self.test.iter_mut().for_each(|c| scale(&mut c.points));
        self
    }
}

/// Reads `x y z label` rows.
pub fn read_ground_truth(path: &Path) -> Result<(Vec<Point>, Vec<bool>)> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ModelError::Io { path: path.display().to_string(), source: e })?;
    let (mut points, mut labels) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Vec<f32> =
            line.split_whitespace().map(str::parse).collect::<std::result::Result<_, _>>().map_err(|_| {
                ModelError::Cloud(CloudError::BadData {
                    format: "ground truth",
                    problem: format!("{}: line {}: '{line}'", path.display(), n + 1),
                })
            })?;
        if v.len() != 4 {
            return Err(ModelError::Cloud(CloudError::BadData {
                format: "ground truth",
                problem: format!("{}: line {} has {} numbers, expected x y z label", path.display(), n + 1, v.len()),
            }));
        }
        points.push([v[0], v[1], v[2]]);
        labels.push(v[3] != 0.0);
    }
    Ok((points, labels))
}

pub fn write_ground_truth(path: &Path, points: &[Point], labels: &[bool]) -> std::io::Result<()> {
    let mut text = String::with_capacity(points.len() * 32);
    for (p, l) in points.iter().zip(labels) {
        text.push_str(&format!("{} {} {} {}\n", p[0], p[1], p[2], u8::from(*l)));
    }
    std::fs::write(path, text)
}

pub fn load_class(dir: &Path) -> Result<ClassData> {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("class").to_string();
    let finite = |path: &Path| -> Result<Vec<Point>> {
        Ok(read_cloud(path)?.finite_points().map_err(|e| e.in_file(path))?.points)
    };
    let train = crate::cloud::cloud_files(&dir.join("train"))?
        .iter()
        .map(|p| Ok(TrainingCloud { name: p.display().to_string(), points: finite(p)? }))
        .collect::<Result<Vec<_>>>()?;
    let mut test = Vec::new();
    for path in crate::cloud::cloud_files(&dir.join("test"))? {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let gt = dir.join("gt").join(format!("{stem}.txt"));
        let (points, labels) = if gt.is_file() {
            read_ground_truth(&gt)?
        } else {
            let points = finite(&path)?;
            let labels = vec![false; points.len()];
            (points, labels)
        };
        test.push(TestCloud { name: stem.to_string(), points, labels });
    }
    if train.is_empty() || test.is_empty() {
        return Err(ModelError::Training(format!("{}: needs clouds in both train/ and test/", dir.display())));
    }
    Ok(ClassData { name, train, test })
}

/// The class folders (those with `train/` and `test/`) under a dataset root, sorted.
pub fn class_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| ModelError::Io { path: root.display().to_string(), source: e })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("train").is_dir() && p.join("test").is_dir())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(ModelError::Training(format!(
            "{}: no class folders with train/ and test/ (Real3D-AD layout)",
            root.display()
        )));
    }
    Ok(dirs)
}
