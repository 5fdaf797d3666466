//! Patch scores back to points: each point takes the highest score of the patches that contain it, and a point no
//! patch contains takes its nearest patch centre's score.

use rayon::prelude::*;

use super::{NeighborIndex, Point, Result};

/// One score per point of `points` from one per patch: `groups` holds each patch's `patch_size` member indices,
/// patch after patch; `centres` the patch centres.
pub fn spread_patch_scores(
    points: &[Point],
    centres: &[Point],
    groups: &[u32],
    patch_size: usize,
    patch_scores: &[f32],
) -> Result<Vec<f32>> {
    let mut scores = vec![f32::NEG_INFINITY; points.len()];
    for (members, &s) in groups.chunks(patch_size).zip(patch_scores) {
        for &m in members {
            let slot = &mut scores[m as usize];
            *slot = slot.max(s);
        }
    }
    let centre_index = NeighborIndex::new(centres)?;
    scores.par_iter_mut().zip(points).for_each(|(s, p)| {
        if *s == f32::NEG_INFINITY {
            *s = patch_scores[centre_index.nearest(p).index as usize];
        }
    });
    Ok(scores)
}
