//! A single-view industrial depth camera: a pinhole camera fixed in the cell looks at the part, which is placed
//! with a small random misalignment each time. The part is rasterised with a z-buffer (nearest surface per pixel,
//! exact ray–triangle point), then the sensor's faults are applied: depth noise and quantisation growing with
//! the square of the distance (structured light and stereo behave so), no return at grazing angles or on random
//! "specular" patches, and a clamp occluding a band of the image. The result is an organised cloud in the
//! camera's frame with NaN where there was no return — like the real frames in tests/data/scans.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::mesh::Mesh;
use crate::geometry::{Point, cross, dot, normalised, squared_distance, sub};
use crate::model::preprocess::standard_normal;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CameraConfig {
    pub width: usize,
    pub height: usize,
    /// Horizontal field of view, degrees.
    pub fov_degrees: f32,
    /// Camera distance from the part's centre, mm.
    pub distance: f32,
    /// Elevation of the camera above the part's xy plane, degrees.
    pub elevation_degrees: f32,
    /// Depth noise σ at 1 m, mm (σ grows with z²).
    pub noise_at_1m: f32,
    /// Depth quantisation step at 1 m, mm (grows with z²).
    pub quantisation_at_1m: f32,
    /// No return when the surface turns further than this from the viewing ray, degrees.
    pub grazing_limit_degrees: f32,
    /// Random surface patches with no return (specular reflections).
    pub specular_patches: usize,
    /// Radius of a specular patch, mm.
    pub specular_radius: f32,
    /// Misalignment of the part per scan: rotation (degrees) and translation (mm), uniform in ±.
    pub misalignment: [f32; 2],
    /// Share of image rows hidden by a clamp, 0 for none.
    pub occlusion: f32,
}

impl Default for CameraConfig {
    fn default() -> Self {
        Self {
            width: 640,
            height: 480,
            fov_degrees: 58.0,
            distance: 180.0,
            elevation_degrees: 50.0,
            noise_at_1m: 1.5,
            quantisation_at_1m: 2.0,
            grazing_limit_degrees: 78.0,
            specular_patches: 2,
            specular_radius: 4.0,
            misalignment: [2.0, 1.0],
            occlusion: 0.1,
        }
    }
}

/// One captured frame: `width × height` points (NaN without a return) in the camera frame, with each pixel's
/// surface normal (zero without a return).
pub struct Frame {
    pub width: usize,
    pub height: usize,
    pub points: Vec<Point>,
    pub normals: Vec<Point>,
}

type Rotation = [[f32; 3]; 3];

fn rotate(r: &Rotation, p: Point) -> Point {
    [dot(r[0], p), dot(r[1], p), dot(r[2], p)]
}

fn rotation_about(axis: usize, angle: f32) -> Rotation {
    let (s, c) = angle.sin_cos();
    match axis {
        0 => [[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]],
        1 => [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]],
        _ => [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]],
    }
}

fn compose(a: &Rotation, b: &Rotation) -> Rotation {
    let col = |j: usize| [b[0][j], b[1][j], b[2][j]];
    [0, 1, 2].map(|i| [0, 1, 2].map(|j| dot(a[i], col(j))))
}

/// The camera looks down at the elevation angle: world z up becomes the camera's −y, depth along +z.
fn view_rotation(cfg: &CameraConfig) -> Rotation {
    rotation_about(0, -(90.0 + cfg.elevation_degrees).to_radians())
}

/// A point of a frame in the part's (world) frame: where the camera's pose puts it, before the part's own
/// misalignment (a cell's fixture error stays in the scan). NaN stays NaN.
pub fn camera_to_part(cfg: &CameraConfig, p: Point) -> Point {
    camera_to_part_direction(cfg, [p[0], p[1], p[2] - cfg.distance])
}

/// A direction (a normal) of the camera's frame in the part's frame.
pub fn camera_to_part_direction(cfg: &CameraConfig, d: Point) -> Point {
    let r = view_rotation(cfg);
    [0, 1, 2].map(|j| r[0][j] * d[0] + r[1][j] * d[1] + r[2][j] * d[2])
}

