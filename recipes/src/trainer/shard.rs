//! `shard optimizer | gradients` (ZeRO-1 / ZeRO-2): the training state of a data-parallel node
//! split across its R ranks, whole tensors at a time.
//!
//! [`Plan`] gives each trained tensor an owner: the largest tensors first, each to the rank that
//! owns the fewest elements so far (ties to the lower rank), so every rank owns about 1/R of the
//! elements (at most one tensor more than the mean). With `shard optimizer` a rank keeps the AdamW
//! moments of its tensors only and updates only those, after the usual all-reduce of the
//! gradients; with `shard gradients` the gradients are reduce-scattered instead, so a rank holds
//! only its tensors' summed gradients after the step's backward (the others are released), and
//! the global norm is assembled from the owners' per-tensor norms. Either way every rank then
//! receives the updated tensors ([`Plan::gather`]), so the forward of the next step sees the
//! whole model.
//!
//! Whole tensors keep the numerics of the unsharded run exactly: each tensor is updated by the
//! same kernel with the same gradient (the reduce-scatter adds the same values as the all-reduce),
//! its norm is the same per-tensor norm, and the total norm stacks them in the same order — a
//! sharded run writes the bytes of the unsharded run with the same ranks. A checkpoint's moments
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
    /// ZeRO-2: the moments and the gradients (reduce-scattered).
    Gradients,
}

/// The mode of a node's `shard` (`None` for `none`).
pub fn mode(s: kinds::train::Shard) -> Option<Mode> {
    match s {
        kinds::train::Shard::None => None,
        kinds::train::Shard::Optimizer => Some(Mode::Optimizer),
        kinds::train::Shard::Gradients => Some(Mode::Gradients),
    }
}

/// The owners of a run's trained tensors (in the optimizer's name order) and the collective
/// that moves them.
pub struct Plan {
    pub mode: Mode,
    /// `owner[i]`: the rank that updates tensor `i`.
    pub owner: Vec<usize>,
    numel: Vec<usize>,
    /// The longest rank's stream, in floats.
    block: usize,
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
        let block = load.iter().copied().max().unwrap_or(0);
        Plan {
            mode,
            owner,
            numel,
            block,
            bucket: BUCKET,
            collective,
        }
    }

    /// The same plan with rounds of `bucket` floats per rank (tests use small ones).
    pub fn with_bucket(mut self, bucket: usize) -> Plan {
        self.bucket = bucket.max(1);
        self
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

    /// The tensors of rank `r`, in order.
    fn members(&self, r: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.owner.len()).filter(move |&i| self.owner[i] == r)
    }

    /// Calls `f(tensor, offset in the tensor, offset in the segment, length)` for each piece of
    /// elements `start..start + len` of rank `r`'s stream (its tensors flattened one after the
    /// other, in order).
    fn segments(
        &self,
        r: usize,
        (start, len): (usize, usize),
        mut f: impl FnMut(usize, usize, usize, usize) -> Result<()>,
    ) -> Result<()> {
        let mut at = 0;
        for i in self.members(r) {
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

    /// The rounds of a collective over the blocks: `(start, len)` windows of at most
    /// `bucket` floats per rank, the same on every rank.
    fn rounds(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.block.div_ceil(self.bucket)).map(|j| {
            let start = j * self.bucket;
            (start, self.bucket.min(self.block - start))
        })
    }

    /// Every rank's updated tensors to every rank: window by window ([`Plan::rounds`]), an
    /// all-gather of each rank's stream, copied into the other ranks' tensors in place (exactly:
    /// f32 carries every value of the f32, bf16 and f16 weights this updates).
    pub fn gather(&self, tensors: &[Tensor]) -> Result<()> {
        let (world, me) = (self.collective.world(), self.rank());
        for (start, len) in self.rounds() {
            let mut mine = vec![0f32; len];
            self.segments(me, (start, len), |i, off, at, n| {
                host_copy(&tensors[i], off, &mut mine[at..at + n])
            })?;
            let mut all = vec![0f32; len * world];
            self.collective
                .all_gather_f32(&mine, &mut all)
                .context("all-gathering the updated weights")?;
            tch::no_grad(|| -> Result<()> {
                for r in (0..world).filter(|&r| r != me) {
                    let block = &all[r * len..(r + 1) * len];
                    self.segments(r, (start, len), |i, off, at, n| {
                        set_from(&tensors[i], off, &block[at..at + n])
                    })?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// `shard gradients`: the gradients of `tensors` summed over the ranks into their owners'
    /// `.grad` (window by window, a reduce-scatter of the blocks); the other gradients are
    /// released. Returns which tensors had a gradient (the same on every rank: the same model
    /// and batch shapes).
    pub fn reduce_scatter(&self, tensors: &[Tensor]) -> Result<Vec<bool>> {
        let (world, me) = (self.collective.world(), self.rank());
        let grads: Vec<Tensor> = tensors.iter().map(Tensor::grad).collect();
        let had: Vec<bool> = grads.iter().map(Tensor::defined).collect();
        for (start, len) in self.rounds() {
            let mut buf = vec![0f32; len * world];
            for r in 0..world {
                let block = &mut buf[r * len..(r + 1) * len];
                self.segments(r, (start, len), |i, off, at, n| match had[i] {
                    true => host_copy(&grads[i], off, &mut block[at..at + n]),
                    false => Ok(()),
                })?;
            }
            let mut mine = vec![0f32; len];
            self.collective
                .reduce_scatter_f32(&buf, &mut mine)
                .context("reduce-scattering the gradients")?;
            drop(buf);
            tch::no_grad(|| {
                self.segments(me, (start, len), |i, off, at, n| match had[i] {
                    true => set_from(&grads[i], off, &mine[at..at + n]),
                    false => Ok(()),
                })
            })?;
        }
        let others: Vec<&Tensor> = (0..tensors.len())
            .filter(|&i| !self.owns(i) && had[i])
            .map(|i| &tensors[i])
            .collect();
        super::fused::release_grads(&others)?;
        Ok(had)
    }

    /// `shard gradients`: the global 2-norm of the summed gradients, `‖(‖g_1‖, …, ‖g_n‖)‖` over
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
