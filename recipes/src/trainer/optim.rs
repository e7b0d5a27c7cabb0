//! AdamW with its state in tensors temper owns (tch has no optimizer-state save/load), matching
//! `torch.optim.AdamW` (single-tensor path, `amsgrad=False`, `maximize=False`).
//!
//! For each parameter `θ` with gradient `g`, at its step `t` (1-based, counted per parameter,
//! as torch does):
//! ```text
//! θ ← θ · (1 − lr·λ)                      (decoupled weight decay, only where decay applies)
//! m ← lerp(m, g, 1 − β1)                  (= β1·m + (1 − β1)·g)
//! v ← β2·v + (1 − β2)·g²
//! θ ← θ − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
//! ```
//! Weight decay is off for 1-D tensors (norm weights, biases) and on for matrices and
//! embeddings ([`decays`]). Parameters without a gradient are skipped (their step does not
//! advance). Moments have the parameter's dtype and device.
//!
//! [`AdamW::clip_grad_norm`] is `torch.nn.utils.clip_grad_norm_`: the global 2-norm of all
//! gradients `‖(‖g_1‖, …, ‖g_n‖)‖`, gradients scaled by `min(1, max_norm / (norm + 1e-6))`,
//! the pre-clip norm returned; a non-finite norm is an error and leaves gradients untouched.
//!
//! Two implementations of the same math. By default the update is libtorch's multi-tensor
//! `_fused_adamw_` (torch.optim.AdamW's `fused=True`; one call per device, dtype and decay
//! group, [`super::fused`]) and the clip norm is `_foreach_norm` + one stack and norm, computed
//! on the device — the only host read is the caller's of the returned norm. The per-tensor
//! update below is the reference ([`AdamW::with_reference`], or `TEMPER_OPTIM_REFERENCE=1` in
//! the environment), and the fused path's fallback for a parameter the fused kernel does not
//! take (a device other than CPU/CUDA, a non-float dtype, a non-contiguous tensor or gradient).
//! Per-parameter steps are counted on the host; the fused kernel reads them from f32 scalar
//! tensors on the parameter's device that it advances with them.
//!
//! [`AdamW::save`] writes `optimizer.safetensors` (`exp_avg.NAME`, `exp_avg_sq.NAME`) and
//! `optimizer.json` (hyper-parameters and per-parameter steps); [`AdamW::load`] restores them
//! bit for bit ([`super::optim_io`], which also holds the per-rank files of a sharded state).
//!
//! Sharded ([`AdamW::sharded`], `shard optimizer | gradients | full`): the same updates, each
//! parameter on the one rank that owns it ([`super::shard`]); under `optimizer` the updated
//! parameters are then gathered by every rank (under `gradients` and `full`, [`super::zero`]
//! moves them).

use super::fused::{self, AdamWArgs, AdamWGroup};
use super::host;
use super::shard::{Mode, Plan};
use crate::dist::Collective;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Set to `1`, [`AdamW::new`] builds the per-tensor reference instead of the fused optimizer.
pub const REFERENCE_ENV: &str = "TEMPER_OPTIM_REFERENCE";

/// Hyper-parameters (torch's defaults except `weight_decay`, which torch sets to 0.01 too).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Whether weight decay applies to a parameter: tensors of 2 or more dimensions.
pub fn decays(t: &Tensor) -> bool {
    t.dim() >= 2
}

pub(super) struct Param {
    pub(super) name: String,
    pub(super) tensor: Tensor,
    decay: bool,
    /// Whether this rank updates it (always, unless sharded: [`super::shard`]); the moments
    /// of a parameter another rank owns are empty.
    pub(super) owned: bool,
    pub(super) exp_avg: Tensor,
    pub(super) exp_avg_sq: Tensor,
    pub(super) step: u64,
    /// `step` as an f32 scalar on the parameter's device, for the fused kernel.
    pub(super) step_t: Tensor,
}

