//! The training loop shared by `cpt`, `sft`, `dpo` and `npo`: one optimizer
//! step at a time, with gradient accumulation, clipping, a schedule, metrics, checkpoints and
//! mid-stage resume. What a stage trains on and how its loss is computed is an [`Objective`].
//!
//! One optimizer step `s` (0-based) of a run of `T` steps:
//! 1. `micro = objective.micro_batches(s)` (the `grad-accum` micro-batches of the step);
//!    `N = Σ_m objective.n_targets(m)`, counted before any forward pass;
//! 2. for each micro-batch: `L_m = objective.loss(model, m)` (a loss *summed* over its targets),
//!    backpropagate `L_m / N` — so the accumulated gradient is the gradient of
//!    `loss_s = Σ_m L_m / N`, not a mean of per-micro-batch means;
//! 3. a non-finite `loss_s` or gradient stops the run with a user error naming the step and the
//!    last good checkpoint (nothing is checkpointed after a poisoned step): `loss_s`, summed on
//!    the device, and the global gradient norm are read in the step's one device→host read
//!    ([`host`]), the gradients scanned per tensor only when the norm is not finite; the weights
//!    themselves are checked finite before every checkpoint and before the model is returned
//!    for publishing, so an optimizer step that produced NaN is never kept;
//! 4. `g = ‖∇‖₂` before clipping (logged as `grad_norm`), gradients scaled by
//!    `min(1, max_grad_norm / (g + 1e-6))` when clipping is on;
//! 5. AdamW at `lr(s)` of the [`Schedule`] (weight decay off for 1-D tensors: norms, biases).
//!
//! Precision (`kinds::train::Precision`): `f32` and pure `bf16` train the model's variables
//! in their dtype; `bf16-mixed` trains f32 masters of them and runs steps 1–2 on a bf16
//! working copy ([`precision`]): what steps 3–5 and the checkpoints see are the masters. The
//! trained model is returned holding them, and written in [`Numerics::save_dtype`].
//!
//! A run that ends with every step's gradient zero, or with a loss that never moved, succeeds
//! but carries a warning in its summary (`warnings`), logged and shown by `temper show`.
//!
//! Checkpoints (`ctx.checkpoints()`, every `checkpoint_every` steps, on cancel and at the end)
//! hold everything the next steps depend on ([`checkpoint`]); a rerun with the same work
//! directory restores the latest complete one and continues, and on CPU its final weights are
//! bit-identical to an uninterrupted run's: the loop's only randomness of torch's (LoRA dropout)
//! is reseeded from (seed, step, micro-batch) before each micro-batch, the data order is a pure
//! function of the seed and the saved position, and the intra-op thread count
//! (which decides how CPU reductions are split) is pinned to the one the run started with.

pub mod checkpoint;
pub mod fused;
pub mod host;
pub mod lm;
pub mod optim;
pub mod optim_io;
pub mod output;
pub mod params;
pub mod precision;
mod saver;
pub mod schedule;
pub mod shard;
mod step;
pub mod zero;

use crate::arch::HfModel;
use crate::stage::{StageCtx, StageError};
use crate::trainer::optim::{AdamW, AdamWConfig};
use anyhow::Context;
use kinds::train::Precision;
use precision::Mixed;
use saver::Saver;
use schedule::{Schedule, Warmup};
use serde::{Deserialize, Serialize};
use serde_json::Value as J;
use std::time::Instant;
pub use step::StepOut;
use step::{log_metrics, resume, step, summarise, Poisoned};
use tch::Tensor;

/// The tracing target of the per-step progress lines (one per metrics line): node logs keep
/// them; a terminal that shows progress bars leaves them out.
pub const STEP_TARGET: &str = kinds::job::STEP_TARGET;

/// How to train: everything the loop needs besides the data and the loss.
#[derive(Clone, Debug)]
pub struct TrainSpec {
    /// Peak learning rate.
    pub lr: f64,
    pub schedule: schedule::Kind,
    pub warmup: Warmup,
    /// Optimizer steps of the run (the stage resolves steps / epochs / token budgets).
    pub total_steps: u64,
    /// Clip the global gradient norm to this value; `None` = no clipping (norm still logged).
    pub max_grad_norm: Option<f64>,
    pub adamw: AdamWConfig,
    pub seed: u64,
    /// Checkpoint every N steps (0 = only on cancel and at the end).
    pub checkpoint_every: u64,
    /// Complete checkpoints kept in the work directory (at least 1).
    pub keep_checkpoints: usize,
    /// Write a metrics line every N steps (the last step is always logged).
    pub log_every: u64,
    /// Intra-op CPU threads (0 = libtorch's default; a resumed run reuses the checkpoint's).
    pub threads: usize,
    /// Train a LoRA adapter on the frozen model instead of its weights ([`crate::lora`]).
    pub lora: Option<kinds::lora::Lora>,
    /// `precision` and `dtype` as declared, resolved for the model's device by the trainer.
    pub precision: Precision,
    pub dtype: dsl::device::Dtype,
    /// The dtype of the written weights (`auto`: [`params::save_kind`]).
    pub save_dtype: kinds::train::SaveDtype,
    /// Recompute each decoder block in backward ([`crate::arch::checkpoint`]).
    pub activation_checkpointing: bool,
    /// Split the optimizer state (and gradients) across the ranks ([`shard`]).
    pub shard: kinds::train::Shard,
}

