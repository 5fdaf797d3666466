//! Device geometry: the per-scan geometry of steps 0–1 and of the scores' way back to the points — outlier removal
//! (the robust box, floating groups), registration (ICP's correspondences and sums), voxel grid with back-index
//! (and each voxel's central member, for the coarse copies), farthest-point sampling (a batch of clouds at once),
//! kNN grouping, radius searches (which the model's surface context builds on), PCA normals, FPFH at chosen points,
//! the spread of patch scores and the median filter — as tensor code on a LibTorch device, so that a detector on
//! CUDA runs them on the GPU. Each function follows the definition of its host twin in this module's siblings; the
//! tests hold them to it on CPU tensors. Searches look at the points of the 27 grid cells around each query, padded
//! into one tensor per block of queries: the GPU's way, not two CPU cores'.
//!
//! [`Compute`] places each [`Stage`] on the host or the device and keeps the host's types at its edges, so the pipeline
//! can switch stage by stage: a copy in and out around each device stage. The FPFH and the surface context that only
//! the learned stages read stay on the device instead ([`super::SharedRows`]: the point features and SCA's
//! descriptors; [`fpfh_of_coarse_points`] and [`fpfh_among_coarse_points`] where the radius is wide). Within a stage,
//! reads back to the host (each a wait for the device's queue) are kept to what sizes the next tensors; a stage's
//! results come back in one read, with the checks that vouch for them (finite points, an exact numbering of cells)
//! rather than before them. Ops that read from the device inside LibTorch (`nonzero`, `unique`, `bincount`,
//! `equal`) wait as a read does: where a bound the host knows will do, the tensors are sized by it instead.
//! `crate::transfers` counts both directions and those ops.

use tch::{Device, Kind, Tensor};

use crate::transfers::{self, Transfer};

use super::outliers::quantile_ranks;
use super::registration::{Registration, Rigid, Template, cutoffs, start};
use super::shared::{SharedIndices, SharedPoints, SharedRows};
use super::{
    FPFH_BINS, Fpfh, GeometryError, Inliers, NeighborIndex, Neighborhood, NormalOrientation, OutlierRule, Point,
    Result, UnitSphere, VoxelGrid, positive,
};

/// Elements of one block of a search (queries × candidates): 64 MiB per f32 temporary.
const SEARCH_BLOCK_ELEMENTS: i64 = 1 << 24;
/// FPFH takes every point's SPFH where its queries are at least this share (1 in 8) of the points.
const EVERY_POINT_SHARE: i64 = 8;
/// Elements of one block of pair work (points × neighbours), each pair holding a few dozen f64 temporaries.
const PAIR_BLOCK_ELEMENTS: i64 = 1 << 18;
const BINS_PER_ANGLE: i64 = (FPFH_BINS / 3) as i64;

fn tensor_error(e: tch::TchError) -> GeometryError {
    GeometryError::Tensor(e.to_string())
}

/// Points as an N × 3 float tensor on `device`.
pub fn points_tensor(points: &[Point], device: Device) -> Tensor {
    Tensor::from_slice(points.as_flattened()).view([-1, 3]).upload(device)
}

/// A tensor's values as f32, row after row.
pub fn host_floats(t: &Tensor) -> Result<Vec<f32>> {
    t.download().to_kind(Kind::Float).contiguous().view(-1).try_into().map_err(tensor_error)
}

fn host_flags(t: &Tensor) -> Result<Vec<bool>> {
    Vec::<bool>::try_from(&t.download().contiguous()).map_err(tensor_error)
}

fn host_indices(t: &Tensor) -> Result<Vec<u32>> {
    let wide: Vec<i64> = t.download().to_kind(Kind::Int64).contiguous().view(-1).try_into().map_err(tensor_error)?;
    Ok(wide.into_iter().map(|i| i as u32).collect())
}

/// A device count (or any integer scalar), read on the host.
fn host_count(t: &Tensor) -> Option<i64> {
    i64::try_from(&t.download()).ok()
}

/// [`transfers::read_together`], its error this module's.
fn read_together(parts: &[&Tensor]) -> Result<Vec<Vec<f64>>> {
    transfers::read_together(parts).map_err(tensor_error)
}

/// Values read by [`read_together`] as points (three at a time) and as indices.
fn as_points(values: &[f64]) -> Vec<Point> {
    values.chunks_exact(3).map(|c| [c[0] as f32, c[1] as f32, c[2] as f32]).collect()
}

fn as_indices(values: &[f64]) -> Vec<u32> {
    values.iter().map(|&i| i as u32).collect()
}

fn as_flags(values: &[f64]) -> Vec<bool> {
    values.iter().map(|&v| v != 0.0).collect()
}

/// An N × 3 tensor's rows as points.
pub fn host_points(t: &Tensor) -> Result<Vec<Point>> {
    Ok(host_floats(t)?.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect())
}

/// Point indices as an int64 tensor on `device`.
pub fn indices_tensor(indices: &[u32], device: Device) -> Tensor {
    let wide: Vec<i64> = indices.iter().map(|&i| i64::from(i)).collect();
    Tensor::from_slice(&wide).upload(device)
}

/// a·b over the last axis (of size 3), summed x, y, z in that order as the host does, so the same inputs round
/// the same way.
fn dot(a: &Tensor, b: &Tensor) -> Tensor {
    a.select(-1, 0) * b.select(-1, 0) + a.select(-1, 1) * b.select(-1, 1) + a.select(-1, 2) * b.select(-1, 2)
}

fn cross(a: &Tensor, b: &Tensor) -> Tensor {
    let (a0, a1, a2) = (a.select(-1, 0), a.select(-1, 1), a.select(-1, 2));
    let (b0, b1, b2) = (b.select(-1, 0), b.select(-1, 1), b.select(-1, 2));
    Tensor::stack(&[&a1 * &b2 - &a2 * &b1, &a2 * &b0 - &a0 * &b2, &a0 * &b1 - &a1 * &b0], -1)
}

/// Squared distances of each query (Q × 3) to each point (N × 3): Q × N, rounded as the host's searches round.
fn squared_distances(queries: &Tensor, points: &Tensor) -> Tensor {
    let axis = |a: i64| (queries.select(1, a).unsqueeze(1) - points.select(1, a).unsqueeze(0)).square();
    axis(0) + axis(1) + axis(2)
}

/// (first row, rows) of the blocks that split `rows` so that each block × `width` ≤ `elements`.
fn blocks(rows: i64, width: i64, elements: i64) -> impl Iterator<Item = (i64, i64)> {
    let size = (elements / width.max(1)).max(1);
    (0..rows).step_by(size as usize).map(move |start| (start, size.min(rows - start)))
}

/// Neighbourhoods of a batch of queries, padded to the largest: indices into the searched points (−1 past a
/// query's own) and squared distances (+∞ there), nearest first.
pub struct Neighbors {
    pub index: Tensor,
    pub squared_distance: Tensor,
}

impl Neighbors {
    fn empty(device: Device) -> Self {
        Self {
            index: Tensor::zeros([0, 0], (Kind::Int64, device)),
            squared_distance: Tensor::zeros([0, 0], (Kind::Float, device)),
        }
    }

    /// The rows that `pick` takes of both tensors alike.
    fn rows(&self, pick: impl Fn(&Tensor) -> Tensor) -> Self {
        Self { index: pick(&self.index), squared_distance: pick(&self.squared_distance) }
    }

    /// Which entries are neighbours (the rest is padding).
    pub fn valid(&self) -> Tensor {
        self.index.ge(0)
    }

    /// The blocks' neighbourhoods as one, each padded to the widest.
    fn concatenated(parts: Vec<Self>, device: Device) -> Self {
        if parts.is_empty() {
            return Self::empty(device);
        }
        let width = parts.iter().map(|p| p.index.size()[1]).max().unwrap_or(0);
        let pad = |t: &Tensor, value: f64| {
            let [rows, columns] = [t.size()[0], t.size()[1]];
            Tensor::cat(&[t.shallow_clone(), Tensor::full([rows, width - columns], value, (t.kind(), device))], 1)
        };
        let index: Vec<Tensor> = parts.iter().map(|p| pad(&p.index, -1.0)).collect();
        let squared_distance: Vec<Tensor> = parts.iter().map(|p| pad(&p.squared_distance, f64::INFINITY)).collect();
        Self { index: Tensor::cat(&index, 0), squared_distance: Tensor::cat(&squared_distance, 0) }
    }
}

/// Points bucketed in a cubic grid, so a search looks only at the 27 cells around each query: every point within
/// one cell edge of a query is among them.
pub struct CellGrid {
    points: Tensor,
    cell: f64,
    /// The box of cells (with a margin of one), as its lowest cell and its extent per axis.
    low: Tensor,
    span: Tensor,
    /// The 27 cells around a cell, as offsets (1 × 27 × 3).
    offsets: Tensor,
    /// The most points in one cell, and the rows of queries per block of a search that it leaves (a query has at
    /// most 27 cells of the fullest).
    fullest: i64,
    block_rows: i64,
    /// Each point's cell code, ascending, and the point indices in that order.
    sorted_codes: Tensor,
    order: Tensor,
}

impl CellGrid {
    /// Cells of edge `cell` at least (larger where the cloud's box would hold too many cells to number: a larger
    /// cell still holds every point within `cell`). `None` where `cell` is not a finite positive size, for no
    /// points, or for non-finite ones. One read: the fullest cell's count, which sizes the searches, with whether
    /// the cells could be numbered. No `unique` (on a GPU, another wait): a cell's points are found in the sorted
    /// codes.
    pub fn new(points: &Tensor, cell: f32) -> Option<Self> {
        if !(cell.is_finite() && cell > 0.0) || points.size()[0] == 0 {
            return None;
        }
        let device = points.device();
        let mut cell = f64::from(cell);
        let (low, span, fullest, sorted_codes, order) = loop {
            let keys = (points.to_kind(Kind::Double) / cell).floor().to_kind(Kind::Int64);
            let low = keys.amin(0, false) - 1;
            let span = keys.amax(0, false) + 2 - &low;
            let code = fold(&(keys - &low), &span);
            let order = code.argsort(0, false);
            let sorted_codes = code.index_select(0, &order);
            let fullest = (cell_ends(&sorted_codes, &sorted_codes) - cell_starts(&sorted_codes, &sorted_codes)).max();
            let [fullest, numbered] = read_together(&[&fullest, &foldable(&span)]).ok()?.try_into().ok()?;
            if numbered.first() == Some(&1.0) {
                break (low, span, fullest.first().map_or(1, |&f| f as i64), sorted_codes, order);
            }
            cell *= 2.0;
            if !cell.is_finite() {
                return None; // Non-finite points: no cell numbers them.
            }
        };
        // Built where they are used: three kernels, not a copy.
        let o = Tensor::arange(27, (Kind::Int64, device));
        let offsets = Tensor::stack(
            &[
                o.divide_scalar_mode(9, "floor") - 1,
                o.divide_scalar_mode(3, "floor").remainder(3) - 1,
                o.remainder(3) - 1,
            ],
            1,
        )
        .view([1, 27, 3]);
        let block_rows = (SEARCH_BLOCK_ELEMENTS / (27 * fullest).max(1)).max(1);
        Some(Self {
            points: points.shallow_clone(),
            cell,
            low,
            span,
            offsets,
            fullest,
            block_rows,
            sorted_codes,
            order,
        })
    }

    pub fn device(&self) -> Device {
        self.points.device()
    }

    /// The same grid (its tensors shared, not copied).
    pub fn shallow_clone(&self) -> Self {
        Self {
            points: self.points.shallow_clone(),
            low: self.low.shallow_clone(),
            span: self.span.shallow_clone(),
            offsets: self.offsets.shallow_clone(),
            sorted_codes: self.sorted_codes.shallow_clone(),
            order: self.order.shallow_clone(),
            ..*self
        }
    }

