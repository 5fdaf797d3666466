//! Surface defects with an exact per-point mask. Each pushes points along their surface normals (or removes
//! them) with a smooth profile; the mask marks the points visibly changed. Kinds: bulge and sink (Real3D-AD's
//! two), dent (shallow, flat-bottomed), pit (small, deep, steep-walled), scratch (a long thin groove), burr (a
//! ridge along a sharp edge of the part) and missing chunk (material gone: points removed, the rim labelled; a
//! camera frame cuts the material out of the mesh instead, see `camera::capture_carved`).

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::geometry::{Point, cross, dot, normalised, squared_distance, sub};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefectKind {
    Bulge,
    Sink,
    Dent,
    Pit,
    Scratch,
    Burr,
    MissingChunk,
}

impl DefectKind {
    pub const ALL: [DefectKind; 7] =
        [Self::Bulge, Self::Sink, Self::Scratch, Self::Pit, Self::Burr, Self::Dent, Self::MissingChunk];

    pub fn name(self) -> &'static str {
        match self {
            Self::Bulge => "bulge",
            Self::Sink => "sink",
            Self::Dent => "dent",
            Self::Pit => "pit",
            Self::Scratch => "scratch",
            Self::Burr => "burr",
            Self::MissingChunk => "missing",
        }
    }
}

/// Displaces points within `radius` of `centre` along their normals by `height·(1 − (d/r)²)²`; returns the mask
/// of points moved by more than `height · 0.05` (the visible part of the bump). Points without a return (NaN)
/// are never inside.
pub fn bump(points: &mut [Point], normals: &[Point], centre: Point, radius: f32, height: f32) -> Vec<bool> {
    displace(points, normals, height, |p| {
        let d2 = squared_distance(p, centre) / (radius * radius);
        if d2 < 1.0 { (1.0 - d2).powi(2) } else { 0.0 }
    })
}

/// Moves each point by `amount · profile(point)` along its normal; the mask is where the profile exceeds 5 %.
fn displace(points: &mut [Point], normals: &[Point], amount: f32, profile: impl Fn(Point) -> f32) -> Vec<bool> {
    points
        .iter_mut()
        .zip(normals)
        .map(|(p, n)| {
            if !p[0].is_finite() {
                return false;
            }
            let w = profile(*p);
            if w <= 0.0 {
                return false;
            }
            for a in 0..3 {
                p[a] += amount * w * n[a];
            }
            w > 0.05
        })
        .collect()
}

