//! Parameters shared by the training kinds (`cpt`, `sft`, `dpo`, `npo`): the optimiser,
//! the schedule, the run's length, the compute dtype, checkpointing, data-parallel ranks and
//! LoRA ([`crate::lora`]), declared once as the [`Optim`] group and checked by [`check_optim`].
//!
//! Defaults follow Hugging Face's `TrainingArguments` where one exists: `lr` 5e-5, linear
//! schedule without warmup, `weight-decay` 0, betas (0.9, 0.999), eps 1e-8, `max-grad-norm` 1.
//! `schedule KIND warmup=W min-lr-ratio=R`: `W < 1` is a fraction of the steps (`⌈W·T⌉`),
//! `W ≥ 1` a whole number of steps.

use crate::params::{field, float, float_in, int, is_set, DecodeError, FromParam};
use dsl::device::Dtype;
use dsl::{NodeDecl, ParamIssue, ParamSpec, ParamType, Value};

crate::enum_param! {
    /// The learning-rate schedule after warmup.
    pub enum ScheduleKind { Constant = "constant", Linear = "linear", Cosine = "cosine" }
}

/// `schedule KIND warmup=W min-lr-ratio=R`.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    /// A fraction of the steps (< 1) or a number of steps (≥ 1).
    pub warmup: Option<f64>,
    /// Cosine floor as a fraction of `lr`.
    pub min_lr_ratio: Option<f64>,
}

impl FromParam for Schedule {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        match v {
            Some(Value::Record(r)) => Ok(Schedule {
                kind: field(r, name, "kind")?,
                warmup: field(r, name, "warmup")?,
                min_lr_ratio: field(r, name, "min-lr-ratio")?,
            }),
            other => Err(DecodeError::new(
                name,
                format!("expected a record, got {other:?}"),
            )),
        }
    }
}

crate::params! {
    /// The optimisation parameters every training kind declares.
    pub struct Optim {
        lr: f64 = ParamSpec::new("lr", float(0.0)).default(Value::Float(5e-5)).doc("peak learning rate"),
        schedule: Option<Schedule> = ParamSpec::new(
            "schedule",
            ParamType::Record {
                positional: &["kind"],
                fields: vec![
                    ParamSpec::new("kind", ParamType::Enum(ScheduleKind::NAMES)).doc("constant | linear | cosine"),
                    ParamSpec::new("warmup", float(0.0)).optional()
                        .doc("a fraction of the steps (< 1) or a number of steps (>= 1)"),
                    ParamSpec::new("min-lr-ratio", float_in(0.0, 1.0)).optional()
                        .doc("cosine floor as a fraction of lr"),
                ],
            },
        )
        .optional()
        .doc("`schedule cosine warmup=0.03`; default linear decay without warmup"),
        steps: Option<u64> = ParamSpec::new("steps", int(1)).optional().doc("optimizer steps (instead of epochs / tokens)"),
        epochs: Option<f64> = ParamSpec::new("epochs", float(0.0)).optional().doc("passes over the data"),
        grad_accum: usize = ParamSpec::new("grad-accum", int(1)).default(Value::Int(1)).doc("micro-batches per optimizer step"),
        max_grad_norm: f64 = ParamSpec::new("max-grad-norm", float(0.0)).default(Value::Float(1.0))
            .doc("clip the global gradient norm (0 = off)"),
        weight_decay: f64 = ParamSpec::new("weight-decay", float(0.0)).default(Value::Float(0.0))
            .doc("decoupled weight decay (not on norms and biases)"),
        adam_beta1: f64 = ParamSpec::new("adam-beta1", float_in(0.0, 1.0)).default(Value::Float(0.9)),
        adam_beta2: f64 = ParamSpec::new("adam-beta2", float_in(0.0, 1.0)).default(Value::Float(0.999)),
        adam_eps: f64 = ParamSpec::new("adam-eps", float(0.0)).default(Value::Float(1e-8)),
        seed: u64 = ParamSpec::new("seed", int(0)).default(Value::Int(0)).doc("seed of the data order"),
        dtype: Dtype = ParamSpec::new("dtype", ParamType::Enum(Dtype::NAMES)).default(Value::Str("auto".into()))
            .doc("compute dtype: auto = f32 on CPU, bf16 on CUDA"),
        checkpoint_every: u64 = ParamSpec::new("checkpoint-every", int(0)).default(Value::Int(100)).non_semantic()
            .doc("checkpoint every N steps (0 = only at the end and on Ctrl-C)"),
        keep_checkpoints: usize = ParamSpec::new("keep-checkpoints", int(1)).default(Value::Int(1)).non_semantic()
            .doc("complete checkpoints kept in the work directory"),
        ranks: usize = ParamSpec::new("ranks", int(1)).default(Value::Int(1)).non_semantic()
            .doc("data-parallel ranks (MPI processes); each takes grad-accum / ranks micro-batches of every step"),
        lora: Option<crate::lora::Lora> = crate::lora::spec(),
    }
}

