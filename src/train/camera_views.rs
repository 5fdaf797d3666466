//! Inspection-like views cut from all-round training clouds. A cell camera sees one side of the part: its frames
//! end in occlusion borders and lack the far side. A detector taught only from fused or turntable scans has never
//! seen such borders and calls them defects (measured: docs/evaluation.md, "Taught from full scans"). So each
//! all-round training cloud also yields views of what one camera above the part would see, through the same
//! stages as any cloud.

use rand::Rng;

use crate::geometry::visibility::{self, CELL_CAMERA_DISTANCE, Camera, grazing_cos};
use crate::geometry::{self, Point, UnitSphere};
use crate::model::Result;
use crate::model::config::PreprocessConfig;

/// A cloud is its frame's sensor's own view when the frame's origin sees at least this share of its voxel
/// points. Measured: the benchmark's camera frames and the bundled scans 0.88–0.99 (a voxel-wide disc hides a
/// little behind each depth edge); its full scans seen from 5 radii away, in four directions, 0.04–0.51.
const SENSOR_VIEW_SHARE: f32 = 0.75;
/// Seeing a sensor's own points is a matter of occlusion only: its frames hold surfaces seen nearly edge-on.
const SENSOR_GRAZING_DEGREES: f32 = 89.0;

/// Whether no single sensor can have taken the cloud (voxel points with their normals): its frame's origin,
/// where a sensor's own frame has the sensor, lies inside the part's bounding sphere (a turntable scan), or sees
/// less than [`SENSOR_VIEW_SHARE`] of it (views fused in a frame off the part, a robot's base frame).
fn is_all_round(points: &[Point], normals: &[Point], sphere: &UnitSphere, voxel: f32) -> bool {
    let distance = geometry::dot(sphere.centre, sphere.centre).sqrt();
    if distance < sphere.scale {
        return true;
    }
    let origin = Camera { position: [0.0; 3], target: sphere.centre, pixel: voxel / distance };
    let grazing = SENSOR_GRAZING_DEGREES.to_radians().cos();
    let seen = visibility::visible(points, normals, &origin, voxel, grazing).into_iter().filter(|&s| s).count();
    (seen as f32) < SENSOR_VIEW_SHARE * points.len() as f32
}

/// The camera views to learn or calibrate from, cut from one cloud: `augment.camera_views` of them from an
/// all-round cloud, none from one a sensor took in its own frame (it already is an inspection view). A cut with
/// fewer than `min_points` points (a camera that saw little of a thin part) is left out.
pub fn cut_views(
    points: &[Point],
    cfg: &PreprocessConfig,
    min_points: usize,
    rng: &mut impl Rng,
) -> Result<Vec<Vec<Point>>> {
    if cfg.augment.camera_views == 0 {
        return Ok(Vec::new());
    }
    let grid = geometry::voxel_downsample(points, cfg.voxel_size)?;
    let (_, normals) = geometry::outward_normals(&grid.points, cfg.normal_neighbors)?;
    let sphere = UnitSphere::fit(&grid.points)?;
    if !is_all_round(&grid.points, &normals, &sphere, cfg.voxel_size) {
        return Ok(Vec::new());
    }
    let mut views = Vec::with_capacity(cfg.augment.camera_views);
    for _ in 0..cfg.augment.camera_views {
        let seen =
            visibility::visible(&grid.points, &normals, &camera(&sphere, cfg, rng), cfg.voxel_size, grazing_cos());
        let view: Vec<Point> = grid.points.iter().zip(seen).filter(|(_, s)| *s).map(|(p, _)| *p).collect();
        if view.len() >= min_points {
            views.push(view);
        } else {
            tracing::debug!(points = view.len(), "camera view too small to patch, left out");
        }
    }
    Ok(views)
}

/// A camera at a random azimuth and an elevation in `augment.camera_elevation_degrees` above the cloud frame's xy
/// plane, looking at the part's centre; its pixel spans a voxel at the part's distance (each voxel point is a
/// disc of a voxel).
fn camera(sphere: &UnitSphere, cfg: &PreprocessConfig, rng: &mut impl Rng) -> Camera {
    let [lo, hi] = cfg.augment.camera_elevation_degrees.map(f32::to_radians);
    let elevation = rng.gen_range(lo..=hi);
    let azimuth = rng.gen_range(0.0..std::f32::consts::TAU);
    let direction = [elevation.cos() * azimuth.cos(), elevation.cos() * azimuth.sin(), elevation.sin()];
    let distance = CELL_CAMERA_DISTANCE * sphere.scale;
    Camera {
        position: [0, 1, 2].map(|a| sphere.centre[a] + distance * direction[a]),
        target: sphere.centre,
        pixel: cfg.voxel_size / distance,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// A closed box surface (half-extents 30 × 20 × 10), points 1 apart, centred at `centre`.
    fn box_surface(centre: Point) -> Vec<Point> {
        let e = [30.0f32, 20.0, 10.0];
        let mut pts = Vec::new();
        for axis in 0..3 {
            let (u, v) = ((axis + 1) % 3, (axis + 2) % 3);
            for side in [-1.0f32, 1.0] {
                for i in 0..=(2.0 * e[u]) as i32 {
                    for j in 0..=(2.0 * e[v]) as i32 {
                        let mut p = centre;
                        p[axis] += side * e[axis];
                        p[u] += i as f32 - e[u];
                        p[v] += j as f32 - e[v];
                        pts.push(p);
                    }
                }
            }
        }
        pts
    }

    #[test]
    fn a_view_from_above_keeps_the_top_and_drops_the_bottom() {
        let cloud = box_surface([0.0; 3]);
        let cfg = PreprocessConfig { voxel_size: 2.0, ..Default::default() };
        // What a sensor 200 units in front of the box sees of it, in the sensor's frame: already a view.
        let far = box_surface([0.0, 0.0, 200.0]);
        let front: Vec<Point> = far.iter().copied().filter(|p| p[2] < 190.5).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        assert!(cut_views(&front, &cfg, 10, &mut rng).unwrap().is_empty());
        // The whole box in that frame (views fused in a frame off the part): all round, whatever the origin.
        assert_eq!(cut_views(&far, &cfg, 10, &mut rng).unwrap().len(), cfg.augment.camera_views);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let views = cut_views(&cloud, &cfg, 10, &mut rng).unwrap();
        assert_eq!(views.len(), cfg.augment.camera_views);
        for view in views {
            let top = view.iter().filter(|p| p[2] > 9.0).count();
            let bottom = view.iter().filter(|p| p[2] < -9.99 && p[0].abs() < 28.0 && p[1].abs() < 18.0).count();
            // The top face has 30 × 20 voxels; at 20–90° elevation the camera sees nearly all of them.
            assert!(top > 500, "{top} top points");
            assert_eq!(bottom, 0, "the bottom face is seen through the box");
            // At most the top and two of the four sides face one camera: well under the whole box.
            assert!(view.len() < geometry::voxel_downsample(&cloud, 2.0).unwrap().points.len() * 3 / 4);
        }
    }
}
