//! The steps of [`super::train`]: resuming, one optimizer step (accumulation, the finiteness
//! checks, clipping, AdamW), the progress counters, the metrics line and the summary (the
//! checkpoints are [`super::saver`]'s). The loop itself and its invariants are documented in
//! [`super`].

use super::precision::Mixed;
use super::zero::Sharded;
use super::{
    checkpoint, host, warnings, LossOut, Numerics, Objective, Progress, TrainSpec, TrainSummary,
    STEP_TARGET,
};
use crate::arch::HfModel;
use crate::dist::Collective;
use crate::stage::{Checkpoints, StageCtx, StageError};
use crate::trainer::optim::AdamW;
use crate::trainer::schedule::Schedule;
use serde_json::json;
use std::path::Path;
use std::time::Instant;
use tch::{Kind, Tensor};

/// Restores the latest complete checkpoint, if any, into the trained variables, `opt` and `obj`, truncates
/// `metrics.jsonl` back to it and pins the intra-op thread count (the spec's, else the
/// checkpoint's, else libtorch's): `(progress, threads, last good checkpoint step)`.
pub(super) fn resume<O: Objective>(
    ctx: &StageCtx,
    ckpts: &Checkpoints,
    spec: &TrainSpec,
    trained: &[(String, Tensor)],
    opt: &mut AdamW,
    obj: &mut O,
) -> Result<(Progress, usize, Option<u64>), StageError> {
    let mut prog = Progress::default();
    let mut threads = spec.threads;
    let mut last_good = None;
    if let Some((step, dir)) = ckpts.latest() {
        let st = checkpoint::restore(&dir, trained, opt, obj).map_err(|e| {
            StageError::Other(e.context(format!(
                "node {}: resuming from checkpoint {}",
                ctx.node,
                dir.display()
            )))
        })?;
        if spec.threads == 0 {
            threads = st.threads;
        }
        prog = st.progress;
        prog.step = step;
        last_good = Some(step);
        tracing::info!(node = %ctx.node, step, "resuming from {}", dir.display());
    }
    if ctx.lead() {
        checkpoint::truncate_metrics(ctx.metrics.path(), prog.step)
            .map_err(|e| StageError::Other(e.context("truncating metrics.jsonl")))?;
    }
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
    let threads = tch::get_num_threads().max(1) as usize;
    Ok((prog, threads, last_good))
}

/// The error of a step whose loss or gradient is not finite: it names the step (1-based) and
/// the last good checkpoint.
pub(super) struct Poisoned<'a> {
    pub shown: u64,
    pub last_good: Option<u64>,
    pub dir: &'a Path,
}

impl Poisoned<'_> {
    fn error(&self, what: String) -> StageError {
        let kept = match self.last_good {
            Some(s) => format!(
                "the last good checkpoint (step {s}) is kept in {}",
                self.dir.display()
            ),
            None => "no checkpoint was written yet".into(),
        };
        StageError::user(
            format!("{what} at step {}; {kept}", self.shown),
            Some("lower `lr`, set `max-grad-norm`, or check the data".into()),
        )
    }
}

/// One optimizer step, done.
pub struct StepOut {
    /// `Σ_m L_m / N` (0 when the step had no targets).
    pub loss: f64,
    pub lr: f64,
    /// `‖∇‖₂` before clipping.
    pub grad_norm: f64,
    /// `N`, the normalisation units of the step.
    pub n: usize,
    pub tokens: u64,
    /// Extra metrics summed over the micro-batches.
    pub extra: Vec<(String, f64)>,
}