    /// Every point of the 27 cells around each query: Q × 27·fullest indices, −1 past each cell's own. Padded to
    /// the grid's fullest cell, not the block's: no read of the block's counts (on a GPU, a wait for its kernels),
    /// and a search of the whole cloud has the fullest cell among its queries' anyway.
    fn candidates(&self, queries: &Tensor) -> Tensor {
        let device = queries.device();
        let q = queries.size()[0];
        let keys = (queries.to_kind(Kind::Double) / self.cell).floor().to_kind(Kind::Int64) - &self.low;
        let around = keys.unsqueeze(1) + &self.offsets;
        let inside = around.ge(0).logical_and(&around.lt_tensor(&self.span)).all_dim(2, false);
        let code = fold(&around.clamp_min(0), &self.span);
        let start = cell_starts(&self.sorted_codes, &code);
        let count = (cell_ends(&self.sorted_codes, &code) - &start) * inside;
        let width = self.fullest;
        let step = Tensor::arange(width, (Kind::Int64, device)).view([1, 1, width]);
        let slot = (start.unsqueeze(2) + &step).clamp_max(self.order.size()[0] - 1);
        let index = self.order.index_select(0, &slot.view(-1)).view([q, 27, width]);
        index.masked_fill(&step.ge_tensor(&count.unsqueeze(2)), -1).view([q, 27 * width])
    }

    /// Squared distances from each query to its candidates (+∞ for padding), rounded as the host's are.
    fn candidate_distances(&self, queries: &Tensor, candidates: &Tensor) -> Tensor {
        let (q, c) = (candidates.size()[0], candidates.size()[1]);
        let at = self.points.index_select(0, &candidates.clamp_min(0).view(-1)).view([q, c, 3]);
        let axis = |a: i64| (queries.select(1, a).unsqueeze(1) - at.select(2, a)).square();
        (axis(0) + axis(1) + axis(2)).masked_fill(&candidates.lt(0), f64::INFINITY)
    }

    /// Each query's `k` nearest candidates (at most its row's width), nearest first.
    fn nearest_candidates(&self, queries: &Tensor, candidates: &Tensor, k: i64) -> Neighbors {
        let (squared_distance, slot) = self.candidate_distances(queries, candidates).topk(k, 1, false, true);
        Neighbors { index: candidates.gather(1, &slot, false), squared_distance }
    }
}

/// Where each of `codes` begins among `sorted` (ascending), and where it ends: the two differ by its count.
fn cell_starts(sorted: &Tensor, codes: &Tensor) -> Tensor {
    codes.searchsorted(sorted, false, false, "left", None::<Tensor>)
}

fn cell_ends(sorted: &Tensor, codes: &Tensor) -> Tensor {
    codes.searchsorted(sorted, false, true, "right", None::<Tensor>)
}

/// 1 where the cells of a box of `span` (3, on the device) can be numbered by one i64 each ([`fold`]), else 0:
/// decided on the device and read with the results it vouches for, so nothing waits on it first. (The product in
/// f64, against 2^62: a margin for its rounding.)
fn foldable(span: &Tensor) -> Tensor {
    span.to_kind(Kind::Double).prod(Kind::Double).lt(4.611_686_018_427_388e18).to_kind(Kind::Int64)
}

/// Cell coordinates (… × 3, each within `span`, a device tensor of 3) folded into one integer each, in the rows'
/// lexicographic order: exact where [`foldable`].
fn fold(cells: &Tensor, span: &Tensor) -> Tensor {
    let (y, z) = (span.select(0, 1), span.select(0, 2));
    cells.select(-1, 0) * (&y * &z) + cells.select(-1, 1) * &z + cells.select(-1, 2)
}

/// The `k` nearest points of each query, nearest first (fewer when there are fewer points). `reach`: a distance
/// within which most queries have their `k` (about the k-th neighbour's distance on the cloud's surface): those
/// queries search only the cells of that edge around them, the rest (and every query where `reach` is not a
/// positive number) all the points.
pub fn knn(points: &Tensor, queries: &Tensor, k: i64, reach: f32) -> Neighbors {
    match CellGrid::new(points, reach) {
        Some(grid) => knn_in(&grid, queries, k),
        None => every_knn(points, queries, k),
    }
}

/// The `k` nearest of every point, block after block of queries.
fn every_knn(points: &Tensor, queries: &Tensor, k: i64) -> Neighbors {
    let k = k.min(points.size()[0]);
    let parts = blocks(queries.size()[0], points.size()[0], SEARCH_BLOCK_ELEMENTS)
        .map(|(start, rows)| {
            let (squared_distance, index) =
                squared_distances(&queries.narrow(0, start, rows), points).topk(k, 1, false, true);
            Neighbors { index, squared_distance }
        })
        .collect();
    Neighbors::concatenated(parts, points.device())
}

/// [`knn`] in a grid already built (its cells of edge `reach`).
pub fn knn_in(grid: &CellGrid, queries: &Tensor, k: i64) -> Neighbors {
    let k = k.min(grid.points.size()[0]);
    let parts = blocks(queries.size()[0], 1, grid.block_rows)
        .map(|(start, rows)| {
            let block = queries.narrow(0, start, rows);
            let candidates = grid.candidates(&block);
            if candidates.size()[1] < k {
                return every_knn(&grid.points, &block, k);
            }
            let Neighbors { index, squared_distance } = grid.nearest_candidates(&block, &candidates, k);
            // Exact where the k-th lies within one cell edge: nothing nearer can be outside the 27 cells.
            let unsure =
                transfers::sized_by_data(|| squared_distance.select(1, k - 1).gt(grid.cell * grid.cell).nonzero());
            let unsure = unsure.view(-1);
            if unsure.size()[0] == 0 {
                return Neighbors { index, squared_distance };
            }
            let redone = every_knn(&grid.points, &block.index_select(0, &unsure), k);
            Neighbors {
                index: index.index_copy(0, &unsure, &redone.index),
                squared_distance: squared_distance.index_copy(0, &unsure, &redone.squared_distance),
            }
        })
        .collect();
    Neighbors::concatenated(parts, grid.points.device())
}

/// Every point of `grid` within `radius` (inclusive, as the host's searches; the grid's cells at least that wide) of
/// each query (Q × 3), nearest first.
pub fn within(grid: &CellGrid, queries: &Tensor, radius: f32) -> Neighbors {
    let reach = f64::from(radius * radius);
    let parts = blocks(queries.size()[0], 1, grid.block_rows)
        .map(|(start, rows)| {
            let block = queries.narrow(0, start, rows);
            let candidates = grid.candidates(&block);
            let d2 = grid.candidate_distances(&block, &candidates);
            let outside = d2.gt(reach);
            let widest = host_count(&outside.logical_not().sum_dim_intlist(1, false, Kind::Int64).max()).unwrap_or(0);
            let (squared_distance, slot) = d2.masked_fill(&outside, f64::INFINITY).topk(widest, 1, false, true);
            let index = candidates.gather(1, &slot, false).masked_fill(&squared_distance.isinf(), -1);
            Neighbors { index, squared_distance }
        })
        .collect();
    Neighbors::concatenated(parts, grid.points.device())
}

/// Each query's nearest point of `grid` within `radius` (inclusive; the grid's cells at least that wide): index −1
/// and distance +∞ where there is none. [`knn`]'s cell search with k = 1, without its search of every point for a
/// query whose cells hold nothing near: that only finds points farther than a cell.
fn nearest_within(grid: &CellGrid, queries: &Tensor, radius: f32) -> Neighbors {
    let reach = f64::from(radius * radius);
    let parts = blocks(queries.size()[0], 1, grid.block_rows)
        .map(|(start, rows)| {
            let block = queries.narrow(0, start, rows);
            let nearest = grid.nearest_candidates(&block, &grid.candidates(&block), 1);
            let outside = nearest.squared_distance.gt(reach);
            Neighbors {
                index: nearest.index.masked_fill(&outside, -1),
                squared_distance: nearest.squared_distance.masked_fill(&outside, f64::INFINITY),
            }
        })
        .collect();
    Neighbors::concatenated(parts, grid.points.device())
}

/// How often each of 0..`bins` occurs among `values` (int64, each below `bins`). Not `bincount`: on a GPU it reads
/// the largest value to size its output.
pub fn occurrences(values: &Tensor, bins: i64) -> Tensor {
    Tensor::zeros([bins], (Kind::Int64, values.device())).index_add(0, values, &values.ones_like())
}

/// Per group (`group` of each value, groups in ascending order of their numbers, `counts` of each), the place of its
/// lowest value, the first on ties: two stable sorts, by value then by group, leave it first in its group's run.
fn lowest_of_each(group: &Tensor, values: &Tensor, counts: &Tensor) -> Tensor {
    let by_value = values.argsort_stable(true, 0, false);
    let by_group = group.index_select(0, &by_value).argsort_stable(true, 0, false);
    let first = counts.cumsum(0, Kind::Int64) - counts;
    by_value.index_select(0, &by_group.index_select(0, &first))
}

/// How [`voxel_downsample`] numbers the occupied voxels: each folded into one integer (many times cheaper; exact
/// for a box of fewer than 2^62 voxels) or by their rows (any box).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Numbering {
    Folded,
    Rows,
}

/// A voxel grid made on the device as [`super::voxel_downsample`] defines it: the centroid of each occupied voxel
/// (f64 sums; M × 3), voxels in order of first occurrence, and each input point's voxel (N int64). It is the host's
/// only where its checks say so; [`read_voxels`] reads them with the results, so nothing waits on them first.
pub struct DeviceVoxels {
    pub centroids: Tensor,
    pub representative: Tensor,
    /// The first non-finite point's index (−1: none), and 1 where the voxels' numbering is exact.
    checks: Tensor,
}

fn voxel_downsample(points: &Tensor, voxel_size: f32, numbering: Numbering) -> Result<DeviceVoxels> {
    let size = positive("voxel size", voxel_size)?;
    let n = points.size()[0];
    if n == 0 {
        return Err(GeometryError::Empty);
    }
    let (device, wide) = (points.device(), points.to_kind(Kind::Double));
    let not_finite = points.isfinite().all_dim(1, false).logical_not();
    let first_not_finite = (not_finite.to_kind(Kind::Int64).argmax(0, false) + 1) * not_finite.any() - 1;
    let keys = (&wide * (1.0 / f64::from(size))).floor().to_kind(Kind::Int64);
    let (cell, counts, exact) = cells_of(&keys, numbering);
    let cells = counts.size()[0];
    let first = lowest_of_each(&cell, &Tensor::arange(n, (Kind::Int64, device)), &counts);
    // Sorted cells renumbered by their first point.
    let by_first = first.argsort(0, false);
    let rank = Tensor::zeros([cells], (Kind::Int64, device)).scatter(
        0,
        &by_first,
        &Tensor::arange(cells, (Kind::Int64, device)),
    );
    let representative = rank.index_select(0, &cell);
    let sums = Tensor::zeros([cells, 3], (Kind::Double, device)).index_add(0, &representative, &wide);
    let counts = counts.index_select(0, &by_first).to_kind(Kind::Double).unsqueeze(1);
    Ok(DeviceVoxels {
        centroids: (sums / counts).to_kind(Kind::Float),
        representative,
        checks: Tensor::stack(&[first_not_finite, exact], 0),
    })
}

