//! Cloud I/O: the in-memory point cloud every stage works on, and its encodings — `sensor_msgs/PointCloud2`
//! byte layouts and their CDR serialization, PCD and PLY files. Pure data handling: nothing here knows about ROS or the detector.
//!
//! A [`PointCloud`] keeps every field of its source with the source's scalar type (so a scan can be written back
//! unchanged) and its organised layout (`height > 1`: row-major, NaN holes stay in their row and column).

pub mod cdr;
mod lzf;
pub mod pcd;
pub mod ply;
pub mod pointcloud2;

use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Everything that can be wrong with a cloud or its encoding. Each variant names the problem.
#[derive(Debug, Error)]
pub enum CloudError {
    #[error("the cloud has no points")]
    Empty,
    #[error("the cloud has no finite points: all {0} points have a NaN or infinite coordinate")]
    NoFinitePoints(usize),
    #[error("the cloud has no '{0}' field (x, y and z are required)")]
    MissingCoordinate(&'static str),
    #[error("field '{name}': {problem}")]
    BadField { name: String, problem: String },
    #[error("unknown PointField datatype {datatype} for field '{name}' (valid: 1..=8)")]
    UnknownDatatype { name: String, datatype: u8 },
    #[error("point cloud layout: {0}")]
    BadLayout(String),
    #[error("data is {actual} bytes but the layout needs {expected} (row_step {row_step} x height {height})")]
    DataTooShort { actual: usize, expected: usize, row_step: usize, height: usize },
    #[error(
        "data is {actual} bytes but the layout has room for {expected} (row_step {row_step} x height {height}): the layout does not describe this data"
    )]
    DataTooLong { actual: usize, expected: usize, row_step: usize, height: usize },
    #[error(
        "{bad} of {total} finite points have coordinates no sensor produces (subnormal, or beyond ±1e15): the bytes are not what the layout says (is_bigendian wrong, or garbage)"
    )]
    Implausible { bad: usize, total: usize },
    #[error("{format} header: {problem}")]
    BadHeader { format: &'static str, problem: String },
    #[error("{format} data: {problem}")]
    BadData { format: &'static str, problem: String },
    #[error("compressed data: {0}")]
    Compression(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    InFile { path: String, source: Box<CloudError> },
}

impl CloudError {
    /// Names the file the problem was found in (I/O errors already do).
    pub fn in_file(self, path: &Path) -> Self {
        match self {
            Self::Io { .. } | Self::InFile { .. } => self,
            other => Self::InFile { path: path.display().to_string(), source: Box::new(other) },
        }
    }
}

pub type Result<T, E = CloudError> = std::result::Result<T, E>;

/// The eight scalar types of `sensor_msgs/PointField` (its `datatype` numbering), also the types PCD and PLY use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ScalarType {
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    F32,
    F64,
}

impl ScalarType {
    pub const ALL: [ScalarType; 8] =
        [Self::I8, Self::U8, Self::I16, Self::U16, Self::I32, Self::U32, Self::F32, Self::F64];

    /// From `sensor_msgs/PointField.datatype` (INT8 = 1 … FLOAT64 = 8).
    pub fn from_datatype(datatype: u8) -> Option<Self> {
        Self::ALL.get(usize::from(datatype).checked_sub(1)?).copied()
    }

    pub fn datatype(self) -> u8 {
        Self::ALL.iter().position(|&t| t == self).map_or(0, |i| i as u8 + 1)
    }

    pub fn size(self) -> usize {
        match self {
            Self::I8 | Self::U8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::F64 => 8,
        }
    }

    /// Reads one little-endian value of this type (`bytes.len() == self.size()`) as f64, which holds every
    /// value of every type exactly.
    pub fn read_le(self, b: &[u8]) -> f64 {
        match self {
            Self::I8 => f64::from(b[0] as i8),
            Self::U8 => f64::from(b[0]),
            Self::I16 => f64::from(i16::from_le_bytes([b[0], b[1]])),
            Self::U16 => f64::from(u16::from_le_bytes([b[0], b[1]])),
            Self::I32 => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Self::U32 => f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Self::F32 => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Self::F64 => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        }
    }
}

/// One named per-point attribute: `count` values of one scalar type per point, stored little-endian, point after
/// point. Keeping the raw bytes (not f64) makes writes bit-exact, NaN payloads and packed RGB included.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    pub name: String,
    pub scalar: ScalarType,
    pub count: usize,
    data: Vec<u8>,
}