/// The loss of one micro-batch.
pub struct LossOut {
    /// The loss summed over the micro-batch's targets (a scalar tensor with a graph).
    pub sum: Tensor,
    /// Extra metrics, scalar tensors summed over the micro-batch (divided by `N` like the loss
    /// when logged): summed over the step on the device and read with its loss.
    pub extra: Vec<(String, Tensor)>,
}

/// What a stage trains on and how: the data of each step and the loss of a micro-batch.
///
/// The data position must be a function of the steps consumed so far: after
/// `restore(state())` the objective yields exactly the micro-batches it would have yielded.
pub trait Objective {
    type Batch;
    /// The micro-batches of step `step`; `None` when the data is exhausted (the run ends).
    fn micro_batches(&mut self, step: u64) -> anyhow::Result<Option<Vec<Self::Batch>>>;
    /// The normalisation units of a micro-batch (target tokens for LM losses, pairs for
    /// preference losses).
    fn n_targets(&self, batch: &Self::Batch) -> usize;
    /// Real (non-padding) tokens of a micro-batch (for `tokens_seen` and tokens/s).
    fn n_tokens(&self, batch: &Self::Batch) -> usize;
    /// The summed loss of a micro-batch.
    fn loss(&mut self, model: &HfModel, batch: &Self::Batch) -> anyhow::Result<LossOut>;
    /// The data position after the steps consumed so far (saved in checkpoints).
    fn state(&self) -> J;
    /// Restores a position saved by [`Objective::state`].
    fn restore(&mut self, state: &J) -> anyhow::Result<()>;
    /// Passes over the data so far (fractional), for the metrics.
    fn epoch(&self) -> f64;
    /// Metrics averaged over the logging window (the steps since the previous metrics line),
    /// added to the line when the loop writes one; the objective then starts a new window.
    /// Default: none. An objective that keeps a window saves it in [`Objective::state`].
    fn window_metrics(&mut self) -> anyhow::Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }
}

/// What a finished run reports (also written as `train_summary.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainSummary {
    pub steps: u64,
    pub total_steps: u64,
    pub tokens_seen: u64,
    pub epoch: f64,
    pub first_loss: Option<f64>,
    pub final_loss: Option<f64>,
    /// Step the run resumed from (0 = fresh).
    pub resumed_from: u64,
    /// Wall-clock seconds of the steps run in this attempt.
    pub seconds: f64,
    pub threads: usize,
    /// Data-parallel ranks (1: none).
    #[serde(default = "one")]
    pub ranks: usize,
    /// Seconds this attempt spent in the ranks' all-reduces (rank 0's; 0 with one rank).
    #[serde(default)]
    pub allreduce_seconds: f64,
    #[serde(flatten)]
    pub numerics: Numerics,
    /// Device→host reads ([`host::read`]) per optimizer step of this attempt: those of the
    /// steps and their metrics lines, divided by the steps run (1 on one rank, plus one per
    /// logging window for objectives with window metrics).
    #[serde(default)]
    pub host_syncs_per_step: f64,
    /// Device→host reads made for checkpoints and the final weights check in this attempt.
    #[serde(default)]
    pub host_syncs_at_checkpoints: u64,
    /// Whether the blocks were recomputed in backward (`activation-checkpointing`).
    #[serde(default)]
    pub activation_checkpointing: bool,
    /// The worker process's peak resident memory so far, MiB ([`host::peak_rss_mib`]; on CPU
    /// this includes the activations). Absent where the OS does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
    /// Signs that the run did not train (zero gradients, a loss that never moved).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The numerics of a run, as its summary reports them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Numerics {
    /// What the run trained in: `f32`, `bf16-mixed` or `bf16`.
    #[serde(default)]
    pub precision: String,
    /// Its compute dtype (`f32`, `bf16`).
    #[serde(default)]
    pub dtype: String,
    /// The dtype its weights are written in (an adapter: always `f32`).
    #[serde(default)]
    pub save_dtype: String,
}

fn one() -> usize {
    1
}

