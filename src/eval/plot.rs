//! PNG figures for evaluation reports: ROC and precision–recall curves of several methods on one class, and
//! renders of a scored cloud next to its ground truth. Plain RGB canvases written as PNG; no text (the report's
//! Markdown says which colour is which method).

use std::path::Path;

use crate::cloud::ply::heatmap_colours;
use crate::geometry::Point;

/// Colours for methods, in report order.
pub const PALETTE: [[u8; 3]; 8] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
];

pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pixels: Vec<[u8; 3]>,
}

impl Canvas {
    pub fn new(width: usize, height: usize, background: [u8; 3]) -> Self {
        Self { width, height, pixels: vec![background; width * height] }
    }

    pub fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            self.pixels[y as usize * self.width + x as usize] = c;
        }
    }

    /// A line two pixels thick.
    pub fn line(&mut self, (x0, y0): (f32, f32), (x1, y1): (f32, f32), c: [u8; 3]) {
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for s in 0..=steps {
            let t = s as f32 / steps as f32;
            let (x, y) = ((x0 + t * (x1 - x0)).round() as i64, (y0 + t * (y1 - y0)).round() as i64);
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                self.set(x + dx, y + dy, c);
            }
        }
    }

    pub fn write_png(&self, path: &Path) -> std::io::Result<()> {
        let mut raw = Vec::with_capacity((self.width * 3 + 1) * self.height);
        for row in self.pixels.chunks(self.width) {
            raw.push(0); // filter: none
            raw.extend(row.iter().flatten());
        }
        let chunk = |out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]| {
            out.extend((data.len() as u32).to_be_bytes());
            out.extend(kind);
            out.extend(data);
            let mut crc = crc32fast::Hasher::new();
            crc.update(kind);
            crc.update(data);
            out.extend(crc.finalize().to_be_bytes());
        };
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut header = Vec::new();
        header.extend((self.width as u32).to_be_bytes());
        header.extend((self.height as u32).to_be_bytes());
        header.extend([8, 2, 0, 0, 0]); // 8-bit RGB
        chunk(&mut png, b"IHDR", &header);
        chunk(&mut png, b"IDAT", &miniz_oxide::deflate::compress_to_vec_zlib(&raw, 6));
        chunk(&mut png, b"IEND", &[]);
        std::fs::write(path, png)
    }
}

/// ROC curve points (false positive rate, true positive rate), thresholds at every distinct score.
pub fn roc_curve(scores: &[f32], labels: &[bool]) -> Vec<(f32, f32)> {
    curve(scores, labels, |tp, fp, p, n| (fp as f32 / n.max(1) as f32, tp as f32 / p.max(1) as f32))
}

/// Precision–recall curve points (recall, precision).
pub fn pr_curve(scores: &[f32], labels: &[bool]) -> Vec<(f32, f32)> {
    curve(scores, labels, |tp, fp, p, _| (tp as f32 / p.max(1) as f32, tp as f32 / (tp + fp).max(1) as f32))
}

fn curve(scores: &[f32], labels: &[bool], point: impl Fn(usize, usize, usize, usize) -> (f32, f32)) -> Vec<(f32, f32)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let p = labels.iter().filter(|l| **l).count();
    let n = labels.len() - p;
    let (mut tp, mut fp) = (0, 0);
    let mut out = vec![point(0, 0, p, n)];
    // At most ~2000 vertices: enough for a 480-pixel plot.
    let stride = (order.len() / 2000).max(1);
    for (i, &k) in order.iter().enumerate() {
        if labels[k] {
            tp += 1
        } else {
            fp += 1
        }
        let last = i + 1 == order.len();
        if last || (i % stride == 0 && scores[order[i + 1]] != scores[k]) {
            out.push(point(tp, fp, p, n));
        }
    }
    out
}