fn smoothstep(edge0: f32, edge1: f32, x: f32) -> f32 {
    let t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Distance from `p` to the segment a–b.
fn segment_distance(p: Point, a: Point, b: Point) -> f32 {
    let ab = sub(b, a);
    let t = (dot(sub(p, a), ab) / dot(ab, ab).max(1e-12)).clamp(0.0, 1.0);
    squared_distance(p, [a[0] + t * ab[0], a[1] + t * ab[1], a[2] + t * ab[2]]).sqrt()
}

/// A shallow depression with a flat bottom: full depth inside 60 % of the radius, easing out to the rim.
pub fn dent(points: &mut [Point], normals: &[Point], centre: Point, radius: f32, depth: f32) -> Vec<bool> {
    displace(points, normals, -depth, |p| 1.0 - smoothstep(0.6 * radius, radius, squared_distance(p, centre).sqrt()))
}

/// A small, deep hole with steep walls.
pub fn pit(points: &mut [Point], normals: &[Point], centre: Point, radius: f32, depth: f32) -> Vec<bool> {
    displace(points, normals, -depth, |p| 1.0 - smoothstep(0.85 * radius, radius, squared_distance(p, centre).sqrt()))
}

/// A groove of `width` along the segment a–b (negative `depth` makes a ridge: a burr).
pub fn groove(points: &mut [Point], normals: &[Point], a: Point, b: Point, width: f32, depth: f32) -> Vec<bool> {
    displace(points, normals, -depth, |p| {
        let d = segment_distance(p, a, b) / width;
        if d < 1.0 { (1.0 - d * d).powi(2) } else { 0.0 }
    })
}

/// Material gone within `radius` of `centre`: those points become NaN (removed); the points left within
/// `rim` beyond the hole are labelled (a detector can only see the edge of what is missing).
pub fn missing_chunk(points: &mut [Point], centre: Point, radius: f32, rim: f32) -> Vec<bool> {
    points
        .iter_mut()
        .map(|p| {
            if !p[0].is_finite() {
                return false;
            }
            let d = squared_distance(*p, centre).sqrt();
            if d < radius {
                *p = [f32::NAN; 3];
                false
            } else {
                d < radius + rim
            }
        })
        .collect()
}

/// A random direction perpendicular to `n` (a scratch's course along the surface).
pub fn tangent(n: Point, rng: &mut impl Rng) -> Point {
    let helper = if n[0].abs() < 0.9 { [1.0, 0.0, 0.0] } else { [0.0, 1.0, 0.0] };
    let u = cross(n, helper);
    let v = cross(n, u);
    let angle: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
    normalised([0, 1, 2].map(|k| u[k] * angle.cos() + v[k] * angle.sin()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane() -> (Vec<Point>, Vec<Point>) {
        let pts: Vec<Point> =
            (0..41 * 41).map(|i| [(i % 41) as f32 * 0.5 - 10.0, (i / 41) as f32 * 0.5 - 10.0, 0.0]).collect();
        let n = vec![[0.0, 0.0, 1.0]; pts.len()];
        (pts, n)
    }

    #[test]
    fn bump_moves_only_points_inside_the_radius() {
        let mut pts: Vec<Point> = (0..21).map(|i| [i as f32 * 0.5 - 5.0, 0.0, 0.0]).collect();
        let normals = vec![[0.0, 0.0, 1.0]; 21];
        let mask = bump(&mut pts, &normals, [0.0; 3], 2.0, 1.0);
        assert_eq!(pts[10][2], 1.0);
        assert!(pts[0][2] == 0.0 && pts[20][2] == 0.0);
        assert_eq!(mask.iter().filter(|m| **m).count(), 7);
    }

    #[test]
    fn every_kind_changes_only_what_it_labels() {
        let (base, n) = plane();
        type Apply<'a> = Box<dyn Fn(&mut Vec<Point>) -> Vec<bool> + 'a>;
        let cases: Vec<(&str, Apply)> = vec![
            ("dent", Box::new(|p| dent(p, &n, [0.0; 3], 4.0, 1.0))),
            ("pit", Box::new(|p| pit(p, &n, [0.0; 3], 1.5, 2.0))),
            ("scratch", Box::new(|p| groove(p, &n, [-6.0, 0.0, 0.0], [6.0, 0.0, 0.0], 0.8, 0.5))),
            ("burr", Box::new(|p| groove(p, &n, [-6.0, 0.0, 0.0], [6.0, 0.0, 0.0], 0.8, -0.5))),
        ];
        for (name, apply) in cases {
            let mut pts = base.clone();
            let mask = apply(&mut pts);
            let changed: Vec<bool> = pts.iter().zip(&base).map(|(a, b)| (a[2] - b[2]).abs() > 1e-6).collect();
            let labelled = mask.iter().filter(|m| **m).count();
            assert!(labelled > 5, "{name}: {labelled}");
            assert!(mask.iter().zip(&changed).all(|(m, c)| !m || *c), "{name}: a labelled point did not move");
        }
        let mut pts = base.clone();
        let mask = missing_chunk(&mut pts, [0.0; 3], 3.0, 1.0);
        assert!(pts.iter().filter(|p| p[0].is_nan()).count() > 100);
        assert!(mask.iter().zip(&pts).all(|(m, p)| !m || p[0].is_finite()));
        assert!(mask.iter().any(|m| *m));
        let t = tangent([0.0, 0.0, 1.0], &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1));
        assert!(t[2].abs() < 1e-6 && (dot(t, t) - 1.0).abs() < 1e-5);
    }
}