/// Material cut out of the part: a ball, in the camera's frame.
#[derive(Clone, Copy, Debug)]
pub struct Ball {
    pub centre: Point,
    pub radius: f32,
}

/// Captures the (normalised, centred) part from the cell camera.
pub fn capture(mesh: &Mesh, cfg: &CameraConfig, rng: &mut impl Rng) -> Frame {
    capture_carved(mesh, cfg, rng, |_, _| None).0
}

/// Captures the part with a ball of material removed where `carve` says: it is shown the frame as the sensor
/// would see it without faults (exact surface points, NaN without a return or under the clamp) and may return
/// the ball to cut out. Inside the ball the camera then sees what the part has left: the cavity's wall, or
/// whatever lies behind where the ball cuts through. Sensor faults apply to the carved surface like any other.
pub fn capture_carved<R: Rng>(
    mesh: &Mesh,
    cfg: &CameraConfig,
    rng: &mut R,
    carve: impl FnOnce(&Frame, &mut R) -> Option<Ball>,
) -> (Frame, Option<Ball>) {
    let (w, h) = (cfg.width, cfg.height);
    let f = 0.5 * w as f32 / (0.5 * cfg.fov_degrees.to_radians()).tan();
    let (cx, cy) = (0.5 * w as f32 - 0.5, 0.5 * h as f32 - 0.5);
    // Part pose: a small random misalignment; then the world seen from a camera above the part, looking at it.
    let [rot_deg, shift] = cfg.misalignment;
    let jitter = [0, 1, 2].map(|a| rotation_about(a, rot_deg.to_radians() * rng.gen_range(-1.0f32..=1.0)));
    let part_rotation = compose(&jitter[0], &compose(&jitter[1], &jitter[2]));
    let part_shift = [0, 1, 2].map(|_| shift * rng.gen_range(-1.0f32..=1.0));
    let view = view_rotation(cfg);
    let to_camera = |p: Point| {
        let q = rotate(&part_rotation, p);
        let q = [q[0] + part_shift[0], q[1] + part_shift[1], q[2] + part_shift[2]];
        let v = rotate(&view, q);
        [v[0], v[1], v[2] + cfg.distance]
    };
    let triangles: Vec<[Point; 3]> = mesh.triangles.iter().map(|t| t.map(to_camera)).collect();
    let face = rasterise(&triangles, w, h, f, [cx, cy]);
    let specular: Vec<Point> = (0..cfg.specular_patches)
        .filter_map(|_| triangles.get(rng.gen_range(0..triangles.len().max(1))).map(|t| t[0]))
        .collect();
    let occluded_rows = (cfg.occlusion.clamp(0.0, 1.0) * h as f32) as usize;
    let occlusion_start = if occluded_rows > 0 { rng.gen_range(0..=h - occluded_rows) } else { h };
    let ray = |i: usize| [(i % w) as f32 - cx, (i / w) as f32 - cy, f].map(|v| v / f);
    // The exact surface each pixel sees, its normal facing the camera.
    let mut surface = Frame { width: w, height: h, points: vec![[f32::NAN; 3]; w * h], normals: vec![[0.0; 3]; w * h] };
    for i in 0..w * h {
        if face[i] == u32::MAX || (i / w >= occlusion_start && i / w < occlusion_start + occluded_rows) {
            continue;
        }
        if let Some((t, n)) = ray_triangle(ray(i), &triangles[face[i] as usize]) {
            surface.points[i] = ray(i).map(|v| v * t);
            surface.normals[i] = n;
        }
    }
    let ball = carve(&surface, rng);
    if let Some(ball) = ball {
        for i in 0..w * h {
            if surface.points[i][0].is_finite()
                && squared_distance(surface.points[i], ball.centre) < ball.radius.powi(2)
            {
                let seen = surface_behind_cut(ray(i), &triangles, ball);
                surface.points[i] = seen.map_or([f32::NAN; 3], |(t, _)| ray(i).map(|v| v * t));
                surface.normals[i] = seen.map_or([0.0; 3], |(_, n)| n);
            }
        }
    }
    let cos_limit = cfg.grazing_limit_degrees.to_radians().cos();
    let mut frame = Frame { width: w, height: h, points: vec![[f32::NAN; 3]; w * h], normals: vec![[0.0; 3]; w * h] };
    for i in 0..w * h {
        let (p, n) = (surface.points[i], surface.normals[i]);
        if !p[0].is_finite() {
            continue;
        }
        let ray = ray(i);
        let cos = -dot(n, ray) / dot(ray, ray).sqrt();
        if cos < cos_limit
            || specular.iter().any(|c| squared_distance(*c, p) < cfg.specular_radius * cfg.specular_radius)
        {
            continue;
        }
        let z_m = p[2] / 1000.0;
        let sigma = cfg.noise_at_1m * z_m * z_m;
        let step = cfg.quantisation_at_1m * z_m * z_m;
        let mut z = p[2] + sigma * standard_normal(rng);
        if step > 0.0 {
            z = (z / step).round() * step;
        }
        let scale = z / p[2];
        frame.points[i] = p.map(|v| v * scale);
        frame.normals[i] = n;
    }
    (frame, ball)
}