/// How the voxels of `points` (finite) can be numbered, decided from the host's copy (no read): folded where the
/// box of voxels, keyed as [`voxel_downsample`] keys it, is well below 2^62, else by rows.
fn numbering_on_host(points: &[Point], voxel_size: f32) -> Numbering {
    // Keying is monotone, so the box's corners give the lowest and highest keys.
    let key = |coordinate: f32| (f64::from(coordinate) * (1.0 / f64::from(voxel_size))).floor();
    let (low, high) = super::bounds(points);
    let voxels: f64 = (0..3).map(|axis| key(high[axis]) - key(low[axis]) + 1.0).product();
    if voxels < 2.305_843_009_213_694e18 { Numbering::Folded } else { Numbering::Rows }
}

/// A coarse copy of `points` (finite voxel points) on `device` for FPFH over wide radii: the centroids of voxels of
/// `coarse_voxel`, each with its voxel's central member's normal, and each point's coarse point. Nothing read: the
/// host's copy of the points says how to number the voxels.
fn coarse_copy(
    points: &SharedPoints,
    normals: &SharedRows<3>,
    device: Device,
    coarse_voxel: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let fine = points.on(device);
    let voxels = voxel_downsample(&fine, coarse_voxel, numbering_on_host(points, coarse_voxel))?;
    let central = central_members(&fine, &voxels.centroids, &voxels.representative);
    Ok((voxels.centroids, normals.on(device).index_select(0, &central), voxels.representative))
}

/// FPFH over `radius` on a coarse copy of `points` ([`coarse_copy`]), each of `queries` (indices into `points`)
/// taking its coarse point's: Q × 33. The histogram of every coarse point is taken (selecting the queries' own would
/// wait for the device to count them; they are most of them).
pub fn fpfh_of_coarse_points(
    points: &SharedPoints,
    normals: &SharedRows<3>,
    device: Device,
    coarse_voxel: f32,
    radius: f32,
    queries: &Tensor,
) -> Result<Tensor> {
    let (coarse, coarse_normals, coarse_of) = coarse_copy(points, normals, device, coarse_voxel)?;
    let grid = CellGrid::new(&coarse, positive("FPFH radius", radius)?).ok_or(GeometryError::Empty)?;
    let every = Tensor::arange(coarse.size()[0], (Kind::Int64, device));
    Ok(fpfh_at(&grid, &coarse_normals, radius, &every).index_select(0, &coarse_of.index_select(0, queries)))
}

/// FPFH over `radius` at each of `queries` (indices into `points`) added to a coarse copy of `points`
/// ([`coarse_copy`]): each histogram is still taken at its own point, over the coarse points (and the other
/// queries) around it. Q × 33.
pub fn fpfh_among_coarse_points(
    points: &SharedPoints,
    normals: &SharedRows<3>,
    device: Device,
    coarse_voxel: f32,
    radius: f32,
    queries: &Tensor,
) -> Result<Tensor> {
    let (coarse, coarse_normals, _) = coarse_copy(points, normals, device, coarse_voxel)?;
    let first = coarse.size()[0];
    let joined = Tensor::cat(&[coarse, points.on(device).index_select(0, queries)], 0);
    let joined_normals = Tensor::cat(&[coarse_normals, normals.on(device).index_select(0, queries)], 0);
    let grid = CellGrid::new(&joined, positive("FPFH radius", radius)?).ok_or(GeometryError::Empty)?;
    let added = Tensor::arange_start(first, first + queries.size()[0], (Kind::Int64, device));
    Ok(fpfh_at(&grid, &joined_normals, radius, &added))
}

/// The voxel grid of `points` with what `read` reads of it, which must include its checks (returned first): a
/// non-finite point is an error, and a box of too many voxels to fold has the grid made again by rows (a second
/// read, for a box of 2^62 voxels or more: a cloud with an absurd point).
fn read_voxels<T>(
    points: &Tensor,
    voxel_size: f32,
    read: impl Fn(&DeviceVoxels) -> Result<(Vec<f64>, T)>,
) -> Result<(DeviceVoxels, T)> {
    let mut numbering = Numbering::Folded;
    loop {
        let voxels = voxel_downsample(points, voxel_size, numbering)?;
        let (checks, values) = read(&voxels)?;
        if let Some(&first) = checks.first().filter(|&&first| first >= 0.0) {
            let point = host_points(&points.narrow(0, first as i64, 1))?.first().copied().unwrap_or([f32::NAN; 3]);
            return Err(GeometryError::NonFinite { index: first as usize, point });
        }
        if checks.get(1) == Some(&1.0) || numbering == Numbering::Rows {
            return Ok((voxels, values));
        }
        numbering = Numbering::Rows;
    }
}

/// The voxel grid of `points` on the device and on the host, and what `derive` makes of it on the device: all read
/// in one copy.
pub fn voxel_grid(
    points: &Tensor,
    voxel_size: f32,
    derive: impl Fn(&DeviceVoxels) -> Vec<Tensor>,
) -> Result<(DeviceVoxels, VoxelGrid, Vec<Vec<f64>>)> {
    let (voxels, (grid, derived)) = read_voxels(points, voxel_size, |voxels| {
        let derived = derive(voxels);
        let parts: Vec<&Tensor> =
            [&voxels.checks, &voxels.centroids, &voxels.representative].into_iter().chain(&derived).collect();
        let mut read = read_together(&parts)?.into_iter();
        let mut next = || read.next().unwrap_or_default();
        let (checks, centroids, representative) = (next(), next(), next());
        let grid = VoxelGrid { points: as_points(&centroids), representative: as_indices(&representative) };
        Ok((checks, (grid, read.collect())))
    })?;
    Ok((voxels, grid, derived))
}

/// As [`VoxelGrid::central_members`]: per voxel (`centroids` M × 3, `representative` of each of the N points), the
/// member nearest its centroid, in f64 and summed in the host's order, the first on ties. Returns M int64.
pub fn central_members(points: &Tensor, centroids: &Tensor, representative: &Tensor) -> Tensor {
    let voxels = centroids.size()[0];
    let offsets = points.to_kind(Kind::Double) - centroids.to_kind(Kind::Double).index_select(0, representative);
    let squares = offsets.square();
    let distance = squares.select(1, 0) + squares.select(1, 1) + squares.select(1, 2);
    lowest_of_each(representative, &distance, &occurrences(representative, voxels))
}

/// The positions of the `count` true flags, which the host has counted: sized by it, not by the data, so nothing
/// waits.
fn where_true(flags: &Tensor, count: usize) -> Tensor {
    flags.nonzero_static(count as i64, -1).view(-1)
}

/// As [`super::inside_robust_box`]: each axis's quantiles by `kthvalue`, and the box from them as
/// [`super::outliers::RobustBox::new`] makes it, in f64 on the device (nothing read before the flags). Returns
/// (N bool, the quantile box's diagonal as a scalar tensor).
pub fn inside_robust_box(points: &Tensor, rule: &OutlierRule) -> Result<(Tensor, Tensor)> {
    let n = points.size()[0];
    if n == 0 {
        return Err(GeometryError::Empty);
    }
    let (lo_at, hi_at) = quantile_ranks(n as usize, rule.quantile.clamp(0.0, 0.5));
    let quantile = |rank: usize| points.kthvalue(rank as i64 + 1, 0, false).0.to_kind(Kind::Double);
    let (low, high) = (quantile(lo_at), quantile(hi_at));
    let spans = &high - &low;
    let squares = spans.square();
    let diagonal = (squares.get(0) + squares.get(1) + squares.get(2)).sqrt();
    // A flat part's zero span still gets a tenth of the part's size as room; an infinite margin keeps every point.
    let room = if rule.margin.is_finite() {
        spans.maximum(&(&diagonal * 0.1)) * f64::from(rule.margin)
    } else {
        spans.full_like(f64::INFINITY)
    };
    let wide = points.to_kind(Kind::Double);
    let inside = wide.ge_tensor(&(low - &room)).logical_and(&wide.le_tensor(&(high + room))).all_dim(1, false);
    Ok((inside, diagonal))
}

/// As the host's floating groups: per point, the size of its group when points within `link` are joined. Labels
/// start as each point's index and settle on the lowest of each group: each round takes the lowest label around a
/// point, then the label of that label (so a long chain settles in a few rounds, not one per link).
pub fn group_sizes(points: &Tensor, link: f32) -> Result<Tensor> {
    let (n, device) = (points.size()[0], points.device());
    let link = positive("link distance", link)?;
    let neighbours = within(&CellGrid::new(points, link).ok_or(GeometryError::Empty)?, points, link);
    let own = Tensor::arange(n, (Kind::Int64, device)).unsqueeze(1).expand_as(&neighbours.index);
    let linked = neighbours.index.where_self(&neighbours.valid(), &own).view([-1]);
    let round = |label: &Tensor| {
        let lowest = label.index_select(0, &linked).view([n, -1]).amin(1, false).minimum(label);
        lowest.index_select(0, &lowest)
    };
    // Labels only fall, so a round that changes nothing has settled them, and rounds after it change nothing either.
    // Each check is a wait for the device: the rounds between checks double (the bundled frame's groups settle
    // after 14 rounds: 4 checks, not 15).
    let (mut label, mut rounds) = (Tensor::arange(n, (Kind::Int64, device)), 1);
    loop {
        for _ in 1..rounds {
            label = round(&label);
        }
        let next = round(&label);
        if transfers::sized_by_data(|| next.equal(&label)) {
            return Ok(occurrences(&label, n).index_select(0, &label));
        }
        (label, rounds) = (next, rounds * 2);
    }
}

/// As the floating-group step of [`super::drop_floating_groups`]: which points lie in groups of fewer than
/// `min_group` voxel points (voxels of `voxel`, linked within `link`).
pub fn in_floating_groups(points: &Tensor, voxel: f32, link: f32, min_group: usize) -> Result<Tensor> {
    // The checks are read before the grouping: it must not start from a grid that is not the host's.
    let (voxels, ()) = read_voxels(points, voxel, |voxels| Ok((read_together(&[&voxels.checks])?.concat(), ())))?;
    Ok(group_sizes(&voxels.centroids, link)?.index_select(0, &voxels.representative).lt(min_group as i64))
}

/// Point-to-plane ICP as [`super::register`] defines it, every step on the device: the correspondences, the sums,
/// the 6 × 6 solve and the pose. One copy of the start pose in and one read of the result: a step that read its
/// sums to solve them on the host would wait for the device twice (the sums, the next pose), 20 steps over. Where
/// the host stops (fewer than 6 pairs, no solution) the device's pose stops changing. Every correspondence is
/// searched each step (the host keeps those that surely hold, which finds the same ones).
pub fn register(
    source: &SharedPoints,
    template: &Template,
    distances: [f32; 2],
    iterations: usize,
    device: Device,
) -> Result<Registration> {
    let moving = source.on(device);
    let normals = template.normals.on(device);
    // The pose (rotation row after row, translation) and, as the host's loop last measured them, the overlap and
    // the rms: the pose the host returns is always the current one.
    let first = start(source, template, distances[0]);
    let values: Vec<f32> =
        first.rotation.as_flattened().iter().chain(&first.translation).chain(&[0.0, f32::INFINITY]).copied().collect();
    let values = Tensor::from_slice(&values).upload(device);
    let (mut rotation, mut translation) = (values.narrow(0, 0, 9).view([3, 3]), values.narrow(0, 9, 3));
    let mut measured = values.narrow(0, 12, 2);
    let mut live = Tensor::ones([], (Kind::Bool, device));
    for cutoff in cutoffs(distances, iterations) {
        let cutoff = positive("ICP cut-off", cutoff)?;
        // The template's grids: cells of the first cut-off, halved until they fit a step's, each searched by
        // every step it fits (at most twice that step's cut-off wide): 3 for the 20 steps of the detector's
        // 8 → 1.5 voxels, built at the first scan and kept with the template's points for the rest.
        let grid = template.points.grid(device, fitting_cell(distances[0], cutoff)).ok_or(GeometryError::Empty)?;
        let sums = correspondence_sums(&moving, &grid, &normals, &rotation, &translation, cutoff);
        let (ata, atb) = (sums.narrow(0, 0, 36).view([6, 6]), sums.narrow(0, 36, 6).view([6, 1]));
        let (residual2, used) = (sums.get(42), sums.get(43));
        live = live.logical_and(&used.ge(6.0));
        let overlap = used.to_kind(Kind::Float) / source.len() as f64;
        let rms = (residual2 / &used).sqrt().to_kind(Kind::Float);
        measured = Tensor::cat(&[overlap.view(1), rms.view(1)], 0).where_self(&live, &measured);
        let (factor, info) = ata.linalg_cholesky_ex(false, false);
        let x = atb.cholesky_solve(&factor, false).view(-1);
        live = live.logical_and(&info.eq(0));
        let turn = euler_rotation(&x.narrow(0, 0, 3)).to_kind(Kind::Float);
        let moved_rotation = turn.matmul(&rotation);
        let moved_translation = turn.matmul(&translation) + x.narrow(0, 3, 3).to_kind(Kind::Float);
        rotation = moved_rotation.where_self(&live, &rotation);
        translation = moved_translation.where_self(&live, &translation);
    }
    let values = host_floats(&Tensor::cat(&[rotation.view(-1), translation, measured], 0))?;
    let rotation = std::array::from_fn(|i| std::array::from_fn(|j| values[3 * i + j]));
    let transform = Rigid { rotation, translation: [values[9], values[10], values[11]] };
    Ok(Registration { transform, overlap: values[12], rms: values[13] })
}

