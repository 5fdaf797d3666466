//! A memory bank of good features and the exact search for each query's distance to its nearest row.
//!
//! On a GPU the distances to every row are one matrix product. On the CPU most of that product is avoidable: the
//! rows are embedded in a few dimensions (their leading principal directions, plus the length of what is left)
//! where no distance grows, so one small product bounds every distance from below, and only the rows whose bound
//! beats the best distance found so far are measured in full (in double precision).

use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

/// Leading principal directions in the embedding. On the bundled model's point bank (4096 × 105) and the bundled
/// scans' features, a query measures ~10 rows in full with 32 (~320 with 16, ~55 with 24): the bounding product
/// costs a third of the full one.
const EMBEDDED_DIRECTIONS: usize = 32;
/// Banks with fewer rows, or not wider than the embedding, are searched by brute force.
const MIN_PRUNED_ROWS: usize = 256;
/// Rounding allowance of a lower bound, relative to the squared lengths it is computed from (single-precision
/// products over 33 terms err by well under 1e-5 of them): a row is measured unless its bound exceeds the best
/// squared distance by more than this.
const BOUND_TOLERANCE: f64 = 1e-5;
/// A bank is searched by brute force when its own rows, probing the others, measure more than 1 / this of them in
/// full (a bank the embedding does not separate, such as random noise): measuring costs far more per row.
const MAX_MEASURED_SHARE: usize = 16;
/// Rows that probe the bank when it is built.
const PROBES: usize = 64;
/// Queries per block (bounds memory to block × bank rows: 2 MiB for 4096 rows). Smaller blocks pack the bank's side
/// of the product more often: 64 took ~10 % more CPU on the bundled bank, 32 half as much again.
const QUERY_BLOCK: usize = 128;

/// Rows of good features (M, C) and what searching them on the CPU needs.
pub struct MemoryBank {
    rows: Tensor,
    /// `None` where the bounded search would not gain (see [`LowerBounds::of`]): the full product then.
    bounds: Option<LowerBounds>,
}

impl MemoryBank {
    pub fn new(rows: Tensor) -> Self {
        let bounds = LowerBounds::of(&rows);
        Self { rows, bounds }
    }

    pub fn empty(width: usize, device: Device) -> Self {
        Self::new(Tensor::zeros([0, width as i64], (Kind::Float, device)))
    }

    /// (M, C) on the detector's device.
    pub fn rows(&self) -> &Tensor {
        &self.rows
    }