/// The optimizer.
pub struct AdamW {
    pub cfg: AdamWConfig,
    pub(super) params: Vec<Param>,
    /// Per-tensor updates and norms instead of the fused kernels.
    reference: bool,
    /// The owners of the parameters when the state is split across ranks.
    pub(super) shard: Option<Plan>,
    /// `shard gradients | full`: which parameters had a gradient in the step's backward.
    had: Vec<bool>,
}

impl AdamW {
    /// Optimises `params` (name, variable); they are kept sorted by name. Fused unless
    /// [`REFERENCE_ENV`] is `1`.
    pub fn new(params: Vec<(String, Tensor)>, cfg: AdamWConfig) -> Self {
        Self::build(params, cfg, None)
    }

    /// [`AdamW::new`] with its state split across `collective`'s ranks ([`super::shard`]): the
    /// moments exist for this rank's parameters only.
    pub fn sharded(
        params: Vec<(String, Tensor)>,
        cfg: AdamWConfig,
        mode: Mode,
        collective: Arc<dyn Collective>,
    ) -> Self {
        Self::build(params, cfg, Some((mode, collective)))
    }

    /// [`AdamW::new`] with its state split by `plan`, made for these parameters in name order
    /// ([`super::shard::Plan::new`]).
    pub fn with_plan(params: Vec<(String, Tensor)>, cfg: AdamWConfig, plan: Plan) -> Self {
        let mut params = params;
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Self::build_with(params, cfg, Some(plan))
    }

    fn build(
        mut params: Vec<(String, Tensor)>,
        cfg: AdamWConfig,
        shard: Option<(Mode, Arc<dyn Collective>)>,
    ) -> Self {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let plan = shard
            .map(|(mode, c)| Plan::new(mode, params.iter().map(|(_, t)| t.numel()).collect(), c));
        Self::build_with(params, cfg, plan)
    }

    fn build_with(params: Vec<(String, Tensor)>, cfg: AdamWConfig, plan: Option<Plan>) -> Self {
        let params: Vec<Param> = params
            .into_iter()
            .enumerate()
            .map(|(i, (name, t))| {
                let owned = plan.as_ref().is_none_or(|p| p.owns(i));
                let moment = || match owned {
                    true => t.zeros_like().detach(),
                    false => Tensor::empty([0], (t.kind(), t.device())),
                };
                Param {
                    decay: decays(&t),
                    owned,
                    exp_avg: moment(),
                    exp_avg_sq: moment(),
                    step_t: Tensor::zeros([], (Kind::Float, t.device())),
                    tensor: t,
                    name,
                    step: 0,
                }
            })
            .collect();
        let reference = std::env::var(REFERENCE_ENV).is_ok_and(|v| v == "1");
        AdamW {
            cfg,
            params,
            reference,
            shard: plan,
            had: Vec::new(),
        }
    }

    /// How the state is split: `None` when every rank holds all of it.
    pub fn shard_mode(&self) -> Option<Mode> {
        self.shard.as_ref().map(|p| p.mode)
    }

    /// `(shard mode, elements whose moments this rank keeps)` of a sharded state.
    pub fn shard_summary(&self) -> Option<(&'static str, usize)> {
        self.shard
            .as_ref()
            .map(|p| (p.mode.name(), p.owned_elements()))
    }

    /// Sums the gradients over `c`'s ranks: an all-reduce of every gradient (`shard gradients |
    /// full` reduce them block by block instead: [`super::zero`], then [`AdamW::set_had`]).
    pub fn reduce_grads(&mut self, c: &dyn Collective) -> anyhow::Result<()> {
        if self.shard.as_ref().is_some_and(|p| p.mode.hooked()) {
            bail!("the gradients of `shard gradients | full` are reduced by the block hooks");
        }
        crate::dist::all_reduce_grads(c, &self.tensors())
    }

    /// `shard gradients | full`: which parameters had a gradient in the step's backward (the
    /// same on every rank), for the global norm.
    pub fn set_had(&mut self, had: Vec<bool>) {
        self.had = had;
    }

    /// Whether this rank updates parameter `name` (always, unless sharded).
    pub fn owns(&self, name: &str) -> bool {
        self.params.iter().any(|p| p.name == name && p.owned)
    }