/// Counters carried across checkpoints.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Progress {
    pub step: u64,
    pub tokens_seen: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    /// Steps whose gradient norm was exactly zero, in all and in a row up to now.
    #[serde(default)]
    pub zero_grad_steps: u64,
    #[serde(default)]
    pub zero_grad_tail: u64,
    /// Smallest and largest step loss so far.
    #[serde(default)]
    pub loss_min: Option<f64>,
    #[serde(default)]
    pub loss_max: Option<f64>,
}

/// Runs (or resumes) training of `model` on `obj` per `spec`; returns the summary. The caller
/// saves the model afterwards. The steps: [`resume`], then per optimizer step [`step`], the
/// progress counters ([`Progress::record`]), a metrics line every `log_every` steps
/// ([`log_metrics`]) and a checkpoint every `checkpoint_every` ([`Saver::save`]); a final
/// checkpoint, then the summary ([`summarise`]).
pub fn train<O: Objective>(
    ctx: &StageCtx,
    model: &mut HfModel,
    spec: &TrainSpec,
    obj: &mut O,
) -> Result<TrainSummary, StageError> {
    let ckpts = ctx.checkpoints();
    if let (Some(lora), None) = (&spec.lora, &model.adapter) {
        crate::lora::attach(model, lora, spec.seed, &format!("node {}", ctx.node))?;
    }
    model.model.checkpointing = spec.activation_checkpointing;
    let prec = spec.precision.resolve(spec.dtype, model.device().is_cuda());
    let save_kind = params::save_kind(spec.save_dtype, prec, model);
    let plan = zero::plan(spec.shard, &ctx.collective, model);
    // `shard gradients | full`: a rank keeps the f32 masters of its own tensors only.
    let hooked = plan.as_ref().filter(|p| p.mode.hooked());
    let keep = |name: &str| hooked.is_none_or(|p| p.owns_name(name));
    let mixed = match prec {
        Precision::Bf16Mixed => Some(
            Mixed::start(model, tch::Kind::BFloat16, &keep)
                .with_context(|| format!("node {}", ctx.node))?,
        ),
        _ => None,
    };
    let trained = match &mixed {
        Some(m) => m.trained(model),
        None => model.trained_vars(),
    };
    let named = trained
        .iter()
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();
    let mut opt = match &plan {
        Some(p) => AdamW::with_plan(named, spec.adamw, p.clone()),
        None => AdamW::new(named, spec.adamw),
    };
    if let Some((mode, owned)) = opt.shard_summary() {
        let total: usize = trained.iter().map(|(_, t)| t.numel()).sum();
        tracing::info!(
            node = %ctx.node,
            "shard {mode}: rank {} keeps the optimizer state of {owned} of {total} trained elements",
            ctx.collective.rank()
        );
    }
    let sharded = zero::hooks(plan.filter(|p| p.mode.hooked()), model)
        .with_context(|| format!("node {}", ctx.node))?;
    let sched = Schedule::new(spec.schedule, spec.lr, spec.warmup, spec.total_steps);
    let (mut prog, threads, mut last_good) = resume(ctx, &ckpts, spec, &trained, &mut opt, obj)?;
    if let Some(m) = &mixed {
        m.refresh().map_err(StageError::Other)?;
    }
    if let Some(s) = &sharded {
        s.after_update(&opt.tensors()).map_err(StageError::Other)?;
    }
    let resumed_from = prog.step;
    let saver = Saver {
        ctx,
        ckpts: &ckpts,
        spec,
        threads,
        trained: &trained,
        reads: std::cell::Cell::new(0),
    };
    ctx.progress.set_length(spec.total_steps);
    ctx.progress.set_position(prog.step);
    let started = Instant::now();
    let reads = host::count();
    let mut window = (Instant::now(), 0u64);
    let c = &*ctx.collective;
    crate::lora::attach::set_training(model, true);
    let eval_after = EvalAfter(model);
    while prog.step < spec.total_steps {
        // Every rank stops at the same step boundary (one flag all-reduced per step).
        let stop = if c.reduces() {
            crate::dist::any(c, ctx.cancel.is_cancelled()).map_err(StageError::Other)?
        } else {
            ctx.cancel.is_cancelled()
        };
        if stop {
            if last_good != Some(prog.step) {
                saver.save(&prog, &opt, obj, last_good)?;
            }
            return Err(StageError::Cancelled);
        }
        let poisoned = Poisoned {
            shown: prog.step + 1,
            last_good,
            dir: ckpts.dir(),
        };
        let Some(out) = step(
            (model, mixed.as_ref(), sharded.as_deref()),
            &mut opt,
            (&sched, spec.max_grad_norm, spec.seed),
            obj,
            prog.step,
            &poisoned,
            c,
        )?
        else {
            break;
        };
        prog.record(&out);
        window.1 += out.tokens;
        ctx.progress.set_position(prog.step);
        // The bar: step/total, steps/s and ETA from the bar itself; the last loss and the
        // tokens/s of the current logging window here.
        let secs = window.0.elapsed().as_secs_f64();
        let tps = if secs > 0.0 {
            window.1 as f64 / secs
        } else {
            0.0
        };
        ctx.progress
            .set_message(&format!("loss {:.4} · {tps:.0} tok/s", out.loss));
        if prog.step.is_multiple_of(spec.log_every.max(1)) || prog.step == spec.total_steps {
            log_metrics(ctx, spec, obj, &prog, &out, window)?;
            window = (Instant::now(), 0);
        }
        let every = spec.checkpoint_every;
        if every > 0 && prog.step.is_multiple_of(every) && prog.step < spec.total_steps {
            saver.save(&prog, &opt, obj, last_good)?;
            last_good = Some(prog.step);
        }
    }
    if last_good != Some(prog.step) {
        saver.save(&prog, &opt, obj, last_good)?;
    }
    drop(eval_after);
    // What only training needs goes before the model is made whole again (the moments, the
    // masters' other handles), so the end is not the run's memory peak.
    let at_checkpoints = saver.reads.get();
    drop(opt);
    drop(trained);
    if let Some(s) = &sharded {
        s.materialize().map_err(StageError::Other)?;
        model.model.hooks = None;
    }
    if let Some(m) = mixed {
        m.finish(model).map_err(StageError::Other)?;
    }
    if let Some(s) = &sharded {
        s.gather_all()
            .context("gathering the trained weights")
            .map_err(StageError::Other)?;
    }
    let numerics = Numerics {
        precision: prec.name().into(),
        dtype: prec.compute().name().into(),
        save_dtype: params::dtype_name(save_kind).into(),
    };
    let run = (resumed_from, started, threads);
    let mut summary = summarise(ctx, spec, obj, &prog, run, numerics);
    let in_steps = host::count() - reads - at_checkpoints;
    summary.host_syncs_per_step = in_steps as f64 / (prog.step - resumed_from).max(1) as f64;
    summary.host_syncs_at_checkpoints = at_checkpoints;
    summary.activation_checkpointing = spec.activation_checkpointing;
    summary.peak_rss_mib = host::peak_rss_mib();
    Ok(summary)
}