    pub fn len(&self) -> usize {
        self.rows.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Euclidean distance of each row of `queries` (n, C) to its nearest bank row: (n), on the queries' device.
    pub fn nearest_distances(&self, queries: &Tensor) -> Tensor {
        match &self.bounds {
            Some(bounds) if queries.device() == Device::Cpu => {
                bounds.nearest_distances(queries).unwrap_or_else(|| brute_force_distances(&self.rows, queries))
            }
            _ => brute_force_distances(&self.rows, queries),
        }
    }
}

/// Euclidean distance of each row of `queries` (n, C) to its nearest row of `bank` (M, C), from every distance,
/// in blocks of queries so the distance matrix never holds more than a block × M entries: (n).
pub fn brute_force_distances(bank: &Tensor, queries: &Tensor) -> Tensor {
    let _guard = tch::no_grad_guard();
    // min_j |q − b_j|² = |q|² + min_j (|b_j|² − 2 q·b_j): one fused multiply-add over the block, one pass for
    // the minimum, and |q|² added after it.
    let bank_sq = (bank * bank).sum_dim_intlist(1, false, Kind::Float).unsqueeze(0);
    let bank_t = bank.tr();
    let n = queries.size()[0];
    let blocks: Vec<Tensor> = (0..n)
        .step_by(QUERY_BLOCK)
        .map(|start| {
            let q = queries.narrow(0, start, (QUERY_BLOCK as i64).min(n - start));
            let q_sq = (&q * &q).sum_dim_intlist(1, false, Kind::Float);
            let partial = bank_sq.addmm(&(&q * -2.0), &bank_t);
            (partial.amin(1, false) + q_sq).clamp_min(0.0).sqrt()
        })
        .collect();
    Tensor::cat(&blocks, 0)
}

/// The embedding `e(x) = (Pᵀ(x − μ), |(I − PPᵀ)(x − μ)|)`, P a bank's leading principal directions. P is
/// orthonormal, so |e(x) − e(y)|² = |Pᵀ(x − y)|² + (|r_x| − |r_y|)² ≤ |x − y|²: distances never grow.
struct Embedding {
    /// C, the rows' width.
    width: usize,
    /// (C) and (C × d), double precision.
    mean: Vec<f64>,
    basis: Vec<f64>,
}

/// Width of an embedded row: d directions and the rest's length.
const EMBEDDED_WIDTH: usize = EMBEDDED_DIRECTIONS + 1;

impl Embedding {
    /// The mean and the leading principal directions of `rows` (M × `width`).
    fn of(rows: &[f32], width: usize) -> Self {
        let m = rows.len() / width;
        let mut mean = vec![0.0f64; width];
        for row in rows.chunks(width) {
            mean.iter_mut().zip(row).for_each(|(mu, &v)| *mu += f64::from(v));
        }
        mean.iter_mut().for_each(|mu| *mu /= m as f64);
        let centred = centre(rows, &mean);
        let mut scatter = vec![0.0f64; width * width];
        let (a, b) = (Operand::columns(&centred, width), Operand::rows(&centred, width));
        product((width, m, width), 1.0, a, b, 0.0, &mut scatter);
        let eigen = nalgebra::SymmetricEigen::new(nalgebra::DMatrix::from_row_slice(width, width, &scatter));
        let mut order: Vec<usize> = (0..width).collect();
        order.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]));
        let leading = &order[..EMBEDDED_DIRECTIONS];
        let vectors = &eigen.eigenvectors;
        let basis = (0..width).flat_map(|i| leading.iter().map(move |&k| vectors[(i, k)])).collect();
        Self { width, mean, basis }
    }

    /// `e(x)` of each row of `x` (n × C): (n × (d + 1)).
    fn embed(&self, x: &[f32]) -> Vec<f32> {
        let (c, d) = (self.width, EMBEDDED_DIRECTIONS);
        let n = x.len() / c;
        let centred = centre(x, &self.mean);
        let mut along = vec![0.0f64; n * d];
        product((n, c, d), 1.0, Operand::rows(&centred, c), Operand::rows(&self.basis, d), 0.0, &mut along);
        // The rest measured directly, not as |x − μ|² − |Pᵀ(x − μ)|², which cancels where little is left.
        let mut rest = centred;
        product((n, d, c), -1.0, Operand::rows(&along, d), Operand::columns(&self.basis, d), 1.0, &mut rest);
        let mut embedded = Vec::with_capacity(n * EMBEDDED_WIDTH);
        for (a, r) in along.chunks(d).zip(rest.chunks(c)) {
            embedded.extend(a.iter().map(|&v| v as f32));
            embedded.push(r.iter().map(|v| v * v).sum::<f64>().sqrt() as f32);
        }
        embedded
    }
}

/// Rows (M × C) less `mean`, in double precision.
fn centre(rows: &[f32], mean: &[f64]) -> Vec<f64> {
    rows.chunks(mean.len()).flat_map(|row| row.iter().zip(mean).map(|(&v, &mu)| f64::from(v) - mu)).collect()
}

/// A bank ready for the bounded search: its rows and their embedding. One (n × 34) · (34 × M) product bounds every
/// squared distance from below: each embedded row carries its squared length as a last column, and each embedded
/// query (times −2) a 1, so the product gives |e_j|² − 2 e_k·e_j and the bound is that plus |e_k|². Plain numbers,
/// searched by rayon tasks that each take a block of queries through its own single-threaded products (no LibTorch
/// threads waiting between blocks).
struct LowerBounds {
    embedding: Embedding,
    /// (M × C), row after row: the rows that are measured in full.
    rows: Vec<f32>,
    /// (M × (d + 2)): each embedded row, then its squared length.
    augmented: Vec<f32>,
    /// The largest squared length of an embedded row.
    largest_embedded_sq: f64,
}

/// Width of an embedded row with its squared length, and of an embedded query with its 1.
const AUGMENTED_WIDTH: usize = EMBEDDED_WIDTH + 1;