/// The rotation of roll, pitch and yaw (`angles`, f64) as the host's `Rotation3::from_euler_angles` makes it:
/// yaw about z after pitch about y after roll about x.
/// Every point (N × 3) as `frame.apply(pose.apply(p))` (or `frame.apply(p)` without a pose) computes it on the host,
/// op for op (the sums left to right, the division by a tensor: CUDA multiplies by a number's reciprocal), so the
/// numbers are the host's to the bit.
pub fn placed(points: &Tensor, pose: Option<&Rigid>, frame: &UnitSphere) -> Tensor {
    let column = |axis: i64| points.select(1, axis);
    let axes: Vec<Tensor> = (0..3)
        .map(|a| {
            let moved = match pose {
                Some(pose) => {
                    let (r, t) = (pose.rotation[a], pose.translation[a]);
                    column(0) * f64::from(r[0])
                        + column(1) * f64::from(r[1])
                        + column(2) * f64::from(r[2])
                        + f64::from(t)
                }
                None => column(a as i64),
            };
            let shifted = moved - f64::from(frame.centre[a]);
            &shifted / shifted.full_like(f64::from(frame.scale))
        })
        .collect();
    Tensor::stack(&axes, 1)
}

fn euler_rotation(angles: &Tensor) -> Tensor {
    let options = (angles.kind(), angles.device());
    let (one, zero) = (Tensor::ones([1], options), Tensor::zeros([1], options));
    let (cos, sin) = (angles.cos(), angles.sin());
    let minus_sin = -&sin;
    let matrix = |entries: [&Tensor; 9]| Tensor::cat(&entries, 0).view([3, 3]);
    let [x, y, z] =
        [0, 1, 2].map(|axis| (cos.narrow(0, axis, 1), sin.narrow(0, axis, 1), minus_sin.narrow(0, axis, 1)));
    let roll = matrix([&one, &zero, &zero, &zero, &x.0, &x.2, &zero, &x.1, &x.0]);
    let pitch = matrix([&y.0, &zero, &y.1, &zero, &one, &zero, &y.2, &zero, &y.0]);
    let yaw = matrix([&z.0, &z.2, &zero, &z.1, &z.0, &zero, &zero, &zero, &one]);
    yaw.matmul(&pitch).matmul(&roll)
}

/// The cell of the grid that serves `cutoff`: `largest` halved while it stays at least `cutoff` (`cutoff` where that
/// is the larger).
fn fitting_cell(largest: f32, cutoff: f32) -> f32 {
    let mut cell = largest;
    while cell / 2.0 >= cutoff {
        cell /= 2.0;
    }
    cell.max(cutoff)
}

/// One ICP step on the device: `source` moved by `rotation` and `translation`, each point's nearest template point
/// within `cutoff`, and the point-to-plane sums over those pairs (in f64, the residual in f32 first, as the host takes
/// them): A^T A (36), A^T b (6), the squared residual (1), the pairs (1).
fn correspondence_sums(
    source: &Tensor,
    template: &CellGrid,
    normals: &Tensor,
    rotation: &Tensor,
    translation: &Tensor,
    cutoff: f32,
) -> Tensor {
    let moved = source.matmul(&rotation.tr()) + translation;
    let (points, nearest) = (&template.points, nearest_within(template, &moved, cutoff));
    // Points without a pair take part as rows of zeros: selecting the pairs (`nonzero`) would wait for the device.
    let far = nearest.index.view(-1).lt(0);
    let pair = nearest.index.view(-1).clamp_min(0);
    let n = normals.index_select(0, &pair);
    let residual = dot(&(&moved - points.index_select(0, &pair)), &n).to_kind(Kind::Double).masked_fill(&far, 0.0);
    let (q, n) = (moved.to_kind(Kind::Double), n.to_kind(Kind::Double));
    let rows = Tensor::cat(&[cross(&q, &n), n], 1).masked_fill(&far.unsqueeze(1), 0.0);
    Tensor::cat(
        &[
            rows.tr().matmul(&rows).view(-1),
            -(&rows * residual.unsqueeze(1)).sum_dim_intlist(0, false, Kind::Double),
            residual.square().sum(Kind::Double).view(1),
            far.logical_not().sum(Kind::Double).view(1),
        ],
        0,
    )
}

/// Each point's cell among the distinct rows of `keys` (N × 3 integer cell coordinates, numbered in sorted order),
/// each cell's count, and 1 where that numbering is exact: folded rows ([`fold`]) are unique over N numbers, many
/// times cheaper than over N rows, where the box of cells allows it.
fn cells_of(keys: &Tensor, numbering: Numbering) -> (Tensor, Tensor, Tensor) {
    let device = keys.device();
    if numbering == Numbering::Rows {
        let (_, cell, counts) = transfers::sized_by_data(|| keys.unique_dim(0, true, true, true));
        return (cell, counts, Tensor::ones([], (Kind::Int64, device)));
    }
    let low = keys.amin(0, false);
    let span = keys.amax(0, false) - &low + 1;
    let (distinct, cell) = transfers::sized_by_data(|| fold(&(keys - low), &span).internal_unique(true, true));
    let counts = occurrences(&cell, distinct.size()[0]);
    (cell, counts, foldable(&span))
}

/// Farthest-point sampling of a batch of clouds at once (`points` B × N × 3, each cloud's first `lengths[b]` rows
/// real and the rest padding), as [`super::farthest_point_sampling`] defines it, from `starts[b]`. Returns
/// B × `count` indices, of which each cloud's first min(`count`, length) are its samples.
pub fn farthest_point_sampling(points: &Tensor, lengths: &[i64], count: i64, starts: &[i64]) -> Tensor {
    let (batch, n, device) = (points.size()[0], points.size()[1], points.device());
    let starts = starts.iter().zip(lengths).map(|(&s, &len)| s.clamp(0, (len - 1).max(0)));
    // The lengths and the starts go up in one copy.
    let given = Tensor::from_slice(&lengths.iter().copied().chain(starts).collect::<Vec<i64>>()).upload(device);
    let real = Tensor::arange(n, (Kind::Int64, device)).unsqueeze(0).lt_tensor(&given.narrow(0, 0, batch).unsqueeze(1));
    // Chosen and padding points are at −∞: never the farthest; a chosen point's duplicates (0) stay eligible.
    let mut nearest = Tensor::full([batch, n], f64::INFINITY, (Kind::Float, device))
        .masked_fill(&real.logical_not(), f64::NEG_INFINITY);
    let mut current = given.narrow(0, batch, batch);
    let chosen_mark = Tensor::full([batch, 1], f64::NEG_INFINITY, (Kind::Float, device));
    let mut chosen = Vec::with_capacity(count.max(0) as usize);
    // Eight kernels a step (a GPU's cost here is their launches, `count` times over): the offsets squared in one
    // pass over B × N × 3, summed x + y then + z as before, and the chosen point marked in place.
    for _ in 0..count {
        chosen.push(current.shallow_clone());
        let centre = points.gather(1, &current.view([batch, 1, 1]).expand([batch, 1, 3], false), false);
        let mut squares = points - centre;
        let _ = squares.square_();
        let mut distance = squares.select(2, 0) + squares.select(2, 1);
        let _ = distance.g_add_(&squares.select(2, 2));
        nearest = nearest.minimum(&distance);
        let _ = nearest.scatter_(1, &current.unsqueeze(1), &chosen_mark);
        current = nearest.argmax(1, false);
    }
    if chosen.is_empty() {
        return Tensor::zeros([batch, 0], (Kind::Int64, device));
    }
    Tensor::stack(&chosen, 1)
}

/// [`farthest_point_sampling`] of a batch already on the device: each cloud's samples, read back and kept there.
fn samples_per_cloud(points: &Tensor, lengths: &[usize], count: usize, starts: &[usize]) -> Result<Vec<SharedIndices>> {
    let wide = |values: &[usize]| values.iter().map(|&v| v as i64).collect::<Vec<i64>>();
    let chosen = farthest_point_sampling(points, &wide(lengths), count as i64, &wide(starts));
    let read = host_indices(&chosen)?;
    // Row b holds cloud b's samples, then (past its length) repeats of the padding's choice.
    Ok(lengths
        .iter()
        .enumerate()
        .map(|(b, &length)| {
            let taken = count.min(length);
            let host = read[b * count..b * count + taken].to_vec();
            SharedIndices::from_device(chosen.get(b as i64).narrow(0, 0, taken as i64), host)
        })
        .collect())
}

/// PCA normals over the `k` nearest points as [`super::estimate_normals`] computes them (f64 covariance; the
/// eigenvector of the smallest eigenvalue), turned to `orientation`; zero with fewer than 3 points. `reach` as
/// for [`knn`].
pub fn normals(points: &Tensor, k: i64, reach: f32, orientation: NormalOrientation) -> Tensor {
    let (n, device) = (points.size()[0], points.device());
    let k = k.min(n);
    if k < 3 {
        return Tensor::zeros([n, 3], (Kind::Float, device));
    }
    let near = knn(points, points, k, reach);
    let members = points.to_kind(Kind::Double).index_select(0, &near.index.view(-1)).view([n, k, 3]);
    let centred = &members - members.mean_dim(1, true, Kind::Double);
    let covariance = centred.transpose(1, 2).matmul(&centred);
    let (_, vectors) = transfers::sized_by_data(|| covariance.linalg_eigh("L"));
    let normal = vectors.select(2, 0);
    let towards = match orientation {
        // v − p axis by axis, v a number: the host's values, and nothing to copy up.
        NormalOrientation::TowardsViewpoint(v) => {
            Tensor::stack(&[0, 1, 2].map(|a| points.select(1, a).neg() + f64::from(v[a as usize])), 1)
        }
        NormalOrientation::AwayFromCentroid => points - points.mean_dim(0, true, Kind::Float),
    };
    let away = dot(&normal, &towards.to_kind(Kind::Double)).lt(0.0).unsqueeze(1);
    normal.neg().where_self(&away, &normal).to_kind(Kind::Float)
}

