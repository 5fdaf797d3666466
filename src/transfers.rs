//! Host ↔ device copies of tensors, counted. On a GPU each copy is a transfer, and each copy to the host also waits
//! for every kernel queued before it: how many an inspection makes is one of its costs (`bench detector` shows
//! them). Copies to a CUDA device go from pinned memory without blocking, so they do not wait. Every call counts,
//! whatever the device, so a run on CPU tensors shows what a GPU run would copy.
//!
//! An op whose output size depends on the data (`nonzero`, `unique`, `masked_select`), whose answer is a host value
//! (`equal`) or that checks its result on the host (`linalg_eigh`'s errors) reads from the device inside LibTorch:
//! a wait like a copy to the host, without its bytes. [`sized_by_data`] counts those.

use std::sync::atomic::{AtomicUsize, Ordering};

use tch::{Device, Kind, TchError, Tensor};

static TO_DEVICE: AtomicUsize = AtomicUsize::new(0);
static TO_DEVICE_BYTES: AtomicUsize = AtomicUsize::new(0);
static TO_HOST: AtomicUsize = AtomicUsize::new(0);
static TO_HOST_BYTES: AtomicUsize = AtomicUsize::new(0);
static SIZED_BY_DATA: AtomicUsize = AtomicUsize::new(0);

fn bytes(t: &Tensor) -> usize {
    t.numel() * t.kind().elt_size_in_bytes()
}

/// Counted copies between the host and a device.
pub trait Transfer {
    /// This tensor (built on the host) on `device`.
    fn upload(&self, device: Device) -> Tensor;
    /// This tensor on the host, to be read there.
    fn download(&self) -> Tensor;
}

impl Transfer for Tensor {
    fn upload(&self, device: Device) -> Tensor {
        TO_DEVICE.fetch_add(1, Ordering::Relaxed);
        TO_DEVICE_BYTES.fetch_add(bytes(self), Ordering::Relaxed);
        if device.is_cuda() {
            // LibTorch follows a blocking copy from pageable memory with a wait for the stream: every kernel queued
            // before it. Copied from pinned memory without blocking, the copy is queued like a kernel and nothing
            // waits (the pinned buffer is kept by LibTorch until the copy has run).
            let queued =
                self.f_pin_memory(device).and_then(|pinned| pinned.f_to_device_(device, self.kind(), true, false));
            if let Ok(queued) = queued {
                return queued;
            }
        }
        self.to_device(device)
    }

    fn download(&self) -> Tensor {
        TO_HOST.fetch_add(1, Ordering::Relaxed);
        TO_HOST_BYTES.fetch_add(bytes(self), Ordering::Relaxed);
        self.to_device(Device::Cpu)
    }
}

/// `op`, which reads from the device inside LibTorch (see the module's header), counted.
pub fn sized_by_data<T>(op: impl FnOnce() -> T) -> T {
    SIZED_BY_DATA.fetch_add(1, Ordering::Relaxed);
    op()
}

/// Several tensors read to the host in one copy (on a GPU, one wait instead of one each): their bytes side by side,
/// so none is widened on the way. Each comes back as f64 values row after row: exact for f32 and f64 values, flags
/// and every index below 2^53.
pub fn read_together(parts: &[&Tensor]) -> Result<Vec<Vec<f64>>, TchError> {
    if parts.is_empty() {
        return Ok(Vec::new());
    }
    let flat: Vec<Tensor> =
        parts.iter().map(|t| t.contiguous().reshape([-1]).view_dtype(Kind::Uint8).reshape([-1])).collect();
    let all: Vec<u8> = Tensor::cat(&flat, 0).download().try_into()?;
    let mut rest = all.as_slice();
    parts
        .iter()
        .map(|t| {
            let (part, after) = rest.split_at(bytes(t).min(rest.len()));
            rest = after;
            let words = |size: usize| part.chunks_exact(size);
            Ok(match t.kind() {
                Kind::Float => words(4).map(|w| f64::from(f32::from_ne_bytes([w[0], w[1], w[2], w[3]]))).collect(),
                Kind::Double => words(8).map(|w| f64::from_ne_bytes(std::array::from_fn(|k| w[k]))).collect(),
                Kind::Int64 => words(8).map(|w| i64::from_ne_bytes(std::array::from_fn(|k| w[k])) as f64).collect(),
                Kind::Bool | Kind::Uint8 => part.iter().map(|&b| f64::from(b)).collect(),
                kind => return Err(TchError::Kind(format!("no reading of {kind:?} tensors to the host"))),
            })
        })
        .collect()
}

/// Copies made by this process so far; the difference of two is what ran between them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copies {
    pub to_device: usize,
    pub to_device_bytes: usize,
    pub to_host: usize,
    pub to_host_bytes: usize,
    /// Ops that read a size or an answer from the device ([`sized_by_data`]).
    pub sized_by_data: usize,
}

impl Copies {
    pub fn so_far() -> Self {
        Self {
            to_device: TO_DEVICE.load(Ordering::Relaxed),
            to_device_bytes: TO_DEVICE_BYTES.load(Ordering::Relaxed),
            to_host: TO_HOST.load(Ordering::Relaxed),
            to_host_bytes: TO_HOST_BYTES.load(Ordering::Relaxed),
            sized_by_data: SIZED_BY_DATA.load(Ordering::Relaxed),
        }
    }

    /// The copies made since `earlier`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            to_device: self.to_device - earlier.to_device,
            to_device_bytes: self.to_device_bytes - earlier.to_device_bytes,
            to_host: self.to_host - earlier.to_host,
            to_host_bytes: self.to_host_bytes - earlier.to_host_bytes,
            sized_by_data: self.sized_by_data - earlier.sized_by_data,
        }
    }
}
