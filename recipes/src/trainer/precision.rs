//! `precision bf16-mixed`: f32 master weights beside a bf16 working copy
//! ([`kinds::train::Precision`] states the rule that picks a precision).
//!
//! The model enters training in f32 (its master dtype, `Optim::load_dtype`). [`Mixed::start`]
//! copies every trained variable into an f32 *master* tensor (a leaf requiring grad) and
//! converts the model's variables in place to bf16, the *working copy* forward and backward
//! run on. Per step:
//! - after each micro-batch's backward, [`Mixed::take_grads`] adds the working copy's bf16
//!   gradients into the masters' f32 gradients and zeroes them, so accumulation over
//!   micro-batches happens in f32 (as under autocast over f32 parameters);
//! - AdamW, clipping, the finiteness checks, the data-parallel all-reduce and checkpoints see
//!   only the masters ([`Mixed::trained`]): moments are f32, and a checkpoint holds the f32
//!   master weights, so a resumed run is bit-identical;
//! - after each update (and after a checkpoint is restored), [`Mixed::refresh`] rounds the
//!   masters into the working copy.
//!
//! [`Mixed::finish`] gives the model its f32 master values back for writing. The loss and the
//! log-softmax are computed in f32 whatever the compute dtype (the logits are cast first).
//!
//! A LoRA run trains the adapter's variables, which are f32 already (`crate::lora`): they are
//! their own masters, and only the frozen base becomes the bf16 working copy.

use crate::arch::HfModel;
use anyhow::Context;
use tch::{Kind, Tensor};

/// One trained variable: its f32 master and the model's variable it is the master of.
struct Pair {
    name: String,
    master: Tensor,
    work: Tensor,
}

/// The f32 masters of a model that computes in bf16.
pub struct Mixed {
    pairs: Vec<Pair>,
}

impl Mixed {
    /// Makes the masters of `model`'s trained variables (none for a LoRA adapter, already
    /// f32) — only of those `keep` names (a sharded run: the ones this rank updates) — and
    /// converts the model's own variables to `compute`, in place.
    pub fn start(
        model: &mut HfModel,
        compute: Kind,
        keep: &dyn Fn(&str) -> bool,
    ) -> anyhow::Result<Mixed> {
        let mut pairs = Vec::new();
        tch::no_grad(|| -> anyhow::Result<()> {
            if model.adapter.is_none() {
                for (name, work) in model.vs.variables() {
                    if !keep(&name) {
                        continue;
                    }
                    let master = work
                        .f_detach()?
                        .f_to_dtype(Kind::Float, false, true)?
                        .set_requires_grad(true);
                    pairs.push(Pair { name, master, work });
                }
                pairs.sort_by(|a, b| a.name.cmp(&b.name));
            }
            Ok(())
        })
        .context("making the f32 master weights")?;
        tch::no_grad(|| model.vs.set_kind(compute));
        Ok(Mixed { pairs })
    }

    /// The variables training updates, by name: the masters (a variable without one — another
    /// rank's, in a sharded run — as its working copy), or the adapter's own variables.
    pub fn trained(&self, model: &HfModel) -> Vec<(String, Tensor)> {
        let mut vars = model.trained_vars();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in &mut vars {
            if let Some(p) = self.pairs.iter().find(|p| &p.name == name) {
                *t = p.master.shallow_clone();
            }
        }
        vars
    }

    /// Adds the working copy's gradients into the masters' (as f32) and zeroes them. A master
    /// gets a gradient only once its working variable has had one, so a variable that never
    /// gets a gradient is skipped by AdamW exactly as without a master.
    pub fn take_grads(&self) -> anyhow::Result<()> {
        for p in &self.pairs {
            let mut wg = p.work.grad();
            if !wg.defined() {
                continue;
            }
            let mut mg = p.master.grad();
            if mg.defined() {
                tch::no_grad(|| mg.f_add_(&wg)).map(drop)?;
            } else {
                // tch cannot assign `.grad`: d/dθ Σ θ·g = g defines it, exactly (1·g = g).
                let g = wg.f_detach()?.f_to_kind(Kind::Float)?;
                p.master.f_mul(&g)?.f_sum(Kind::Float)?.f_backward()?;
            }
            tch::no_grad(|| wg.f_zero_()).map(drop)?;
        }
        Ok(())
    }

    /// Rounds the masters into the working copy (after an update or a restore).
    pub fn refresh(&self) -> anyhow::Result<()> {
        tch::no_grad(|| -> anyhow::Result<()> {
            for p in &self.pairs {
                p.work.shallow_clone().f_copy_(&p.master)?;
            }
            Ok(())
        })
        .context("refreshing the bf16 working copy")
    }

    /// Converts the model back to f32 holding the master values (nothing to do for a LoRA
    /// run: its adapter is f32 and the frozen base is not written). A sharded run then gathers
    /// the variables other ranks hold the masters of.
    pub fn finish(self, model: &mut HfModel) -> anyhow::Result<()> {
        if model.adapter.is_some() {
            return Ok(());
        }
        tch::no_grad(|| model.vs.set_kind(Kind::Float));
        tch::no_grad(|| -> anyhow::Result<()> {
            for p in &self.pairs {
                p.work.shallow_clone().f_copy_(&p.master)?;
            }
            Ok(())
        })
        .context("writing the f32 master weights back into the model")
    }
}