    /// The per-tensor reference (`true`) or the fused optimizer (`false`); the state carries
    /// over, so the two can be switched between steps.
    pub fn with_reference(mut self, on: bool) -> Self {
        self.reference = on;
        tch::no_grad(|| {
            for p in &mut self.params {
                let _ = p.step_t.fill_(p.step as f64);
            }
        });
        self
    }

    /// Whether this is the per-tensor reference.
    pub fn is_reference(&self) -> bool {
        self.reference
    }

    /// All trainable variables of a var store.
    pub fn from_var_store(vs: &tch::nn::VarStore, cfg: AdamWConfig) -> Self {
        let vars = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        AdamW::new(vars, cfg)
    }

    /// The trained tensors (whose gradients a data-parallel step sums over the ranks).
    pub fn tensors(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|p| p.tensor.shallow_clone())
            .collect()
    }

    /// The largest per-parameter step.
    pub fn step_count(&self) -> u64 {
        self.params.iter().map(|p| p.step).max().unwrap_or(0)
    }

    /// Names of the parameters with weight decay on / off.
    pub fn decay_split(&self) -> (Vec<&str>, Vec<&str>) {
        let (d, n): (Vec<&Param>, Vec<&Param>) = self.params.iter().partition(|p| p.decay);
        (
            d.iter().map(|p| p.name.as_str()).collect(),
            n.iter().map(|p| p.name.as_str()).collect(),
        )
    }

    /// One update with learning rate `lr`.
    ///
    /// The same in-place kernels, in the same order, as torch's single-tensor AdamW — so the
    /// result is bit-identical to it on CPU and the update allocates only two temporaries of a
    /// parameter's size: `s = (1 − β2)·g` for `v.addcmul_(s, g)` (`v + s·g`, torch's
    /// `v + (1 − β2)·g·g`), reused for `denom = √v / √(1 − β2^t) + ε`, and
    /// `u = −(lr / (1 − β1^t))·m` for `θ.addcdiv_(u, denom)` (torch's `θ + value·m / denom`).
    pub fn step(&mut self, lr: f64) -> anyhow::Result<()> {
        let cfg = self.cfg;
        let reference = self.reference;
        let params = &mut self.params;
        tch::no_grad(|| -> anyhow::Result<()> {
            if !reference {
                return fused_step(params, cfg, lr);
            }
            for p in params.iter_mut().filter(|p| p.owned) {
                let g = p.tensor.grad();
                if g.defined() {
                    update_one(p, g, cfg, lr)?;
                }
            }
            Ok(())
        })
        .with_context(|| format!("AdamW step {}", self.step_count() + 1))?;
        if let Some(plan) = self.shard.as_ref().filter(|p| p.mode == Mode::Optimizer) {
            plan.gather(&self.tensors())?;
        }
        Ok(())
    }

    /// Zeroes every gradient.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.tensor.zero_grad();
        }
    }

    /// The global 2-norm of the gradients (0 when none).
    pub fn grad_norm(&self) -> anyhow::Result<f64> {
        Ok(match self.total_norm()? {
            Some(t) => host::read_scalar(&t)?,
            None => 0.0,
        })
    }

    /// The defined gradients, in parameter order.
    fn grads(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|p| p.tensor.grad())
            .filter(|g| g.defined())
            .collect()
    }

    /// The global 2-norm of the gradients `‖(‖g_1‖, …, ‖g_n‖)‖` as an f32 scalar on the
    /// device, computed without reading anything back (`_foreach_norm` through the shim, or
    /// per tensor on the reference path); `None` when no parameter has a gradient.
    pub fn total_norm(&self) -> anyhow::Result<Option<Tensor>> {
        if let Some(plan) = self.shard.as_ref().filter(|p| p.mode.hooked()) {
            let device = self
                .params
                .first()
                .map_or(Device::Cpu, |p| p.tensor.device());
            let tensors = self.tensors();
            // Before any reduction (a norm asked for outside a step): the gradients here.
            let had = match self.had.len() == tensors.len() {
                true => self.had.clone(),
                false => tensors.iter().map(|t| t.grad().defined()).collect(),
            };
            return plan.total_norm(&tensors, &had, device);
        }
        if !self.reference {
            let grads = self.grads();
            let refs: Vec<&Tensor> = grads.iter().collect();
            return tch::no_grad(|| fused::total_norm(&refs));
        }
        let norms: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.tensor.grad())
            .filter(|g| g.defined())
            .map(|g| g.f_norm().map(|n| n.to_kind(Kind::Float)))
            .collect::<Result<_, _>>()?;
        if norms.is_empty() {
            return Ok(None);
        }
        Ok(Some(Tensor::f_stack(&norms, 0)?.f_norm()?))
    }

    /// Clips gradients to global norm `max_norm`; returns the norm before clipping. A
    /// non-finite norm is an error (gradients are left as they are).
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> anyhow::Result<f64> {
        let Some(total) = self.total_norm()? else {
            return Ok(0.0);
        };
        let norm = host::read_scalar(&total)?;
        if !norm.is_finite() {
            bail!("non-finite gradient norm ({norm})");
        }
        self.clip_to(&total, max_norm)?;
        Ok(norm)
    }

    /// Scales the gradients by `min(1, max_norm / (total + 1e-6))`, `total` being
    /// [`AdamW::total_norm`] (already checked finite by the caller), entirely on the device.
    pub fn clip_to(&mut self, total: &Tensor, max_norm: f64) -> anyhow::Result<()> {
        let coef = (total.f_add_scalar(1e-6)?.f_reciprocal()? * max_norm).f_clamp_max(1.0)?;
        tch::no_grad(|| -> anyhow::Result<()> {
            if !self.reference {
                // One `_foreach_mul_` per (device, dtype) of the gradients.
                let grads = self.grads();
                let mut groups: Vec<((Device, Kind), Vec<&Tensor>)> = Vec::new();
                for g in &grads {
                    let key = (g.device(), g.kind());
                    match groups.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, v)) => v.push(g),
                        None => groups.push((key, vec![g])),
                    }
                }
                for ((device, kind), gs) in groups {
                    fused::mul_(&gs, &coef.f_to_device(device)?.f_to_kind(kind)?)?;
                }
                return Ok(());
            }
            for p in &self.params {
                let mut g = p.tensor.grad();
                if g.defined() {
                    let c = coef.f_to_device(g.device())?.f_to_kind(g.kind())?;
                    let _ = g.f_mul_(&c)?;
                }
            }
            Ok(())
        })
    }

    /// Names of parameters whose gradient has a NaN or infinite value.
    pub fn non_finite_grads(&self) -> anyhow::Result<Vec<String>> {
        non_finite(self.params.iter().map(|p| (&p.name, p.tensor.grad())))
    }

    /// Names of parameters whose *value* has a NaN or infinite entry: checked before a
    /// checkpoint or an artifact is written, so poisoned weights are never kept.
    /// Sharded: the parameters this rank owns (the others are checked by their owners).
    pub fn non_finite_params(&self) -> anyhow::Result<Vec<String>> {
        non_finite(
            self.params
                .iter()
                .filter(|p| p.owned)
                .map(|p| (&p.name, p.tensor.shallow_clone())),
        )
    }
}

