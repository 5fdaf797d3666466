//! Neighbourhoods for the hot loops on a dense grid, the points stored cell by cell, so a query scans nine
//! contiguous runs of three cells instead of walking a k-d tree:
//! - fixed-radius (FPFH, surface context, median filter): cells one radius wide, the same neighbours as the tree
//!   (2.5× faster on the 60k part scan's voxel points);
//! - the k nearest (normals): cells about as wide as a typical k-th neighbour's distance; where the block of cells
//!   around a query cannot be sure to hold them, the tree answers that query.
//!
//! Where a grid would be much larger than the cloud (a sparse cloud, a huge box), the k-d tree answers instead.

use super::neighbors::{Neighbor, Neighborhood};
use super::{NeighborIndex, Point, Result, bounds, positive};

/// Cells this much wider than the radius, so no rounding of a cell key can put a neighbour two cells away; the
/// k-nearest search trusts its block only this far inside its faces.
const CELL_MARGIN: f64 = 1.0 + 1e-6;
/// Grids with more cells than this many per point (plus a constant) are not built.
const MAX_CELLS_PER_POINT: usize = 8;
const MIN_CELL_BUDGET: usize = 1 << 16;

/// The points within a fixed radius of a query, by grid or k-d tree.
pub enum RadiusSearch<'a> {
    Grid(Grid),
    Tree { index: &'a NeighborIndex, radius: f32 },
}

/// Point indices grouped by cell (a counting sort, input order kept within a cell): per cell the start of its
/// run in the returned indices, one more entry closing the last run.
pub(crate) fn bucket_by_cell(cell_of: &[usize], cells: usize) -> (Vec<u32>, Vec<u32>) {
    let mut starts = vec![0u32; cells + 1];
    for &c in cell_of {
        starts[c + 1] += 1;
    }
    for c in 0..cells {
        starts[c + 1] += starts[c];
    }
    let mut next = starts.clone();
    let mut members = vec![0u32; cell_of.len()];
    for (i, &c) in cell_of.iter().enumerate() {
        members[next[c] as usize] = i as u32;
        next[c] += 1;
    }
    (starts, members)
}

/// A point set stored cell by cell over its bounding box.
pub struct Grid {
    /// What a radius search reaches (the cell width, less the margin).
    radius: f32,
    low: [f64; 3],
    /// 1 / cell width.
    inverse: f64,
    dims: [usize; 3],
    /// Per cell (x fastest), the start of its points in `points`; one more entry closes the last cell.
    starts: Vec<u32>,
    /// The points, cell by cell, and each one's index in the input.
    points: Vec<Point>,
    ids: Vec<u32>,
}

impl<'a> RadiusSearch<'a> {
    /// A search for neighbours within `radius` among `points` (`index` is their k-d tree, the fallback).
    pub fn new(points: &[Point], index: &'a NeighborIndex, radius: f32) -> Result<Self> {
        let radius = positive("neighbourhood radius", radius)?;
        Ok(match Grid::new(points, radius) {
            Some(grid) => Self::Grid(grid),
            None => Self::Tree { index, radius },
        })
    }

    /// Calls `visit(index, squared distance)` for every point within the radius (inclusive) of `query`: each
    /// exactly once, in an order fixed by the points (not the same order as the k-d tree's).
    pub fn for_each_within(&self, query: &Point, mut visit: impl FnMut(u32, f32)) {
        match self {
            Self::Grid(grid) => grid.for_each_within(query, visit),
            Self::Tree { index, radius } => {
                index.for_each_within(query, *radius, |n| visit(n.index, n.squared_distance))
            }
        }
    }

    /// Every point within the radius of `query`, as (index, squared distance).
    pub fn within(&self, query: &Point) -> Vec<(u32, f32)> {
        let mut found = Vec::with_capacity(32);
        self.for_each_within(query, |i, d| found.push((i, d)));
        found
    }
}

/// The k nearest points (and Open3D's hybrid: the k nearest within a radius), by grid where it is sure, else the
/// k-d tree.
pub struct NearestSearch<'a> {
    grid: Option<Grid>,
    index: &'a NeighborIndex,
}

/// Points whose k-th neighbour distance sets the k-nearest grid's cell width.
const WIDTH_SAMPLES: usize = 64;

impl<'a> NearestSearch<'a> {
    /// A search for up to `k` nearest neighbours among `points` (`index` is their k-d tree).
    pub fn new(points: &[Point], index: &'a NeighborIndex, k: usize) -> Self {
        // Cells as wide as the 3rd quartile of sampled k-th neighbour distances: most blocks hold the answer.
        let step = (points.len() / WIDTH_SAMPLES).max(1);
        let mut kth: Vec<f32> = points
            .iter()
            .step_by(step)
            .filter_map(|p| index.knn(p, k).last().map(|n| n.squared_distance.sqrt()))
            .collect();
        let grid = if kth.is_empty() || points.len() <= k {
            None
        } else {
            let quartile = kth.len() * 3 / 4;
            let width = *kth.select_nth_unstable_by(quartile, f32::total_cmp).1;
            (width.is_finite() && width > 0.0).then(|| Grid::new(points, width)).flatten()
        };
        Self { grid, index }
    }