/// The checks every kind that trains for `steps` or `epochs` starts from: [`check_optim`] and
/// [`check_steps_or_epochs`].
pub fn check_training(n: &NodeDecl) -> Vec<ParamIssue> {
    let mut out = Vec::new();
    check_optim(n, &mut out);
    check_steps_or_epochs(n, &mut out);
    out
}

/// `steps` and `epochs` both fix the run's length: setting both is a recipe error.
pub fn check_steps_or_epochs(n: &NodeDecl, out: &mut Vec<ParamIssue>) {
    if is_set(n, "steps") && is_set(n, "epochs") {
        out.push(ParamIssue {
            param: Some("epochs".into()),
            message: "`steps` and `epochs` are exclusive: the run has one length".into(),
            hint: None,
        });
    }
}

/// `ranks R` splits the `grad-accum` micro-batches of each step among R ranks, so the global
/// batch (`batch-size × grad-accum`) does not depend on R: `grad-accum` must be a multiple of R.
pub fn check_ranks(n: &NodeDecl, out: &mut Vec<ParamIssue>) {
    let get = |k: &str| n.params.get(k).and_then(|v| v.as_i64());
    let (Some(ranks), Some(accum)) = (get("ranks"), get("grad-accum")) else {
        return;
    };
    if ranks > 1 && accum % ranks != 0 {
        let bigger = (accum.max(1) + ranks - 1) / ranks * ranks;
        out.push(ParamIssue {
            param: Some("ranks".into()),
            message: format!(
                "ranks={ranks} with grad-accum={accum}: each step's {accum} micro-batch(es) cannot \
                 be split evenly among {ranks} ranks"
            ),
            hint: Some(format!(
                "make grad-accum a multiple of ranks (e.g. grad-accum {bigger}); the global batch \
                 is batch-size × grad-accum whatever ranks is"
            )),
        });
    }
}

/// Checks shared by the training kinds: a valid warmup, and `adam-eps` > 0 (AdamW divides by
/// `√v̂ + eps`; with eps = 0 a parameter whose gradient was always zero gets 0/0 = NaN).
pub fn check_optim(n: &NodeDecl, out: &mut Vec<ParamIssue>) {
    check_ranks(n, out);
    crate::lora::check(n, out);
    if let Some(eps) = n.params.get("adam-eps").and_then(|v| v.as_f64()) {
        if eps <= 0.0 {
            out.push(ParamIssue {
                param: Some("adam-eps".into()),
                message: format!(
                    "adam-eps={eps}: must be greater than 0 (AdamW divides by √v + eps, and a \
                     weight whose gradient is zero would become NaN)"
                ),
                hint: Some("keep the default 1e-8, or a small positive value".into()),
            });
        }
    }
    if let Some(w) = n
        .params
        .get("schedule")
        .and_then(|s| s.as_record())
        .and_then(|r| r.get("warmup"))
        .and_then(|w| w.as_f64())
    {
        if w >= 1.0 && w.fract() != 0.0 {
            out.push(ParamIssue {
                param: Some("schedule".into()),
                message: format!(
                    "warmup={w}: a warmup of 1 or more is a number of steps and must be whole"
                ),
                hint: Some("use a fraction below 1 (e.g. 0.03) or whole steps (e.g. 100)".into()),
            });
        }
    }
}