/// The bin of each value of `value` in 11 equal bins over [low, high], as the host bins (truncation, clamped).
fn bin(value: &Tensor, low: f64, high: f64) -> Tensor {
    ((value - low) * BINS_PER_ANGLE as f64 / (high - low))
        .nan_to_num(0.0, None, None)
        .clamp_min(0.0)
        .to_kind(Kind::Int64)
        .clamp_max(BINS_PER_ANGLE - 1)
}

/// PCL's pair features of each point (R × 1 × 3, f64) with each of its neighbours (R × K × 3), the point the
/// source when the |cosines| tie, as the host's `pair_features`: the three histogram slots (θ, α, φ) per pair,
/// R × K × 3, and whether the pair has any (not coincident, both normals set, a frame).
fn pair_slots(p1: &Tensor, n1: &Tensor, p2: &Tensor, n2: &Tensor) -> (Tensor, Tensor) {
    let set = |n: &Tensor| n.ne(0.0).any_dim(-1, false);
    let d = p2 - p1;
    let length = dot(&d, &d).sqrt();
    let angle1 = dot(n1, &d) / &length;
    let angle2 = dot(n2, &d) / &length;
    let swap = angle1.abs().lt_tensor(&angle2.abs());
    let swap3 = swap.unsqueeze(-1);
    let (n1, n2) = (n1.expand_as(&d), n2.expand_as(&d));
    let d = d.neg().where_self(&swap3, &d);
    let u = n2.where_self(&swap3, &n1);
    let target = n1.where_self(&swap3, &n2);
    let phi = angle2.neg().where_self(&swap, &angle1);
    let v = cross(&d, &u);
    let v_norm = dot(&v, &v).sqrt();
    let v = v / v_norm.unsqueeze(-1);
    let w = cross(&u, &v);
    let alpha = dot(&v, &target);
    let theta = dot(&w, &target).atan2(&dot(&u, &target));
    let ok = set(&n1).logical_and(&set(&n2)).logical_and(&length.ne(0.0)).logical_and(&v_norm.ne(0.0));
    let slots = Tensor::stack(
        &[
            bin(&theta, -std::f64::consts::PI, std::f64::consts::PI),
            bin(&alpha, -1.0, 1.0) + BINS_PER_ANGLE,
            bin(&phi, -1.0, 1.0) + 2 * BINS_PER_ANGLE,
        ],
        -1,
    );
    (slots, ok)
}

/// The SPFH of each of `centres` (indices into the grid's points) over `near`, its neighbours within the radius
/// (row after row, as [`within`] finds them): R × 33.
fn spfh(grid: &CellGrid, normals: &Tensor, centres: &Tensor, near: &Neighbors) -> Tensor {
    let (points, device) = (&grid.points, grid.points.device());
    let (wide_points, wide_normals) = (points.to_kind(Kind::Double), normals.to_kind(Kind::Double));
    let width = near.index.size()[1];
    let parts: Vec<Tensor> = blocks(centres.size()[0], 1, PAIR_BLOCK_ELEMENTS / 64)
        .map(|(start, rows)| {
            let own = centres.narrow(0, start, rows);
            let near = near.rows(|t| t.narrow(0, start, rows));
            let others = near.index.clamp_min(0).view(-1);
            let gather = |t: &Tensor| t.index_select(0, &others).view([rows, width, 3]);
            let at_own = |t: &Tensor| t.index_select(0, &own).unsqueeze(1);
            let (slots, ok) = pair_slots(
                &at_own(&wide_points),
                &at_own(&wide_normals),
                &gather(&wide_points),
                &gather(&wide_normals),
            );
            let counted = ok.logical_and(&near.valid()).logical_and(&near.index.ne_tensor(&own.unsqueeze(1)));
            let flat =
                (slots + (Tensor::arange(rows, (Kind::Int64, device)) * FPFH_BINS as i64).view([rows, 1, 1])).view(-1);
            let ones = counted.unsqueeze(-1).expand([rows, width, 3], false).to_kind(Kind::Float).reshape([-1]);
            let counts = Tensor::zeros([rows * FPFH_BINS as i64], (Kind::Float, device)).index_add(0, &flat, &ones);
            // Increments of 100 / (neighbours − 1), the point itself among its neighbours; none below 2.
            let size = near.valid().sum_dim_intlist(1, false, Kind::Float);
            let increment = (size.ones_like() * 100.0 / (&size - 1.0)).where_self(&size.ge(2.0), &size.zeros_like());
            counts.view([rows, FPFH_BINS as i64]) * increment.unsqueeze(1)
        })
        .collect();
    if parts.is_empty() {
        return Tensor::zeros([0, FPFH_BINS as i64], (Kind::Float, device));
    }
    Tensor::cat(&parts, 0)
}

/// FPFH of each of `queries` (indices into `points`) over `radius`, as [`super::fpfh_at`] defines it: the
/// 1/d²-weighted sum of the neighbours' SPFHs, each angle's histogram normalised to 100. Q × 33.
pub fn fpfh_at(grid: &CellGrid, normals: &Tensor, radius: f32, queries: &Tensor) -> Tensor {
    let (n, q, device) = (grid.points.size()[0], queries.size()[0], grid.points.device());
    // Each neighbour's SPFH once, however many queries share it, over neighbourhoods found in one search (each search
    // reads its width back). Where the queries are a good share of the points, their neighbours are nearly all of
    // them: every point's SPFH is taken, and the queries' neighbourhoods are rows of that search.
    let (needed, near_needed, near) = if q * EVERY_POINT_SHARE >= n {
        let every = within(grid, &grid.points, radius);
        let near = every.rows(|t| t.index_select(0, queries));
        (Tensor::arange(n, (Kind::Int64, device)), every, near)
    } else {
        // The points needed first (ascending), then others up to a count the host knows (selecting exactly the
        // needed ones would wait for the device to size them).
        let near = within(grid, &grid.points.index_select(0, queries), radius);
        let mut mark = Tensor::zeros([n + 1], (Kind::Bool, device));
        let _ = mark.index_fill_(0, &near.index.where_scalarother(&near.valid(), n).view(-1), 1);
        let _ = mark.index_fill_(0, queries, 1);
        let count = n.min(q * (near.index.size()[1] + 1));
        let needed = mark.narrow(0, 0, n).argsort_stable(true, 0, true).narrow(0, 0, count);
        let near_needed = within(grid, &grid.points.index_select(0, &needed), radius);
        (needed, near_needed, near)
    };
    let width = near.index.size()[1];
    let spfhs = spfh(grid, normals, &needed, &near_needed);
    let slot = Tensor::zeros([n], (Kind::Int64, device)).scatter(
        0,
        &needed,
        &Tensor::arange(needed.size()[0], (Kind::Int64, device)),
    );
    let weighted = near.valid().logical_and(&near.squared_distance.ne(0.0));
    let weight = near.squared_distance.reciprocal().where_self(&weighted, &near.squared_distance.zeros_like());
    let parts: Vec<Tensor> = blocks(q, width * FPFH_BINS as i64, PAIR_BLOCK_ELEMENTS * 32)
        .map(|(start, rows)| {
            let rows_of = slot.index_select(0, &near.index.narrow(0, start, rows).clamp_min(0).view(-1));
            let neighbours = spfhs.index_select(0, &rows_of).view([rows, width, FPFH_BINS as i64]);
            (neighbours * weight.narrow(0, start, rows).unsqueeze(2)).sum_dim_intlist(1, false, Kind::Float)
        })
        .collect();
    if parts.is_empty() {
        return Tensor::zeros([0, FPFH_BINS as i64], (Kind::Float, device));
    }
    let hist = Tensor::cat(&parts, 0).view([q, 3, BINS_PER_ANGLE]);
    let sum = hist.sum_dim_intlist(2, true, Kind::Float);
    let scaled = &hist * (sum.ones_like() * 100.0 / &sum);
    scaled.where_self(&sum.ne(0.0), &hist).view([q, FPFH_BINS as i64])
}

/// Each voxel point's score from one score per patch (`groups` P × k indices, `patch_scores` P), as
/// [`super::projection::spread_patch_scores`] defines it: the maximum over the patches that contain it, else its nearest
/// centre's (`centres` P × 3).
pub fn spread_patch_scores(points: &Tensor, centres: &Tensor, groups: &Tensor, patch_scores: &Tensor) -> Tensor {
    let (n, device) = (points.size()[0], points.device());
    let k = groups.size()[1];
    // A NaN score is no patch's maximum (`f32::max` passes it over, as the host does); infinities stay as they are.
    let per_member = patch_scores
        .nan_to_num(f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY)
        .unsqueeze(1)
        .expand([-1, k], false);
    let scores = Tensor::full([n], f64::NEG_INFINITY, (Kind::Float, device)).internal_scatter_reduce(
        0,
        &groups.reshape([-1]),
        &per_member.reshape([-1]),
        "amax",
        true,
    );
    // Every point's nearest centre, not only the uncovered ones': selecting those would wait for the device to count
    // them, and P centres per point are few.
    let nearest = every_knn(centres, points, 1).index.view(-1);
    scores.where_self(&scores.isneginf().logical_not(), &patch_scores.index_select(0, &nearest))
}

/// [`spread_patch_scores`] of the voxel points, centres (indices into them) and groups (k indices per patch) of a
/// cloud, on `device`.
pub fn spread_on(
    device: Device,
    points: &SharedPoints,
    centres: &SharedIndices,
    groups: &SharedIndices,
    patch_size: usize,
    patch_scores: &Tensor,
) -> Tensor {
    let points = points.on(device);
    let centres = points.index_select(0, &centres.on(device));
    spread_patch_scores(&points, &centres, &groups.on(device).view([-1, patch_size as i64]), patch_scores)
}

/// The median of the finite values within `radius` of each point, itself included (the mean of the middle two
/// for an even count; its own value where none is finite), as [`super::median_filter`] defines it.
pub fn median_filter(grid: &CellGrid, values: &Tensor, radius: f32) -> Result<Tensor> {
    let parts: Vec<Tensor> = blocks(grid.points.size()[0], 1, PAIR_BLOCK_ELEMENTS)
        .map(|(start, rows)| {
            let near = within(grid, &grid.points.narrow(0, start, rows), radius);
            let window = values.index_select(0, &near.index.clamp_min(0).view(-1)).view([rows, -1]);
            let kept = near.valid().logical_and(&window.isfinite());
            let (sorted, _) = window.masked_fill(&kept.logical_not(), f64::INFINITY).sort(1, false);
            let count = kept.sum_dim_intlist(1, false, Kind::Int64);
            let middle = count.divide_scalar_mode(2, "floor").unsqueeze(1);
            let upper = sorted.gather(1, &middle.clamp_max(sorted.size()[1] - 1).clamp_min(0), false).squeeze_dim(1);
            let lower = sorted.gather(1, &(&middle - 1).clamp_min(0), false).squeeze_dim(1);
            let even = (&lower + &upper) * 0.5;
            let median = upper.where_self(&count.remainder(2).eq(1), &even);
            median.where_self(&count.gt(0), &values.narrow(0, start, rows))
        })
        .collect();
    if parts.is_empty() {
        return Err(GeometryError::Empty);
    }
    Ok(Tensor::cat(&parts, 0))
}

/// The distance within which a surface sampled every `spacing` has a point's `k` nearest, with a margin: the
/// reach of [`knn`]'s cell search.
fn surface_reach(k: usize, spacing: f32) -> f32 {
    1.5 * spacing * (k as f32 / std::f32::consts::PI).sqrt()
}

/// The grid of `points`' device copy for searches within `radius` (`what`, named where it is not a positive size):
/// built once per radius and kept with the points ([`SharedPoints::grid`]).
pub fn search_grid(points: &SharedPoints, device: Device, what: &'static str, radius: f32) -> Result<CellGrid> {
    points.grid(device, positive(what, radius)?).ok_or(GeometryError::Empty)
}