/// Z-buffer: the nearest triangle of each pixel (u32::MAX where none).
fn rasterise(triangles: &[[Point; 3]], w: usize, h: usize, f: f32, [cx, cy]: [f32; 2]) -> Vec<u32> {
    let mut depth = vec![f32::INFINITY; w * h];
    let mut face = vec![u32::MAX; w * h];
    for (k, t) in triangles.iter().enumerate() {
        if t.iter().any(|v| v[2] <= 1.0) {
            continue;
        }
        let proj = t.map(|v| [f * v[0] / v[2] + cx, f * v[1] / v[2] + cy, v[2]]);
        let (x0, x1) = (
            proj.iter().map(|p| p[0]).fold(f32::INFINITY, f32::min),
            proj.iter().map(|p| p[0]).fold(f32::NEG_INFINITY, f32::max),
        );
        let (y0, y1) = (
            proj.iter().map(|p| p[1]).fold(f32::INFINITY, f32::min),
            proj.iter().map(|p| p[1]).fold(f32::NEG_INFINITY, f32::max),
        );
        let area = (proj[1][0] - proj[0][0]) * (proj[2][1] - proj[0][1])
            - (proj[2][0] - proj[0][0]) * (proj[1][1] - proj[0][1]);
        if area.abs() < 1e-12 {
            continue;
        }
        for py in (y0.ceil().max(0.0) as usize)..=(y1.floor().min(h as f32 - 1.0).max(-1.0) as usize).min(h - 1) {
            for px in (x0.ceil().max(0.0) as usize)..=(x1.floor().min(w as f32 - 1.0).max(-1.0) as usize).min(w - 1) {
                let (fx, fy) = (px as f32, py as f32);
                let e = |a: [f32; 3], b: [f32; 3]| (b[0] - a[0]) * (fy - a[1]) - (fx - a[0]) * (b[1] - a[1]);
                let (w0, w1, w2) = (e(proj[1], proj[2]) / area, e(proj[2], proj[0]) / area, e(proj[0], proj[1]) / area);
                if w0 < 0.0 || w1 < 0.0 || w2 < 0.0 {
                    continue;
                }
                // Perspective-correct depth: interpolate 1/z.
                let z = 1.0 / (w0 / proj[0][2] + w1 / proj[1][2] + w2 / proj[2][2]);
                let i = py * w + px;
                if z < depth[i] {
                    depth[i] = z;
                    face[i] = k as u32;
                }
            }
        }
    }
    face
}

/// Where a ray from the camera (origin) meets the plane of triangle `t`: the ray parameter and the plane's
/// normal turned to face the camera. None when the ray runs along the plane.
fn ray_triangle(ray: Point, t: &[Point; 3]) -> Option<(f32, Point)> {
    let n = Mesh::normal(t);
    let denom = dot(n, ray);
    if denom.abs() < 1e-9 {
        return None;
    }
    Some((dot(n, t[0]) / denom, if denom > 0.0 { n.map(|v| -v) } else { n }))
}

