//! Centring to zero mean and scaling to unit radius (the largest distance to the centre becomes 1), with the
//! inverse so outputs (defect centroids, extents) go back to the sensor's frame and unit.

use serde::{Deserialize, Serialize};

use super::{GeometryError, Point, Result};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitSphere {
    pub centre: Point,
    /// Sensor units per normalised unit.
    pub scale: f32,
}

impl UnitSphere {
    pub fn fit(points: &[Point]) -> Result<Self> {
        if points.is_empty() {
            return Err(GeometryError::Empty);
        }
        let mut sum = [0f64; 3];
        for p in points {
            for a in 0..3 {
                sum[a] += f64::from(p[a]);
            }
        }
        let centre = sum.map(|s| (s / points.len() as f64) as f32);
        let radius = points.iter().map(|p| super::squared_distance(*p, centre)).fold(0f32, f32::max).sqrt();
        // A single point, or all points identical: nothing to scale, and dividing by 0 would make NaNs.
        let scale = if radius.is_finite() && radius > f32::MIN_POSITIVE { radius } else { 1.0 };
        Ok(Self { centre, scale })
    }

    pub fn apply(&self, p: Point) -> Point {
        [0, 1, 2].map(|a| (p[a] - self.centre[a]) / self.scale)
    }

    pub fn invert(&self, p: Point) -> Point {
        [0, 1, 2].map(|a| p[a] * self.scale + self.centre[a])
    }

    pub fn apply_all(&self, points: &[Point]) -> Vec<Point> {
        points.iter().map(|p| self.apply(*p)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_radius_and_inverse() {
        let pts = [[1.0, 2.0, 3.0], [3.0, 2.0, 3.0], [2.0, 4.0, 3.0]];
        let t = UnitSphere::fit(&pts).unwrap();
        let n = t.apply_all(&pts);
        let max = n.iter().map(|p| super::super::dot(*p, *p).sqrt()).fold(0f32, f32::max);
        assert!((max - 1.0).abs() < 1e-6);
        for (a, b) in pts.iter().zip(&n) {
            let back = t.invert(*b);
            assert!((0..3).all(|k| (back[k] - a[k]).abs() < 1e-5));
        }
    }

    #[test]
    fn duplicate_points_stay_finite() {
        let t = UnitSphere::fit(&[[5.0; 3]; 4]).unwrap();
        assert_eq!(t.scale, 1.0);
        assert_eq!(t.apply([5.0; 3]), [0.0; 3]);
    }
}
