//! Voxel-grid downsampling (PCL's VoxelGrid: one point per occupied voxel, the centroid of the points in it),
//! keeping for every input point the index of the voxel point that represents it, so that scores computed on the
//! downsampled cloud go back to every input point.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use super::{GeometryError, Point, Result, positive};

#[derive(Clone, Debug)]
pub struct VoxelGrid {
    /// One centroid per occupied voxel, in order of first occurrence in the input (deterministic).
    pub points: Vec<Point>,
    /// For each input point, the index into `points` of its voxel.
    pub representative: Vec<u32>,
}

impl VoxelGrid {
    /// Spreads one value per voxel point back to every input point.
    pub fn spread<T: Copy>(&self, values: &[T]) -> Vec<T> {
        self.representative.iter().map(|&r| values[r as usize]).collect()
    }

    /// For each voxel point, the first input point that fell into its voxel.
    pub fn first_members(&self) -> Vec<u32> {
        let mut first = vec![u32::MAX; self.points.len()];
        for (i, &r) in self.representative.iter().enumerate() {
            if first[r as usize] == u32::MAX {
                first[r as usize] = i as u32;
            }
        }
        first
    }

    /// For each voxel point, the input point of its voxel nearest to it (the centroid). Distances are taken in
    /// f64, where they are exact enough for every device to order them alike, and ties (a voxel of two points
    /// has its centroid halfway) go to the first: the choice does not depend on how a search orders its points.
    pub fn central_members(&self, input: &[Point]) -> Vec<u32> {
        let mut best = vec![(f64::INFINITY, u32::MAX); self.points.len()];
        for (i, (&r, p)) in self.representative.iter().zip(input).enumerate() {
            let c = self.points[r as usize];
            let d = (0..3).map(|a| f64::from(p[a]) - f64::from(c[a])).fold(0.0, |s, x| s + x * x);
            if d < best[r as usize].0 {
                best[r as usize] = (d, i as u32);
            }
        }
        best.into_iter().map(|(_, i)| i).collect()
    }
}

/// Integer grid coordinates, hashed by one multiply per axis: std's SipHash costs more than the rest of a grid
/// lookup, and grid keys need no protection from adversarial collisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CellKey(pub [i64; 3]);

impl Hash for CellKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let [x, y, z] = self.0.map(|c| c as u64);
        state.write_u64(
            x.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ y.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
                ^ z.wrapping_mul(0x1656_67B1_9E37_79F9),
        );
    }
}

/// Passes [`CellKey`]'s hash on, its high bits folded into the low ones that pick the bucket.
#[derive(Default)]
pub(crate) struct CellHasher(u64);

impl Hasher for CellHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// A map from grid cells.
pub(crate) type CellMap<V> = HashMap<CellKey, V, BuildHasherDefault<CellHasher>>;

pub fn voxel_downsample(points: &[Point], voxel_size: f32) -> Result<VoxelGrid> {
    let size = positive("voxel size", voxel_size)?;
    if points.is_empty() {
        return Err(GeometryError::Empty);
    }
    let inverse = 1.0 / f64::from(size);
    let mut index_of: CellMap<u32> = CellMap::with_capacity_and_hasher(points.len() / 4, Default::default());
    let mut sums: Vec<[f64; 4]> = Vec::new();
    let mut representative = Vec::with_capacity(points.len());
    for (i, p) in points.iter().enumerate() {
        if !p.iter().all(|c| c.is_finite()) {
            return Err(GeometryError::NonFinite { index: i, point: *p });
        }
        let key = CellKey(p.map(|c| (f64::from(c) * inverse).floor() as i64));
        let slot = *index_of.entry(key).or_insert_with(|| {
            sums.push([0.0; 4]);
            (sums.len() - 1) as u32
        });
        let s = &mut sums[slot as usize];
        for a in 0..3 {
            s[a] += f64::from(p[a]);
        }
        s[3] += 1.0;
        representative.push(slot);
    }
    let points = sums.iter().map(|s| [(s[0] / s[3]) as f32, (s[1] / s[3]) as f32, (s[2] / s[3]) as f32]).collect();
    Ok(VoxelGrid { points, representative })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centroids_and_back_references() {
        let pts = [[0.1, 0.1, 0.1], [0.3, 0.3, 0.3], [1.5, 0.0, 0.0], [-0.1, 0.0, 0.0]];
        let grid = voxel_downsample(&pts, 1.0).unwrap();
        assert_eq!(grid.points.len(), 3);
        assert_eq!(grid.representative, vec![0, 0, 1, 2]);
        assert!((grid.points[0][0] - 0.2).abs() < 1e-6);
        assert_eq!(grid.spread(&[10, 20, 30]), vec![10, 10, 20, 30]);
        assert_eq!(grid.first_members(), vec![0, 2, 3]);
    }

    #[test]
    fn the_central_member_is_the_nearest_to_the_centroid_and_the_first_on_a_tie() {
        // Voxel 0: centroid 0.35, nearest the third point; voxel 1: two points, centroid exactly halfway.
        let pts = [[0.1; 3], [0.5; 3], [0.45; 3], [1.25, 0.5, 0.5], [1.75, 0.5, 0.5]];
        let grid = voxel_downsample(&pts, 1.0).unwrap();
        assert_eq!(grid.central_members(&pts), vec![2, 3]);
        let swapped = [pts[0], pts[1], pts[2], pts[4], pts[3]];
        assert_eq!(voxel_downsample(&swapped, 1.0).unwrap().central_members(&swapped), vec![2, 3]);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(voxel_downsample(&[[0.0; 3]], 0.0).is_err());
        assert!(voxel_downsample(&[[0.0; 3]], f32::NAN).is_err());
        assert!(voxel_downsample(&[], 1.0).is_err());
        assert!(matches!(
            voxel_downsample(&[[f32::NAN, 0.0, 0.0]], 1.0),
            Err(GeometryError::NonFinite { index: 0, .. })
        ));
    }
}
