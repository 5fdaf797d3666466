//! Points that both the host's geometry and the device's read: kept on the host, and copied to a device at most once.
//! The first device stage that needs them makes the copy and every later stage takes it, so a view's points go up
//! once for all of its patch step (sampling, normals, grouping, FPFH, context, projection), and a model's template
//! once for all of its scans. A result made on the device starts with its copy there. The search grids over the copy
//! are kept with it likewise: one per radius, however many stages (or scans, for a template) search at it.

use std::borrow::Cow;
use std::ops::Deref;
use std::sync::{Mutex, PoisonError};

use tch::{Device, Tensor};

use super::Point;
use super::device::{CellGrid, host_points, points_tensor};

/// Points on the host and, once a device stage has needed them, on that device, with the search grids built over
/// that copy. Both sit behind mutexes: rayon's arms share the points, and a tensor may be sent between threads but
/// not shared.
pub struct SharedPoints<'a> {
    host: Cow<'a, [Point]>,
    copy: Mutex<Option<Tensor>>,
    /// By cell edge.
    grids: Mutex<Vec<(f32, CellGrid)>>,
}

impl<'a> SharedPoints<'a> {
    pub fn new(host: impl Into<Cow<'a, [Point]>>) -> Self {
        Self { host: host.into(), copy: Mutex::new(None), grids: Mutex::new(Vec::new()) }
    }

    /// Points made on the device (an N × 3 float tensor), read to the host once.
    pub fn from_device(points: Tensor) -> super::Result<SharedPoints<'static>> {
        let mut shared = SharedPoints::new(host_points(&points)?);
        shared.copy = Mutex::new(Some(points));
        Ok(shared)
    }

    /// The points as an N × 3 float tensor on `device`: the copy made before, or one made now and kept.
    pub fn on(&self, device: Device) -> Tensor {
        let mut copy = self.copy.lock().unwrap_or_else(PoisonError::into_inner);
        match copy.as_ref() {
            Some(points) if points.device() == device => points.shallow_clone(),
            _ => {
                let points = points_tensor(&self.host, device);
                *copy = Some(points.shallow_clone());
                points
            }
        }
    }

    /// The cell grid of edge `cell` (at least) over the copy on `device`: built the first time a search needs it and
    /// kept, so that searches of one radius share it (a view's FPFH and median filter; a template's ICP and
    /// surface context, scan after scan). `None` as [`CellGrid::new`].
    pub fn grid(&self, device: Device, cell: f32) -> Option<CellGrid> {
        let mut grids = self.grids.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, grid)) = grids.iter().find(|(c, grid)| *c == cell && grid.device() == device) {
            return Some(grid.shallow_clone());
        }
        let grid = CellGrid::new(&self.on(device), cell)?;
        grids.push((cell, grid.shallow_clone()));
        Some(grid)
    }

    /// The host's points, moved out where they are owned (the device copy is dropped).
    pub fn into_vec(self) -> Vec<Point> {
        self.host.into_owned()
    }
}

impl Deref for SharedPoints<'_> {
    type Target = [Point];

    fn deref(&self) -> &[Point] {
        &self.host
    }
}

impl From<Vec<Point>> for SharedPoints<'static> {
    fn from(points: Vec<Point>) -> Self {
        Self::new(points)
    }
}

impl<'a> From<&'a [Point]> for SharedPoints<'a> {
    fn from(points: &'a [Point]) -> Self {
        Self::new(points)
    }
}
