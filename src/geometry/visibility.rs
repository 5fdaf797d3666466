//! What one pinhole camera sees of a point set: a z-buffer of surfels (every point a small disc in its tangent
//! plane, so a surface hides what lies behind it even between its points, while its own points never hide each
//! other). A point is seen when nothing lies in front of it along its pixel's ray and its surface does not turn
//! further than the grazing limit from the ray. Training cuts single camera views out of all-round scans with it.

use super::{Point, cross, dot, normalised, squared_distance, sub};

/// A pinhole camera: where it is, what it looks at, and the angle one pixel spans.
#[derive(Clone, Copy, Debug)]
pub struct Camera {
    pub position: Point,
    pub target: Point,
    /// Radians per pixel (square pixels).
    pub pixel: f32,
}

/// A cell camera's distance from the part's centre, in part radii (about 1.8 part diagonals away): where training
/// puts its cameras, and where a view's camera is assumed to be when its cloud does not say.
pub const CELL_CAMERA_DISTANCE: f32 = 3.5;
/// A depth camera gets no return from a surface turned further than this from the ray.
pub const GRAZING_LIMIT_DEGREES: f32 = 75.0;

/// The cosine of [`GRAZING_LIMIT_DEGREES`], as [`visible`] takes it.
pub fn grazing_cos() -> f32 {
    GRAZING_LIMIT_DEGREES.to_radians().cos()
}

/// The image is at most this many pixels on a side; a finer pixel is coarsened to fit.
const MAX_SIDE: f32 = 4096.0;
/// A disc covers at most this many pixels either side of its own (a camera far finer than the points).
const MAX_REACH: i64 = 8;

