//! Area-weighted sampling of a mesh surface: points with their surface normals, with Gaussian noise.

use rand::Rng;

use super::mesh::Mesh;
use crate::geometry::Point;
use crate::model::preprocess::standard_normal;

/// Points on a surface with the normal of the face each came from.
#[derive(Clone, Debug, Default)]
pub struct SurfaceSample {
    pub points: Vec<Point>,
    pub normals: Vec<Point>,
}

/// `count` points spread uniformly over the mesh's area, each moved along its normal by N(0, noise²).
pub fn sample_surface(mesh: &Mesh, count: usize, noise: f32, rng: &mut impl Rng) -> SurfaceSample {
    let mut cumulative = Vec::with_capacity(mesh.triangles.len());
    let mut total = 0f64;
    for t in &mesh.triangles {
        total += f64::from(Mesh::area(t));
        cumulative.push(total);
    }
    let mut out = SurfaceSample { points: Vec::with_capacity(count), normals: Vec::with_capacity(count) };
    if total <= 0.0 {
        return out;
    }
    for _ in 0..count {
        let pick = rng.r#gen::<f64>() * total;
        let t = &mesh.triangles[cumulative.partition_point(|&c| c < pick).min(mesh.triangles.len() - 1)];
        let (mut u, mut v): (f32, f32) = (rng.r#gen(), rng.r#gen());
        if u + v > 1.0 {
            (u, v) = (1.0 - u, 1.0 - v);
        }
        let n = Mesh::normal(t);
        let offset = noise * standard_normal(rng);
        out.points.push([0, 1, 2].map(|a| t[0][a] + u * (t[1][a] - t[0][a]) + v * (t[2][a] - t[0][a]) + offset * n[a]));
        out.normals.push(n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn samples_lie_on_the_surface_in_proportion_to_area() {
        // Two triangles: one 3× the area of the other.
        let mesh = Mesh {
            triangles: vec![
                [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                [[0.0, 0.0, 5.0], [3.0, 0.0, 5.0], [0.0, 1.0, 5.0]],
            ],
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let s = sample_surface(&mesh, 4000, 0.0, &mut rng);
        let upper = s.points.iter().filter(|p| p[2] == 5.0).count() as f32 / 4000.0;
        assert!((upper - 0.75).abs() < 0.03, "{upper}");
        assert!(s.points.iter().all(|p| p[2] == 0.0 || p[2] == 5.0));
    }
}
