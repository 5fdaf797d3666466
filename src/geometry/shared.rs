//! Points that both the host's geometry and the device's read: kept on the host, and copied to a device at most once.
//! The first device stage that needs them makes the copy and every later stage takes it; a result made on the device
//! (the kept points, the voxel points, the registered points) starts with its copy there. So a scan's points go up
//! once for all of its geometry, and a model's template once for all of its scans. The search grids over the copy
//! are kept with it likewise: one per radius, however many stages (or scans, for a template) search at it.
//!
//! Indices that a stage makes (FPS's samples, the patches' members) keep the device's copy beside the host's, and
//! indices made on the host go up at most once ([`SharedIndices`]). Rows that a stage makes per point or per sample
//! (normals, descriptors, context) stay where the stage ran: on the host, or on its device until the host asks for
//! them ([`SharedRows`]).

use std::borrow::Cow;
use std::ops::Deref;
use std::sync::{Mutex, PoisonError};

use tch::{Device, Tensor};

use crate::transfers::Transfer;

use super::Point;
use super::device::{CellGrid, host_floats, indices_tensor, points_tensor};

/// One device's copy of a tensor: made the first time a stage asks, or kept from the stage that made it. Behind a
/// mutex: rayon's arms share its owner, and a tensor may be sent between threads but not shared.
#[derive(Default)]
struct DeviceCopy(Mutex<Option<Tensor>>);

impl DeviceCopy {
    fn kept(copy: Tensor) -> Self {
        Self(Mutex::new(Some(copy)))
    }

    /// The copy on `device`: the one there, or `make`'s, kept from now on.
    fn on(&self, device: Device, make: impl FnOnce() -> Tensor) -> Tensor {
        let mut copy = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match copy.as_ref() {
            Some(kept) if kept.device() == device => kept.shallow_clone(),
            _ => {
                let made = make();
                *copy = Some(made.shallow_clone());
                made
            }
        }
    }

    /// The copy on `device` where there is one.
    fn get(&self, device: Device) -> Option<Tensor> {
        let copy = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        copy.as_ref().filter(|kept| kept.device() == device).map(Tensor::shallow_clone)
    }

    /// The same copy (not copied again), for a clone of its owner.
    fn shared(&self) -> Self {
        Self(Mutex::new(self.0.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(Tensor::shallow_clone)))
    }
}

/// Points on the host and, once a device stage has needed them, on that device, with the search grids built over
/// that copy (behind a mutex, as the copy).
pub struct SharedPoints<'a> {
    host: Cow<'a, [Point]>,
    copy: DeviceCopy,
    /// By cell edge.
    grids: Mutex<Vec<(f32, CellGrid)>>,
}

impl<'a> SharedPoints<'a> {
    pub fn new(host: impl Into<Cow<'a, [Point]>>) -> Self {
        Self { host: host.into(), copy: DeviceCopy::default(), grids: Mutex::new(Vec::new()) }
    }

    /// Points on the host with their copy (N × 3 floats) on a device already made.
    pub fn with_copy(host: Vec<Point>, copy: Tensor) -> SharedPoints<'static> {
        SharedPoints { copy: DeviceCopy::kept(copy), ..SharedPoints::new(host) }
    }

    /// The points as an N × 3 float tensor on `device`: the copy made before, or one made now and kept.
    pub fn on(&self, device: Device) -> Tensor {
        self.copy.on(device, || points_tensor(&self.host, device))
    }

    /// The copy on `device` where there is one (nothing is copied).
    pub fn copy_on(&self, device: Device) -> Option<Tensor> {
        self.copy.get(device)
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

/// Indices into a cloud's points (samples, patch centres, patch members) on the host and, where a device stage made
/// them or needed them, on that device as int64: kept from the stage that made them, or copied up once.
#[derive(Default)]
pub struct SharedIndices {
    host: Vec<u32>,
    copy: DeviceCopy,
}

impl SharedIndices {
    /// Indices made on the device (int64, any shape: taken row after row), with their host copy already read.
    pub fn from_device(indices: Tensor, host: Vec<u32>) -> Self {
        Self { host, copy: DeviceCopy::kept(indices.view(-1)) }
    }

    /// The indices as a 1-D int64 tensor on `device`: the copy made or kept before, or one made now and kept.
    pub fn on(&self, device: Device) -> Tensor {
        self.copy.on(device, || indices_tensor(&self.host, device))
    }

    /// The copy on `device` where there is one (nothing is copied).
    pub fn copy_on(&self, device: Device) -> Option<Tensor> {
        self.copy.get(device)
    }
}

impl Deref for SharedIndices {
    type Target = [u32];

    fn deref(&self) -> &[u32] {
        &self.host
    }
}

impl From<Vec<u32>> for SharedIndices {
    fn from(host: Vec<u32>) -> Self {
        Self { host, copy: DeviceCopy::default() }
    }
}

impl Clone for SharedIndices {
    fn clone(&self) -> Self {
        Self { host: self.host.clone(), copy: self.copy.shared() }
    }
}

/// The same indices, wherever their copies are.
impl PartialEq for SharedIndices {
    fn eq(&self, other: &Self) -> bool {
        self.host == other.host
    }
}

impl PartialEq<Vec<u32>> for SharedIndices {
    fn eq(&self, other: &Vec<u32>) -> bool {
        &self.host == other
    }
}

impl std::fmt::Debug for SharedIndices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.host.fmt(f)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_made_on_a_device_keep_their_tensor_and_host_indices_go_up_once() {
        let made = Tensor::from_slice(&[4i64, 1, 3, 0]).view([2, 2]);
        let shared = SharedIndices::from_device(made.shallow_clone(), vec![4, 1, 3, 0]);
        let kept = shared.copy_on(Device::Cpu).expect("kept from the stage that made it");
        assert_eq!(kept.data_ptr(), made.data_ptr(), "the stage's own tensor, not a copy");
        assert_eq!(shared.on(Device::Cpu).data_ptr(), made.data_ptr());
        assert_eq!(*shared, [4, 1, 3, 0]);

        let host = SharedIndices::from(vec![2, 7]);
        assert!(host.copy_on(Device::Cpu).is_none(), "nothing copied before a stage asks");
        let up = host.on(Device::Cpu);
        assert_eq!(Vec::<i64>::try_from(&up).unwrap(), [2, 7]);
        assert_eq!(host.on(Device::Cpu).data_ptr(), up.data_ptr(), "copied once, then kept");
        assert_eq!(host.clone().copy_on(Device::Cpu).map(|t| t.data_ptr()), Some(up.data_ptr()));
    }
}
