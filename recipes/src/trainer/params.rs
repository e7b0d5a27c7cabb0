//! The training kinds' parameters read into a [`TrainSpec`]: the [`Optim`] group (optimiser,
//! schedule, run length, dtype, checkpointing) and the [`Common`] parameters (threads,
//! log-every), both typed by `kinds` where their defaults are declared once.
//!
//! `schedule KIND warmup=W min-lr-ratio=R`: `W < 1` is a fraction of the steps (`⌈W·T⌉`),
//! `W ≥ 1` a whole number of steps; no `schedule` is linear decay without warmup.
//!
//! `dtype auto` resolves to f32 on the CPU and bf16 on CUDA ([`resolve_dtype`], the rule the
//! keys use). The resolved dtype determines the result, so the runner puts it (not `auto`)
//! into the key. `precision` ([`kinds::train::Precision::resolve`]) is resolved by the trainer
//! for the model's device; the weights are written in [`save_kind`].

use super::TrainSpec;
use crate::arch::HfModel;
use crate::trainer::optim::AdamWConfig;
use crate::trainer::schedule::{self, Warmup};
use dsl::device::Dtype;
use kinds::train::{Optim, Precision, SaveDtype, ScheduleKind};
use kinds::Common;
use tch::{Device, Kind};

/// Passes over the data when the node sets neither `steps` nor `epochs` (nor a token budget).
pub const DEFAULT_EPOCHS: f64 = 1.0;

/// The spec of a node's optimisation parameters; `total_steps` is filled by the stage.
pub fn train_spec(o: &Optim, c: &Common) -> TrainSpec {
    let sched = o.schedule.as_ref();
    let min_ratio = sched.and_then(|s| s.min_lr_ratio).unwrap_or(0.0);
    let kind = match sched.map(|s| s.kind) {
        Some(ScheduleKind::Cosine) => schedule::Kind::Cosine { min_ratio },
        Some(ScheduleKind::Constant) => schedule::Kind::Constant,
        Some(ScheduleKind::Linear) | None => schedule::Kind::Linear,
    };
    let warmup = match sched.and_then(|s| s.warmup) {
        Some(w) if w >= 1.0 => Warmup::Steps(w as u64),
        Some(w) => Warmup::Fraction(w),
        None => Warmup::Steps(0),
    };
    TrainSpec {
        lr: o.lr,
        schedule: kind,
        warmup,
        total_steps: 0,
        max_grad_norm: (o.max_grad_norm > 0.0).then_some(o.max_grad_norm),
        adamw: AdamWConfig {
            beta1: o.adam_beta1,
            beta2: o.adam_beta2,
            eps: o.adam_eps,
            weight_decay: o.weight_decay,
        },
        seed: o.seed,
        checkpoint_every: o.checkpoint_every,
        keep_checkpoints: o.keep_checkpoints.max(1),
        log_every: c.log_every.max(1),
        threads: c.threads,
        lora: o.lora.clone(),
        precision: o.precision,
        dtype: o.dtype,
        save_dtype: o.save_dtype,
        activation_checkpointing: o.activation_checkpointing,
        shard: o.shard,
    }
}

/// The length of a run over `n` items taking `per_step` items per optimizer step:
/// `(total_steps, items consumed)`. With `steps S`: `(S, S·per_step)`; else `epochs E`
/// (default [`DEFAULT_EPOCHS`]): `L = max(1, ⌈E·n⌉)` items in `⌈L / per_step⌉` steps.
pub fn item_budget(o: &Optim, n: u64, per_step: u64) -> (u64, u64) {
    match o.steps {
        Some(s) => (s, s.saturating_mul(per_step)),
        None => {
            let e = o.epochs.unwrap_or(DEFAULT_EPOCHS);
            let limit = ((e * n as f64).ceil() as u64).max(1);
            (limit.div_ceil(per_step), limit)
        }
    }
}

/// The compute dtype: `dtype` resolved for `device` by [`Dtype::resolve`].
pub fn resolve_dtype(dtype: Dtype, device: Device) -> Kind {
    match dtype.resolve(device.is_cuda()) {
        Dtype::Bf16 => Kind::BFloat16,
        _ => Kind::Float,
    }
}

/// The dtype a trained model's weights are written in: `save-dtype` when set; with `auto`,
/// under `bf16-mixed` the model's own dtype (`torch_dtype` of its config.json; f32 when it
/// names none temper writes) — the f32 masters rounded to it —, else the dtype it computed in
/// (f32, or pure bf16: nothing more precise exists). A LoRA adapter is always f32.
pub fn save_kind(save: SaveDtype, precision: Precision, model: &HfModel) -> Kind {
    if model.adapter.is_some() {
        return Kind::Float;
    }
    match (save, precision) {
        (SaveDtype::F32, _) => Kind::Float,
        (SaveDtype::Bf16, _) => Kind::BFloat16,
        (SaveDtype::F16, _) => Kind::Half,
        (SaveDtype::Auto, Precision::Bf16Mixed) => ["torch_dtype", "dtype"]
            .iter()
            .find_map(|k| model.raw_config.get(*k).and_then(|v| v.as_str()))
            .and_then(|name| match name {
                "bfloat16" => Some(Kind::BFloat16),
                "float16" => Some(Kind::Half),
                _ => None,
            })
            .unwrap_or(Kind::Float),
        (SaveDtype::Auto, _) => model.kind(),
    }
}

/// The dtype a summary names (`f32`, `bf16`, `f16`, `f64`), back as a [`Kind`].
pub fn kind_named(name: &str) -> Option<Kind> {
    Some(match name {
        "f32" => Kind::Float,
        "bf16" => Kind::BFloat16,
        "f16" => Kind::Half,
        "f64" => Kind::Double,
        _ => return None,
    })
}

/// Name of a dtype as recorded in summaries (`f32`, `bf16`).
pub fn dtype_name(k: Kind) -> &'static str {
    match k {
        Kind::BFloat16 => "bf16",
        Kind::Half => "f16",
        Kind::Double => "f64",
        _ => "f32",
    }
}