/// The per-tensor update of one parameter with gradient `g` (see [`AdamW::step`]).
fn update_one(p: &mut Param, g: Tensor, cfg: AdamWConfig, lr: f64) -> anyhow::Result<()> {
    p.step += 1;
    let t = p.step as i32;
    if p.decay && cfg.weight_decay != 0.0 {
        let _ = p.tensor.f_mul_scalar_(1.0 - lr * cfg.weight_decay)?;
    }
    let _ = p.exp_avg.f_lerp_(&g, 1.0 - cfg.beta1)?;
    let _ = p.exp_avg_sq.f_mul_scalar_(cfg.beta2)?;
    let mut scratch = g.f_mul_scalar(1.0 - cfg.beta2)?;
    let _ = p.exp_avg_sq.f_addcmul_(&scratch, &g)?;
    drop(g);
    let bc1 = 1.0 - cfg.beta1.powi(t);
    let bc2 = 1.0 - cfg.beta2.powi(t);
    let step_size = lr / bc1;
    let _ = p.exp_avg_sq.f_sqrt_out(&scratch)?;
    let _ = scratch.f_div_scalar_(bc2.sqrt())?;
    let _ = scratch.f_add_scalar_(cfg.eps)?;
    let upd = p.exp_avg.f_mul_scalar(-step_size)?;
    let _ = p.tensor.f_addcdiv_(&upd, &scratch)?;
    Ok(())
}