/// A square plot of curves in [0, 1]², one colour per curve, with a light grid and the diagonal.
pub fn curves(curves: &[Vec<(f32, f32)>], diagonal: bool) -> Canvas {
    let (size, margin) = (480usize, 20.0f32);
    let mut c = Canvas::new(size, size, [255, 255, 255]);
    let span = size as f32 - 2.0 * margin;
    let to_px = |(x, y): (f32, f32)| (margin + x * span, size as f32 - margin - y * span);
    for k in 0..=10 {
        let v = k as f32 / 10.0;
        c.line(to_px((v, 0.0)), to_px((v, 1.0)), [235, 235, 235]);
        c.line(to_px((0.0, v)), to_px((1.0, v)), [235, 235, 235]);
    }
    if diagonal {
        c.line(to_px((0.0, 0.0)), to_px((1.0, 1.0)), [200, 200, 200]);
    }
    for (k, points) in curves.iter().enumerate() {
        for pair in points.windows(2) {
            c.line(to_px(pair[0]), to_px(pair[1]), PALETTE[k % PALETTE.len()]);
        }
    }
    c.line(to_px((0.0, 0.0)), to_px((1.0, 0.0)), [0, 0, 0]);
    c.line(to_px((0.0, 0.0)), to_px((0.0, 1.0)), [0, 0, 0]);
    c
}

/// The cloud seen along its axis of least extent (PCA), scores coloured on the left, ground truth on the right
/// (defect red, the rest grey); nearer points hide farther ones.
pub fn heatmap_render(points: &[Point], scores: &[f32], labels: &[bool]) -> Canvas {
    let n = points.len().max(1) as f64;
    let mean = points
        .iter()
        .fold([0f64; 3], |a, p| [a[0] + p[0] as f64, a[1] + p[1] as f64, a[2] + p[2] as f64])
        .map(|v| v / n);
    let mut cov = nalgebra::Matrix3::<f64>::zeros();
    for p in points {
        let d = nalgebra::Vector3::new(p[0] as f64 - mean[0], p[1] as f64 - mean[1], p[2] as f64 - mean[2]);
        cov += d * d.transpose();
    }
    let eig = cov.symmetric_eigen();
    let mut axes: Vec<usize> = (0..3).collect();
    axes.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    let axis = |k: usize| eig.eigenvectors.column(axes[k]).into_owned();
    let (u, v, w) = (axis(0), axis(1), axis(2));
    let project = |p: &Point| {
        let d = nalgebra::Vector3::new(p[0] as f64 - mean[0], p[1] as f64 - mean[1], p[2] as f64 - mean[2]);
        (d.dot(&u), d.dot(&v), d.dot(&w))
    };
    let projected: Vec<(f64, f64, f64)> = points.iter().map(project).collect();
    let extent = projected.iter().fold(1e-9f64, |m, (a, b, _)| m.max(a.abs()).max(b.abs()));
    let half = 240usize;
    let mut canvas = Canvas::new(4 * half, 2 * half, [255, 255, 255]);
    let mut depth = vec![f64::NEG_INFINITY; 4 * half * 2 * half];
    let (low, high) = scores
        .iter()
        .filter(|s| s.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &s| (l.min(s), h.max(s)));
    let [r, g, b] = heatmap_colours(scores, low, high);
    for (i, (a, bb, z)) in projected.iter().enumerate() {
        let x = (half as f64 + a / extent * (half as f64 - 8.0)) as i64;
        let y = (half as f64 - bb / extent * (half as f64 - 8.0)) as i64;
        for (offset, colour) in
            [(0i64, [r[i], g[i], b[i]]), (2 * half as i64, if labels[i] { [220, 30, 30] } else { [170, 170, 170] })]
        {
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let (px, py) = (x + offset + dx, y + dy);
                if px >= 0 && py >= 0 && (px as usize) < 4 * half && (py as usize) < 2 * half {
                    let k = py as usize * 4 * half + px as usize;
                    if *z > depth[k] {
                        depth[k] = *z;
                        canvas.set(px, py, colour);
                    }
                }
            }
        }
    }
    canvas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_start_and_end_where_they_should_and_pngs_decode() {
        let scores = [0.9, 0.8, 0.3, 0.2];
        let labels = [true, false, true, false];
        let roc = roc_curve(&scores, &labels);
        assert_eq!((roc[0], *roc.last().unwrap()), ((0.0, 0.0), (1.0, 1.0)));
        let pr = pr_curve(&scores, &labels);
        assert_eq!(pr[1], (0.5, 1.0));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roc.png");
        curves(&[roc], true).write_png(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // The image data inflates to the right size (rows of 1 filter byte + RGB).
        let idat = bytes.windows(4).position(|w| w == b"IDAT").unwrap();
        let len = u32::from_be_bytes(bytes[idat - 4..idat].try_into().unwrap()) as usize;
        let raw = miniz_oxide::inflate::decompress_to_vec_zlib(&bytes[idat + 4..idat + 4 + len]).unwrap();
        assert_eq!(raw.len(), 480 * (480 * 3 + 1));
    }
}
