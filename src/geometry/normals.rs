//! Surface normals by PCA of each point's neighbourhood (the eigenvector of the smallest eigenvalue of the
//! neighbourhood's covariance), flipped to a consistent side.

use nalgebra::{Matrix3, Vector3};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::neighbors::{NeighborIndex, Neighborhood};
use super::{NearestSearch, Point, dot, sub};

/// Which way normals point. PCA leaves the sign arbitrary; descriptors such as FPFH need it consistent.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormalOrientation {
    /// Towards the sensor (depth cameras: the origin of the camera frame). What PCL does by default.
    TowardsViewpoint(Point),
    /// Away from the cloud's centroid: right for convex-ish parts scanned all round.
    AwayFromCentroid,
}

/// Per-point results of the neighbourhood PCA.
#[derive(Clone, Debug, Default)]
pub struct SurfaceEstimate {
    /// Unit normals; `[0, 0, 0]` where the neighbourhood has fewer than 3 points.
    pub normals: Vec<Point>,
    /// Surface variation λ₀ / (λ₀ + λ₁ + λ₂): 0 on a plane, up to 1/3 on isotropic scatter (edges, noise).
    pub variation: Vec<f32>,
}

/// One unit normal per point; `[0, 0, 0]` where the neighbourhood has fewer than 3 points.
pub fn estimate_normals(
    points: &[Point],
    index: &NeighborIndex,
    neighborhood: Neighborhood,
    orientation: NormalOrientation,
) -> Vec<Point> {
    estimate_surface(points, index, neighborhood, orientation).normals
}

/// A point set's k-d tree and its normals over the `k` nearest, away from the centroid: what a cloud without a
/// sensor (a template, a fused or all-round scan, a baseline's bank) is described with.
pub fn outward_normals(points: &[Point], k: usize) -> super::Result<(NeighborIndex, Vec<Point>)> {
    let index = NeighborIndex::new(points)?;
    let normals = estimate_normals(points, &index, Neighborhood::Knn(k), NormalOrientation::AwayFromCentroid);
    Ok((index, normals))
}

pub fn estimate_surface(
    points: &[Point],
    index: &NeighborIndex,
    neighborhood: Neighborhood,
    orientation: NormalOrientation,
) -> SurfaceEstimate {
    let centroid = {
        let n = points.len().max(1) as f32;
        let s = points.iter().fold([0f32; 3], |a, p| [a[0] + p[0], a[1] + p[1], a[2] + p[2]]);
        s.map(|c| c / n)
    };
    let nearest = match neighborhood {
        Neighborhood::Knn(k) | Neighborhood::Hybrid { max_nn: k, .. } => Some(NearestSearch::new(points, index, k)),
        Neighborhood::Radius(_) => None,
    };
    let (normals, variation) = points
        .par_iter()
        .map_init(Vec::new, |neighbors, p| {
            match &nearest {
                Some(search) => search.neighborhood_into(p, neighborhood, neighbors),
                None => *neighbors = index.neighborhood(p, neighborhood),
            }
            match pca(neighbors.iter().map(|n| points[n.index as usize])) {
                Some((normal, variation)) => {
                    let towards = match orientation {
                        NormalOrientation::TowardsViewpoint(v) => sub(v, *p),
                        NormalOrientation::AwayFromCentroid => sub(*p, centroid),
                    };
                    (if dot(normal, towards) < 0.0 { normal.map(|c| -c) } else { normal }, variation)
                }
                None => ([0.0; 3], 0.0),
            }
        })
        .unzip();
    SurfaceEstimate { normals, variation }
}

/// The direction of least variance of a point set (≥ 3 points) and its surface variation, computed in f64.
fn pca(points: impl Iterator<Item = Point> + Clone) -> Option<(Point, f32)> {
    let mut n = 0usize;
    let mut mean = Vector3::<f64>::zeros();
    for p in points.clone() {
        mean += Vector3::new(p[0].into(), p[1].into(), p[2].into());
        n += 1;
    }
    if n < 3 {
        return None;
    }
    mean /= n as f64;
    let mut cov = Matrix3::<f64>::zeros();
    for p in points {
        let d = Vector3::<f64>::new(p[0].into(), p[1].into(), p[2].into()) - mean;
        cov += d * d.transpose();
    }
    let eigen = cov.symmetric_eigen();
    let smallest = eigen.eigenvalues.imin();
    let v = eigen.eigenvectors.column(smallest);
    let norm = v.norm();
    if !(norm.is_finite() && norm > 0.0) {
        return None;
    }
    let total = eigen.eigenvalues.sum();
    let variation = if total > 0.0 { (eigen.eigenvalues[smallest].max(0.0) / total) as f32 } else { 0.0 };
    Some(([(v[0] / norm) as f32, (v[1] / norm) as f32, (v[2] / norm) as f32], variation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plane_normals_face_the_viewpoint() {
        let pts: Vec<Point> = (0..400).map(|i| [(i % 20) as f32 * 0.1, (i / 20) as f32 * 0.1, 2.0]).collect();
        let index = NeighborIndex::new(&pts).unwrap();
        let s = estimate_surface(&pts, &index, Neighborhood::Knn(10), NormalOrientation::TowardsViewpoint([0.0; 3]));
        for (n, v) in s.normals.iter().zip(&s.variation) {
            assert!((n[2] + 1.0).abs() < 1e-5, "{n:?}");
            assert!(*v < 1e-6, "a plane has no surface variation");
        }
    }

    #[test]
    fn sphere_normals_point_outwards() {
        let pts = super::super::unit_sphere_points(2000);
        let index = NeighborIndex::new(&pts).unwrap();
        let normals = estimate_normals(&pts, &index, Neighborhood::Knn(12), NormalOrientation::AwayFromCentroid);
        for (p, n) in pts.iter().zip(&normals) {
            assert!(dot(*p, *n) > 0.99, "{p:?} {n:?}");
        }
    }

    #[test]
    fn too_few_neighbours_give_a_zero_normal() {
        let pts = [[0.0; 3], [1.0, 0.0, 0.0]];
        let index = NeighborIndex::new(&pts).unwrap();
        let normals = estimate_normals(&pts, &index, Neighborhood::Knn(5), NormalOrientation::AwayFromCentroid);
        assert_eq!(normals, vec![[0.0; 3]; 2]);
    }
}