/// Whether the fused kernel takes parameter `t` with gradient `g`: a CPU or CUDA float tensor,
/// its gradient of the same device and dtype, both contiguous.
fn fusable(t: &Tensor, g: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu | Device::Cuda(_))
        && matches!(
            t.kind(),
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
        )
        && g.device() == t.device()
        && g.kind() == t.kind()
        && t.is_contiguous()
        && g.is_contiguous()
}

/// The fused update: one `_fused_adamw_` per (device, dtype, decay) group of the parameters
/// with a gradient, the rest through [`update_one`] (their step tensors kept in sync).
fn fused_step(params: &mut [Param], cfg: AdamWConfig, lr: f64) -> anyhow::Result<()> {
    let grads: Vec<Tensor> = params.iter().map(|p| p.tensor.grad()).collect();
    let mut groups: Vec<((Device, Kind, bool), Vec<usize>)> = Vec::new();
    let mut single = Vec::new();
    for (i, (p, g)) in params.iter().zip(&grads).enumerate() {
        if !g.defined() || !p.owned {
            continue;
        }
        if !fusable(&p.tensor, g) {
            single.push(i);
            continue;
        }
        let key = (p.tensor.device(), p.tensor.kind(), p.decay);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    for ((_, _, decay), idx) in &groups {
        let mut group = AdamWGroup::default();
        for &i in idx {
            let p = &params[i];
            group.params.push(&p.tensor);
            group.grads.push(&grads[i]);
            group.exp_avgs.push(&p.exp_avg);
            group.exp_avg_sqs.push(&p.exp_avg_sq);
            group.steps.push(&p.step_t);
        }
        let args = AdamWArgs {
            lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            weight_decay: if *decay { cfg.weight_decay } else { 0.0 },
            eps: cfg.eps,
        };
        fused::adamw(&group, args)?;
        for &i in idx {
            params[i].step += 1;
        }
    }
    for i in single {
        let p = &mut params[i];
        update_one(p, grads[i].shallow_clone(), cfg, lr)?;
        let _ = p.step_t.f_fill_(p.step as f64)?;
    }
    Ok(())
}

/// Names of the tensors with a NaN or infinite value (undefined tensors are skipped).
///
/// Cheap on the common path: a tensor's 2-norm is finite iff all its values are (barring an
/// overflow of the sum of squares), so only the per-tensor norms are computed — one pass over
/// each tensor, no temporaries of its size — stacked on the device and read back in one
/// [`host::read`]; the values of a tensor are checked (one read each) only when its norm is not
/// finite.
fn non_finite<'a>(
    tensors: impl Iterator<Item = (&'a String, Tensor)>,
) -> anyhow::Result<Vec<String>> {
    let mut kept = Vec::new();
    let mut norms = Vec::new();
    tch::no_grad(|| -> anyhow::Result<()> {
        for (name, t) in tensors {
            if t.defined() {
                norms.push(t.f_norm()?.f_to_kind(Kind::Float)?);
                kept.push((name, t));
            }
        }
        Ok(())
    })?;
    if norms.is_empty() {
        return Ok(Vec::new());
    }
    let norms = host::read(&Tensor::f_stack(&norms, 0)?)?;
    let mut bad = Vec::new();
    for ((name, t), norm) in kept.into_iter().zip(norms) {
        if !norm.is_finite() && host::read_scalar(&t.f_isfinite()?.f_all()?)? == 0.0 {
            bad.push(name.clone());
        }
    }
    Ok(bad)
}