/// A stage of a scan's geometry that [`Compute`] can run on a device or on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The robust box and the floating groups.
    Outliers,
    /// Voxel grids (the scan's, the feature cells').
    Voxels,
    /// ICP's correspondences and sums.
    Registration,
    /// Farthest-point sampling of the patch centres.
    Sampling,
    Normals,
    /// The kNN patches.
    Grouping,
    /// FPFH, with the coarse copies it is taken on.
    Fpfh,
    /// The model's surface context (radius counts, the template's surface).
    Context,
    /// Patch scores spread to the voxel points, and the median filter.
    Projection,
}

impl Stage {
    pub const ALL: [Stage; 9] = [
        Stage::Outliers,
        Stage::Voxels,
        Stage::Registration,
        Stage::Sampling,
        Stage::Normals,
        Stage::Grouping,
        Stage::Fpfh,
        Stage::Context,
        Stage::Projection,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Outliers => "outliers",
            Stage::Voxels => "voxels",
            Stage::Registration => "registration",
            Stage::Sampling => "sampling",
            Stage::Normals => "normals",
            Stage::Grouping => "grouping",
            Stage::Fpfh => "fpfh",
            Stage::Context => "context",
            Stage::Projection => "projection",
        }
    }

    const fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// A set of [`Stage`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stages(u16);

impl Stages {
    pub const NONE: Stages = Stages(0);

    pub const fn with(self, stage: Stage) -> Self {
        Self(self.0 | stage.bit())
    }

    pub const fn contains(self, stage: Stage) -> bool {
        self.0 & stage.bit() != 0
    }
}

/// Where a scan's geometry runs: the host's code (k-d trees, rayon) or the tensor code above on a device, stage by
/// stage (a GPU may lose some small, serial stages to its host). Takes and gives the host's types, so a stage
/// switches without its callers knowing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compute {
    Host,
    /// Tensor code on `device`, but for the stages in `host`.
    Tensors {
        device: Device,
        host: Stages,
    },
}

impl Compute {
    /// Every stage as tensor code on `device`.
    pub const fn tensors(device: Device) -> Self {
        Self::Tensors { device, host: Stages::NONE }
    }

    /// This placement with `stage` on the host.
    pub const fn with_host(self, stage: Stage) -> Self {
        match self {
            Self::Host => Self::Host,
            Self::Tensors { device, host } => Self::Tensors { device, host: host.with(stage) },
        }
    }

    /// The device `stage` runs on; `None`: the host.
    pub fn device_for(self, stage: Stage) -> Option<Device> {
        match self {
            Self::Tensors { device, host } if !host.contains(stage) => Some(device),
            _ => None,
        }
    }

    pub fn voxel_downsample(&self, points: &SharedPoints, voxel_size: f32) -> Result<VoxelGrid> {
        match self.device_for(Stage::Voxels) {
            None => super::voxel_downsample(points, voxel_size),
            Some(device) => Ok(voxel_grid(&points.on(device), voxel_size, |_| Vec::new())?.1),
        }
    }

    /// [`Self::voxel_downsample`] with the voxel points apart: made on the device, they keep their copy there.
    pub fn voxel_points(&self, points: &SharedPoints, voxel_size: f32) -> Result<(VoxelGrid, SharedPoints<'static>)> {
        match self.device_for(Stage::Voxels) {
            None => {
                let grid = super::voxel_downsample(points, voxel_size)?;
                let voxel_points = grid.points.clone().into();
                Ok((grid, voxel_points))
            }
            Some(device) => {
                let (voxels, grid, _) = voxel_grid(&points.on(device), voxel_size, |_| Vec::new())?;
                let voxel_points = SharedPoints::with_copy(grid.points.clone(), voxels.centroids);
                Ok((grid, voxel_points))
            }
        }
    }

    /// The voxel grid and, per voxel, its [central member](VoxelGrid::central_members).
    pub fn voxel_centres(&self, points: &SharedPoints, voxel_size: f32) -> Result<(VoxelGrid, Vec<u32>)> {
        match self.device_for(Stage::Fpfh) {
            None => {
                let grid = super::voxel_downsample(points, voxel_size)?;
                let central = grid.central_members(points);
                Ok((grid, central))
            }
            Some(device) => {
                let points = points.on(device);
                let (_, grid, central) = voxel_grid(&points, voxel_size, |voxels| {
                    vec![central_members(&points, &voxels.centroids, &voxels.representative)]
                })?;
                Ok((grid, as_indices(&central.concat())))
            }
        }
    }

    /// Outlier removal ([`super::inside_robust_box`], `check` on its result, then [`super::drop_floating_groups`]),
    /// with the points kept. On a device the kept points are taken from the points' copy there, by the counts the
    /// host has read: the scan's points go up once for all of its geometry.
    pub fn inliers<E: From<GeometryError>>(
        &self,
        points: &SharedPoints,
        rule: &OutlierRule,
        check: impl FnOnce(&Inliers) -> std::result::Result<(), E>,
    ) -> std::result::Result<(Inliers, SharedPoints<'static>), E> {
        let Some(device) = self.device_for(Stage::Outliers) else {
            let boxed = super::inside_robust_box(points, rule)?;
            check(&boxed)?;
            let inliers = super::drop_floating_groups(points, boxed, rule)?;
            let kept = inliers.kept_points(points).into();
            return Ok((inliers, kept));
        };
        let all = points.on(device);
        let (keep, diagonal) = inside_robust_box(&all, rule)?;
        let read = read_together(&[&keep, &diagonal])?;
        let boxed = Inliers::from_flags(as_flags(&read[0]), read[1].first().copied().unwrap_or(0.0));
        check(&boxed)?;
        let in_box = all.index_select(0, &where_true(&keep, points.len() - boxed.removed));
        let mut floating = None;
        let inliers = super::outliers::drop_floating_groups_with(points, boxed, rule, |_, voxel| {
            let flags = in_floating_groups(&in_box, voxel, voxel * rule.link_voxels, rule.min_group)?;
            floating = Some(flags.shallow_clone());
            host_flags(&flags)
        })?;
        let kept_points = inliers.kept_points(points);
        let kept = match floating {
            Some(flags) if kept_points.len() < in_box.size()[0] as usize => {
                in_box.index_select(0, &where_true(&flags.logical_not(), kept_points.len()))
            }
            _ => in_box,
        };
        Ok((inliers, SharedPoints::with_copy(kept_points, kept)))
    }

    /// As [`super::register`].
    pub fn register(
        &self,
        source: &SharedPoints,
        template: &Template,
        distances: [f32; 2],
        iterations: usize,
    ) -> Result<Registration> {
        match self.device_for(Stage::Registration) {
            None => Ok(super::register(source, template, distances[0], distances[1], iterations)),
            Some(device) => register(source, template, distances, iterations, device),
        }
    }

    pub fn farthest_point_sampling(&self, points: &SharedPoints, count: usize, start: usize) -> Result<SharedIndices> {
        match self.device_for(Stage::Sampling) {
            None => Ok(super::farthest_point_sampling(points, count, start).into()),
            Some(device) => {
                let mut one = samples_per_cloud(&points.on(device).unsqueeze(0), &[points.len()], count, &[start])?;
                Ok(one.pop().unwrap_or_default())
            }
        }
    }

    /// [`Self::farthest_point_sampling`] of several clouds (`starts` one per cloud). On a device they share one
    /// loop of `count` steps, padded to the largest: FPS is a few small kernels per step, which one cloud does not
    /// keep a GPU busy with.
    pub fn farthest_point_sampling_batch(
        &self,
        clouds: &[&SharedPoints],
        count: usize,
        starts: &[usize],
    ) -> Result<Vec<SharedIndices>> {
        match self.device_for(Stage::Sampling) {
            None => Ok(clouds
                .iter()
                .zip(starts)
                .map(|(points, &s)| super::farthest_point_sampling(points, count, s).into())
                .collect()),
            Some(_) if clouds.is_empty() => Ok(Vec::new()),
            Some(device) => {
                let longest = clouds.iter().map(|c| c.len()).max().unwrap_or(0);
                let copies: Option<Vec<Tensor>> = clouds.iter().map(|c| c.copy_on(device)).collect();
                // Padded with zeros: on the device where every cloud has its copy there, else on the host, copied once.
                let points = match copies {
                    Some(copies) => {
                        let pad = |copy: Tensor| copy.constant_pad_nd([0, 0, 0, longest as i64 - copy.size()[0]]);
                        Tensor::stack(&copies.into_iter().map(pad).collect::<Vec<_>>(), 0)
                    }
                    None => {
                        let mut padded = Vec::with_capacity(clouds.len() * longest * 3);
                        for points in clouds {
                            padded.extend(points.as_flattened());
                            padded.resize(padded.len() + (longest - points.len()) * 3, 0.0);
                        }
                        let shape = [clouds.len() as i64, longest as i64, 3];
                        Tensor::from_slice(&padded).view(shape).upload(device)
                    }
                };
                let lengths: Vec<usize> = clouds.iter().map(|c| c.len()).collect();
                samples_per_cloud(&points, &lengths, count, starts)
            }
        }
    }

    /// Normals over the `k` nearest points, of points about `spacing` apart (made on the device, they stay there
    /// too).
    pub fn normals(
        &self,
        points: &SharedPoints,
        index: &NeighborIndex,
        k: usize,
        spacing: f32,
        orientation: NormalOrientation,
    ) -> Result<SharedRows<3>> {
        match self.device_for(Stage::Normals) {
            None => Ok(SharedRows::Host(super::estimate_normals(points, index, Neighborhood::Knn(k), orientation))),
            Some(device) => {
                let reach = surface_reach(k, spacing);
                Ok(SharedRows::device(normals(&points.on(device), k as i64, reach, orientation)))
            }
        }
    }

    /// The `k` nearest points of each centre, row after row, as [`NeighborIndex::group`], of points about `spacing`
    /// apart (made on the device, they stay there too).
    pub fn group(
        &self,
        points: &SharedPoints,
        index: &NeighborIndex,
        centres: &SharedIndices,
        k: usize,
        spacing: f32,
    ) -> Result<SharedIndices> {
        match self.device_for(Stage::Grouping) {
            None => Ok(index.group(&centres.iter().map(|&c| points[c as usize]).collect::<Vec<_>>(), k).into()),
            Some(device) => {
                let points = points.on(device);
                let centres = points.index_select(0, &centres.on(device));
                let groups = knn(&points, &centres, k as i64, surface_reach(k, spacing)).index;
                Ok(SharedIndices::from_device(groups.shallow_clone(), host_indices(&groups)?))
            }
        }
    }

    /// FPFH at `queries`. `index`: the points' k-d tree where the caller has one; the host's code builds one where
    /// it is `None`, the device's needs none.
    pub fn fpfh_at(
        &self,
        points: &SharedPoints,
        normals: &SharedRows<3>,
        index: Option<&NeighborIndex>,
        radius: f32,
        queries: &[u32],
    ) -> Result<Vec<Fpfh>> {
        match self.device_for(Stage::Fpfh) {
            None => {
                let normals = normals.rows()?;
                match index {
                    Some(index) => super::fpfh_at(points, &normals, index, radius, queries),
                    None => super::fpfh_at(points, &normals, &NeighborIndex::new(points)?, radius, queries),
                }
            }
            Some(device) => {
                let grid = search_grid(points, device, "FPFH radius", radius)?;
                let hist = fpfh_at(&grid, &normals.on(device), radius, &indices_tensor(queries, device));
                let flat = host_floats(&hist)?;
                Ok(flat.chunks_exact(FPFH_BINS).map(|h| std::array::from_fn(|b| h[b])).collect())
            }
        }
    }