impl LowerBounds {
    /// `None` where the bank is on a GPU, too small, narrow or not finite, or where its embedding would leave too
    /// many rows to measure (tried on a sample of its own rows, each against the others).
    fn of(rows: &Tensor) -> Option<Self> {
        let size = rows.size();
        let (m, width) = (size[0] as usize, size[1] as usize);
        if rows.device() != Device::Cpu || m < MIN_PRUNED_ROWS || width <= EMBEDDED_WIDTH {
            return None;
        }
        let rows: Vec<f32> = rows.to_kind(Kind::Float).contiguous().reshape([-1]).try_into().ok()?;
        if !rows.iter().all(|v| v.is_finite()) {
            return None; // no direction is principal in a NaN; the full product gives what it gives
        }
        let embedding = Embedding::of(&rows, width);
        let embedded = embedding.embed(&rows);
        let augmented: Vec<f32> =
            embedded.chunks(EMBEDDED_WIDTH).flat_map(|e| e.iter().copied().chain([squared_length(e)])).collect();
        let largest_embedded_sq =
            augmented.chunks(AUGMENTED_WIDTH).map(|a| a[EMBEDDED_WIDTH]).fold(0.0, f32::max).into();
        let bounds = Self { embedding, rows, augmented, largest_embedded_sq };
        let probes: Vec<usize> = (0..PROBES).map(|k| k * m / PROBES).collect();
        let probe_rows: Vec<f32> = probes.iter().flat_map(|&j| bounds.row(j).to_vec()).collect();
        let (_, measured) = bounds.search_block(&probe_rows, Some(&probes));
        (measured * MAX_MEASURED_SHARE <= PROBES * m).then_some(bounds)
    }

    fn width(&self) -> usize {
        self.embedding.width
    }

    fn row(&self, j: usize) -> &[f32] {
        &self.rows[j * self.width()..(j + 1) * self.width()]
    }

    fn nearest_distances(&self, queries: &Tensor) -> Option<Tensor> {
        let queries: Vec<f32> = queries.to_kind(Kind::Float).contiguous().reshape([-1]).try_into().ok()?;
        let nearest: Vec<f32> = queries
            .par_chunks(QUERY_BLOCK * self.width())
            .flat_map_iter(|block| self.search_block(block, None).0)
            .collect();
        Some(Tensor::from_slice(&nearest))
    }

    /// The nearest distance of each query of a block (B × C), and how many rows were measured in full. With
    /// `skip`, query k does not see row `skip[k]` (a bank row probing the others).
    fn search_block(&self, queries: &[f32], skip: Option<&[usize]>) -> (Vec<f32>, usize) {
        let (width, a) = (self.width(), AUGMENTED_WIDTH);
        let (b, m) = (queries.len() / width, self.augmented.len() / a);
        let embedded = self.embedding.embed(queries);
        let scaled: Vec<f32> =
            embedded.chunks(EMBEDDED_WIDTH).flat_map(|e| e.iter().map(|v| -2.0 * v).chain([1.0])).collect();
        // |e_j|² − 2 e_k·e_j; adding |e_k|² gives the bound of row j for query k.
        let mut products = vec![0.0f32; b * m];
        product((b, a, m), 1.0, Operand::rows(&scaled, a), Operand::columns(&self.augmented, a), 0.0, &mut products);
        let mut measured = 0;
        let nearest = (0..b)
            .map(|k| {
                let row_products = &mut products[k * m..(k + 1) * m];
                if let Some(skip) = skip {
                    row_products[skip[k]] = f32::INFINITY;
                }
                let query = &queries[k * width..(k + 1) * width];
                let query_sq = squared_length(&embedded[k * EMBEDDED_WIDTH..(k + 1) * EMBEDDED_WIDTH]);
                let (best, count) = self.nearest_squared(query, f64::from(query_sq), row_products);
                measured += count;
                best.sqrt() as f32
            })
            .collect();
        (nearest, measured)
    }