/// Which `points` the camera sees. `normals` are the surface normals (either sign); `spacing` the points' spacing:
/// each point is a disc of that radius in its tangent plane, and a point up to that far behind the nearest disc
/// along its ray still counts as that surface. `grazing_cos`: the cosine of the largest angle between a seen
/// surface's normal and the ray.
pub fn visible(points: &[Point], normals: &[Point], camera: &Camera, spacing: f32, grazing_cos: f32) -> Vec<bool> {
    let forward = normalised(sub(camera.target, camera.position));
    let up = if forward[2].abs() < 0.9 { [0.0, 0.0, 1.0] } else { [1.0, 0.0, 0.0] };
    let right = normalised(cross(forward, up));
    let down = cross(forward, right);
    // Camera coordinates: (right, down, depth along the axis).
    let local = |v: Point| [dot(v, right), dot(v, down), dot(v, forward)];
    let placed: Vec<Point> = points.iter().map(|&p| local(sub(p, camera.position))).collect();
    let in_front = |p: &Point| p[2] > 0.0 && p[2].is_finite();
    let (mut lo, mut hi) = ([f32::INFINITY; 2], [f32::NEG_INFINITY; 2]);
    for p in placed.iter().filter(|p| in_front(p)) {
        let (x, y) = (p[0] / p[2], p[1] / p[2]);
        lo = [lo[0].min(x), lo[1].min(y)];
        hi = [hi[0].max(x), hi[1].max(y)];
    }
    if lo[0] > hi[0] {
        return vec![false; points.len()];
    }
    let pixel = camera.pixel.max((hi[0] - lo[0]).max(hi[1] - lo[1]) / MAX_SIDE).max(f32::MIN_POSITIVE);
    let pad = MAX_REACH;
    let (w, h) = (((hi[0] - lo[0]) / pixel) as i64 + 1 + 2 * pad, ((hi[1] - lo[1]) / pixel) as i64 + 1 + 2 * pad);
    let cell = |p: &Point| (((p[0] / p[2] - lo[0]) / pixel) as i64 + pad, ((p[1] / p[2] - lo[1]) / pixel) as i64 + pad);
    let ray =
        |px: i64, py: i64| [lo[0] + ((px - pad) as f32 + 0.5) * pixel, lo[1] + ((py - pad) as f32 + 0.5) * pixel, 1.0];
    let mut depth = vec![f32::INFINITY; (w * h) as usize];
    for (p, &n) in placed.iter().zip(normals) {
        if !in_front(p) {
            continue;
        }
        // Each pixel ray that meets the point's disc (its tangent plane within `spacing` of it) sees it there.
        let n = local(n);
        let reach = ((spacing / (pixel * p[2])).ceil() as i64).clamp(1, MAX_REACH);
        let (cx, cy) = cell(p);
        for py in cy - reach..=cy + reach {
            for px in cx - reach..=cx + reach {
                let r = ray(px, py);
                let along = dot(n, r);
                let t = if along.abs() > 1e-6 { dot(n, *p) / along } else { p[2] };
                let q = r.map(|c| c * t);
                if t > 0.0 && squared_distance(q, *p) <= spacing * spacing {
                    let slot = &mut depth[(py * w + px) as usize];
                    *slot = slot.min(t);
                }
            }
        }
    }
    placed
        .iter()
        .zip(normals)
        .map(|(p, &n)| {
            if !in_front(p) {
                return false;
            }
            let cos = dot(normalised(*p), local(n)).abs();
            let (cx, cy) = cell(p);
            // The point's own disc always covers its pixel, so the buffer there is at most its own depth.
            cos >= grazing_cos && p[2] <= depth[(cy * w + cx) as usize] + spacing
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The six faces of a cube of half-width 1, `step` apart, with outward normals.
    fn cube(step: f32) -> (Vec<Point>, Vec<Point>) {
        let k = (2.0 / step) as i32;
        let (mut points, mut normals) = (Vec::new(), Vec::new());
        for axis in 0..3 {
            for side in [-1.0f32, 1.0] {
                for i in 0..=k {
                    for j in 0..=k {
                        let (u, v) = (-1.0 + i as f32 * step, -1.0 + j as f32 * step);
                        let mut p = [0.0; 3];
                        p[axis] = side;
                        p[(axis + 1) % 3] = u;
                        p[(axis + 2) % 3] = v;
                        let mut n = [0.0; 3];
                        n[axis] = side;
                        points.push(p);
                        normals.push(n);
                    }
                }
            }
        }
        (points, normals)
    }

    #[test]
    fn a_camera_above_sees_the_top_face_and_not_the_bottom() {
        let step = 0.05;
        let (points, normals) = cube(step);
        let camera = Camera { position: [0.0, 0.0, 5.0], target: [0.0; 3], pixel: step / 5.0 };
        let seen = visible(&points, &normals, &camera, 1.5 * step, 0.26);
        for ((p, n), s) in points.iter().zip(&normals).zip(&seen) {
            if n[2] > 0.5 {
                assert!(s, "a top-face point {p:?} is hidden");
            }
            if n[2] < -0.5 {
                assert!(!s, "a bottom-face point {p:?} is seen through the cube");
            }
        }
        // The side faces are seen edge-on from straight above: dropped by the grazing limit.
        let sides = seen.iter().zip(&normals).filter(|(s, n)| **s && n[2].abs() < 0.5).count();
        assert_eq!(sides, 0);
    }

    #[test]
    fn an_oblique_camera_sees_the_faces_turned_to_it_and_a_point_set_behind_a_face_is_hidden() {
        let step = 0.05;
        let (mut points, mut normals) = cube(step);
        // A small patch inside the cube, behind the +x face as the camera sees it.
        let inner = points.len();
        for i in 0..10 {
            for j in 0..10 {
                points.push([0.5, -0.25 + 0.05 * i as f32, -0.25 + 0.05 * j as f32]);
                normals.push([1.0, 0.0, 0.0]);
            }
        }
        let camera = Camera { position: [4.0, 2.5, 3.0], target: [0.0; 3], pixel: step / 5.0 };
        let seen = visible(&points, &normals, &camera, 1.5 * step, 0.26);
        // Faces turned to the camera (outward normal towards it, clear of the grazing limit) are seen; the faces
        // turned away are not.
        let (mut front, mut front_seen) = (0, 0);
        for i in 0..inner {
            // Within two spacings of an edge, the face it meets decides: a disc reaches past its edge, and a
            // hidden face is as near as the seen one there.
            if points[i].iter().filter(|c| c.abs() > 1.0 - 2.5 * step).count() > 1 {
                continue;
            }
            let cos = dot(normalised(sub(camera.position, points[i])), normals[i]);
            if cos > 0.3 {
                front += 1;
                front_seen += usize::from(seen[i]);
            }
            if cos < 0.0 {
                assert!(!seen[i], "{:?} on a face turned away is seen", points[i]);
            }
        }
        assert!(front_seen as f32 > 0.97 * front as f32, "{front_seen} of {front} front points seen");
        assert!(seen[inner..].iter().all(|s| !s), "points inside the cube are seen");
    }
}