    /// The neighbourhood `of` a query, as [`NeighborIndex::neighborhood`] gives it: the same points (up to which of
    /// several at exactly the k-th distance), nearest first.
    pub fn neighborhood(&self, query: &Point, of: Neighborhood) -> Vec<Neighbor> {
        let mut found = Vec::new();
        self.neighborhood_into(query, of, &mut found);
        found
    }

    /// [`Self::neighborhood`] into `found` (cleared first): a buffer reused from query to query allocates once.
    pub fn neighborhood_into(&self, query: &Point, of: Neighborhood, found: &mut Vec<Neighbor>) {
        let mut knn = |k: usize| {
            let sure = self.grid.as_ref().is_some_and(|grid| grid.nearest(query, k, found));
            if !sure {
                *found = self.index.knn(query, k);
            }
        };
        match of {
            Neighborhood::Knn(k) => knn(k),
            Neighborhood::Hybrid { radius, max_nn } => {
                knn(max_nn);
                found.retain(|m| m.squared_distance <= radius * radius);
            }
            Neighborhood::Radius(_) => *found = self.index.neighborhood(query, of),
        }
    }
}

impl Grid {
    fn new(points: &[Point], radius: f32) -> Option<Self> {
        if points.is_empty() {
            return None;
        }
        let (low, high) = bounds(points);
        let (low, high) = (low.map(f64::from), high.map(f64::from));
        let inverse = 1.0 / (f64::from(radius) * CELL_MARGIN);
        let extent = [0, 1, 2].map(|a| ((high[a] - low[a]) * inverse).floor() + 1.0);
        let cells = extent.iter().product::<f64>();
        if !cells.is_finite() || cells > (MAX_CELLS_PER_POINT * points.len() + MIN_CELL_BUDGET) as f64 {
            return None;
        }
        let dims = extent.map(|e| e as usize);
        let mut grid = Self { radius, low, inverse, dims, starts: Vec::new(), points: Vec::new(), ids: Vec::new() };
        // Clamped: rounding may put the highest point one cell out.
        let cell_of: Vec<usize> = points
            .iter()
            .map(|p| {
                let cell = grid.cell(p);
                grid.flat([0, 1, 2].map(|a| (cell[a] as usize).min(dims[a] - 1)))
            })
            .collect();
        let (starts, ids) = bucket_by_cell(&cell_of, cells as usize);
        let sorted = ids.iter().map(|&i| points[i as usize]).collect();
        (grid.starts, grid.points, grid.ids) = (starts, sorted, ids);
        Some(grid)
    }

    /// A point's cell coordinates, unclamped.
    fn cell(&self, p: &Point) -> [f64; 3] {
        [0, 1, 2].map(|a| ((f64::from(p[a]) - self.low[a]) * self.inverse).floor())
    }

    fn flat(&self, [x, y, z]: [usize; 3]) -> usize {
        (z * self.dims[1] + y) * self.dims[0] + x
    }

    /// The `k` nearest points into `found`, nearest first (ties by index); whether the query's block of 3×3×3
    /// cells surely holds them (the k-th lies inside the largest ball around the query that the block contains).
    fn nearest(&self, query: &Point, k: usize, found: &mut Vec<Neighbor>) -> bool {
        let own = self.cell(query);
        let width = 1.0 / self.inverse;
        // How far the block reaches from the query on each side; cells beyond the grid's edge hold nothing.
        let mut reach = f64::INFINITY;
        for a in 0..3 {
            if !(0.0..self.dims[a] as f64).contains(&own[a]) {
                return false;
            }
            let q = f64::from(query[a]) - self.low[a];
            if own[a] >= 1.0 {
                reach = reach.min(q - (own[a] - 1.0) * width);
            }
            if own[a] + 2.0 <= self.dims[a] as f64 {
                reach = reach.min((own[a] + 2.0) * width - q);
            }
        }
        found.clear();
        self.for_each_in_block(query, |index, squared_distance| found.push(Neighbor { index, squared_distance }));
        if found.len() < k || k == 0 {
            return false;
        }
        let order =
            |a: &Neighbor, b: &Neighbor| a.squared_distance.total_cmp(&b.squared_distance).then(a.index.cmp(&b.index));
        found.select_nth_unstable_by(k - 1, order);
        found.truncate(k);
        found.sort_unstable_by(order);
        f64::from(found[k - 1].squared_distance).sqrt() * CELL_MARGIN < reach
    }