    /// As [`super::projection::spread_patch_scores`], with the patch centres given as indices into `points`.
    pub fn spread_patch_scores(
        &self,
        points: &SharedPoints,
        centres: &SharedIndices,
        groups: &SharedIndices,
        patch_size: usize,
        patch_scores: &[f32],
    ) -> Result<Vec<f32>> {
        match self.device_for(Stage::Projection) {
            None => {
                let centres: Vec<Point> = centres.iter().map(|&c| points[c as usize]).collect();
                super::projection::spread_patch_scores(points, &centres, groups, patch_size, patch_scores)
            }
            Some(device) => {
                let scores = Tensor::from_slice(patch_scores).upload(device);
                host_floats(&spread_on(device, points, centres, groups, patch_size, &scores))
            }
        }
    }

    pub fn median_filter(
        &self,
        points: &SharedPoints,
        values: &[f32],
        index: &NeighborIndex,
        radius: f32,
    ) -> Result<Vec<f32>> {
        match self.device_for(Stage::Projection) {
            None => super::median_filter(points, values, index, radius),
            Some(device) => {
                let values = Tensor::from_slice(values).upload(device);
                host_floats(&median_filter(
                    &search_grid(points, device, "median filter radius", radius)?,
                    &values,
                    radius,
                )?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::super::{unit_sphere_points, voxel_downsample as host_voxels};
    use super::*;

    const CPU: Compute = Compute::tensors(Device::Cpu);

    fn shared(points: &[Point]) -> SharedPoints<'_> {
        SharedPoints::from(points)
    }

    /// A bumpy sphere, jittered: no exact distance ties, curvature for the normals and FPFH to see.
    fn surface(n: usize, seed: u64) -> Vec<Point> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        unit_sphere_points(n)
            .into_iter()
            .map(|p| {
                let r = 1.0 + 0.1 * (3.0 * p[0]).sin() * (2.0 * p[1]).cos() + rng.gen_range(-1e-3..1e-3);
                p.map(|c| c * r)
            })
            .collect()
    }

    fn max_difference(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn points_placed_on_the_device_are_the_hosts_to_the_bit() {
        let pts = surface(3000, 7);
        let (c, s) = (0.3f32.cos(), 0.3f32.sin());
        let pose = Rigid {
            rotation: [[c, -s, 0.0], [s * 0.9, c * 0.9, -0.436], [s * 0.436, c * 0.436, 0.9]],
            translation: [0.3, -1.2, 2.5],
        };
        let frame = UnitSphere { centre: [0.1, 0.2, -0.3], scale: 1.7 };
        let on_device = points_tensor(&pts, Device::Cpu);
        for pose in [Some(&pose), None] {
            let host: Vec<Point> = pts.iter().map(|&p| frame.apply(pose.map_or(p, |pose| pose.apply(p)))).collect();
            assert_eq!(
                host_points(&placed(&on_device, pose, &frame)).unwrap(),
                host,
                "with a pose: {}",
                pose.is_some()
            );
        }
    }

    #[test]
    fn a_stage_put_on_the_host_runs_there_and_only_it() {
        let split = CPU.with_host(Stage::Registration).with_host(Stage::Sampling);
        for stage in Stage::ALL {
            let on_host = matches!(stage, Stage::Registration | Stage::Sampling);
            assert_eq!(split.device_for(stage), (!on_host).then_some(Device::Cpu), "{}", stage.name());
            assert_eq!(Compute::Host.with_host(stage).device_for(stage), None);
        }
    }

    #[test]
    fn voxel_grid_is_the_hosts() {
        let mut pts = surface(5000, 1);
        pts.extend(pts[..100].to_vec()); // repeated points land in the same voxels
        let grid = |pts: &[Point], size: f32| voxel_grid(&points_tensor(pts, Device::Cpu), size, |_| Vec::new());
        let host = host_voxels(&pts, 0.05).unwrap();
        let (voxels, device, _) = grid(&pts, 0.05).unwrap();
        assert_eq!(device.representative, host.representative);
        assert_eq!(device.points, host.points, "f64 sums give the same f32 centroids");
        assert_eq!(host_points(&voxels.centroids).unwrap(), host.points);
        // Two far points: a box of more voxels than one i64 numbers, so the grid is made again by rows.
        pts.extend([[4e5, -4e5, 4e5], [-4e5, 4e5, -4e5]]);
        let folded = voxel_downsample(&points_tensor(&pts, Device::Cpu), 0.05, Numbering::Folded).unwrap();
        assert_eq!(read_together(&[&folded.checks]).unwrap(), [[-1.0, 0.0]], "all finite; folding is not exact");
        let reads = std::cell::Cell::new(0);
        let checked = |voxels: &DeviceVoxels| {
            reads.set(reads.get() + 1);
            Ok((read_together(&[&voxels.checks])?.concat(), ()))
        };
        read_voxels(&points_tensor(&pts, Device::Cpu), 0.05, checked).unwrap();
        assert_eq!(reads.get(), 2, "made again by rows");
        let (by_rows, host) = (grid(&pts, 0.05).unwrap().1, host_voxels(&pts, 0.05).unwrap());
        assert_eq!((by_rows.points, by_rows.representative), (host.points, host.representative));
        let mut bad = pts.clone();
        bad[7] = [1.0, f32::NAN, 0.0];
        assert!(matches!(grid(&bad, 1.0), Err(GeometryError::NonFinite { index: 7, .. })), "named where it is");
        assert!(grid(&pts, 0.0).is_err());
    }

    #[test]
    fn outlier_removal_is_the_hosts() {
        let mut pts = surface(6000, 6);
        pts.extend([[0.0, 0.0, 1e30], [3e38, -3e38, 0.0], [0.0, 0.0, -40.0]]); // absurd and far
        pts.extend((0..4).map(|k| [0.2 + 0.01 * k as f32, 0.5, 0.0])); // a small group floating inside
        pts.extend((0..6).map(|k| [-0.3 + 0.12 * k as f32, 0.0, 0.0])); // a chain of 6, linked 2.4 voxels apart
        pts.extend((0..30).map(|k| [1.0 + 0.02 * k as f32, 0.0, 0.0])); // a spike attached to the surface
        let rule = OutlierRule { quantile: 0.01, margin: 0.5, voxel: 0.05, link_voxels: 3.0, min_group: 5 };
        let steps = |compute: Compute, rule: &OutlierRule| {
            let mut boxed = None;
            let (inliers, kept) = compute
                .inliers(&shared(&pts), rule, |first: &Inliers| -> Result<()> {
                    boxed = Some(first.clone());
                    Ok(())
                })
                .unwrap();
            let copy = kept.copy_on(Device::Cpu).map(|copy| host_points(&copy).unwrap());
            (boxed.unwrap(), inliers, kept.to_vec(), copy)
        };
        let (boxed, inliers, kept, copy) = steps(CPU, &rule);
        let (host_boxed, host_inliers, host_kept, no_copy) = steps(Compute::Host, &rule);
        assert_eq!((&boxed, &inliers), (&host_boxed, &host_inliers));
        assert_eq!((boxed.removed, inliers.removed), (3, 7), "the far points, then the small group; the chain stays");
        assert_eq!(
            (&kept, copy.as_ref()),
            (&host_kept, Some(&host_kept)),
            "the kept points, and their copy on the device"
        );
        assert_eq!(no_copy, None);
        let off = OutlierRule { margin: f32::INFINITY, min_group: 1, ..rule };
        let (boxed, inliers, kept, copy) = steps(CPU, &off);
        let (host_boxed, host_inliers, ..) = steps(Compute::Host, &off);
        assert_eq!((&boxed, &inliers), (&host_boxed, &host_inliers));
        assert_eq!((inliers.removed, copy), (0, Some(kept)), "an infinite margin keeps every point");
    }

    #[test]
    fn registration_is_the_hosts() {
        let target = surface(4000, 7);
        let index = NeighborIndex::new(&target).unwrap();
        let orientation = NormalOrientation::AwayFromCentroid;
        let normals = super::super::estimate_normals(&target, &index, Neighborhood::Knn(12), orientation);
        let isolation = super::super::registration::isolation(&target, &index);
        let (points, normals) = (shared(&target), shared(&normals));
        let template = Template { points: &points, normals: &normals, index: &index, isolation: &isolation };
        // The part turned by 3° and moved, its bottom unseen, every 10th point raised about the last cut-off.
        let (cos, sin) = (3f32.to_radians().cos(), 3f32.to_radians().sin());
        let raise = |p: Point| p.map(|c| c * (1.0 + 0.031 / super::super::dot(p, p).sqrt()));
        let scan: Vec<Point> = surface(4000, 8)
            .into_iter()
            .filter(|p| p[2] > -0.6)
            .enumerate()
            .map(|(i, p)| if i % 10 == 0 { raise(p) } else { p })
            .map(|p| [cos * p[0] - sin * p[1] + 0.03, sin * p[0] + cos * p[1] - 0.02, p[2] + 0.01])
            .collect();
        let host = Compute::Host.register(&shared(&scan), &template, [0.3, 0.03], 20).unwrap();
        let device = CPU.register(&shared(&scan), &template, [0.3, 0.03], 20).unwrap();
        assert!((host.transform.angle_degrees() - 3.0).abs() < 0.2, "host {}°", host.transform.angle_degrees());
        assert_eq!(device.overlap, host.overlap, "the same correspondences");
        assert!((device.rms - host.rms).abs() < 1e-6 * host.rms.max(1e-3), "rms {} against {}", device.rms, host.rms);
        let moved = |r: &Registration| scan.iter().flat_map(|&p| r.transform.apply(p)).collect::<Vec<f32>>();
        assert!(max_difference(&moved(&device), &moved(&host)) < 1e-5);
    }

    #[test]
    fn central_members_are_the_hosts_ties_included() {
        let mut pts = surface(5000, 5);
        // Pairs alone in their voxels, their centroid exactly halfway: the first must win on the device too.
        for i in 0..50 {
            let x = 3.0 + i as f32 * 0.5;
            pts.extend([[x + 0.0234375, 3.0078125, 3.0078125], [x + 0.0078125, 3.0078125, 3.0078125]]);
        }
        let (grid, central) = CPU.voxel_centres(&shared(&pts), 0.05).unwrap();
        let (host_grid, host_central) = Compute::Host.voxel_centres(&shared(&pts), 0.05).unwrap();
        assert_eq!((grid.points, grid.representative), (host_grid.points, host_grid.representative));
        assert_eq!(central, host_central);
        assert!(central.contains(&5000) && central.contains(&5098), "each pair's first point");
    }

    #[test]
    fn batched_farthest_point_sampling_is_the_hosts_for_each_cloud() {
        let (a, b) = (surface(3000, 2), surface(1800, 3));
        let padded: Vec<Point> = a.iter().chain(&b).chain(std::iter::repeat_n(&[9.0f32; 3], 1200)).copied().collect();
        let batch = points_tensor(&padded, Device::Cpu).view([2, 3000, 3]);
        let chosen = farthest_point_sampling(&batch, &[3000, 1800], 256, &[5, 17]);
        let rows: Vec<Vec<u32>> = (0..2).map(|r| host_indices(&chosen.get(r)).unwrap()).collect();
        assert_eq!(rows[0], super::super::farthest_point_sampling(&a, 256, 5));
        assert_eq!(rows[1], super::super::farthest_point_sampling(&b, 256, 17), "padding is never chosen");
        let few = CPU.farthest_point_sampling(&shared(&a[..10]), 50, 0).unwrap();
        assert_eq!(few, super::super::farthest_point_sampling(&a[..10], 50, 0), "no more samples than points");
        let clouds = [shared(&a), shared(&b[..10]), shared(&b)];
        let clouds: Vec<&SharedPoints> = clouds.iter().collect();
        let expected = Compute::Host.farthest_point_sampling_batch(&clouds, 256, &[5, 0, 17]).unwrap();
        assert_eq!(expected.iter().map(|samples| samples.len()).collect::<Vec<_>>(), [256, 10, 256]);
        // Padded on the host and copied up, then (every cloud's points on the device now) padded there.
        for copies in ["none", "every cloud's"] {
            let both = CPU.farthest_point_sampling_batch(&clouds, 256, &[5, 0, 17]).unwrap();
            assert_eq!(both, expected, "device copies: {copies}");
            for samples in &both {
                let kept = samples.copy_on(Device::Cpu).expect("kept on the device");
                assert_eq!(
                    Vec::<i64>::try_from(&kept).unwrap(),
                    samples.iter().map(|&s| i64::from(s)).collect::<Vec<_>>()
                );
            }
            clouds.iter().for_each(|points| drop(points.on(Device::Cpu)));
        }
        assert_eq!(CPU.farthest_point_sampling_batch(&clouds, 0, &[5, 0, 17]).unwrap(), vec![Vec::<u32>::new(); 3]);
    }

    #[test]
    fn the_nearest_within_a_radius_is_the_hosts_nearest_or_none() {
        let pts = surface(2000, 4);
        let index = NeighborIndex::new(&pts).unwrap();
        // On the surface, off it within reach, and far off it (no point within the radius: none, not a search of
        // every point).
        let queries: Vec<Point> = (0..300).map(|i| pts[i * 5].map(|c| c * [1.0, 1.02, 1.5][i % 3])).collect();
        let radius = 0.08;
        let points = points_tensor(&pts, Device::Cpu);
        // Cells of the radius, and twice as wide (as ICP's later steps search the grids of earlier ones).
        for cell in [radius, 2.0 * radius] {
            let grid = CellGrid::new(&points, cell).unwrap();
            let found = nearest_within(&grid, &points_tensor(&queries, Device::Cpu), radius);
            let (found, squared) = (host_indices(&found.index).unwrap(), host_floats(&found.squared_distance).unwrap());
            let mut nones = 0;
            for (k, q) in queries.iter().enumerate() {
                let nearest = index.nearest(q);
                if nearest.squared_distance <= radius * radius {
                    assert_eq!(squared[k], nearest.squared_distance, "query {k}");
                } else {
                    assert_eq!((found[k], squared[k]), (u32::MAX, f32::INFINITY), "query {k}");
                    nones += 1;
                }
            }
            assert_eq!(nones, 100, "every third query lies far off the surface");
            let far = points_tensor(&[[9.0, 9.0, 9.0]], Device::Cpu);
            let none = nearest_within(&grid, &far, radius);
            assert_eq!(host_indices(&none.index).unwrap(), vec![u32::MAX]);
        }
    }

    #[test]
    fn registration_stops_where_the_hosts_does() {
        // A flat template: its normals leave the turn about z and the slides along x and y unconstrained, so the
        // first step's equations have no unique solution and both keep the start (with that step's overlap).
        let plane: Vec<Point> = (0..900).map(|i| [(i % 30) as f32 * 0.1, (i / 30) as f32 * 0.1, 0.0]).collect();
        let index = NeighborIndex::new(&plane).unwrap();
        let normals = vec![[0.0, 0.0, 1.0]; plane.len()];
        let isolation = super::super::registration::isolation(&plane, &index);
        let (points, normals) = (shared(&plane), shared(&normals));
        let template = Template { points: &points, normals: &normals, index: &index, isolation: &isolation };
        let lifted: Vec<Point> = plane.iter().map(|p| [p[0], p[1], p[2] + 0.02]).collect();
        // Too few points to pair: no step at all.
        let few = &lifted[..5];
        for scan in [&lifted[..], few] {
            let host = Compute::Host.register(&shared(scan), &template, [0.3, 0.03], 20).unwrap();
            let device = CPU.register(&shared(scan), &template, [0.3, 0.03], 20).unwrap();
            assert_eq!(host.overlap > 0.0, scan.len() > 5, "{} points: a step measured", scan.len());
            assert_eq!(device.transform, host.transform, "{} points", scan.len());
            assert_eq!(device.overlap, host.overlap, "{} points", scan.len());
            assert_eq!(device.rms.to_bits(), host.rms.to_bits(), "{} points", scan.len());
        }
    }

    #[test]
    fn each_icp_cutoff_has_a_grid_at_most_twice_as_wide() {
        let (start, end) = (8.0f32, 1.5f32);
        let mut cells: Vec<f32> = Vec::new();
        for it in 0..20 {
            let cutoff = start * (end / start).powf(it as f32 / 19.0);
            let cell = fitting_cell(start, cutoff);
            assert!(cell >= cutoff && cell < 2.0 * cutoff, "cut-off {cutoff}: cell {cell}");
            if !cells.contains(&cell) {
                cells.push(cell);
            }
        }
        assert_eq!(cells, [8.0, 4.0, 2.0], "three grids for the detector's 20 steps");
        assert_eq!(fitting_cell(1.0, 3.0), 3.0, "a cut-off above the first is its own cell");
    }

    #[test]
    fn shared_points_build_one_grid_per_cell() {
        let pts = surface(2000, 9);
        let points = shared(&pts);
        let (a, again, wider) =
            (points.grid(Device::Cpu, 0.1), points.grid(Device::Cpu, 0.1), points.grid(Device::Cpu, 0.2));
        let codes = |grid: Option<CellGrid>| grid.map(|g| g.sorted_codes.data_ptr());
        let first = codes(a);
        assert!(first.is_some());
        assert_eq!(first, codes(again), "the same grid, not a second build");
        assert_ne!(first, codes(wider));
        assert!(points.grid(Device::Cpu, 0.0).is_none());
    }

    #[test]
    fn knn_groups_and_normals_are_the_hosts() {
        let pts = surface(4000, 4);
        let index = NeighborIndex::new(&pts).unwrap();
        let centres = SharedIndices::from((0..pts.len() as u32).step_by(37).collect::<Vec<_>>());
        let centre_points: Vec<Point> = centres.iter().map(|&c| pts[c as usize]).collect();
        // The sphere's points are about 0.056 apart; at a spacing of 0.001 every query leaves the cells for all
        // points, at 0.056 the cells serve almost all, at 1.0 the cells hold every point.
        let host = index.group(&centre_points, 32);
        let pts = shared(&pts);
        for spacing in [0.001, 0.056, 1.0] {
            let ours = CPU.group(&pts, &index, &centres, 32, spacing).unwrap();
            assert_eq!(ours, host, "spacing {spacing}: no ties on a jittered surface, the same members in order");
        }
        for orientation in [NormalOrientation::AwayFromCentroid, NormalOrientation::TowardsViewpoint([3.0, 0.0, 0.0])] {
            let host =
                Compute::Host.normals(&pts, &index, 16, 0.056, orientation).unwrap().rows().unwrap().into_owned();
            for spacing in [0.001, 0.056] {
                let ours = CPU.normals(&pts, &index, 16, spacing, orientation).unwrap();
                assert!(ours.on_device().is_some(), "kept on the device");
                let ours = ours.rows().unwrap();
                assert!(max_difference(host.as_flattened(), ours.as_flattened()) < 1e-5, "same side, same direction");
            }
        }
        let few = NeighborIndex::new(&pts[..2]).unwrap();
        let zero = CPU.normals(&shared(&pts[..2]), &few, 16, 0.056, NormalOrientation::AwayFromCentroid);
        assert_eq!(zero.unwrap().rows().unwrap().to_vec(), vec![[0.0; 3]; 2], "too few points: no normal");
    }

    #[test]
    fn fpfh_is_the_hosts() {
        let pts = SharedPoints::from(surface(3000, 5));
        let index = NeighborIndex::new(&pts).unwrap();
        let normals = Compute::Host.normals(&pts, &index, 16, 0.1, NormalOrientation::AwayFromCentroid).unwrap();
        let mut normals = normals.rows().unwrap().into_owned();
        normals[7] = [0.0; 3]; // a point without a normal takes part in no pair
        let normals = SharedRows::Host(normals);
        // Queries a good share of the points (every point's SPFH is taken), and a few (only their neighbours').
        for step in [7, 50] {
            let queries: Vec<u32> = (0..3000).step_by(step).chain([7, 7, 2999]).collect();
            for radius in [0.08, 0.15] {
                let host = Compute::Host.fpfh_at(&pts, &normals, Some(&index), radius, &queries).unwrap();
                let ours = CPU.fpfh_at(&pts, &normals, None, radius, &queries).unwrap();
                // Weighted sums in another order: the last digits of f32 histograms that sum to 100 per angle.
                let worst = max_difference(host.as_flattened(), ours.as_flattened());
                assert!(worst < 1e-3, "every {step}th, radius {radius}: {worst}");
                assert!(host.iter().flatten().any(|&h| h > 0.0));
            }
        }
        let queries = [0, 1];
        assert!(CPU.fpfh_at(&pts, &normals, None, -1.0, &queries).is_err());
    }

    #[test]
    fn spread_and_median_filter_are_the_hosts() {
        let pts = SharedPoints::from(surface(2500, 6));
        let index = NeighborIndex::new(&pts).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let mut values: Vec<f32> = (0..pts.len()).map(|_| rng.gen_range(0.0..1.0)).collect();
        values[3] = f32::NAN;
        values[4] = f32::INFINITY;
        for radius in [0.02, 0.1] {
            let host = Compute::Host.median_filter(&pts, &values, &index, radius).unwrap();
            let ours = CPU.median_filter(&pts, &values, &index, radius).unwrap();
            let same = host.iter().zip(&ours).all(|(a, b)| a == b || (a.is_nan() && b.is_nan()));
            assert!(same, "radius {radius}: order statistics are exact");
        }
        // A point far out: cells of the radius would be too many to number, larger ones still find every neighbour.
        let mut far = pts.to_vec();
        far.push([3e6, -3e6, 3e6]);
        values.push(0.5);
        let (index, far) = (NeighborIndex::new(&far).unwrap(), shared(&far));
        let host = Compute::Host.median_filter(&far, &values, &index, 0.02).unwrap();
        let ours = CPU.median_filter(&far, &values, &index, 0.02).unwrap();
        assert!(host.iter().zip(&ours).all(|(a, b)| a == b || (a.is_nan() && b.is_nan())), "with a far point");
        let index = NeighborIndex::new(&pts).unwrap();
        values.pop();

        let centres = SharedIndices::from(super::super::farthest_point_sampling(&pts, 40, 0));
        let centre_points: Vec<Point> = centres.iter().map(|&c| pts[c as usize]).collect();
        let groups = SharedIndices::from(index.group(&centre_points, 20));
        let mut patch_scores: Vec<f32> = (0..40).map(|p| (p * 7 % 13) as f32).collect();
        let host = Compute::Host.spread_patch_scores(&pts, &centres, &groups, 20, &patch_scores).unwrap();
        let ours = CPU.spread_patch_scores(&pts, &centres, &groups, 20, &patch_scores).unwrap();
        assert_eq!(ours, host);
        // A NaN patch score is no member's maximum; its own centre's uncovered neighbours take it. An infinite one
        // stays infinite.
        patch_scores[0] = f32::NAN;
        patch_scores[1] = f32::INFINITY;
        let host = Compute::Host.spread_patch_scores(&pts, &centres, &groups, 20, &patch_scores).unwrap();
        let ours = CPU.spread_patch_scores(&pts, &centres, &groups, 20, &patch_scores).unwrap();
        assert!(host.iter().any(|s| s.is_nan()), "points nearest the NaN patch's centre take it");
        assert!(host.contains(&f32::INFINITY), "the infinite patch's members take it");
        assert!(ours.iter().zip(&host).all(|(a, b)| a.to_bits() == b.to_bits()), "NaN where the host has it");
    }
}
