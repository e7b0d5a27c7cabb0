//! `shard gradients | full` (ZeRO-2 / ZeRO-3) at run time: the hooks around the decoder blocks
//! ([`crate::arch::hooks`]) that reduce each block's gradients into their owners as soon as its
//! backward is done and, under `full`, hold a block's parameters only while it computes.
//!
//! The trained tensors, in name order, are split into *units*: one per decoder block (the names
//! under `layers.N.`) and the *root* (the rest: embeddings, final norm, LM head). Ownership is the
//! [`Plan`]'s, whole tensors at a time. Per optimizer step:
//! - forward: under `full`, block `i`'s tensors another rank owns get storage and are
//!   all-gathered before the block runs and freed after (the blocks are then recomputed in
//!   backward: their parameters are not kept from the forward to the backward); the root is
//!   gathered at the first forward of the step and kept until the update;
//! - backward: when block `i`'s backward is done, its gradients are reduce-scattered to their
//!   owners, who add them to an f32 accumulator, and every rank releases them (under `full` the
//!   block's borrowed tensors are freed again); after each micro-batch's backward the root's
//!   gradients go the same way ([`Sharded::after_backward`]);
//! - update: [`Sharded::finish_grads`] makes each owner's accumulator its tensor's `.grad`;
//!   AdamW updates the owned tensors; [`Sharded::after_update`] then gathers every tensor
//!   (`gradients`: every rank holds the whole working copy) or frees the borrowed root (`full`).
//!
//! Memory per rank, P trained parameters, R ranks, f32 masters: `gradients` holds the working
//! weights, 1/R of the masters, gradients and moments, and one block's gradients at a time;
//! `full` 1/R of everything plus one block's parameters and gradients and the root.
//!
//! Invariants: every rank runs the same forwards and backwards, and whether a hook runs a
//! collective depends only on state every rank shares (`gathered`), so the collectives pair up;
//! a tensor's storage is live exactly when `live[i]` says so, and the hooks only read live
//! tensors; the accumulators and `had` are reset by [`Sharded::finish_grads`].

use super::shard::{Mode, Plan};
use crate::arch::hooks::BlockHooks;
use crate::arch::HfModel;
use crate::dist::Collective;
use anyhow::{anyhow, Context, Result};
use std::sync::{Arc, Mutex};
use tch::{TchError, Tensor};

/// The shard plan of a node's run (`None` unless `shard` is set and the ranks reduce): owners
/// for the model's trained variables in name order.
pub fn plan(
    shard: kinds::train::Shard,
    collective: &Arc<dyn Collective>,
    model: &HfModel,
) -> Option<Plan> {
    let mode = super::shard::mode(shard).filter(|_| collective.reduces())?;
    let mut vars = model.trained_vars();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let numel = vars.iter().map(|(_, t)| t.numel()).collect();
    let names = vars.into_iter().map(|(n, _)| n).collect();
    Some(Plan::new(mode, numel, collective.clone()).named(names))
}

/// The hooks of a `gradients | full` plan, installed on `model` (`None` without a plan).
pub fn hooks(plan: Option<Plan>, model: &mut HfModel) -> Result<Option<Arc<Sharded>>> {
    let Some(plan) = plan else {
        return Ok(None);
    };
    let mut work = model.trained_vars();
    work.sort_by(|a, b| a.0.cmp(&b.0));
    let s = Arc::new(Sharded::new(plan, work, model.model.layers.len())?);
    model.model.hooks = Some(s.clone());
    Ok(Some(s))
}

/// The block a trained tensor belongs to: `N` of a `layers.N.` component of its name.
pub fn block_of(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split('.').collect();
    parts
        .windows(2)
        .find(|w| w[0] == "layers")
        .and_then(|w| w[1].parse().ok())
}

/// The hooks of a sharded run (see the module docs).
pub struct Sharded {
    mode: Mode,
    plan: Plan,
    /// Tensor indices of each block's unit, and of the root.
    blocks: Vec<Vec<usize>>,
    root: Vec<usize>,
    state: Mutex<State>,
}