/// The first surface a ray from the camera meets on the part with `ball` cut out: the ray parameter and the
/// normal facing the camera. The part is closed, so the ray is inside material after an odd number of crossings;
/// it sees a triangle it enters outside the ball, or the ball's far wall if it leaves the ball inside material.
fn surface_behind_cut(ray: Point, triangles: &[[Point; 3]], ball: Ball) -> Option<(f32, Point)> {
    let (a, b, c) = (dot(ray, ray), -2.0 * dot(ray, ball.centre), dot(ball.centre, ball.centre) - ball.radius.powi(2));
    let disc = b * b - 4.0 * a * c;
    let (t_in, t_out) = if disc > 0.0 {
        ((-b - disc.sqrt()) / (2.0 * a), (-b + disc.sqrt()) / (2.0 * a))
    } else {
        (f32::INFINITY, f32::INFINITY)
    };
    let mut crossings: Vec<(f32, Point)> = triangles
        .iter()
        .filter(|t| crosses(ray, t))
        .filter_map(|t| ray_triangle(ray, t))
        .filter(|(t, _)| *t > 0.0)
        .collect();
    crossings.sort_by(|x, y| x.0.total_cmp(&y.0));
    // A ray through an edge crosses both triangles at one point: one crossing.
    crossings.dedup_by(|x, y| (x.0 - y.0).abs() <= 1e-5 * y.0);
    let mut inside = false;
    for (t, n) in crossings {
        if inside && t > t_out && t_out > t_in {
            let wall = ray.map(|v| v * t_out);
            return Some((t_out, normalised(sub(ball.centre, wall))));
        }
        inside = !inside;
        if inside && !(t_in..=t_out).contains(&t) {
            return Some((t, n));
        }
    }
    None
}

/// Whether the ray from the origin passes through triangle `t` (its edges included).
fn crosses(ray: Point, t: &[Point; 3]) -> bool {
    // The ray is inside the triangle's cone when it is on the same side of the three planes through the
    // origin and each edge.
    let side = |a: Point, b: Point| dot(cross(a, b), ray);
    let s = [side(t[0], t[1]), side(t[1], t[2]), side(t[2], t[0])];
    s.iter().all(|&v| v >= 0.0) || s.iter().all(|&v| v <= 0.0)
}

