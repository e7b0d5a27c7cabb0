//! `shard optimizer | gradients | full` (ZeRO-1 / 2 / 3): the training state of a data-parallel
//! node split across its R ranks, whole tensors at a time.
//!
//! [`Plan`] gives each trained tensor an owner: the largest tensors first, each to the rank that
//! owns the fewest elements so far (ties to the lower rank), so every rank owns about 1/R of the
//! elements (at most one tensor more than the mean). With `shard optimizer` a rank keeps the AdamW
//! moments of its tensors only and updates only those, after the usual all-reduce of the
//! gradients, and every rank then receives the updated tensors ([`Plan::gather`]). With
//! `gradients` and `full` the gradients are reduced block by block during the backward into their
//! owners ([`Plan::reduce`], driven by [`super::zero`]), the global norm is assembled from the
//! owners' per-tensor norms ([`Plan::total_norm`]), and with `full` the parameters a rank does
//! not own are present only while their block computes.
//!
//! Whole tensors keep the numerics of the unsharded run: each tensor is updated by the same
//! kernel with the same gradient (the reduce-scatter adds the same values as the all-reduce),
//! its norm is the same per-tensor norm, and the total norm stacks them in the same order — a
//! sharded run writes the bytes of the unsharded run with the same ranks when each rank's
//! gradient is one backward's (reduced per micro-batch, several micro-batches per rank add in
//! another order: equal to float rounding). A checkpoint's moments
//! are one file per rank named by tensor (`optimizer.rank-R.safetensors`), so a run resumes on
//! any number of ranks, sharded or not: each rank reads the tensors it owns wherever they are.
//!
//! The collectives' buffers: rank r's tensors, in name order, flattened into a stream; the
//! streams go in windows of [`BUCKET`] floats, window j of rank r into block r of a
//! `world × window` buffer (streams shorter than the longest padded), so the host buffers stay
//! a few windows whatever the model's size.

use crate::dist::Collective;
use anyhow::{Context, Result};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// Floats per rank in one round of the sharded collectives (8 MiB of f32): the host buffers of a
/// round are `world + 1` times this, not the size of the model.
pub const BUCKET: usize = 2 << 20;

/// What a sharded run splits beyond the parameters' updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// ZeRO-1: the moments; gradients all-reduced.
    Optimizer,
    /// ZeRO-2: the moments and the gradients (reduce-scattered block by block).
    Gradients,
    /// ZeRO-3: the moments, the gradients and the parameters (gathered block by block).
    Full,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Optimizer => "optimizer",
            Mode::Gradients => "gradients",
            Mode::Full => "full",
        }
    }

    /// Whether gradients are reduced by the block hooks ([`super::zero`]) rather than
    /// all-reduced after the backward.
    pub fn hooked(self) -> bool {
        self != Mode::Optimizer
    }
}

/// The mode of a node's `shard` (`None` for `none`).
pub fn mode(s: kinds::train::Shard) -> Option<Mode> {
    match s {
        kinds::train::Shard::None => None,
        kinds::train::Shard::Optimizer => Some(Mode::Optimizer),
        kinds::train::Shard::Gradients => Some(Mode::Gradients),
        kinds::train::Shard::Full => Some(Mode::Full),
    }
}

/// The owners of a run's trained tensors (in the optimizer's name order) and the collective
/// that moves them.
#[derive(Clone)]
pub struct Plan {
    pub mode: Mode,
    /// `owner[i]`: the rank that updates tensor `i`.
    pub owner: Vec<usize>,
    numel: Vec<usize>,
    /// The tensors' names, sorted, when known ([`Plan::named`]).
    names: Vec<String>,
    /// Floats per rank in one round ([`BUCKET`]).
    bucket: usize,
    collective: Arc<dyn Collective>,
}

impl Plan {
    /// Owners for tensors of `numel` elements (see the module docs) on `collective`'s ranks.
    pub fn new(mode: Mode, numel: Vec<usize>, collective: Arc<dyn Collective>) -> Plan {
        let world = collective.world().max(1);
        let mut order: Vec<usize> = (0..numel.len()).collect();
        order.sort_by(|&a, &b| numel[b].cmp(&numel[a]).then(a.cmp(&b)));
        let mut load = vec![0usize; world];
        let mut owner = vec![0usize; numel.len()];
        for i in order {
            let r = (0..world).min_by_key(|&r| (load[r], r)).unwrap_or(0);
            owner[i] = r;
            load[r] += numel[i];
        }
        Plan {
            mode,
            owner,
            numel,
            names: Vec::new(),
            bucket: BUCKET,
            collective,
        }
    }

