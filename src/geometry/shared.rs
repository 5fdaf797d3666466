//! Points that both the host's geometry and the device's read: kept on the host, and copied to a device at most once.
//! The first device stage that needs them makes the copy and every later stage takes it, so a view's points go up
//! once for all of its patch step (sampling, normals, grouping, FPFH, context, projection), and a model's template
//! once for all of its scans. A result made on the device starts with its copy there. The search grids over the copy
//! are kept with it likewise: one per radius, however many stages (or scans, for a template) search at it.
//!
//! Rows that a stage makes per point or per sample (descriptors, context) stay where the stage ran: on the host, or
//! on its device until the host asks for them ([`SharedRows`]).

use std::borrow::Cow;
use std::ops::Deref;
use std::sync::{Mutex, PoisonError};

use tch::{Device, Tensor};

use crate::transfers::Transfer;

use super::Point;
use super::device::{CellGrid, host_floats, host_points, points_tensor};

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

/// Rows of `W` numbers (one per point or sample) where the stage that made them ran: the host's, or a device's
/// N × `W` float tensor, read or copied only where another place asks for them.
pub enum SharedRows<const W: usize> {
    Host(Vec<[f32; W]>),
    /// Locked: a tensor may move between threads but not be shared by them.
    Device(Mutex<Tensor>),
}

impl<const W: usize> SharedRows<W> {
    /// Rows made on a device.
    pub fn device(rows: Tensor) -> Self {
        Self::Device(Mutex::new(rows))
    }

    /// The rows on the host, read from the device where they are there.
    pub fn rows(&self) -> super::Result<Cow<'_, [[f32; W]]>> {
        match self {
            Self::Host(rows) => Ok(Cow::Borrowed(rows)),
            Self::Device(rows) => {
                let values = host_floats(&rows.lock().unwrap_or_else(PoisonError::into_inner))?;
                Ok(Cow::Owned(values.chunks_exact(W).map(|r| std::array::from_fn(|k| r[k])).collect()))
            }
        }
    }

    /// The device's tensor (shared, not copied); `None` for rows on the host.
    pub fn on_device(&self) -> Option<Tensor> {
        match self {
            Self::Host(_) => None,
            Self::Device(rows) => Some(rows.lock().unwrap_or_else(PoisonError::into_inner).shallow_clone()),
        }
    }

    /// The rows as an N × `W` float tensor on `device`: the device's own, or the host's copied up.
    pub fn on(&self, device: Device) -> Tensor {
        match self {
            Self::Host(rows) => {
                Tensor::from_slice(rows.as_flattened()).view([rows.len() as i64, W as i64]).upload(device)
            }
            Self::Device(rows) => {
                let rows = rows.lock().unwrap_or_else(PoisonError::into_inner);
                if rows.device() == device { rows.shallow_clone() } else { rows.to_device(device) }
            }
        }
    }
}

impl<const W: usize> Clone for SharedRows<W> {
    fn clone(&self) -> Self {
        match self {
            Self::Host(rows) => Self::Host(rows.clone()),
            Self::Device(rows) => Self::device(rows.lock().unwrap_or_else(PoisonError::into_inner).shallow_clone()),
        }
    }
}