    /// The smallest squared distance of `query` to a row, measuring only the rows whose bound (`query_sq` +
    /// `products[j]`) does not exceed the best so far; and how many were measured. NaN for a query with a NaN or an
    /// infinity (as the full product gives).
    fn nearest_squared(&self, query: &[f32], query_sq: f64, products: &[f32]) -> (f64, usize) {
        if !query.iter().all(|v| v.is_finite()) {
            return (f64::NAN, 0);
        }
        // Start from the row with the smallest bound: usually the nearest, so that few others beat it.
        let first = lowest(products);
        let mut best = self.squared_distance(query, first);
        let allowance = BOUND_TOLERANCE * (query_sq + self.largest_embedded_sq);
        // The f32 rounding of the cut is far inside the allowance.
        let mut cut = (best + allowance - query_sq) as f32;
        let mut measured = 1;
        for (chunk_index, chunk) in products.chunks(LANES).enumerate() {
            // A branch-free test of the whole chunk first: most chunks hold no row to measure.
            if chunk.iter().map(|&v| u32::from(v <= cut)).fold(0, |any, hit| any | hit) == 0 {
                continue;
            }
            for (offset, &v) in chunk.iter().enumerate() {
                let j = chunk_index * LANES + offset;
                if v <= cut && j != first {
                    measured += 1;
                    let d = self.squared_distance(query, j);
                    if d < best {
                        best = d;
                        cut = (best + allowance - query_sq) as f32;
                    }
                }
            }
        }
        (best, measured)
    }

    fn squared_distance(&self, query: &[f32], j: usize) -> f64 {
        // Four running sums, not one: one sum's additions wait on each other.
        let row = self.row(j);
        let mut sums = [0.0f64; 4];
        for (a, b) in query.chunks_exact(4).zip(row.chunks_exact(4)) {
            for lane in 0..4 {
                let d = f64::from(a[lane]) - f64::from(b[lane]);
                sums[lane] += d * d;
            }
        }
        let tail = query.len() - query.len() % 4;
        let rest: f64 =
            query[tail..].iter().zip(&row[tail..]).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum();
        sums.iter().sum::<f64>() + rest
    }
}

/// Lanes of the branch-free passes over a row of bounds (what the compiler turns into vector instructions).
const LANES: usize = 16;

/// The index of the smallest value (the first of equals; NaN ignored; 0 if all are NaN), over independent lanes
/// the compiler vectorises.
fn lowest(values: &[f32]) -> usize {
    let mut low = [f32::INFINITY; LANES];
    let mut at = [0u32; LANES];
    let whole = values.len() / LANES * LANES;
    for (chunk_index, chunk) in values[..whole].chunks_exact(LANES).enumerate() {
        for lane in 0..LANES {
            let v = chunk[lane];
            let better = v < low[lane];
            low[lane] = if better { v } else { low[lane] };
            at[lane] = if better { (chunk_index * LANES + lane) as u32 } else { at[lane] };
        }
    }
    let tail = values[whole..].iter().enumerate().map(|(k, &v)| (v, whole + k));
    let lanes = low.into_iter().zip(at.into_iter().map(|j| j as usize));
    lanes
        .chain(tail)
        .filter(|(v, _)| *v < f32::INFINITY)
        .min_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)))
        .map_or(0, |(_, j)| j)
}

fn squared_length(x: &[f32]) -> f32 {
    x.iter().map(|v| v * v).sum()
}

/// A matrix operand: its values and its (row, column) strides.
struct Operand<'a, T> {
    values: &'a [T],
    strides: (usize, usize),
}

impl<'a, T> Operand<'a, T> {
    fn rows(values: &'a [T], width: usize) -> Self {
        Self { values, strides: (width, 1) }
    }

    /// The transpose of a row-major matrix `width` wide.
    fn columns(values: &'a [T], width: usize) -> Self {
        Self { values, strides: (1, width) }
    }

    /// Whether a (r × c) matrix lies inside the values.
    fn fits(&self, r: usize, c: usize) -> bool {
        r == 0 || c == 0 || (r - 1) * self.strides.0 + (c - 1) * self.strides.1 < self.values.len()
    }

    fn strides(&self) -> (isize, isize) {
        (self.strides.0 as isize, self.strides.1 as isize)
    }
}

/// `matrixmultiply`'s product of one element type: (m, k, n, alpha, a, a's strides, b, b's strides, beta, c, c's
/// strides).
type Gemm<T> =
    unsafe fn(usize, usize, usize, T, *const T, isize, isize, *const T, isize, isize, T, *mut T, isize, isize);

/// The element types `matrixmultiply` multiplies.
trait Element: Copy {
    const GEMM: Gemm<Self>;
}