/// The pixels with a return, with their points.
pub fn visible_points(frame: &Frame) -> impl Iterator<Item = (usize, Point)> + '_ {
    frame.points.iter().copied().enumerate().filter(|(_, p)| p[0].is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn cube() -> Mesh {
        cuboid([40.0; 3])
    }

    /// A closed box with half-extents `e`, wound outward.
    fn cuboid(e: [f32; 3]) -> Mesh {
        let v = |x: f32, y: f32, z: f32| [x * e[0], y * e[1], z * e[2]];
        let quads = [
            [v(-1., -1., -1.), v(1., -1., -1.), v(1., 1., -1.), v(-1., 1., -1.)],
            [v(-1., -1., 1.), v(-1., 1., 1.), v(1., 1., 1.), v(1., -1., 1.)],
            [v(-1., -1., -1.), v(-1., -1., 1.), v(1., -1., 1.), v(1., -1., -1.)],
            [v(-1., 1., -1.), v(1., 1., -1.), v(1., 1., 1.), v(-1., 1., 1.)],
            [v(-1., -1., -1.), v(-1., 1., -1.), v(-1., 1., 1.), v(-1., -1., 1.)],
            [v(1., -1., -1.), v(1., -1., 1.), v(1., 1., 1.), v(1., 1., -1.)],
        ];
        Mesh { triangles: quads.iter().flat_map(|q| [[q[0], q[1], q[2]], [q[0], q[2], q[3]]]).collect() }
    }

    #[test]
    fn a_frame_sees_the_front_with_holes_and_noise() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let cfg = CameraConfig { occlusion: 0.0, specular_patches: 0, ..Default::default() };
        let frame = capture(&cube(), &cfg, &mut rng);
        let valid: Vec<Point> = visible_points(&frame).map(|(_, p)| p).collect();
        assert!(valid.len() > 2000, "{}", valid.len());
        assert!(valid.len() < frame.points.len(), "the background has no return");
        // Every return lies on the cube's near side, roughly `distance` away.
        assert!(valid.iter().all(|p| p[2] > 180.0 - 80.0 && p[2] < 180.0 + 80.0));
        let occluded = capture(&cube(), &CameraConfig { occlusion: 0.5, ..cfg.clone() }, &mut rng);
        assert!(visible_points(&occluded).count() < valid.len());
    }

    #[test]
    fn a_frame_moved_to_the_part_frame_lies_on_the_part() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let cfg = CameraConfig { misalignment: [0.0, 0.0], ..exact() };
        let frame = capture(&cube(), &cfg, &mut rng);
        let on_surface = |p: Point| {
            let m = p.iter().fold(0f32, |m, c| m.max(c.abs()));
            (m - 40.0).abs() < 0.01
        };
        let mut seen_top = false;
        for ((_, p), n) in visible_points(&frame).zip(frame.normals.iter().filter(|n| n.iter().any(|c| *c != 0.0))) {
            let q = camera_to_part(&cfg, p);
            assert!(on_surface(q), "{q:?} is not on the cube");
            // The camera is above the part: it sees the top face, never the bottom one.
            assert!(q[2] > -39.9, "{q:?}");
            seen_top |= q[2] > 39.99 && camera_to_part_direction(&cfg, *n)[2] > 0.99;
        }
        assert!(seen_top, "the top face with its normal up");
    }

    /// A frame without sensor faults: exact surface points.
    fn exact() -> CameraConfig {
        CameraConfig {
            occlusion: 0.0,
            specular_patches: 0,
            noise_at_1m: 0.0,
            quantisation_at_1m: 0.0,
            grazing_limit_degrees: 89.0,
            ..Default::default()
        }
    }

    /// Carves a ball centred on the visible surface point nearest the image centre; returns the frame before
    /// and after (same pose: same seed) and the ball.
    fn carve(mesh: &Mesh, radius: f32) -> (Frame, Frame, Ball) {
        let cfg = exact();
        let before = capture(mesh, &cfg, &mut rand::rngs::StdRng::seed_from_u64(5));
        let (after, ball) = capture_carved(mesh, &cfg, &mut rand::rngs::StdRng::seed_from_u64(5), |surface, _| {
            let centre = (surface.height / 2) * surface.width + surface.width / 2;
            let (_, p) = visible_points(surface).min_by_key(|(i, _)| i.abs_diff(centre))?;
            Some(Ball { centre: p, radius })
        });
        (before, after, ball.expect("the part is in view"))
    }

    #[test]
    fn a_carved_ball_shows_its_cavity_wall_deeper_than_the_surface() {
        let (before, after, ball) = carve(&cube(), 5.0);
        let inside: Vec<usize> = visible_points(&before)
            .filter(|(_, p)| squared_distance(*p, ball.centre) < ball.radius.powi(2))
            .map(|(i, _)| i)
            .collect();
        assert!(inside.len() > 200, "the ball covers {} pixels", inside.len());
        for &i in &inside {
            let (p, q) = (before.points[i], after.points[i]);
            assert!(q[0].is_finite(), "a cavity in a solid block has a floor");
            assert!(q[2] > p[2], "the wall lies behind the cut surface: {q:?} vs {p:?}");
            let r = squared_distance(q, ball.centre).sqrt();
            assert!((r - ball.radius).abs() < 1e-2 * ball.radius, "on the ball's wall: {r}");
        }
        // Outside the ball nothing changed.
        let unchanged = (0..before.points.len()).filter(|i| !inside.contains(i));
        assert!(unchanged.into_iter().all(|i| before.points[i] == after.points[i] || before.points[i][0].is_nan()));
    }

    #[test]
    fn a_ball_through_a_thin_plate_leaves_a_hole() {
        let (before, after, ball) = carve(&cuboid([40.0, 40.0, 1.0]), 5.0);
        let near_centre = |f: &Frame| {
            visible_points(f).filter(|(_, p)| squared_distance(*p, ball.centre) < (0.5 * ball.radius).powi(2)).count()
        };
        assert!(near_centre(&before) > 50);
        assert_eq!(near_centre(&after), 0, "the camera sees through where the ball cut the plate");
    }
}