/// Optimizer step `step` (0-based; the module docs' steps 1–5): `None` when the data is
/// exhausted. `model` runs the forward and backward; `mixed`, under `bf16-mixed`, holds the
/// f32 masters `opt` updates; `sharded`, under `shard gradients | full`, reduces the gradients
/// during the backward and moves the weights after the update ([`super::zero`]).
///
/// One device→host read ([`host::read`]) per step on one rank: the step's loss sum, its extra
/// metrics and the global gradient norm, all computed on the device, come back together. A
/// non-finite loss or norm is then an error; only then are the gradients scanned tensor by
/// tensor to name the bad ones. Data-parallel ranks read twice (the local sums before the
/// host all-reduce, then the norm of the summed gradients).
pub(super) fn step<O: Objective>(
    (model, mixed, sharded): (&HfModel, Option<&Mixed>, Option<&Sharded>),
    opt: &mut AdamW,
    (sched, max_grad_norm, seed): (&Schedule, Option<f64>, u64),
    obj: &mut O,
    step: u64,
    poisoned: &Poisoned,
    c: &dyn Collective,
) -> Result<Option<StepOut>, StageError> {
    let shown = step + 1;
    let Some(micro) = obj
        .micro_batches(step)
        .map_err(|e| StageError::Other(e.context(format!("step {shown}: reading data"))))?
    else {
        return Ok(None);
    };
    let n: usize = micro.iter().map(|b| obj.n_targets(b)).sum();
    let tokens: u64 = micro.iter().map(|b| obj.n_tokens(b) as u64).sum();
    // Data parallel: this rank's share of the step's micro-batches, then the sums over ranks.
    let (rank, world) = (c.rank(), c.world());
    let mine: Vec<(usize, &O::Batch)> = micro
        .iter()
        .enumerate()
        .filter(|(i, _)| i % world == rank)
        .collect();
    if sharded.is_some() && micro.len() % world != 0 {
        // The block hooks' collectives pair up only when every rank runs as many backwards.
        return Err(StageError::Other(anyhow::anyhow!(
            "step {shown}: {} micro-batches do not split evenly over {world} sharded ranks",
            micro.len()
        )));
    }
    let local = accumulate(model, obj, &mine, n, (seed, step), (mixed, sharded));
    let other = |e: anyhow::Error| StageError::Other(e.context(format!("step {shown}")));
    let (loss_sum, extra, total, grad_norm) = if c.reduces() {
        let local = local.and_then(|s| s.read().map_err(other));
        let (loss_sum, extra) = reduce_step(c, (opt, sharded), local, shown)?;
        let total = opt.total_norm().map_err(other)?;
        let norm = match &total {
            Some(t) => host::read_scalar(t).map_err(other)?,
            None => 0.0,
        };
        (loss_sum, extra, total, norm)
    } else {
        let sums = local?;
        let total = opt.total_norm().map_err(other)?;
        let ((loss_sum, extra), norm) = sums.read_with(total.as_ref()).map_err(other)?;
        (loss_sum, extra, total, norm)
    };
    if !loss_sum.is_finite() {
        return Err(poisoned.error(format!("non-finite loss ({loss_sum})")));
    }
    let clip = max_grad_norm.filter(|m| *m > 0.0);
    if !grad_norm.is_finite() {
        let bad = opt.non_finite_grads().map_err(StageError::Other)?;
        if !bad.is_empty() {
            return Err(poisoned.error(format!("non-finite gradient in {}", first_names(&bad))));
        }
        // Sharded, a rank sees only its own gradients: every rank stops on the norm.
        if clip.is_some() || sharded.is_some() {
            return Err(poisoned.error(format!("non-finite gradient norm ({grad_norm})")));
        }
    }
    if let (Some(m), Some(total)) = (clip, &total) {
        opt.clip_to(total, m).map_err(other)?;
    }
    let loss = if n > 0 { loss_sum / n as f64 } else { 0.0 };
    let lr = sched.lr(step);
    if n > 0 {
        opt.step(lr).map_err(StageError::Other)?;
        if let Some(m) = mixed {
            m.refresh().map_err(StageError::Other)?;
        }
    }
    if let Some(s) = sharded {
        s.after_update(&opt.tensors()).map_err(other)?;
    }
    opt.zero_grad();
    Ok(Some(StepOut {
        loss,
        lr,
        grad_norm,
        n,
        tokens,
        extra,
    }))
}

/// A step's `(Σ_m L_m, extra metric sums)` read back to the host.
type HostSums = (f64, Vec<(String, f64)>);

/// A step's sums so far, on the device: `Σ_m L_m` and each extra metric, as f64 scalars
/// (each micro-batch's f32 value converted exactly and added in micro-batch order, so the
/// values equal those of adding the read f64 values on the host).
struct Sums {
    loss: Tensor,
    extra: Vec<(String, Tensor)>,
}

impl Sums {
    fn new(device: tch::Device) -> anyhow::Result<Sums> {
        Ok(Sums {
            loss: Tensor::f_zeros([], (Kind::Double, device))?,
            extra: Vec::new(),
        })
    }

    fn add(&mut self, out: &LossOut) -> anyhow::Result<()> {
        self.loss = self
            .loss
            .f_add(&out.sum.f_detach()?.f_to_kind(Kind::Double)?)?;
        for (k, x) in &out.extra {
            let x = x.f_detach()?.f_to_kind(Kind::Double)?;
            match self.extra.iter_mut().find(|(name, _)| name == k) {
                Some(slot) => slot.1 = slot.1.f_add(&x)?,
                None => self.extra.push((k.clone(), x)),
            }
        }
        Ok(())
    }