    /// The same plan with rounds of `bucket` floats per rank (tests use small ones).
    pub fn with_bucket(mut self, bucket: usize) -> Plan {
        self.bucket = bucket.max(1);
        self
    }

    /// The same plan knowing its tensors' names (sorted, one per tensor).
    pub fn named(mut self, names: Vec<String>) -> Plan {
        self.names = names;
        self
    }

    /// Whether this rank updates the tensor named `name` (one of [`Plan::named`]'s).
    pub fn owns_name(&self, name: &str) -> bool {
        self.names
            .binary_search_by(|n| n.as_str().cmp(name))
            .is_ok_and(|i| self.owns(i))
    }

    pub fn rank(&self) -> usize {
        self.collective.rank()
    }

    /// Whether this rank updates tensor `i`.
    pub fn owns(&self, i: usize) -> bool {
        self.owner[i] == self.rank()
    }

    /// The elements this rank owns (its share of the moments).
    pub fn owned_elements(&self) -> usize {
        (0..self.numel.len())
            .filter(|&i| self.owns(i))
            .map(|i| self.numel[i])
            .sum()
    }

    /// The number of trained tensors.
    pub fn len(&self) -> usize {
        self.owner.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.owner.is_empty()
    }

    /// The tensors of `subset` (indices in increasing order) rank `r` owns, in order.
    fn members<'a>(&'a self, r: usize, subset: &'a [usize]) -> impl Iterator<Item = usize> + 'a {
        subset.iter().copied().filter(move |&i| self.owner[i] == r)
    }

    /// Calls `f(tensor, offset in the tensor, offset in the segment, length)` for each piece of
    /// elements `start..start + len` of rank `r`'s stream over `subset` (its tensors there
    /// flattened one after the other, in order).
    fn segments(
        &self,
        (r, subset): (usize, &[usize]),
        (start, len): (usize, usize),
        mut f: impl FnMut(usize, usize, usize, usize) -> Result<()>,
    ) -> Result<()> {
        let mut at = 0;
        for i in self.members(r, subset) {
            let n = self.numel[i];
            let (lo, hi) = (at.max(start), (at + n).min(start + len));
            if lo < hi {
                f(i, lo - at, lo - start, hi - lo)?;
            }
            at += n;
            if at >= start + len {
                break;
            }
        }
        Ok(())
    }

    /// The rounds of a collective over the ranks' streams of `subset`: `(start, len)` windows of
    /// at most `bucket` floats per rank up to the longest stream, the same on every rank.
    fn rounds(&self, subset: &[usize]) -> Vec<(usize, usize)> {
        let world = self.collective.world().max(1);
        let block = (0..world)
            .map(|r| {
                self.members(r, subset)
                    .map(|i| self.numel[i])
                    .sum::<usize>()
            })
            .max()
            .unwrap_or(0);
        (0..block.div_ceil(self.bucket))
            .map(|j| {
                let start = j * self.bucket;
                (start, self.bucket.min(block - start))
            })
            .collect()
    }

    /// Every rank's updated tensors to every rank ([`Plan::gather_some`] of all of them).
    pub fn gather(&self, tensors: &[Tensor]) -> Result<()> {
        let all: Vec<usize> = (0..self.len()).collect();
        self.gather_some(tensors, &all)
    }