impl Field {
    /// `data` holds `count` little-endian values per point.
    pub fn from_le_bytes(name: impl Into<String>, scalar: ScalarType, count: usize, data: Vec<u8>) -> Result<Self> {
        let name = name.into();
        let stride = scalar.size() * count;
        if count == 0 {
            return Err(CloudError::BadField { name, problem: "count is 0".into() });
        }
        if !data.len().is_multiple_of(stride) {
            return Err(CloudError::BadField {
                name,
                problem: format!("{} bytes is not a whole number of {stride}-byte values", data.len()),
            });
        }
        Ok(Self { name, scalar, count, data })
    }

    pub fn from_f32(name: impl Into<String>, values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self { name: name.into(), scalar: ScalarType::F32, count: 1, data }
    }

    pub fn from_u8(name: impl Into<String>, values: &[u8]) -> Self {
        Self { name: name.into(), scalar: ScalarType::U8, count: 1, data: values.to_vec() }
    }

    /// Bytes one point occupies.
    pub fn stride(&self) -> usize {
        self.scalar.size() * self.count
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.stride()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The little-endian bytes of point `i` (all `count` values).
    pub fn point_bytes(&self, i: usize) -> &[u8] {
        let s = self.stride();
        &self.data[i * s..(i + 1) * s]
    }

    /// Value `element` (< count) of point `i`, as f64.
    pub fn value(&self, i: usize, element: usize) -> f64 {
        let size = self.scalar.size();
        let at = i * self.stride() + element * size;
        self.scalar.read_le(&self.data[at..at + size])
    }
}

/// A point cloud: `width × height` points (height 1 when unorganised), each with the same fields.
#[derive(Clone, Debug, PartialEq)]
pub struct PointCloud {
    pub width: usize,
    pub height: usize,
    fields: Vec<Field>,
}

impl PointCloud {
    /// Fields must all hold `width × height` points and have distinct names.
    pub fn new(width: usize, height: usize, fields: Vec<Field>) -> Result<Self> {
        let n = width.checked_mul(height).ok_or_else(|| CloudError::BadLayout("width × height overflows".into()))?;
        for (i, f) in fields.iter().enumerate() {
            if f.len() != n {
                return Err(CloudError::BadField {
                    name: f.name.clone(),
                    problem: format!("holds {} points, the cloud has {n}", f.len()),
                });
            }
            if fields[..i].iter().any(|g| g.name == f.name) {
                return Err(CloudError::BadField { name: f.name.clone(), problem: "appears twice".into() });
            }
        }
        Ok(Self { width, height, fields })
    }

    /// An unorganised cloud with FLOAT32 x, y, z.
    pub fn from_xyz(points: &[[f32; 3]]) -> Self {
        let axis = |a: usize, name: &str| Field::from_f32(name, &points.iter().map(|p| p[a]).collect::<Vec<_>>());
        Self { width: points.len(), height: 1, fields: vec![axis(0, "x"), axis(1, "y"), axis(2, "z")] }
    }

    pub fn len(&self) -> usize {
        self.width * self.height
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_organised(&self) -> bool {
        self.height > 1
    }

    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Adds a field, or replaces the one of the same name.
    pub fn set_field(&mut self, field: Field) -> Result<()> {
        if field.len() != self.len() {
            return Err(CloudError::BadField {
                name: field.name.clone(),
                problem: format!("holds {} points, the cloud has {}", field.len(), self.len()),
            });
        }
        match self.fields.iter_mut().find(|f| f.name == field.name) {
            Some(existing) => *existing = field,
            None => self.fields.push(field),
        }
        Ok(())
    }

    /// Every point's x, y, z as f32 (NaN holes included), from fields of any numeric type.
    pub fn positions(&self) -> Result<Vec<[f32; 3]>> {
        let mut all = Vec::with_capacity(self.len());
        self.for_each_position(|p| all.push(p))?;
        Ok(all)
    }

    /// Calls `visit` with every point's x, y, z as f32, in order, without collecting them first.
    fn for_each_position(&self, mut visit: impl FnMut([f32; 3])) -> Result<()> {
        let axis = |name: &'static str| self.field(name).ok_or(CloudError::MissingCoordinate(name));
        let (x, y, z) = (axis("x")?, axis("y")?, axis("z")?);
        if self.is_empty() {
            return Err(CloudError::Empty);
        }
        let fast = |f: &Field| f.scalar == ScalarType::F32 && f.count == 1;
        if fast(x) && fast(y) && fast(z) {
            fn values(f: &Field) -> impl Iterator<Item = f32> + '_ {
                f.bytes().chunks_exact(4).map(|b| f32::from_le_bytes(<[u8; 4]>::try_from(b).unwrap_or_default()))
            }
            values(x).zip(values(y)).zip(values(z)).for_each(|((x, y), z)| visit([x, y, z]));
        } else {
            (0..self.len()).for_each(|i| visit([x.value(i, 0) as f32, y.value(i, 0) as f32, z.value(i, 0) as f32]));
        }
        Ok(())
    }

