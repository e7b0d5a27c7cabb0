//! Data parallelism: the collective operations the trainer needs, behind [`Collective`].
//!
//! A node with `ranks R > 1` runs as R processes (`temper-rank`): CPU ranks started by `mpirun`
//! sum over MPI (module `mpi`, feature `mpi`); CUDA ranks started by `temper-rank --launch`
//! ([`launch`]) or `srun` sum over NCCL ([`nccl`]). Every rank reads the same data stream and builds the same
//! micro-batches; rank r forwards and backwards micro-batches r, r + R, r + 2R, … of each step;
//! the gradients are summed across ranks ([`all_reduce_grads`], in buckets) with the loss, the
//! extra metrics and the step's error and stop flags ([`Collective::all_reduce_f64`]), so every
//! rank takes the same optimizer step. Rank 0 alone writes checkpoints, metrics, progress and
//! the artifact; every rank resumes from rank 0's checkpoint.
//!
//! The result equals a one-rank run with the same `batch-size` and `grad-accum` up to the order
//! of floating-point sums (with two ranks the sums are the same additions: bit-identical on CPU).

pub mod launch;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod nccl;
pub mod rank;

use anyhow::{Context, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use tch::{Kind, Tensor};

/// Nanoseconds this process spent in the all-reduces of training steps (reported as
/// `allreduce_seconds` in a data-parallel run's summary).
static ALLREDUCE_NANOS: AtomicU64 = AtomicU64::new(0);

/// Adds `d` to the time spent all-reducing.
pub fn count_allreduce(d: std::time::Duration) {
    ALLREDUCE_NANOS.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
}

/// Seconds spent all-reducing so far in this process.
pub fn allreduce_seconds() -> f64 {
    ALLREDUCE_NANOS.load(Ordering::Relaxed) as f64 * 1e-9
}

/// Sums across the ranks of a data-parallel node.
pub trait Collective: Send + Sync {
    /// This process's rank, from 0.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn world(&self) -> usize;
    /// Element-wise sum over the ranks, in place (every rank gets the sum).
    fn all_reduce_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// Element-wise sum over the ranks, in place.
    fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Every rank's `mine` (the same length on every rank) concatenated in rank order into `out`
    /// (`world · mine.len()`). The fallback goes through [`Collective::all_reduce_f32`] with
    /// `−0.0` in the other ranks' blocks: adding `−0.0` leaves every float as it is, so the
    /// values arrive exactly.
    fn all_gather_f32(&self, mine: &[f32], out: &mut [f32]) -> Result<()> {
        let k = mine.len();
        anyhow::ensure!(
            out.len() == k * self.world(),
            "internal: all-gather into {} floats of {} × {k}",
            out.len(),
            self.world()
        );
        out.fill(-0.0);
        out[self.rank() * k..(self.rank() + 1) * k].copy_from_slice(mine);
        self.all_reduce_f32(out)
    }
    /// `buf` (`world · k` floats) summed element-wise over the ranks, of which this rank keeps
    /// block `rank` in `out` (`k`). The fallback sums everything and keeps its block.
    fn reduce_scatter_f32(&self, buf: &[f32], out: &mut [f32]) -> Result<()> {
        let k = out.len();
        anyhow::ensure!(
            buf.len() == k * self.world(),
            "internal: reduce-scatter of {} floats into {} × {k}",
            buf.len(),
            self.world()
        );
        let mut all = buf.to_vec();
        self.all_reduce_f32(&mut all)?;
        out.copy_from_slice(&all[self.rank() * k..(self.rank() + 1) * k]);
        Ok(())
    }
    /// Sums the contiguous f32 tensor `flat` over the ranks in place where it lies (on the
    /// GPU for NCCL); `false` when this collective reduces host memory only (the caller then
    /// goes through [`Collective::all_reduce_f32`]).
    fn all_reduce_device(&self, _flat: &Tensor) -> Result<bool> {
        Ok(false)
    }
    /// Whether training steps go through this collective: with more than one rank, and always
    /// for NCCL (a launched world of one still exercises its path).
    fn reduces(&self) -> bool {
        self.world() > 1
    }
    /// What sums (for the log): `MPI`, `NCCL 2.28.9 on cuda:0`.
    fn describe(&self) -> String {
        "MPI".into()
    }
}

/// One rank: every operation is the identity.
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_f32(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
}

/// Floats per all-reduce call (32 MiB of f32): gradients are reduced in buckets of about this
/// size, not one call per tensor.
pub const BUCKET: usize = 8 << 20;

/// Sums the gradients of `params` over the ranks, in buckets of about [`BUCKET`] floats (each
/// gradient copied to host f32, reduced, copied back in its own dtype and device). Parameters
/// without a gradient are skipped, on every rank alike (the same model and micro-batch shapes
/// give the same set).
pub fn all_reduce_grads(c: &dyn Collective, params: &[Tensor]) -> Result<()> {
    all_reduce_grads_in(c, params, BUCKET)
}

/// [`all_reduce_grads`] with buckets of about `bucket` floats (a gradient bigger than a bucket
/// goes alone).
pub fn all_reduce_grads_in(c: &dyn Collective, params: &[Tensor], bucket: usize) -> Result<()> {
    if !c.reduces() {
        return Ok(());
    }
    let grads: Vec<Tensor> = params
        .iter()
        .map(|p| p.grad())
        .filter(|g| g.defined())
        .collect();
    let mut start = 0;
    while start < grads.len() {
        let mut end = start;
        let mut len = 0usize;
        while end < grads.len() && (len == 0 || len + grads[end].numel() <= bucket) {
            len += grads[end].numel();
            end += 1;
        }
        reduce_bucket(c, &grads[start..end], len)?;
        start = end;
    }
    Ok(())
}

/// One bucket: the gradients flattened into one f32 buffer on their device, summed there when
/// the collective can ([`Collective::all_reduce_device`], NCCL), else through host memory,
/// then copied back into each gradient in its own dtype.
fn reduce_bucket(c: &dyn Collective, grads: &[Tensor], len: usize) -> Result<()> {
    let device = grads[0].device();
    let flat = Tensor::f_cat(
        &grads
            .iter()
            .map(|g| {
                g.f_to_kind(Kind::Float)?
                    .f_to_device(device)?
                    .f_reshape([-1])
            })
            .collect::<std::result::Result<Vec<_>, _>>()?,
        0,
    )?;
    let summed = if c
        .all_reduce_device(&flat)
        .context("all-reducing gradients")?
    {
        flat
    } else {
        let mut buf = vec![0f32; len];
        flat.f_to_device(tch::Device::Cpu)?
            .f_copy_data(&mut buf, len)
            .context("reading gradients")?;
        c.all_reduce_f32(&mut buf)
            .context("all-reducing gradients")?;
        Tensor::from_slice(&buf)
    };
    let mut at = 0i64;
    for g in grads {
        let n = g.numel() as i64;
        let part = summed
            .f_narrow(0, at, n)?
            .f_reshape(g.size())?
            .f_to_kind(g.kind())?
            .f_to_device(g.device())?;
        let mut g = g.shallow_clone();
        tch::no_grad(|| g.f_copy_(&part))?;
        at += n;
    }
    Ok(())
}

/// A flag every rank agrees on: whether any rank raised it.
pub fn any(c: &dyn Collective, mine: bool) -> Result<bool> {
    let mut v = [if mine { 1.0 } else { 0.0 }];
    c.all_reduce_f64(&mut v)?;
    Ok(v[0] > 0.0)
}