    /// `(Σ_m L_m, extra sums)` on the host: one read.
    fn read(self) -> anyhow::Result<HostSums> {
        Ok(self.read_with(None)?.0)
    }

    /// The sums and the gradient norm `total` (0 when `None`) on the host: one read of all of
    /// them stacked.
    fn read_with(self, total: Option<&Tensor>) -> anyhow::Result<(HostSums, f64)> {
        let mut all = vec![self.loss.f_reshape([1])?];
        for (_, x) in &self.extra {
            all.push(x.f_reshape([1])?);
        }
        if let Some(t) = total {
            all.push(
                t.f_to_kind(Kind::Double)?
                    .f_reshape([1])?
                    .f_to_device(self.loss.device())?,
            );
        }
        let v = host::read(&Tensor::f_cat(&all, 0)?)?;
        let norm = if total.is_some() { v[v.len() - 1] } else { 0.0 };
        let extra = self
            .extra
            .into_iter()
            .zip(&v[1..])
            .map(|((k, _), x)| (k, *x))
            .collect();
        Ok(((v[0], extra), norm))
    }
}

/// Forward and backward of each micro-batch: backpropagates `L_m / N`, so the accumulated
/// gradient is that of `Σ_m L_m / N`; returns the step's [`Sums`], kept on the device (nothing
/// is read back here: a non-finite loss is caught by the step's one read). With a LoRA adapter
/// whose dropout is on, torch's generator is seeded before micro-batch `i` of the step from
/// `(seed, step, i)` ([`crate::lora::dropout_seed`]). Under `bf16-mixed` each micro-batch's
/// gradients move into the f32 masters ([`Mixed::take_grads`]); sharded, the block hooks have
/// reduced the blocks' gradients during the backward and the rest are reduced after it
/// ([`Sharded::after_backward`]).
fn accumulate<O: Objective>(
    model: &HfModel,
    obj: &mut O,
    micro: &[(usize, &O::Batch)],
    n: usize,
    (seed, step): (u64, u64),
    (mixed, sharded): (Option<&Mixed>, Option<&Sharded>),
) -> Result<Sums, StageError> {
    let dropout = model.adapter.as_ref().is_some_and(|a| a.spec.dropout > 0.0);
    let shown = step + 1;
    let other = |e: anyhow::Error| StageError::Other(e.context(format!("step {shown}")));
    let mut sums = Sums::new(model.device()).map_err(other)?;
    if n == 0 {
        return Ok(sums);
    }
    let scale = 1.0 / n as f64;
    for (i, b) in micro {
        if dropout {
            tch::manual_seed(crate::lora::dropout_seed(seed, step, *i));
        }
        let out = obj
            .loss(model, b)
            .map_err(|e| StageError::Other(e.context(format!("step {shown}: forward"))))?;
        sums.add(&out).map_err(other)?;
        (out.sum * scale)
            .f_backward()
            .map_err(|e| StageError::Other(anyhow::anyhow!("step {shown}: backward: {e}")))?;
        let grads =
            |e: anyhow::Error| StageError::Other(e.context(format!("step {shown}: gradients")));
        match (sharded, mixed) {
            (Some(s), _) => s.after_backward().map_err(grads)?,
            (None, Some(m)) => m.take_grads().map_err(grads)?,
            (None, None) => {}
        }
    }
    Ok(sums)
}

/// The all-reduces of a data-parallel step, after each rank's [`accumulate`]: whether any rank
/// failed (then every rank fails, none waits for the others), the loss and extra metrics summed,
/// and the gradients summed (bucketed, [`crate::dist::all_reduce_grads`]; sharded, already
/// reduced into their owners by the block hooks: [`Sharded::finish_grads`]).
fn reduce_step(
    c: &dyn Collective,
    (opt, sharded): (&mut AdamW, Option<&Sharded>),
    local: Result<(f64, Vec<(String, f64)>), StageError>,
    shown: u64,
) -> Result<(f64, Vec<(String, f64)>), StageError> {
    let comm = |e: anyhow::Error| StageError::Other(e.context(format!("step {shown}: all-reduce")));
    let t0 = std::time::Instant::now();
    if let Err(e) = &local {
        // Said before waiting for the other ranks, in case one of them never arrives.
        tracing::error!("rank {}: step {shown} failed: {e:?}", c.rank());
    }
    if crate::dist::any(c, local.is_err()).map_err(comm)? {
        return Err(local.err().unwrap_or_else(|| {
            StageError::Other(anyhow::anyhow!(
                "step {shown}: another rank failed (its error is on the node's stderr)"
            ))
        }));
    }
    let (loss_sum, extra) = local?;
    let mut v: Vec<f64> = std::iter::once(loss_sum)
        .chain(extra.iter().map(|(_, x)| *x))
        .collect();
    c.all_reduce_f64(&mut v).map_err(comm)?;
    match sharded {
        Some(s) => opt.set_had(s.finish_grads(&opt.tensors()).map_err(comm)?),
        None => opt.reduce_grads(c).map_err(comm)?,
    }
    crate::dist::count_allreduce(t0.elapsed());
    let extra = extra
        .into_iter()
        .zip(&v[1..])
        .map(|((k, _), x)| (k, *x))
        .collect();
    Ok((v[0], extra))
}

