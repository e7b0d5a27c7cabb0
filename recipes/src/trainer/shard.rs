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
//! The collectives' buffers: rank r's tensors, in name order, flattened into block r of
//! `world × block` floats (`block` = the largest rank's element count; the rest padding).

use crate::dist::Collective;
use anyhow::{Context, Result};
use std::sync::Arc;
use tch::{Kind, Tensor};

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
    /// Floats per rank in the collectives' buffers.
    block: usize,
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
            collective,
        }
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

    /// Every rank's updated tensors to every rank: block r of an all-gather holds rank r's
    /// tensors' values, copied into each tensor in place (exactly: f32 carries every value of
    /// the f32, bf16 and f16 weights this updates).
    pub fn gather(&self, tensors: &[Tensor]) -> Result<()> {
        let world = self.collective.world();
        let mut mine = vec![0f32; self.block];
        let mut at = 0;
        for i in self.members(self.rank()) {
            let n = self.numel[i];
            host_copy(&tensors[i], &mut mine[at..at + n])?;
            at += n;
        }
        let mut all = vec![0f32; self.block * world];
        self.collective
            .all_gather_f32(&mine, &mut all)
            .context("all-gathering the updated weights")?;
        tch::no_grad(|| -> Result<()> {
            for r in 0..world {
                let mut at = r * self.block;
                for i in self.members(r) {
                    let n = self.numel[i];
                    if r != self.rank() {
                        set_from(&tensors[i], &all[at..at + n])?;
                    }
                    at += n;
                }
            }
            Ok(())
        })
    }

    /// `shard gradients`: the gradients of `tensors` summed over the ranks into their owners'
    /// `.grad` (a reduce-scatter of the blocks); the other gradients are released. Returns which
    /// tensors had a gradient (the same on every rank: the same model and batch shapes).
    pub fn reduce_scatter(&self, tensors: &[Tensor]) -> Result<Vec<bool>> {
        let world = self.collective.world();
        let grads: Vec<Tensor> = tensors.iter().map(Tensor::grad).collect();
        let had: Vec<bool> = grads.iter().map(Tensor::defined).collect();
        let mut buf = vec![0f32; self.block * world];
        for r in 0..world {
            let mut at = r * self.block;
            for i in self.members(r) {
                let n = self.numel[i];
                if had[i] {
                    host_copy(&grads[i], &mut buf[at..at + n])?;
                }
                at += n;
            }
        }
        let mut mine = vec![0f32; self.block];
        self.collective
            .reduce_scatter_f32(&buf, &mut mine)
            .context("reduce-scattering the gradients")?;
        drop(buf);
        tch::no_grad(|| -> Result<()> {
            let mut at = 0;
            for i in self.members(self.rank()) {
                let n = self.numel[i];
                if had[i] {
                    set_from(&grads[i], &mine[at..at + n])?;
                }
                at += n;
            }
            Ok(())
        })?;
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

/// `t`'s values as f32 into `out` (`t.numel()` floats).
fn host_copy(t: &Tensor, out: &mut [f32]) -> Result<()> {
    let flat = t
        .f_detach()?
        .f_to_kind(Kind::Float)?
        .f_reshape([-1])?
        .f_to_device(tch::Device::Cpu)?;
    flat.f_copy_data(out, out.len())
        .context("copying a tensor to the host")?;
    Ok(())
}

/// Sets `t` (any float kind and device) to the f32 values `v`, in place.
fn set_from(t: &Tensor, v: &[f32]) -> Result<()> {
    let src = Tensor::from_slice(v)
        .f_reshape(t.size())?
        .f_to_kind(t.kind())?
        .f_to_device(t.device())?;
    let mut dst = t.shallow_clone();
    dst.f_copy_(&src)?;
    Ok(())
}
