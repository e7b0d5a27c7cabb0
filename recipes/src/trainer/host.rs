//! The training loop's traffic between the host and the device: every device→host read of a
//! value goes through [`read`], which counts it, and inputs go up through [`upload`].
//!
//! A read blocks the host until the device has computed the value (on CUDA, a synchronisation
//! that drains the queue of launched kernels), so the loop reads as little as it can: one read
//! per optimizer step (the step's loss, gradient norm and extra metrics together, which the
//! non-finite check needs anyway), one per logging window for an objective's window metrics,
//! and the finiteness of the weights at checkpoints. The count is kept per thread (a training
//! loop runs on one thread; tests run several loops at once in one process): a loop takes
//! [`count`] before and after the span it reports on. The checkpoint writer's bulk copies of the
//! weights and moments to the host are file I/O, not reads of values, and are not counted.

use anyhow::Context;
use std::cell::Cell;
use tch::{Device, Kind, Tensor};

thread_local! {
    static READS: Cell<u64> = const { Cell::new(0) };
}

/// Device→host reads made so far on this thread.
pub fn count() -> u64 {
    READS.with(Cell::get)
}

/// The values of `t` (any shape, any numeric or bool kind) on the host as f64, in row-major
/// order: one counted read. f32, f64, integer and bool values convert exactly, so the result
/// equals what `double_value` gave per element.
pub fn read(t: &Tensor) -> anyhow::Result<Vec<f64>> {
    READS.with(|c| c.set(c.get() + 1));
    let n = t.numel();
    let flat = t
        .f_detach()?
        .f_to_kind(Kind::Double)?
        .f_reshape([-1])?
        .f_to_device(Device::Cpu)?;
    let mut out = vec![0f64; n];
    flat.f_copy_data(&mut out, n)
        .context("reading a tensor from the device")?;
    Ok(out)
}

/// The one value of a one-element tensor (one counted read).
pub fn read_scalar(t: &Tensor) -> anyhow::Result<f64> {
    read(t)?
        .first()
        .copied()
        .context("reading a scalar: the tensor is empty")
}

/// `v` as a tensor of `shape` on `device` (of `T`'s kind: Int64 ids, Int32 offsets). On CUDA the host copy is pinned and the
/// upload non-blocking (the caching host allocator keeps the pinned block alive until the copy
/// has run), so the host goes on launching kernels; on any other device it is a plain copy.
pub fn upload<T: tch::kind::Element>(
    v: &[T],
    shape: &[i64],
    device: Device,
) -> anyhow::Result<Tensor> {
    let t = Tensor::from_slice(v).f_view(shape)?;
    Ok(match device {
        Device::Cuda(_) => t
            .f_pin_memory(device)?
            .f_to_device_(device, T::KIND, true, false)?,
        _ => t.f_to_device(device)?,
    })
}

/// This process's peak resident set size in MiB (`VmHWM` of `/proc/self/status`), `None` off
/// Linux.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
