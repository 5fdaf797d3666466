//! PNG figures for evaluation reports: ROC and precision–recall curves of several methods on one class (axes,
//! ticks, axis names, a legend with each method's AUROC or AP, a title), renders of a scored cloud next to its
//! ground truth (colour bar, defect outline), and a bar chart of the evaluation's means per method. Text is set
//! in DejaVu Sans (third_party/fonts, Bitstream Vera licence) through fontdue; canvases are written as PNG.

use std::path::Path;
use std::sync::OnceLock;

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

const WHITE: [u8; 3] = [255, 255, 255];
const BLACK: [u8; 3] = [0, 0, 0];
const GRID: [u8; 3] = [232, 232, 232];

fn font() -> &'static fontdue::Font {
    static FONT: OnceLock<fontdue::Font> = OnceLock::new();
    FONT.get_or_init(|| {
        let bytes: &[u8] = include_bytes!("../../third_party/fonts/DejaVuSans.ttf");
        fontdue::Font::from_bytes(bytes, fontdue::FontSettings::default()).expect("the bundled font parses")
    })
}

/// Where a text's anchor point sits along the text.
#[derive(Clone, Copy)]
pub enum Align {
    Left,
    Centre,
    Right,
}

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

    pub fn get(&self, x: usize, y: usize) -> [u8; 3] {
        self.pixels[y * self.width + x]
    }

    /// Mixes `c` into a pixel with weight `alpha` in [0, 1] (glyph coverage).
    fn blend(&mut self, x: i64, y: i64, c: [u8; 3], alpha: f32) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let p = &mut self.pixels[y as usize * self.width + x as usize];
            for k in 0..3 {
                p[k] = (f32::from(p[k]) * (1.0 - alpha) + f32::from(c[k]) * alpha).round() as u8;
            }
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

    pub fn fill(&mut self, (x0, y0): (f32, f32), (x1, y1): (f32, f32), c: [u8; 3]) {
        for y in y0.round() as i64..y1.round() as i64 {
            for x in x0.round() as i64..x1.round() as i64 {
                self.set(x, y, c);
            }
        }
    }

    /// A rectangle's outline, one pixel wide.
    pub fn frame(&mut self, (x0, y0): (f32, f32), (x1, y1): (f32, f32), c: [u8; 3]) {
        let (l, t, r, b) = (x0.round() as i64, y0.round() as i64, x1.round() as i64, y1.round() as i64);
        for x in l..=r {
            self.set(x, t, c);
            self.set(x, b, c);
        }
        for y in t..=b {
            self.set(l, y, c);
            self.set(r, y, c);
        }
    }

    /// Writes `text` with its baseline at `y`, aligned on `x`; `size` in pixels. Returns the text's width.
    pub fn text(&mut self, x: f32, y: f32, text: &str, size: f32, c: [u8; 3], align: Align) -> f32 {
        let width = text_width(text, size);
        let mut pen = match align {
            Align::Left => x,
            Align::Centre => x - width / 2.0,
            Align::Right => x - width,
        };
        for ch in text.chars() {
            let (m, coverage) = font().rasterize(ch, size);
            let (left, top) =
                ((pen + m.xmin as f32).round() as i64, (y - (m.height as i32 + m.ymin) as f32).round() as i64);
            for (k, &a) in coverage.iter().enumerate() {
                if a > 0 {
                    self.blend(left + (k % m.width) as i64, top + (k / m.width) as i64, c, f32::from(a) / 255.0);
                }
            }
            pen += m.advance_width;
        }
        width
    }

    /// Writes `text` reading upwards (a y-axis name), centred on `y`, its baseline at `x`.
    pub fn text_upwards(&mut self, x: f32, y: f32, text: &str, size: f32, c: [u8; 3]) {
        let mut pen = y + text_width(text, size) / 2.0;
        for ch in text.chars() {
            let (m, coverage) = font().rasterize(ch, size);
            // Glyph row r (from its top) lies at column x - (height + ymin) + r; glyph column k at row pen - xmin - k.
            let top = (x - (m.height as i32 + m.ymin) as f32).round() as i64;
            let base = (pen - m.xmin as f32).round() as i64;
            for (k, &a) in coverage.iter().enumerate() {
                if a > 0 {
                    let (row, col) = ((k / m.width) as i64, (k % m.width) as i64);
                    self.blend(top + row, base - col, c, f32::from(a) / 255.0);
                }
            }
            pen -= m.advance_width;
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

/// The advance width of `text` at `size` pixels.
pub fn text_width(text: &str, size: f32) -> f32 {
    text.chars().map(|ch| font().metrics(ch, size).advance_width).sum()
}

/// A rectangle of the canvas holding a plot, and its value ranges.
struct Axes {
    left: f32,
    top: f32,
    right: f32,
    bottom: f32,
    y_max: f32,
}

impl Axes {
    fn to_px(&self, (x, y): (f32, f32)) -> (f32, f32) {
        (self.left + x * (self.right - self.left), self.bottom - y / self.y_max * (self.bottom - self.top))
    }

    /// Grid, axes, tick values every 0.2 of the x range and every fifth of the y range, axis names, title.
    fn draw(&self, c: &mut Canvas, title: &str, x_name: Option<&str>, y_name: &str) {
        for k in 0..=5 {
            let v = k as f32 / 5.0;
            let (gx, _) = self.to_px((v, 0.0));
            let (_, gy) = self.to_px((0.0, v * self.y_max));
            if x_name.is_some() {
                c.line((gx, self.top), (gx, self.bottom), GRID);
                c.text(gx, self.bottom + 20.0, &format!("{v:.1}"), 13.0, BLACK, Align::Centre);
            }
            c.line((self.left, gy), (self.right, gy), GRID);
            c.text(self.left - 8.0, gy + 5.0, &format!("{:.1}", v * self.y_max), 13.0, BLACK, Align::Right);
        }
        c.line((self.left, self.bottom), (self.right, self.bottom), BLACK);
        c.line((self.left, self.top), (self.left, self.bottom), BLACK);
        if let Some(name) = x_name {
            c.text((self.left + self.right) / 2.0, self.bottom + 44.0, name, 15.0, BLACK, Align::Centre);
        }
        c.text_upwards(self.left - 44.0, (self.top + self.bottom) / 2.0, y_name, 15.0, BLACK);
        c.text(c.width as f32 / 2.0, 28.0, title, 17.0, BLACK, Align::Centre);
    }
}

/// A legend box of coloured swatches and labels with its top-left corner at `(x, y)`.
fn legend(c: &mut Canvas, (x, y): (f32, f32), entries: &[(String, [u8; 3])]) {
    let width = entries.iter().map(|(label, _)| text_width(label, 13.0)).fold(0.0, f32::max) + 44.0;
    let height = 20.0 * entries.len() as f32 + 10.0;
    c.fill((x, y), (x + width, y + height), WHITE);
    c.frame((x, y), (x + width, y + height), [160, 160, 160]);
    for (k, (label, colour)) in entries.iter().enumerate() {
        let row = y + 20.0 * k as f32 + 20.0;
        c.line((x + 8.0, row - 5.0), (x + 30.0, row - 5.0), *colour);
        c.text(x + 36.0, row, label, 13.0, BLACK, Align::Left);
    }
}

/// The width `legend` takes for these labels.
fn legend_size(labels: &[String]) -> (f32, f32) {
    let width = labels.iter().map(|l| text_width(l, 13.0)).fold(0.0, f32::max) + 44.0;
    (width, 20.0 * labels.len() as f32 + 10.0)
}

/// ROC curve points (false positive rate, true positive rate), thresholds at every distinct score.
pub fn roc_curve(scores: &[f32], labels: &[bool]) -> Vec<(f32, f32)> {
    curve(scores, labels, |tp, fp, p, n| (fp as f32 / n.max(1) as f32, tp as f32 / p.max(1) as f32))
}

/// Precision–recall curve points (recall, precision); before the first prediction precision is 1, as usual.
pub fn pr_curve(scores: &[f32], labels: &[bool]) -> Vec<(f32, f32)> {
    curve(scores, labels, |tp, fp, p, _| {
        (tp as f32 / p.max(1) as f32, if tp + fp == 0 { 1.0 } else { tp as f32 / (tp + fp) as f32 })
    })
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

/// One method's curve and its legend label (e.g. "Ours (AUROC 0.963)").
pub struct Curve {
    pub label: String,
    pub points: Vec<(f32, f32)>,
}

/// Curves in [0, 1]², one colour per method, with axes, ticks, axis names, a legend and a title; `diagonal`
/// draws chance and puts the legend bottom right (ROC), else top right (PR, whose curves fall to the right).
pub fn curves(title: &str, (x_name, y_name): (&str, &str), curves: &[Curve], diagonal: bool) -> Canvas {
    let mut c = Canvas::new(640, 620, WHITE);
    let axes = Axes { left: 80.0, top: 50.0, right: 620.0, bottom: 550.0, y_max: 1.0 };
    axes.draw(&mut c, title, Some(x_name), y_name);
    if diagonal {
        c.line(axes.to_px((0.0, 0.0)), axes.to_px((1.0, 1.0)), [190, 190, 190]);
    }
    for (k, curve) in curves.iter().enumerate() {
        for pair in curve.points.windows(2) {
            c.line(axes.to_px(pair[0]), axes.to_px(pair[1]), PALETTE[k % PALETTE.len()]);
        }
    }
    let entries: Vec<(String, [u8; 3])> =
        curves.iter().enumerate().map(|(k, cv)| (cv.label.clone(), PALETTE[k % PALETTE.len()])).collect();
    let labels: Vec<String> = entries.iter().map(|e| e.0.clone()).collect();
    let (w, h) = legend_size(&labels);
    let y = if diagonal { axes.bottom - h - 10.0 } else { axes.top + 10.0 };
    legend(&mut c, (axes.right - w - 10.0, y), &entries);
    c
}

/// Grouped bars: one group per metric, one bar per method (its value on top), values in [0, 1].
pub fn bar_chart(title: &str, metrics: &[&str], methods: &[(String, Vec<Option<f64>>)]) -> Canvas {
    let mut c = Canvas::new(900, 560, WHITE);
    let axes = Axes { left: 80.0, top: 110.0, right: 880.0, bottom: 500.0, y_max: 1.0 };
    axes.draw(&mut c, title, None, "mean over classes");
    let group = (axes.right - axes.left) / metrics.len().max(1) as f32;
    let bar = (group * 0.8) / methods.len().max(1) as f32;
    for (g, metric) in metrics.iter().enumerate() {
        let start = axes.left + g as f32 * group + group * 0.1;
        c.text(start + group * 0.4, axes.bottom + 22.0, metric, 14.0, BLACK, Align::Centre);
        for (m, (_, values)) in methods.iter().enumerate() {
            let Some(v) = values.get(g).copied().flatten() else { continue };
            let x0 = start + m as f32 * bar;
            let (_, y) = axes.to_px((0.0, v.clamp(0.0, 1.0) as f32));
            c.fill((x0 + 1.0, y), (x0 + bar - 1.0, axes.bottom), PALETTE[m % PALETTE.len()]);
            c.text(x0 + bar / 2.0, y - 4.0, &format!("{v:.2}"), 11.0, BLACK, Align::Centre);
        }
    }
    let entries: Vec<(String, [u8; 3])> =
        methods.iter().enumerate().map(|(k, (name, _))| (name.clone(), PALETTE[k % PALETTE.len()])).collect();
    // The legend in rows across the top, under the title.
    let (mut x, mut y) = (axes.left, 48.0);
    for (label, colour) in entries {
        let width = text_width(&label, 13.0) + 44.0;
        if x + width > axes.right {
            (x, y) = (axes.left, y + 20.0);
        }
        c.line((x + 4.0, y - 5.0), (x + 26.0, y - 5.0), colour);
        c.text(x + 32.0, y, &label, 13.0, BLACK, Align::Left);
        x += width;
    }
    c
}

/// The cloud seen along its axis of least extent (PCA): scores coloured on the left with a colour bar, the
/// ground-truth defect outlined on them in black, ground truth on the right (defect red, the rest grey); nearer
/// points hide farther ones.
pub fn heatmap_render(title: &str, points: &[Point], scores: &[f32], labels: &[bool]) -> Canvas {
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
    // Two square panels with a colour bar between them, under a title strip.
    let (half, top, bar_width) = (240i64, 60i64, 110i64);
    let panels = [0, 2 * half + bar_width];
    let mut canvas = Canvas::new((4 * half + bar_width) as usize, (2 * half + top) as usize, WHITE);
    let mut depth = vec![f64::NEG_INFINITY; canvas.width * canvas.height];
    let mut defect = vec![false; canvas.width * canvas.height];
    let (low, high) = scores
        .iter()
        .filter(|s| s.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &s| (l.min(s), h.max(s)));
    let [r, g, b] = heatmap_colours(scores, low, high);
    let width = canvas.width as i64;
    for (i, (a, bb, z)) in projected.iter().enumerate() {
        let x = (half as f64 + a / extent * (half as f64 - 8.0)) as i64;
        let y = top + (half as f64 - bb / extent * (half as f64 - 8.0)) as i64;
        for (panel, colour) in
            panels.into_iter().zip([[r[i], g[i], b[i]], if labels[i] { [220, 30, 30] } else { [170, 170, 170] }])
        {
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let (px, py) = (x + panel + dx, y + dy);
                if px >= panel && px < panel + 2 * half && py >= top && py < canvas.height as i64 {
                    let k = (py * width + px) as usize;
                    if panel == 0 && labels[i] {
                        defect[k] = true;
                    }
                    if *z > depth[k] {
                        depth[k] = *z;
                        canvas.set(px, py, colour);
                    }
                }
            }
        }
    }
    // The defect's outline on the scores: labelled pixels, closed over 3 pixels, with an unlabelled neighbour.
    let closed = dilate(&defect, canvas.width, 3);
    for y in top..canvas.height as i64 {
        for x in 0..2 * half {
            let k = (y * width + x) as usize;
            let outside = |dx: i64, dy: i64| {
                let (nx, ny) = (x + dx, y + dy);
                nx < 0 || ny < 0 || ny >= canvas.height as i64 || !closed[(ny * width + nx) as usize]
            };
            if closed[k] && (outside(1, 0) || outside(-1, 0) || outside(0, 1) || outside(0, -1)) {
                canvas.set(x, y, BLACK);
            }
        }
    }
    // Colour bar: low at the bottom, high at the top, five values.
    let (bar_left, bar_top, bar_bottom) = ((2 * half + 20) as f32, (top + 30) as f32, (top + 2 * half - 30) as f32);
    let steps = (bar_bottom - bar_top) as usize;
    let ramp: Vec<f32> = (0..steps).map(|k| 1.0 - k as f32 / steps.max(1) as f32).collect();
    let [rr, rg, rb] = heatmap_colours(&ramp, 0.0, 1.0);
    for k in 0..steps {
        let y = bar_top + k as f32;
        canvas.fill((bar_left, y), (bar_left + 18.0, y + 1.0), [rr[k], rg[k], rb[k]]);
    }
    canvas.frame((bar_left, bar_top), (bar_left + 18.0, bar_bottom), BLACK);
    let span = if high > low { high - low } else { 0.0 };
    for k in 0..=4 {
        let t = k as f32 / 4.0;
        let y = bar_bottom - t * (bar_bottom - bar_top);
        canvas.text(bar_left + 24.0, y + 4.0, &format!("{:.3}", low + t * span), 12.0, BLACK, Align::Left);
    }
    canvas.text(bar_left + 9.0, bar_top - 10.0, "score", 12.0, BLACK, Align::Centre);
    canvas.text(canvas.width as f32 / 2.0, 24.0, title, 16.0, BLACK, Align::Centre);
    let captions = ["scores (black: the defect's outline)", "ground truth (defect red)"];
    for (panel, caption) in panels.into_iter().zip(captions) {
        canvas.text((panel + half) as f32, 48.0, caption, 13.0, BLACK, Align::Centre);
    }
    canvas
}

/// `mask` (rows of `width`) grown by `radius` pixels in every direction.
fn dilate(mask: &[bool], width: usize, radius: usize) -> Vec<bool> {
    let height = mask.len() / width.max(1);
    let mut out = vec![false; mask.len()];
    for (k, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
        let (x, y) = (k % width, k / width);
        for ny in y.saturating_sub(radius)..(y + radius + 1).min(height) {
            for nx in x.saturating_sub(radius)..(x + radius + 1).min(width) {
                out[ny * width + nx] = true;
            }
        }
    }
    out
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
        assert_eq!((pr[0], pr[1]), ((0.0, 1.0), (0.5, 1.0)));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roc.png");
        let canvas = curves("ROC", ("FPR", "TPR"), &[Curve { label: "a (AUROC 0.75)".into(), points: roc }], true);
        // The title is set in the strip above the plot, where nothing else is drawn.
        let inked =
            (0..40).flat_map(|y| (0..canvas.width).map(move |x| (x, y))).filter(|&(x, y)| canvas.get(x, y) != WHITE);
        assert!(inked.count() > 30, "no title text");
        canvas.write_png(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // The image data inflates to the right size (rows of 1 filter byte + RGB).
        let idat = bytes.windows(4).position(|w| w == b"IDAT").unwrap();
        let len = u32::from_be_bytes(bytes[idat - 4..idat].try_into().unwrap()) as usize;
        let raw = miniz_oxide::inflate::decompress_to_vec_zlib(&bytes[idat + 4..idat + 4 + len]).unwrap();
        assert_eq!(raw.len(), 620 * (640 * 3 + 1));
    }
}