struct State {
    /// The model's variables by trained index: what the forward reads and the backward fills
    /// (the bf16 working copy under `bf16-mixed`).
    work: Vec<Tensor>,
    /// This rank's summed gradients of its tensors this step.
    acc: Vec<Option<Tensor>>,
    /// Whether a tensor had a gradient in this step's backward (the same on every rank).
    had: Vec<bool>,
    /// Whether a tensor's storage is present (always, for owned tensors and outside `full`).
    live: Vec<bool>,
    /// Whether a tensor was gathered since it was last released: the same on every rank
    /// (unlike `live`, which depends on the owner), so it alone decides whether a gather runs
    /// its collective.
    gathered: Vec<bool>,
}

impl State {
    /// Gives storage to (`live`) or frees the storage of tensors `tensors`, and marks the
    /// tensors of `unit` gathered or released.
    fn set_storage(&mut self, (tensors, unit): (&[usize], &[usize]), live: bool) -> Result<()> {
        let refs: Vec<&Tensor> = tensors.iter().map(|&i| &self.work[i]).collect();
        match live {
            true => super::fused::alloc_storage(&refs)?,
            false => super::fused::free_storage(&refs)?,
        }
        for &i in tensors {
            self.live[i] = live;
        }
        for &i in unit {
            self.gathered[i] = live;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Sharded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sharded")
            .field("mode", &self.mode)
            .field("blocks", &self.blocks.len())
            .field("root", &self.root.len())
            .finish()
    }
}

fn torch(e: anyhow::Error) -> TchError {
    TchError::Torch(format!("{e:#}"))
}

impl Sharded {
    /// The hooks for `work` (the model's trained variables, `(name, tensor)` in name order,
    /// the order of `plan`'s tensors) over `blocks` decoder blocks. Under `full` the tensors
    /// other ranks own are freed at once.
    pub fn new(plan: Plan, work: Vec<(String, Tensor)>, blocks: usize) -> Result<Sharded> {
        if work.len() != plan.len() {
            return Err(anyhow!(
                "{} trained tensors, the shard plan has {}",
                work.len(),
                plan.len()
            ));
        }
        let mut units = vec![Vec::new(); blocks];
        let mut root = Vec::new();
        for (i, (name, _)) in work.iter().enumerate() {
            match block_of(name).filter(|b| *b < blocks) {
                Some(b) => units[b].push(i),
                None => root.push(i),
            }
        }
        let n = work.len();
        let s = Sharded {
            mode: plan.mode,
            blocks: units,
            root,
            state: Mutex::new(State {
                work: work.into_iter().map(|(_, t)| t).collect(),
                acc: (0..n).map(|_| None).collect(),
                had: vec![false; n],
                live: vec![true; n],
                gathered: vec![true; n],
            }),
            plan,
        };
        if s.mode == Mode::Full {
            let all: Vec<usize> = (0..n).collect();
            s.release(&all)?;
        }
        Ok(s)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| anyhow!("a sharded block hook panicked earlier"))
    }

    /// `full`: storage for the tensors of `unit` this rank lacks, filled from their owners.
    fn gather(&self, unit: &[usize]) -> Result<()> {
        let mut st = self.lock()?;
        if unit.iter().all(|&i| st.gathered[i]) {
            return Ok(());
        }
        let missing: Vec<usize> = unit.iter().copied().filter(|&i| !st.live[i]).collect();
        st.set_storage((&missing, unit), true)?;
        self.plan.gather_some(&st.work, unit)
    }

    /// `full`: frees the storage of the tensors of `unit` other ranks own.
    fn release(&self, unit: &[usize]) -> Result<()> {
        let mut st = self.lock()?;
        let borrowed: Vec<usize> = unit
            .iter()
            .copied()
            .filter(|&i| st.live[i] && !self.plan.owns(i))
            .collect();
        st.set_storage((&borrowed, unit), false)
    }

    /// The gradients of `unit`'s tensors summed into their owners' accumulators, then released
    /// on every rank.
    fn reduce(&self, unit: &[usize]) -> Result<()> {
        let mut st = self.lock()?;
        let grads: Vec<Tensor> = st.work.iter().map(Tensor::grad).collect();
        for &i in unit {
            st.had[i] |= grads[i].defined();
        }
        let sums = self.plan.reduce(&grads, unit)?;
        drop(grads);
        tch::no_grad(|| -> Result<()> {
            for (i, sum) in sums {
                match &mut st.acc[i] {
                    Some(acc) => drop(acc.f_add_(&sum)?),
                    slot => *slot = Some(sum),
                }
            }
            Ok(())
        })?;
        let refs: Vec<&Tensor> = unit.iter().map(|&i| &st.work[i]).collect();
        super::fused::release_grads(&refs)
    }

