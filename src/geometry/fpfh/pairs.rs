//! The pair features of FPFH: for a point and a neighbour, PCL's Darboux-frame angles (θ, α, φ) and their
//! histogram slots. [`pair_features`] and [`slots`] are the definition; [`PairLanes`] computes one point's pairs
//! with a list of neighbours column by column, the same operations in the same order (so the same bits), in a
//! loop the compiler vectorises: four pairs at a time where the CPU has AVX2, found at run time.

use std::f64::consts::PI;

use super::BINS_PER_ANGLE;
use crate::geometry::Point;

fn vector(p: Point) -> [f64; 3] {
    p.map(f64::from)
}

fn sub64(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn dot64(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross64(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

/// PCL's `computePairFeatures`: (θ, α, φ) of the pair (θ as the arguments of its `atan2`, which [`theta_bin`]
/// bins without computing it in almost every case), the source chosen so the frame is the same whichever point
/// comes first, and whether that choice was a tie (the same |cosine| at both ends: then each end is its own
/// source and the two orders differ; otherwise they agree bit for bit, negating `d` being exact). `None` for
/// coincident points, a degenerate frame, or a missing (zero) normal, where PCL would have a NaN normal.
fn pair_features(p1: Point, n1: Point, p2: Point, n2: Point) -> Option<(PairAngles, bool)> {
    if n1 == [0.0; 3] || n2 == [0.0; 3] {
        return None;
    }
    let (p1, p2, n1, n2) = (vector(p1), vector(p2), vector(n1), vector(n2));
    let mut d = sub64(p2, p1);
    let length = dot64(d, d).sqrt();
    if length == 0.0 {
        return None;
    }
    let angle1 = dot64(n1, d) / length;
    let angle2 = dot64(n2, d) / length;
    let tie = angle1.abs() == angle2.abs();
    // PCL compares acos(|angle|); acos falls, so the larger angle is the smaller |cosine|.
    let (u, target, phi) = if angle1.abs() < angle2.abs() {
        d = d.map(|c| -c);
        (n2, n1, -angle2)
    } else {
        (n1, n2, angle1)
    };
    let v = cross64(d, u);
    let v_norm = dot64(v, v).sqrt();
    if v_norm == 0.0 {
        return None;
    }
    let v = v.map(|c| c / v_norm);
    let w = cross64(u, v);
    let alpha = dot64(v, target);
    Some((PairAngles { theta_y: dot64(w, target), theta_x: dot64(u, target), alpha, phi }, tie))
}

/// A pair's angles: θ = atan2(`theta_y`, `theta_x`), α and φ.
#[derive(Clone, Copy, Debug, PartialEq)]
struct PairAngles {
    theta_y: f64,
    theta_x: f64,
    alpha: f64,
    phi: f64,
}

/// atan(a) / a as a polynomial in a² on [0, 1], fitted (least squares) to within 3e-7 rad of atan.
const ATAN_COEFFICIENTS: [f64; 7] = [
    0.999_996_046_845_064_9,
    -0.333_172_656_374_513_2,
    0.198_075_553_524_114_6,
    -0.132_341_671_585_224_6,
    0.079_663_256_922_708_4,
    -0.033_654_662_084_918_12,
    0.006_832_589_977_999_974,
];

/// atan2 within 3e-7 rad by a polynomial, no libm call (NaN where either argument is).
fn approximate_atan2(y: f64, x: f64) -> f64 {
    if y.is_nan() || x.is_nan() {
        return f64::NAN; // `min` and `max` below would drop it
    }
    let (ay, ax) = (y.abs(), x.abs());
    let a = ay.min(ax) / ay.max(ax);
    let s = a * a;
    let mut r = a * ATAN_COEFFICIENTS.iter().rev().fold(0.0, |acc, c| acc * s + c);
    if ay > ax {
        r = std::f64::consts::FRAC_PI_2 - r;
    }
    if x < 0.0 {
        r = PI - r;
    }
    if y < 0.0 { -r } else { r }
}

/// How close (in bins) to a bin edge the approximate angle may fall before libm's atan2 decides: far above the
/// approximation's 5e-7 bins.
const THETA_GUARD_BINS: f64 = 1e-5;

/// θ's bin, exactly as binning libm's atan2 gives it: the approximation decides wherever it lies clear of a bin
/// edge (all but about one pair in 10⁴), libm's atan2 elsewhere (edges, ±π, NaN).
fn theta_bin(y: f64, x: f64) -> usize {
    const BINS_PER_RADIAN: f64 = BINS_PER_ANGLE as f64 / (2.0 * PI);
    let scaled = (approximate_atan2(y, x) + PI) * BINS_PER_RADIAN;
    if scaled > 0.0 && scaled < BINS_PER_ANGLE as f64 {
        // Truncation is the floor here (libm's floor is a call on baseline x86-64).
        let whole = scaled as usize;
        let fraction = scaled - whole as f64;
        if fraction > THETA_GUARD_BINS && fraction < 1.0 - THETA_GUARD_BINS {
            return whole;
        }
    }
    bin(y.atan2(x), -PI, PI)
}

fn bin(value: f64, low: f64, high: f64) -> usize {
    // Truncation is the floor once negatives are 0 (and a call to libm's floor costs more than the rest).
    let b = (BINS_PER_ANGLE as f64 * (value - low) / (high - low)).max(0.0);
    (b as usize).min(BINS_PER_ANGLE - 1)
}

/// The three histogram slots (θ, α, φ) of a pair's angles.
fn slots(angles: PairAngles) -> [usize; 3] {
    [
        theta_bin(angles.theta_y, angles.theta_x),
        BINS_PER_ANGLE + bin(angles.alpha, -1.0, 1.0),
        2 * BINS_PER_ANGLE + bin(angles.phi, -1.0, 1.0),
    ]
}

/// A pair's slots by the definition, and whether the frame's source was a tie: what [`PairLanes`] gives.
pub(super) fn pair_slots(p1: Point, n1: Point, p2: Point, n2: Point) -> Option<([usize; 3], bool)> {
    pair_features(p1, n1, p2, n2).map(|(angles, tie)| (slots(angles), tie))
}

/// Flags of a pair's packed word in [`PairLanes`], whose low three bytes hold its bins (θ, α, φ).
const VALID: u32 = 1 << 24;
const TIE: u32 = 1 << 25;
/// θ lies too near a bin edge for the approximation: its bin is [`theta_bin`]'s (libm's).
const THETA_BY_LIBM: u32 = 1 << 26;

/// One point's pairs with its neighbours, as packed words: a pair's slots ([`slots`]) and whether the frame's
/// source was a tie, `None` where [`pair_features`] gives none. The columns are kept from point to point.
#[derive(Default)]
pub(super) struct PairLanes {
    /// d = p2 − p1 and the neighbour's normal, x, y, z each.
    offsets: [Vec<f64>; 3],
    normals: [Vec<f64>; 3],
    words: Vec<u32>,
    /// The pairs' θ arguments, for the rare pairs that libm bins.
    theta_arguments: Vec<(f64, f64)>,
}

impl PairLanes {
    /// The pairs of point `i` with each of `others`: per other, its slots and whether it was a tie (then the
    /// other end, as source, may bin the pair differently), or `None`.
    pub(super) fn pairs(
        &mut self,
        points: &[Point],
        normals: &[Point],
        i: u32,
        others: &[u32],
    ) -> impl Iterator<Item = Option<([usize; 3], bool)>> + '_ {
        let (p1, n1) = (vector(points[i as usize]), normals[i as usize]);
        let m = others.len();
        self.words.clear();
        self.words.resize(m, 0);
        self.theta_arguments.clear();
        self.theta_arguments.resize(m, (0.0, 0.0));
        // A zero normal (where PCL's would be NaN) has no pairs: every word stays invalid.
        if n1 != [0.0; 3] {
            for axis in 0..3 {
                self.offsets[axis].clear();
                self.offsets[axis].extend(others.iter().map(|&j| f64::from(points[j as usize][axis]) - p1[axis]));
                self.normals[axis].clear();
                self.normals[axis].extend(others.iter().map(|&j| f64::from(normals[j as usize][axis])));
            }
            pair_words(vector(n1), &self.offsets, &self.normals, &mut self.words, &mut self.theta_arguments);
        }
        self.words.iter().zip(&self.theta_arguments).map(|(&word, &(y, x))| {
            if word & VALID == 0 {
                return None;
            }
            let theta = if word & THETA_BY_LIBM != 0 { theta_bin(y, x) } else { (word & 0xff) as usize };
            let bins = [
                theta,
                BINS_PER_ANGLE + ((word >> 8) & 0xff) as usize,
                2 * BINS_PER_ANGLE + ((word >> 16) & 0xff) as usize,
            ];
            Some((bins, word & TIE != 0))
        })
    }
}

/// [`pair_kernel`] with AVX2 where the CPU has it (the same operations: no fused multiply-add).
fn pair_words(
    n1: [f64; 3],
    offsets: &[Vec<f64>; 3],
    normals: &[Vec<f64>; 3],
    words: &mut [u32],
    theta: &mut [(f64, f64)],
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { pair_kernel_avx2(n1, offsets, normals, words, theta) };
    }
    pair_kernel(n1, offsets, normals, words, theta)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn pair_kernel_avx2(
    n1: [f64; 3],
    offsets: &[Vec<f64>; 3],
    normals: &[Vec<f64>; 3],
    words: &mut [u32],
    theta: &mut [(f64, f64)],
) {
    pair_kernel(n1, offsets, normals, words, theta)
}

/// [`pair_features`] and [`slots`] for every column, branch-free (each choice a select) so that it vectorises.
#[inline(always)]
fn pair_kernel(
    n1: [f64; 3],
    offsets: &[Vec<f64>; 3],
    normals: &[Vec<f64>; 3],
    words: &mut [u32],
    theta: &mut [(f64, f64)],
) {
    let m = words.len();
    let (dx, dy, dz) = (&offsets[0][..m], &offsets[1][..m], &offsets[2][..m]);
    let (mx, my, mz) = (&normals[0][..m], &normals[1][..m], &normals[2][..m]);
    let theta = &mut theta[..m];
    for k in 0..m {
        let (d, n2) = ([dx[k], dy[k], dz[k]], [mx[k], my[k], mz[k]]);
        let length = dot64(d, d).sqrt();
        let angle1 = dot64(n1, d) / length;
        let angle2 = dot64(n2, d) / length;
        let (cos1, cos2) = (angle1.abs(), angle2.abs());
        let swap = cos1 < cos2;
        let pick = |a: f64, b: f64| if swap { a } else { b };
        let d = [pick(-d[0], d[0]), pick(-d[1], d[1]), pick(-d[2], d[2])];
        let u = [pick(n2[0], n1[0]), pick(n2[1], n1[1]), pick(n2[2], n1[2])];
        let target = [pick(n1[0], n2[0]), pick(n1[1], n2[1]), pick(n1[2], n2[2])];
        let phi = pick(-angle2, angle1);
        let v = cross64(d, u);
        let v_norm = dot64(v, v).sqrt();
        let v = [v[0] / v_norm, v[1] / v_norm, v[2] / v_norm];
        let w = cross64(u, v);
        let alpha = dot64(v, target);
        let (theta_y, theta_x) = (dot64(w, target), dot64(u, target));
        let zero_normal = n2[0] == 0.0 && n2[1] == 0.0 && n2[2] == 0.0;
        let valid = !zero_normal && length != 0.0 && v_norm != 0.0;
        let (theta_word, by_libm) = approximate_theta_bin(theta_y, theta_x);
        words[k] = theta_word
            | (bin_lane(alpha, -1.0, 1.0) << 8)
            | (bin_lane(phi, -1.0, 1.0) << 16)
            | if valid { VALID } else { 0 }
            | if cos1 == cos2 { TIE } else { 0 }
            | if by_libm { THETA_BY_LIBM } else { 0 };
        theta[k] = (theta_y, theta_x);
    }
}

/// [`theta_bin`]'s approximate branch, branch-free: the bin, and whether libm must decide instead.
#[inline(always)]
fn approximate_theta_bin(y: f64, x: f64) -> (u32, bool) {
    const BINS_PER_RADIAN: f64 = BINS_PER_ANGLE as f64 / (2.0 * PI);
    let (ay, ax) = (y.abs(), x.abs());
    // NaN anywhere makes `scaled` NaN, which libm then bins, as in [`theta_bin`].
    let a = if ay < ax { ay } else { ax } / if ay < ax { ax } else { ay };
    let s = a * a;
    let mut r = a * ATAN_COEFFICIENTS.iter().rev().fold(0.0, |acc, c| acc * s + c);
    r = if ay > ax { std::f64::consts::FRAC_PI_2 - r } else { r };
    r = if x < 0.0 { PI - r } else { r };
    r = if y < 0.0 { -r } else { r };
    let scaled = (r + PI) * BINS_PER_RADIAN;
    let inside = scaled > 0.0 && scaled < BINS_PER_ANGLE as f64;
    let scaled = if inside { scaled } else { 0.0 };
    let whole = scaled as i32;
    let fraction = scaled - f64::from(whole);
    let clear = inside && fraction > THETA_GUARD_BINS && fraction < 1.0 - THETA_GUARD_BINS;
    (whole as u32, !clear)
}

/// [`bin`], branch-free.
#[inline(always)]
fn bin_lane(value: f64, low: f64, high: f64) -> u32 {
    let b = BINS_PER_ANGLE as f64 * (value - low) / (high - low);
    let b = if b > 0.0 { b } else { 0.0 };
    let last = (BINS_PER_ANGLE - 1) as f64;
    (if b < last { b } else { last }) as i32 as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_features_are_symmetric_in_the_frame_choice() {
        let (p1, n1, p2, n2) = ([0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.2], [0.3, 0.0, 0.95]);
        let (a, tie) = pair_features(p1, n1, p2, n2).unwrap();
        assert_eq!(pair_features(p2, n2, p1, n1), Some((a, tie)), "bit for bit the same frame");
        assert!(!tie);
        // Equal |cosines|: each end is its own source.
        let (n1, n2) = ([0.0, 0.6, 0.8], [0.0, -0.6, 0.8]);
        assert!(pair_features(p1, n1, [1.0, 0.0, 0.0], n2).unwrap().1);
        assert!(pair_features(p1, n1, p1, n2).is_none());
        assert!(pair_features(p1, [0.0; 3], p2, n2).is_none());
    }

    #[test]
    fn theta_bins_are_those_of_libm_atan2() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut worst = 0f64;
        for _ in 0..200_000 {
            let (y, x): (f64, f64) = (rng.gen_range(-1.0..1.0), rng.gen_range(-1.0..1.0));
            worst = worst.max((approximate_atan2(y, x) - y.atan2(x)).abs());
            assert_eq!(theta_bin(y, x), bin(y.atan2(x), -PI, PI), "({y}, {x})");
        }
        assert!(worst < 5e-7, "approximation error {worst}");
        // On and next to every bin edge, on the axes, at ±π and ±0, and NaN.
        let mut cases = vec![(0.0, 0.0), (0.0, -1.0), (-0.0, -1.0), (0.0, 1.0), (-0.0, 1.0), (1.0, 0.0), (-1.0, 0.0)];
        cases.push((f64::NAN, 1.0));
        for edge in 0..=BINS_PER_ANGLE {
            let angle = -PI + 2.0 * PI * edge as f64 / BINS_PER_ANGLE as f64;
            for nudge in [-1e-9, -1e-15, 0.0, 1e-15, 1e-9] {
                cases.push(((angle + nudge).sin(), (angle + nudge).cos()));
            }
        }
        for (y, x) in cases {
            assert_eq!(theta_bin(y, x), bin(y.atan2(x), -PI, PI), "({y}, {x})");
        }
    }

    #[test]
    fn lanes_give_the_definitions_bins() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let unit = |rng: &mut rand::rngs::StdRng| {
            let v: [f32; 3] = [rng.gen_range(-1.0..1.0), rng.gen_range(-1.0..1.0), rng.gen_range(-1.0..1.0)];
            let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
            v.map(|c| c / n)
        };
        let mut points: Vec<Point> =
            (0..3000).map(|_| [rng.gen_range(0.0..0.1), rng.gen_range(0.0..0.1), rng.gen_range(0.0..0.01)]).collect();
        let mut normals: Vec<Point> = (0..3000).map(|_| unit(&mut rng)).collect();
        // The cases that take other branches: a coincident point, a zero normal, a normal along the offset (a
        // degenerate frame), equal |cosines| (a tie), and NaN.
        points[1] = points[0];
        normals[2] = [0.0; 3];
        normals[3] = [0.0, 0.0, 1.0];
        points[3] = [points[0][0], points[0][1], points[0][2] + 0.01];
        normals[0] = [0.0, 0.0, 1.0];
        points[4] = [points[0][0] + 0.01, points[0][1], points[0][2]];
        normals[4] = [0.0, 0.6, 0.8];
        normals[5] = [f32::NAN, 0.0, 1.0];
        let mut lanes = PairLanes::default();
        let mut ties = 0;
        for i in 0..100u32 {
            let others: Vec<u32> = (0..points.len() as u32).filter(|&j| j != i).step_by(1 + i as usize % 5).collect();
            let computed: Vec<_> = lanes.pairs(&points, &normals, i, &others).collect();
            for (&j, lane) in others.iter().zip(computed) {
                let (i, j) = (i as usize, j as usize);
                let defined = pair_slots(points[i], normals[i], points[j], normals[j]);
                ties += usize::from(defined.is_some_and(|(_, tie)| tie));
                assert_eq!(lane, defined, "pair ({i}, {j})");
            }
        }
        assert!(ties > 0, "no tie was checked");
    }
}