/// Puts a model's adapter back in evaluation mode (no dropout) when training ends, however it
/// ends.
struct EvalAfter<'a>(&'a HfModel);

impl Drop for EvalAfter<'_> {
    fn drop(&mut self) {
        crate::lora::attach::set_training(self.0, false);
    }
}

/// Warnings for a run that finished without training: the gradient was exactly zero over the
/// last `min(10, steps)` steps (training stalled: a dead model, e.g. after a far too high `lr`,
/// or no trainable targets), or the loss never moved over at least two steps (relative spread
/// below 1e-7).
pub fn warnings(prog: &Progress) -> Vec<String> {
    let mut w = Vec::new();
    let steps = prog.step;
    if steps > 0 && prog.zero_grad_tail >= steps.min(10) {
        w.push(format!(
            "training stalled: the gradient was zero at the last {} steps ({} of {steps} in \
             all), so the weights stopped changing (a dead model after a too high `lr`, or no \
             trainable targets)",
            prog.zero_grad_tail, prog.zero_grad_steps
        ));
    } else if let (Some(lo), Some(hi)) = (prog.loss_min, prog.loss_max) {
        if steps >= 2 && (hi - lo) <= 1e-7 * hi.abs().max(1.0) {
            w.push(format!(
                "the loss never moved over {steps} steps (stayed at {lo:.6}): check `lr` and \
                 the data"
            ));
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prog(steps: u64, zero_total: u64, zero_tail: u64, lo: f64, hi: f64) -> Progress {
        Progress {
            step: steps,
            zero_grad_steps: zero_total,
            zero_grad_tail: zero_tail,
            loss_min: Some(lo),
            loss_max: Some(hi),
            ..Progress::default()
        }
    }

    #[test]
    fn a_stalled_or_flat_run_warns_and_a_learning_one_does_not() {
        assert!(warnings(&prog(250, 249, 249, 5.5, 6.2))[0].starts_with("training stalled"));
        assert!(warnings(&prog(1, 1, 1, 5.5, 5.5))[0].starts_with("training stalled"));
        assert!(warnings(&prog(100, 3, 0, 1.0, 1.0))[0].starts_with("the loss never moved"));
        assert!(warnings(&prog(100, 9, 9, 1.0, 3.0)).is_empty());
        assert!(warnings(&prog(100, 0, 0, 1.0, 3.0)).is_empty());
        assert!(warnings(&prog(1, 0, 0, 5.5, 5.5)).is_empty());
    }
}