    /// Calls `visit(index, squared distance)` for every point in the query's block of 3×3×3 cells.
    fn for_each_in_block(&self, query: &Point, mut visit: impl FnMut(u32, f32)) {
        // The query's own cell, unclamped: a query outside the grid reaches only the cells within one of it.
        let own = self.cell(query);
        if own.iter().any(|c| !c.is_finite()) {
            return;
        }
        let range = |a: usize| {
            let (lo, hi) = ((own[a] - 1.0).max(0.0), (own[a] + 1.0).min(self.dims[a] as f64 - 1.0));
            (lo as usize, hi as usize, lo <= hi)
        };
        let ((x0, x1, x_any), (y0, y1, y_any), (z0, z1, z_any)) = (range(0), range(1), range(2));
        if !(x_any && y_any && z_any) {
            return;
        }
        for z in z0..=z1 {
            for y in y0..=y1 {
                let (start, end) = (self.starts[self.flat([x0, y, z])], self.starts[self.flat([x1, y, z]) + 1]);
                for k in start as usize..end as usize {
                    let p = &self.points[k];
                    let d = [p[0] - query[0], p[1] - query[1], p[2] - query[2]];
                    visit(self.ids[k], d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
                }
            }
        }
    }

    fn for_each_within(&self, query: &Point, mut visit: impl FnMut(u32, f32)) {
        let reach = self.radius * self.radius;
        self.for_each_in_block(query, |i, squared| {
            if squared <= reach {
                visit(i, squared);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn the_same_neighbours_as_the_tree() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let points: Vec<Point> =
            (0..3000).map(|_| [rng.gen_range(-5.0..5.0), rng.gen_range(0.0..2.0), rng.gen_range(-1.0..1.0)]).collect();
        let index = NeighborIndex::new(&points).unwrap();
        let grid = RadiusSearch::new(&points, &index, 0.4).unwrap();
        assert!(matches!(grid, RadiusSearch::Grid(_)));
        // Queries inside, on the border and outside the grid.
        let mut queries: Vec<Point> = points.iter().step_by(7).copied().collect();
        queries.extend([[5.3, 1.0, 0.0], [-5.39, 2.39, -1.2], [40.0, 0.0, 0.0], [f32::NAN, 0.0, 0.0]]);
        for q in &queries {
            let mut ours = grid.within(q);
            ours.sort_by_key(|n| n.0);
            let mut tree: Vec<(u32, f32)> =
                index.within(q, 0.4).iter().map(|n| (n.index, n.squared_distance)).collect();
            tree.sort_by_key(|n| n.0);
            assert_eq!(ours.iter().map(|n| n.0).collect::<Vec<_>>(), tree.iter().map(|n| n.0).collect::<Vec<_>>());
        }
    }

    #[test]
    fn the_same_nearest_as_the_tree() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        // A dense slab and a sparse scatter: some queries' blocks hold their neighbours, some do not.
        let mut points: Vec<Point> =
            (0..3000).map(|_| [rng.gen_range(0.0..4.0), rng.gen_range(0.0..4.0), rng.gen_range(0.0..0.1)]).collect();
        points.extend((0..200).map(|_| [rng.gen_range(-4.0..8.0), rng.gen_range(-4.0..8.0), rng.gen_range(0.5..3.0)]));
        let index = NeighborIndex::new(&points).unwrap();
        for k in [1, 5, 16, 30] {
            let search = NearestSearch::new(&points, &index, k);
            // A grid too large for the cloud is not built (the tree answers).
            assert_eq!(search.grid.is_some(), k >= 16, "k {k}");
            let mut queries: Vec<Point> = points.iter().step_by(11).copied().collect();
            queries.extend([[2.0, 2.0, 5.0], [100.0, 0.0, 0.0]]);
            for q in &queries {
                let ours: Vec<u32> = search.neighborhood(q, Neighborhood::Knn(k)).iter().map(|n| n.index).collect();
                let tree: Vec<u32> = index.knn(q, k).iter().map(|n| n.index).collect();
                assert_eq!(ours, tree, "k {k} query {q:?}");
                let hybrid = Neighborhood::Hybrid { radius: 0.2, max_nn: k };
                let ours: Vec<u32> = search.neighborhood(q, hybrid).iter().map(|n| n.index).collect();
                let tree: Vec<u32> = index.neighborhood(q, hybrid).iter().map(|n| n.index).collect();
                assert_eq!(ours, tree);
            }
        }
    }

    #[test]
    fn a_cloud_too_spread_for_a_grid_uses_the_tree() {
        let points = [[0.0, 0.0, 0.0], [1e6, 1e6, 1e6], [1.0, 0.0, 0.0]];
        let index = NeighborIndex::new(&points).unwrap();
        let search = RadiusSearch::new(&points, &index, 1.5).unwrap();
        assert!(matches!(search, RadiusSearch::Tree { .. }));
        let mut near: Vec<u32> = search.within(&[0.0; 3]).iter().map(|n| n.0).collect();
        near.sort_unstable();
        assert_eq!(near, vec![0, 2]);
        assert!(RadiusSearch::new(&points, &index, 0.0).is_err());
        assert!(NearestSearch::new(&points, &index, 1).grid.is_none());
        let nearest: Vec<u32> = NearestSearch::new(&points, &index, 1)
            .neighborhood(&[0.9, 0.0, 0.0], Neighborhood::Knn(1))
            .iter()
            .map(|n| n.index)
            .collect();
        assert_eq!(nearest, vec![2]);
    }
}
