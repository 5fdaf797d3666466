//! Points that both the host's geometry and the device's read: kept on the host, and copied to a device at most once.
//! The first device stage that needs them makes the copy and every later stage takes it, so a view's points go up
//! once for all of its patch step (sampling, normals, grouping, FPFH, context, projection), and a model's template
//! once for all of its scans. A result made on the device starts with its copy there.

use std::borrow::Cow;
use std::ops::Deref;
use std::sync::{Mutex, PoisonError};

use tch::{Device, Tensor};

use super::Point;
use super::device::{host_points, points_tensor};

/// Points on the host and, once a device stage has needed them, on that device. The copy sits behind a mutex:
/// rayon's arms share the points, and a tensor may be sent between threads but not shared.
pub struct SharedPoints<'a> {
    host: Cow<'a, [Point]>,
    copy: Mutex<Option<Tensor>>,
}

impl<'a> SharedPoints<'a> {
    pub fn new(host: impl Into<Cow<'a, [Point]>>) -> Self {
        Self { host: host.into(), copy: Mutex::new(None) }
    }

    /// Points made on the device (an N × 3 float tensor), read to the host once.
    pub fn from_device(points: Tensor) -> super::Result<SharedPoints<'static>> {
        Ok(SharedPoints { host: Cow::Owned(host_points(&points)?), copy: Mutex::new(Some(points)) })
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