    /// The tensors of `subset` (increasing indices into `tensors`) from their owners to every
    /// rank: window by window, an all-gather of each rank's stream, copied into the other ranks'
    /// tensors in place (exactly: f32 carries every value of the f32, bf16 and f16 weights).
    pub fn gather_some(&self, tensors: &[Tensor], subset: &[usize]) -> Result<()> {
        let (world, me) = (self.collective.world(), self.rank());
        for (start, len) in self.rounds(subset) {
            let mut mine = vec![0f32; len];
            self.segments((me, subset), (start, len), |i, off, at, n| {
                host_copy(&tensors[i], off, &mut mine[at..at + n])
            })?;
            let mut all = vec![0f32; len * world];
            self.collective
                .all_gather_f32(&mine, &mut all)
                .context("all-gathering weights")?;
            tch::no_grad(|| -> Result<()> {
                for r in (0..world).filter(|&r| r != me) {
                    let block = &all[r * len..(r + 1) * len];
                    self.segments((r, subset), (start, len), |i, off, at, n| {
                        set_from(&tensors[i], off, &block[at..at + n])
                    })?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// The gradients `grads` of `subset`'s tensors (undefined ones count as zeros) summed over
    /// the ranks into f32 tensors held by their owners: window by window, a reduce-scatter of
    /// the ranks' streams. Returns this rank's sums, `(tensor index, sum)` in order, shaped like
    /// the gradients and on their device.
    pub fn reduce(&self, grads: &[Tensor], subset: &[usize]) -> Result<Vec<(usize, Tensor)>> {
        let (world, me) = (self.collective.world(), self.rank());
        let mut out: Vec<(usize, Tensor)> = Vec::new();
        for i in self.members(me, subset) {
            let g = &grads[i];
            let (shape, device) = match g.defined() {
                true => (g.size(), g.device()),
                false => (vec![self.numel[i] as i64], tch::Device::Cpu),
            };
            out.push((i, Tensor::f_zeros(&shape, (Kind::Float, device))?));
        }
        for (start, len) in self.rounds(subset) {
            let mut buf = vec![0f32; len * world];
            for r in 0..world {
                let block = &mut buf[r * len..(r + 1) * len];
                self.segments((r, subset), (start, len), |i, off, at, n| {
                    match grads[i].defined() {
                        true => host_copy(&grads[i], off, &mut block[at..at + n]),
                        false => Ok(()),
                    }
                })?;
            }
            let mut mine = vec![0f32; len];
            self.collective
                .reduce_scatter_f32(&buf, &mut mine)
                .context("reduce-scattering the gradients")?;
            drop(buf);
            self.segments((me, subset), (start, len), |i, off, at, n| {
                let t = &out[out.iter().position(|(j, _)| *j == i).unwrap_or(0)].1;
                set_from(t, off, &mine[at..at + n])
            })?;
        }
        Ok(out)
    }

    /// `shard gradients | full`: the global 2-norm of the summed gradients, `‖(‖g_1‖, …, ‖g_n‖)‖` over
    /// the tensors that had one (`had`), as an f32 scalar on `device`: each owner's per-tensor
    /// norms (as the unsharded optimizer computes them) gathered, stacked in tensor order and
    /// normed — the unsharded value exactly. `None` when no tensor had a gradient.
    pub fn total_norm(
        &self,
        tensors: &[Tensor],
        had: &[bool],
        device: tch::Device,
    ) -> Result<Option<Tensor>> {
        let owned: Vec<Tensor> = (0..tensors.len())
            .filter(|&i| self.owns(i) && had[i])
            .map(|i| tensors[i].grad())
            .collect();
        let refs: Vec<&Tensor> = owned.iter().collect();
        let norms = if refs.is_empty() {
            Vec::new()
        } else {
            tch::no_grad(|| super::fused::norms(&refs))?
        };
        let mut mine = vec![-0.0f32; tensors.len()];
        let mut k = 0;
        for i in 0..tensors.len() {
            if self.owns(i) && had[i] {
                mine[i] = norms[k] as f32;
                k += 1;
            }
        }
        let mut all = vec![0f32; tensors.len() * self.collective.world()];
        self.collective
            .all_gather_f32(&mine, &mut all)
            .context("gathering the gradient norms")?;
        let n = tensors.len();
        let picked: Vec<f32> = (0..n)
            .filter(|&i| had[i])
            .map(|i| all[self.owner[i] * n + i])
            .collect();
        if picked.is_empty() {
            return Ok(None);
        }
        let stacked = Tensor::from_slice(&picked).f_to_device(device)?;
        Ok(Some(super::fused::vector_norm(&stacked)?))
    }
}

/// Elements `off..off + out.len()` of `t` (flattened) as f32 into `out`.
fn host_copy(t: &Tensor, off: usize, out: &mut [f32]) -> Result<()> {
    let part = t
        .f_detach()?
        .f_reshape([-1])?
        .f_narrow(0, off as i64, out.len() as i64)?
        .f_to_kind(Kind::Float)?
        .f_to_device(tch::Device::Cpu)?;
    part.f_copy_data(out, out.len())
        .context("copying a tensor to the host")?;
    Ok(())
}

/// Sets elements `off..off + v.len()` of `t` (flattened; any float kind and device) to the f32
/// values `v`, in place.
fn set_from(t: &Tensor, off: usize, v: &[f32]) -> Result<()> {
    let src = Tensor::from_slice(v)
        .f_to_kind(t.kind())?
        .f_to_device(t.device())?;
    let mut dst = t.f_view([-1])?.f_narrow(0, off as i64, v.len() as i64)?;
    dst.f_copy_(&src)?;
    Ok(())
}