    /// The points with finite coordinates, and for each the index of the point it came from.
    pub fn finite_points(&self) -> Result<FinitePoints> {
        let (mut points, mut source_index) = (Vec::with_capacity(self.len()), Vec::with_capacity(self.len()));
        let mut i = 0u32;
        self.for_each_position(|p| {
            if p.iter().all(|c| c.is_finite()) {
                points.push(p);
                source_index.push(i);
            }
            i += 1;
        })?;
        if points.is_empty() {
            return Err(CloudError::NoFinitePoints(self.len()));
        }
        Ok(FinitePoints { points, source_index, total: self.len() })
    }

    /// True when every point has finite x, y, z (`is_dense` in PointCloud2 and PCL terms).
    pub fn is_dense(&self) -> bool {
        self.positions().map(|p| p.iter().all(|q| q.iter().all(|c| c.is_finite()))).unwrap_or(false)
    }
}

/// Largest coordinate magnitude a real scan has, in any unit: beyond it a value is garbage.
const PLAUSIBLE_MAGNITUDE: f32 = 1e15;
/// Share of points with implausible coordinates above which the whole cloud is taken for garbage (below it they
/// are stray points, which outlier removal takes out).
const IMPLAUSIBLE_SHARE: f32 = 0.01;

/// Checks that finite points look like a measurement: floats read with the wrong byte order come out as a
/// spray of subnormal and astronomically large values, which a sensor never produces. A few such points are
/// left to outlier removal; more than 1 % means the bytes are misread.
pub fn check_plausible(points: &[[f32; 3]]) -> Result<()> {
    let implausible = |c: f32| c.abs() > PLAUSIBLE_MAGNITUDE || c.is_subnormal();
    let bad = points.iter().filter(|p| p.iter().any(|&c| implausible(c))).count();
    if bad as f32 > IMPLAUSIBLE_SHARE * points.len() as f32 {
        return Err(CloudError::Implausible { bad, total: points.len() });
    }
    Ok(())
}

/// The finite points of a cloud and where they came from, so per-point results can be laid back out.
#[derive(Clone, Debug)]
pub struct FinitePoints {
    pub points: Vec<[f32; 3]>,
    /// For each finite point, its index in the source cloud (row-major for organised clouds).
    pub source_index: Vec<u32>,
    /// Points in the source cloud, finite or not.
    pub total: usize,
}

impl FinitePoints {
    /// Spreads one value per finite point back over the source layout, `fill` (e.g. NaN) at the holes.
    pub fn scatter(&self, values: &[f32], fill: f32) -> Vec<f32> {
        let mut out = vec![fill; self.total];
        for (&i, &v) in self.source_index.iter().zip(values) {
            out[i as usize] = v;
        }
        out
    }
}

/// Reads a cloud from a `.pcd` or `.ply` file, chosen by extension.
pub fn read_cloud(path: &Path) -> Result<PointCloud> {
    match extension(path).as_str() {
        "pcd" => pcd::read(path),
        "ply" => ply::read(path),
        other => {
            Err(CloudError::Unsupported(format!("{}: unknown cloud extension '{other}' (pcd, ply)", path.display())))
        }
    }
}

/// The `.pcd` and `.ply` files in a folder, sorted by name.
pub fn cloud_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(extension(p).as_str(), "pcd" | "ply"))
        .collect();
    files.sort();
    Ok(files)
}

pub fn extension(path: &Path) -> String {
    path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase()
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CloudError + '_ {
    move |source| CloudError::Io { path: path.display().to_string(), source }
}
