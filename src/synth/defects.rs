//! Surface defects with an exact per-point mask: a bulge or sink is a smooth bump of height ±h and radius r,
//! pushing points along their normals (Real3D-AD's two defect types).

use crate::geometry::{Point, squared_distance};

/// Displaces points within `radius` of `centre` along their normals by `height·(1 − (d/r)²)²`; returns the mask
/// of points moved by more than `height · 0.05` (the visible part of the bump).
pub fn bump(
    points: &mut [Point],
    normals: &[Point],
    centre: Point,
    radius: f32,
    height: f32,
) -> Vec<bool> {
    let r2 = radius * radius;
    points
        .iter_mut()
        .zip(normals)
        .map(|(p, n)| {
            let d2 = squared_distance(*p, centre);
            if d2 >= r2 {
                return false;
            }
            let w = (1.0 - d2 / r2).powi(2);
            for a in 0..3 {
                p[a] += height * w * n[a];
            }
            w > 0.05
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bump_moves_only_points_inside_the_radius() {
        let mut pts: Vec<Point> = (0..21).map(|i| [i as f32 * 0.5 - 5.0, 0.0, 0.0]).collect();
        let normals = vec![[0.0, 0.0, 1.0]; 21];
        let mask = bump(&mut pts, &normals, [0.0; 3], 2.0, 1.0);
        assert_eq!(pts[10][2], 1.0);
        assert!(pts[0][2] == 0.0 && pts[20][2] == 0.0);
        assert_eq!(mask.iter().filter(|m| **m).count(), 7);
    }
}