    /// After each micro-batch's backward: the root's gradients reduced ([`Sharded::reduce`]).
    pub fn after_backward(&self) -> Result<()> {
        self.reduce(&self.root).context("reducing the gradients")
    }

    /// Before the update: each owner's accumulated gradient becomes the `.grad` of its trained
    /// tensor (`trained`, in name order: the f32 master under `bf16-mixed`); returns which
    /// tensors had a gradient this step (for the global norm), and starts the next step's.
    pub fn finish_grads(&self, trained: &[Tensor]) -> Result<Vec<bool>> {
        let mut st = self.lock()?;
        for (i, t) in trained.iter().enumerate() {
            // A tensor no rank had a gradient for stays without one (AdamW skips it, as
            // unsharded), though its owner summed zeros.
            match st.acc[i].take() {
                Some(acc) if st.had[i] => {
                    let g = acc.f_to_kind(t.kind())?;
                    super::fused::set_grad(t, &g)?;
                }
                _ => {}
            }
        }
        let had = std::mem::replace(&mut st.had, vec![false; trained.len()]);
        Ok(had)
    }

    /// After the update (and after a restore): `gradients` — every rank receives the updated
    /// working weights; `full` — the borrowed root is freed. Every gradient is released.
    pub fn after_update(&self, trained: &[Tensor]) -> Result<()> {
        let refs: Vec<&Tensor> = trained.iter().collect();
        super::fused::release_grads(&refs)?;
        match self.mode {
            Mode::Full => self.release(&self.root),
            _ => {
                let st = self.lock()?;
                self.plan.gather(&st.work)
            }
        }
    }

    /// At the end of training: every rank holds every tensor again (`full`: storage given
    /// back, contents undefined until [`Sharded::gather_all`]).
    pub fn materialize(&self) -> Result<()> {
        let mut st = self.lock()?;
        let refs: Vec<&Tensor> = st.work.iter().collect();
        super::fused::alloc_storage(&refs)?;
        // `gathered` stays as it is: `gather_all` fills the contents.
        st.live.iter_mut().for_each(|l| *l = true);
        Ok(())
    }

    /// Every tensor from its owner to every rank (the owners' values are the final ones).
    pub fn gather_all(&self) -> Result<()> {
        let st = self.lock()?;
        self.plan.gather(&st.work)
    }
}

impl BlockHooks for Sharded {
    fn recompute(&self) -> bool {
        self.mode == Mode::Full
    }

    fn ready(&self) -> Result<(), TchError> {
        if self.mode == Mode::Full {
            self.gather(&self.root).map_err(torch)?;
        }
        Ok(())
    }

    fn enter(&self, i: usize) -> Result<(), TchError> {
        match (self.mode, self.blocks.get(i)) {
            (Mode::Full, Some(unit)) => self.gather(unit).map_err(torch),
            _ => Ok(()),
        }
    }

    fn leave(&self, i: usize) -> Result<(), TchError> {
        match (self.mode, self.blocks.get(i)) {
            (Mode::Full, Some(unit)) => self.release(unit).map_err(torch),
            _ => Ok(()),
        }
    }

    fn done(&self, i: usize) -> Result<(), TchError> {
        let Some(unit) = self.blocks.get(i) else {
            return Ok(());
        };
        self.reduce(unit)
            .with_context(|| format!("reducing the gradients of layer {i}"))
            .map_err(torch)?;
        match self.mode {
            Mode::Full => self.release(unit).map_err(torch),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::block_of;

    #[test]
    fn tensors_belong_to_their_layer() {
        assert_eq!(block_of("model.layers.3.mlp.up_proj.weight"), Some(3));
        assert_eq!(
            block_of("model.layers.12.self_attn.q_proj.lora_A.weight"),
            Some(12)
        );
        assert_eq!(block_of("model.embed_tokens.weight"), None);
        assert_eq!(block_of("lm_head.weight"), None);
    }
}
