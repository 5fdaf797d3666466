//! k-nearest and radius neighbourhoods over a fixed point set (kiddo's immutable k-d tree, which copes with the
//! many identical coordinates of organised depth frames).

use std::num::NonZero;

use kiddo::{ImmutableKdTree, SquaredEuclidean};

use super::{GeometryError, Point, Result};

/// One neighbour: its index in the indexed point set and its squared distance to the query.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Neighbor {
    pub index: u32,
    pub squared_distance: f32,
}

/// Which points count as a point's neighbourhood.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Neighborhood {
    /// All points within the radius.
    Radius(f32),
    /// The k nearest points.
    Knn(usize),
    /// The nearest `max_nn` points within `radius` (Open3D's hybrid search).
    Hybrid { radius: f32, max_nn: usize },
}

pub struct NeighborIndex {
    tree: ImmutableKdTree<f32, 3>,
    len: usize,
}

impl NeighborIndex {
    pub fn new(points: &[Point]) -> Result<Self> {
        if points.is_empty() {
            return Err(GeometryError::Empty);
        }
        if let Some(index) = points.iter().position(|p| !p.iter().all(|c| c.is_finite())) {
            return Err(GeometryError::NonFinite { index, point: points[index] });
        }
        let tree = ImmutableKdTree::new_from_slice(points).map_err(|e| GeometryError::KdTree(format!("{e:?}")))?;
        Ok(Self { tree, len: points.len() })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `k` nearest points, nearest first (fewer when the set is smaller).
    pub fn knn(&self, query: &Point, k: usize) -> Vec<Neighbor> {
        let Some(k) = NonZero::new(k.min(self.len)) else {
            return Vec::new();
        };
        self.tree
            .query(query)
            .nearest_n::<SquaredEuclidean<f32>>(k)
            .execute()
            .into_iter()
            .map(|r| Neighbor { index: r.item, squared_distance: r.distance })
            .collect()
    }

    /// Every point within `radius` (inclusive), nearest first.
    pub fn within(&self, query: &Point, radius: f32) -> Vec<Neighbor> {
        self.tree
            .query(query)
            .within::<SquaredEuclidean<f32>>(radius * radius)
            .execute()
            .into_iter()
            .map(|r| Neighbor { index: r.item, squared_distance: r.distance })
            .collect()
    }

    /// Calls `visit` for every point within `radius` (inclusive), in no particular order, allocating nothing.
    pub fn for_each_within(&self, query: &Point, radius: f32, mut visit: impl FnMut(Neighbor)) {
        self.tree
            .query(query)
            .within::<SquaredEuclidean<f32>>(radius * radius)
            .unsorted()
            .visit(|r| visit(Neighbor { index: r.item, squared_distance: r.distance }));
    }

    pub fn neighborhood(&self, query: &Point, of: Neighborhood) -> Vec<Neighbor> {
        match of {
            Neighborhood::Radius(r) => self.within(query, r),
            Neighborhood::Knn(k) => self.knn(query, k),
            Neighborhood::Hybrid { radius, max_nn } => {
                let mut n = self.knn(query, max_nn);
                n.retain(|m| m.squared_distance <= radius * radius);
                n
            }
        }
    }

    /// The nearest point.
    pub fn nearest(&self, query: &Point) -> Neighbor {
        let r = self.tree.query(query).nearest_one::<SquaredEuclidean<f32>>().execute();
        Neighbor { index: r.item, squared_distance: r.distance }
    }

    /// Indices of the `k` nearest points of each centre, row after row (`centres.len() × min(k, len)`): the
    /// patch grouping of the backbone.
    pub fn group(&self, centres: &[Point], k: usize) -> Vec<u32> {
        centres.iter().flat_map(|c| self.knn(c, k).into_iter().map(|n| n.index)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> Vec<Point> {
        (0..1000).map(|i| [(i % 10) as f32, ((i / 10) % 10) as f32, (i / 100) as f32]).collect()
    }

    #[test]
    fn knn_and_radius_match_brute_force() {
        let pts = grid();
        let index = NeighborIndex::new(&pts).unwrap();
        let q = [4.2, 5.1, 3.3];
        let mut brute: Vec<(f32, u32)> =
            pts.iter().enumerate().map(|(i, p)| (super::super::squared_distance(*p, q), i as u32)).collect();
        brute.sort_by(|a, b| a.0.total_cmp(&b.0));
        let knn = index.knn(&q, 7);
        assert_eq!(knn.iter().map(|n| n.index).collect::<Vec<_>>(), brute[..7].iter().map(|b| b.1).collect::<Vec<_>>());
        let within = index.within(&q, 1.5);
        assert_eq!(within.len(), brute.iter().filter(|b| b.0 <= 2.25).count());
        assert!(within.windows(2).all(|w| w[0].squared_distance <= w[1].squared_distance));
        let mut unsorted = Vec::new();
        index.for_each_within(&q, 1.5, |n| unsorted.push(n.index));
        unsorted.sort_unstable();
        let mut sorted: Vec<u32> = within.iter().map(|n| n.index).collect();
        sorted.sort_unstable();
        assert_eq!(unsorted, sorted);
        assert_eq!(index.nearest(&q).index, brute[0].1);
        assert_eq!(index.group(&[q, [0.0; 3]], 4).len(), 8);
    }

    #[test]
    fn many_identical_points_build() {
        let mut pts = vec![[1.0, 1.0, 1.0]; 5000];
        pts.push([2.0, 2.0, 2.0]);
        let index = NeighborIndex::new(&pts).unwrap();
        assert_eq!(index.knn(&[2.0, 2.0, 2.1], 1)[0].index, 5000);
        assert_eq!(index.within(&[1.0; 3], 0.1).len(), 5000);
    }

    #[test]
    fn non_finite_points_are_rejected() {
        assert!(NeighborIndex::new(&[[0.0, f32::NAN, 0.0]]).is_err());
        assert!(NeighborIndex::new(&[]).is_err());
    }
}