impl Progress {
    /// Counts a finished step: tokens, and (when it had targets) the loss range and the
    /// zero-gradient counters.
    pub(super) fn record(&mut self, out: &StepOut) {
        self.step += 1;
        self.tokens_seen += out.tokens;
        if out.n == 0 {
            return;
        }
        let loss = out.loss;
        self.first_loss.get_or_insert(loss);
        self.last_loss = Some(loss);
        self.loss_min = Some(self.loss_min.map_or(loss, |m| m.min(loss)));
        self.loss_max = Some(self.loss_max.map_or(loss, |m| m.max(loss)));
        if out.grad_norm == 0.0 {
            self.zero_grad_steps += 1;
            self.zero_grad_tail += 1;
        } else {
            self.zero_grad_tail = 0;
        }
    }
}

/// Writes the metrics line of the step just done (extra metrics divided by `N`, the
/// objective's window metrics) and its progress line; `window` is (start, tokens) of the
/// logging window.
pub(super) fn log_metrics<O: Objective>(
    ctx: &StageCtx,
    spec: &TrainSpec,
    obj: &mut O,
    prog: &Progress,
    out: &StepOut,
    window: (Instant, u64),
) -> Result<(), StageError> {
    let secs = window.0.elapsed().as_secs_f64().max(1e-9);
    let n = out.n;
    let mut rec = json!({
        "step": prog.step,
        "loss": out.loss,
        "lr": out.lr,
        "grad_norm": out.grad_norm,
        "targets": n,
        "tokens_seen": prog.tokens_seen,
        "epoch": obj.epoch(),
        "tokens_per_s": window.1 as f64 / secs,
    });
    if let Some(o) = rec.as_object_mut() {
        for (k, x) in &out.extra {
            o.insert(k.clone(), json!(if n > 0 { x / n as f64 } else { 0.0 }));
        }
        let window = obj
            .window_metrics()
            .map_err(|e| StageError::Other(e.context("reading the window metrics")))?;
        for (k, x) in window {
            o.insert(k, json!(x));
        }
    }
    if ctx.lead() {
        ctx.metrics
            .log(&rec)
            .map_err(|e| StageError::Other(anyhow::anyhow!("writing metrics: {e}")))?;
    }
    tracing::info!(
        target: STEP_TARGET,
        "step {}/{} loss {:.4} lr {:.3e} grad-norm {:.3} {:.0} tok/s",
        prog.step,
        spec.total_steps,
        out.loss,
        out.lr,
        out.grad_norm,
        window.1 as f64 / secs
    );
    Ok(())
}

/// The summary of a finished run, its warnings logged.
pub(super) fn summarise<O: Objective>(
    ctx: &StageCtx,
    spec: &TrainSpec,
    obj: &O,
    prog: &Progress,
    (resumed_from, started, threads): (u64, Instant, usize),
    numerics: Numerics,
) -> TrainSummary {
    let warnings = warnings(prog);
    for w in &warnings {
        tracing::warn!("{}: {w}", ctx.node);
    }
    TrainSummary {
        steps: prog.step,
        total_steps: spec.total_steps,
        tokens_seen: prog.tokens_seen,
        epoch: obj.epoch(),
        first_loss: prog.first_loss,
        final_loss: prog.last_loss,
        resumed_from,
        seconds: started.elapsed().as_secs_f64(),
        threads,
        ranks: ctx.collective.world(),
        allreduce_seconds: crate::dist::allreduce_seconds(),
        numerics,
        host_syncs_per_step: 0.0,
        host_syncs_at_checkpoints: 0,
        activation_checkpointing: false,
        peak_rss_mib: None,
        warnings,
    }
}

/// The first three of `names`, then `and N more`.
pub(super) fn first_names(names: &[String]) -> String {
    let shown = names[..names.len().min(3)].join(", ");
    match names.len() {
        0..=3 => shown,
        n => format!("{shown} and {} more", n - 3),
    }
}
