//! Geometry core: the point-set operations every stage of the detector needs — voxel downsampling that remembers
//! where each input point went, centring and unit-radius scaling, farthest-point sampling, k-nearest and radius
//! neighbourhoods (kiddo; a dense grid for the hot fixed-radius loops), groups of linked points, outlier removal,
//! PCA normals, FPFH descriptors (PCL's definition), rigid registration (ICP), patch scores spread back to
//! points and a median filter over point scores, and what a camera sees of a point set. Pure Rust on nalgebra
//! and kiddo; points are `[f32; 3]`. `device` holds the per-scan stages again as tensor code, for a detector on
//! CUDA.

pub mod components;
pub mod device;
pub mod fpfh;
pub mod grid;
pub mod median;
pub mod neighbors;
pub mod normalize;
pub mod normals;
pub mod outliers;
pub mod projection;
pub mod registration;
pub mod sampling;
pub mod shared;
pub mod visibility;
pub mod voxel;

pub use components::linked_components;
pub use fpfh::{FPFH_BINS, Fpfh, fpfh, fpfh_at, spfh_at};
pub use grid::{NearestSearch, RadiusSearch};
pub use median::median_filter;
pub use neighbors::{NeighborIndex, Neighborhood};
pub use normalize::UnitSphere;
pub use normals::{NormalOrientation, SurfaceEstimate, estimate_normals, estimate_surface, outward_normals};
pub use outliers::{Inliers, OutlierRule, drop_floating_groups, inside_robust_box};
pub use registration::{Registration, Rigid, Template, register};
pub use sampling::farthest_point_sampling;
pub use shared::{SharedIndices, SharedPoints, SharedRows};
pub use voxel::{VoxelGrid, voxel_downsample};

use thiserror::Error;

pub type Point = [f32; 3];

#[derive(Debug, Error)]
pub enum GeometryError {
    #[error("no points to work on")]
    Empty,
    #[error("{what} must be a finite number > 0, got {value}")]
    BadParameter { what: &'static str, value: f64 },
    #[error("point {index} is not finite ({point:?}); drop non-finite points first")]
    NonFinite { index: usize, point: Point },
    #[error("building the k-d tree: {0}")]
    KdTree(String),
    #[error("device geometry: {0}")]
    Tensor(String),
}

pub type Result<T, E = GeometryError> = std::result::Result<T, E>;

pub(crate) fn positive(what: &'static str, value: f32) -> Result<f32> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(GeometryError::BadParameter { what, value: value.into() })
    }
}

pub(crate) fn sub(a: Point, b: Point) -> Point {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

pub(crate) fn dot(a: Point, b: Point) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub(crate) fn cross(a: Point, b: Point) -> Point {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

/// `v` scaled to unit length (a zero vector stays near zero).
pub(crate) fn normalised(v: Point) -> Point {
    let n = dot(v, v).sqrt().max(1e-12);
    v.map(|x| x / n)
}

/// The smallest and largest coordinate on each axis (infinities for no points).
pub fn bounds<'a>(points: impl IntoIterator<Item = &'a Point>) -> (Point, Point) {
    points.into_iter().fold(([f32::INFINITY; 3], [f32::NEG_INFINITY; 3]), |(low, high), p| {
        ([0, 1, 2].map(|a| low[a].min(p[a])), [0, 1, 2].map(|a| high[a].max(p[a])))
    })
}

/// The squared distance between two axis-aligned boxes given as (low, high) corners, 0 where they overlap; a point
/// is the box (p, p).
pub(crate) fn squared_box_gap(a: &(Point, Point), b: &(Point, Point)) -> f32 {
    (0..3).map(|k| (a.0[k] - b.1[k]).max(b.0[k] - a.1[k]).max(0.0).powi(2)).sum()
}

/// `n` points spread evenly over the unit sphere (a Fibonacci lattice): the geometry tests' smooth surface.
#[cfg(test)]
pub(crate) fn unit_sphere_points(n: usize) -> Vec<Point> {
    (0..n)
        .map(|i| {
            let (t, z) = (i as f32 * 2.399_963, 1.0 - 2.0 * (i as f32 + 0.5) / n as f32);
            let r = (1.0 - z * z).sqrt();
            [r * t.cos(), r * t.sin(), z]
        })
        .collect()
}

pub(crate) fn squared_distance(a: Point, b: Point) -> f32 {
    let d = sub(a, b);
    dot(d, d)
}