impl Element for f32 {
    const GEMM: Gemm<Self> = matrixmultiply::sgemm;
}

impl Element for f64 {
    const GEMM: Gemm<Self> = matrixmultiply::dgemm;
}

/// `c ← alpha · a b + beta · c` for an (m × k) `a` and a (k × n) `b`, into a row-major (m × n) `c`, on the
/// calling thread.
fn product<T: Element>((m, k, n): (usize, usize, usize), alpha: T, a: Operand<T>, b: Operand<T>, beta: T, c: &mut [T]) {
    assert!(a.fits(m, k) && b.fits(k, n) && c.len() >= m * n, "matrix product operands out of bounds");
    let ((rsa, csa), (rsb, csb)) = (a.strides(), b.strides());
    // SAFETY: the assertion above keeps every element the dimensions and strides address inside its slice.
    unsafe {
        T::GEMM(
            m,
            k,
            n,
            alpha,
            a.values.as_ptr(),
            rsa,
            csa,
            b.values.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every distance in double precision: what the pruned search must give.
    fn exhaustive(bank: &Tensor, queries: &Tensor) -> Vec<f32> {
        let bank = bank.to_kind(Kind::Double).unsqueeze(0);
        let blocks: Vec<Tensor> = queries
            .to_kind(Kind::Double)
            .split(16, 0)
            .iter()
            .map(|q| (q.unsqueeze(1) - &bank).square().sum_dim_intlist(2, false, Kind::Double).amin(1, false))
            .collect();
        Tensor::cat(&blocks, 0).sqrt().to_kind(Kind::Float).try_into().unwrap()
    }

    /// Rows near a curved six-dimensional surface in 105 dimensions, as feature histograms lie, plus noise.
    fn features(rows: i64, seed: i64) -> Tensor {
        tch::manual_seed(42);
        let mixing = Tensor::randn([6, 105], (Kind::Float, Device::Cpu));
        tch::manual_seed(seed);
        let latent = Tensor::rand([rows, 6], (Kind::Float, Device::Cpu)) * 3.0;
        latent.mm(&mixing).sin() * 2.0 + Tensor::randn([rows, 105], (Kind::Float, Device::Cpu)) * 0.05
    }

    #[test]
    fn the_pruned_search_finds_every_nearest_distance() {
        let bank = MemoryBank::new(features(2000, 1));
        assert!(bank.bounds.is_some(), "a 2000 × 105 bank on the CPU is searched through its bounds");
        let far = Tensor::full([3, 105], 40.0, (Kind::Float, Device::Cpu));
        let queries = Tensor::cat(&[features(700, 2), bank.rows().narrow(0, 10, 50), far], 0);
        let found: Vec<f32> = bank.nearest_distances(&queries).try_into().unwrap();
        assert_eq!(found, exhaustive(bank.rows(), &queries));
        // The full product's rounding is relative to the squared lengths, not to the distances: close, not equal.
        let product: Vec<f32> = brute_force_distances(bank.rows(), &queries).try_into().unwrap();
        let longest = |x: &Tensor| x.square().sum_dim_intlist(1, false, Kind::Float).max().double_value(&[]) as f32;
        let allowance = 1e-5 * (longest(&queries) + longest(bank.rows()));
        for (a, b) in found.iter().zip(&product) {
            assert!((a * a - b * b).abs() <= allowance, "{a} against {b}");
        }
    }

    #[test]
    fn a_query_with_nan_gets_nan_and_small_banks_are_searched_by_brute_force() {
        let bank = MemoryBank::new(features(500, 3));
        let query = features(2, 4);
        let _ = query.get(1).get(7).fill_(f64::NAN);
        let found: Vec<f32> = bank.nearest_distances(&query).try_into().unwrap();
        assert!(found[0].is_finite() && found[1].is_nan(), "{found:?}");
        let small = MemoryBank::new(features(100, 5));
        assert!(small.bounds.is_none());
        // Noise the embedding cannot separate: its probes would measure most rows.
        let noise = MemoryBank::new(Tensor::randn([1000, 105], (Kind::Float, Device::Cpu)));
        assert!(noise.bounds.is_none());
        assert_eq!(small.len(), 100);
        assert!(MemoryBank::empty(105, Device::Cpu).is_empty());
    }
}
