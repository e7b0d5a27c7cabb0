//! Parameters shared by the training kinds (`cpt`, `sft`, `dpo`, `npo`): the optimiser,
//! the schedule, the run's length, the precision, checkpointing, data-parallel ranks and
//! LoRA ([`crate::lora`]), declared once as the [`Optim`] group and checked by [`check_optim`].
//!
//! Precision (`precision`, [`Precision::resolve`]; `dtype` is the older knob and keeps its
//! meaning): `f32` trains in f32; `bf16-mixed` keeps f32 master weights and f32 AdamW moments
//! and runs forward and backward on a bf16 working copy refreshed after each update; `bf16`
//! is pure bf16 (weights and moments), lossy: an update smaller than half a bf16 step of its
//! weight (8 bits of mantissa) is lost. `precision auto` (the default) follows `dtype`:
//! `dtype auto` is `f32` on the CPU and `bf16-mixed` on CUDA, `dtype f32` is `f32`, and an
//! explicit `dtype bf16` stays pure `bf16`, as it was before `precision` existed. An explicit
//! `precision` sets the compute dtype too, so it overrides `dtype auto` and must agree with an
//! explicit `dtype` ([`check_precision`]).
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

pub use crate::precision::Precision;

crate::enum_param! {
    /// The dtype of a trained model's weights in its artifact.
    pub enum SaveDtype { Auto = "auto", F32 = "f32", Bf16 = "bf16", F16 = "f16" }
}

crate::enum_param! {
    /// How a data-parallel node splits its training state across its ranks (ZeRO's stages):
    /// `optimizer` — each rank keeps the AdamW moments of its share of the trained tensors and
    /// updates only those, the updated tensors gathered by every rank; `gradients` — also the
    /// gradients and f32 masters: each rank receives only its share's summed gradients,
    /// reduce-scattered block by block during the backward; `full` — also the parameters: a
    /// decoder block's are gathered just before it computes and freed after (the blocks are
    /// recomputed in backward).
    pub enum Shard { None = "none", Optimizer = "optimizer", Gradients = "gradients", Full = "full" }
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
            .doc("compute dtype: auto = f32 on CPU, bf16 on CUDA; `precision` says more"),
        precision: Precision = ParamSpec::new("precision", ParamType::Enum(Precision::NAMES))
            .default(Value::Str("auto".into())).added_later()
            .doc("bf16-mixed (f32 master weights and moments, bf16 compute) | bf16 (pure, lossy) | \
                  f32; auto = f32 on CPU, bf16-mixed on CUDA, bf16 with an explicit `dtype bf16`"),
        save_dtype: SaveDtype = ParamSpec::new("save-dtype", ParamType::Enum(SaveDtype::NAMES))
            .default(Value::Str("auto".into())).added_later()
            .doc("dtype of the written weights: auto = the model's `torch_dtype` under \
                  bf16-mixed, else the compute dtype"),
        checkpoint_every: u64 = ParamSpec::new("checkpoint-every", int(0)).default(Value::Int(100)).non_semantic()
            .doc("checkpoint every N steps (0 = only at the end and on Ctrl-C)"),
        keep_checkpoints: usize = ParamSpec::new("keep-checkpoints", int(1)).default(Value::Int(1)).non_semantic()
            .doc("complete checkpoints kept in the work directory"),
        ranks: usize = ParamSpec::new("ranks", int(1)).default(Value::Int(1)).non_semantic()
            .doc("data-parallel ranks (MPI processes); each takes grad-accum / ranks micro-batches of every step"),
        shard: Shard = ParamSpec::new("shard", ParamType::Enum(Shard::NAMES))
            .default(Value::Str("none".into())).non_semantic()
            .doc("none | optimizer (ZeRO-1: AdamW moments split across ranks) | gradients (ZeRO-2: \
                  gradients and f32 masters too) | full (ZeRO-3: parameters too, gathered per \
                  block); the weights equal the unsharded run's"),
        activation_checkpointing: bool = ParamSpec::new("activation-checkpointing", ParamType::Bool)
            .default(Value::Bool(false)).non_semantic()
            .doc("recompute each decoder block in backward instead of keeping its activations \
                  (less memory, about one more forward; the same gradients)"),
        lora: Option<crate::lora::Lora> = crate::lora::spec(),
    }
}

impl Optim {
    /// The dtype the model is loaded in: its master dtype. bf16 only for pure `bf16` training
    /// (whatever the device: `auto` never resolves to it); `f32` and `bf16-mixed` load f32 and
    /// the trainer makes the bf16 working copy of `bf16-mixed`.
    pub fn load_dtype(&self) -> Dtype {
        match self.precision.resolve(self.dtype, false) {
            Precision::Bf16 => Dtype::Bf16,
            _ => Dtype::F32,
        }
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
/// `shard` splits state across ranks: it needs `ranks` > 1.
pub fn check_ranks(n: &NodeDecl, out: &mut Vec<ParamIssue>) {
    let get = |k: &str| n.params.get(k).and_then(|v| v.as_i64());
    let shard = n.params.get("shard").and_then(|v| v.as_str());
    if get("ranks").unwrap_or(1) <= 1 && shard.is_some_and(|s| s != "none") {
        out.push(ParamIssue {
            param: Some("shard".into()),
            message: format!(
                "shard {} splits training state across ranks, and this node runs on one rank",
                shard.unwrap_or_default()
            ),
            hint: Some("add `ranks 2` (or more), or remove `shard`".into()),
        });
    }
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

/// Why `ranks` data-parallel ranks cannot run on a machine with `cpu_cores` cores and
/// `cuda_devices` CUDA devices, as (message, hint): CUDA ranks (`on_cuda`) take one GPU each
/// (NCCL cannot put two ranks on one GPU), CPU ranks one core each. The one rule: `check`,
/// `plan` and `run` apply it to the machine when the recipe loads ([`check_in_recipe`]), the
/// launcher again before it starts the ranks.
pub fn ranks_problem(
    ranks: usize,
    on_cuda: bool,
    cpu_cores: usize,
    cuda_devices: usize,
) -> Option<(String, String)> {
    if on_cuda && ranks > cuda_devices {
        Some((
            format!(
                "ranks {ranks} on CUDA, but this machine has {cuda_devices} CUDA device(s): one \
                 rank per GPU (NCCL cannot put two ranks on one GPU)"
            ),
            "lower `ranks`, or run the node where there are more GPUs (`--executor slurm` with \
             `gpus-per-node`; `--cuda-devices N` checks against such a machine)"
                .into(),
        ))
    } else if !on_cuda && ranks > cpu_cores {
        Some((
            format!(
                "ranks {ranks} on the CPU, but this machine has {cpu_cores} core(s): one core \
                 per rank"
            ),
            "lower `ranks`, or run the node where there are more cores (`--executor slurm`; \
             `--cpu-cores N` checks against such a machine)"
                .into(),
        ))
    } else {
        None
    }
}

/// The training kinds' recipe-wide checks: `ranks` against the machine (when the load knows
/// it, [`ranks_problem`]), the LoRA rank against the model's shapes
/// ([`crate::lora::check_rank`]) and the memory per rank ([`crate::memory::check`]: a note for the
/// plan, a warning beyond the device's memory).
pub fn check_in_recipe(n: &NodeDecl, cx: &dsl::CheckContext<'_>, f: &mut dsl::Findings) {
    check_ranks_here(n, cx.machine, f);
    crate::lora::check_rank(n, cx, f);
    crate::memory::check(n, cx, f);
}

/// [`ranks_problem`] for node `n` on `machine`: `device cpu` needs the cores, `cuda`/`cuda:N`
/// the CUDA devices, `auto` is CUDA where there are CUDA devices; nothing when what it needs
/// is unknown.
fn check_ranks_here(n: &NodeDecl, machine: dsl::Machine, f: &mut dsl::Findings) {
    let ranks = n.params.get("ranks").and_then(|v| v.as_i64()).unwrap_or(1);
    if ranks <= 1 {
        return;
    }
    let Some(on_cuda) = crate::common::runs_on_cuda(n, machine) else {
        return;
    };
    let (cores, cuda) = match (on_cuda, machine.cpu_cores, machine.cuda_devices) {
        (true, _, Some(g)) => (0, g),
        (false, Some(c), _) => (c, 0),
        _ => return,
    };
    if let Some((message, hint)) = ranks_problem(ranks as usize, on_cuda, cores, cuda) {
        f.errors
            .push(ParamIssue::new(Some("ranks"), message, Some(&hint)));
    }
}

/// Checks shared by the training kinds: a valid warmup, and `adam-eps` > 0 (AdamW divides by
/// `√v̂ + eps`; with eps = 0 a parameter whose gradient was always zero gets 0/0 = NaN).
pub fn check_optim(n: &NodeDecl, out: &mut Vec<ParamIssue>) {
    check_ranks(n, out);
    check_precision(n, out);
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

/// An explicit `precision` and an explicit `dtype` must name the same compute dtype (`dtype
/// auto` always agrees); `save-dtype` applies to a full model's weights, not to a LoRA adapter
/// (always written in f32, as PEFT does).
pub fn check_precision(n: &NodeDecl, out: &mut Vec<ParamIssue>) {
    let word = |k: &str| n.params.get(k).and_then(|v| v.as_str());
    let precision = word("precision").and_then(Precision::parse);
    let dtype = word("dtype").and_then(Dtype::parse);
    if let (Some(p), Some(d)) = (precision, dtype) {
        let c = p.compute();
        if c != Dtype::Auto && d != Dtype::Auto && c != d {
            out.push(ParamIssue {
                param: Some("precision".into()),
                message: format!(
                    "precision {} computes in {}, but the node sets dtype {}",
                    p.name(),
                    c.name(),
                    d.name()
                ),
                hint: Some("remove `dtype`: `precision` sets the compute dtype".into()),
            });
        }
    }
    let save = word("save-dtype").and_then(SaveDtype::parse);
    if is_set(n, "lora") && save.is_some_and(|s| s != SaveDtype::Auto) {
        out.push(ParamIssue {
            param: Some("save-dtype".into()),
            message: "save-dtype applies to a full model's weights; this node trains a LoRA \
                      adapter, which is written in f32"
                .into(),
            hint: Some("remove `save-dtype`".into()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::ranks_problem;
    use super::Precision;
    use dsl::device::Dtype;

    #[test]
    fn precision_auto_follows_dtype_and_an_explicit_one_wins() {
        let r = |p: Precision, d: Dtype, cuda: bool| p.resolve(d, cuda);
        assert_eq!(r(Precision::Auto, Dtype::Auto, false), Precision::F32);
        assert_eq!(r(Precision::Auto, Dtype::Auto, true), Precision::Bf16Mixed);
        assert_eq!(r(Precision::Auto, Dtype::Bf16, false), Precision::Bf16);
        assert_eq!(r(Precision::Auto, Dtype::F32, true), Precision::F32);
        assert_eq!(
            r(Precision::Bf16Mixed, Dtype::Auto, false),
            Precision::Bf16Mixed
        );
        assert_eq!(r(Precision::Bf16, Dtype::Auto, true), Precision::Bf16);
    }

    #[test]
    fn ranks_need_a_core_or_a_gpu_each() {
        assert_eq!(ranks_problem(2, false, 2, 0), None);
        let (m, h) = ranks_problem(64, false, 2, 8).unwrap();
        assert!(
            m.contains("ranks 64 on the CPU, but this machine has 2 core(s)"),
            "{m}"
        );
        assert!(h.contains("--cpu-cores"), "{h}");
        assert_eq!(ranks_problem(8, true, 2, 8), None);
        let (m, _) = ranks_problem(2, true, 64, 1).unwrap();
        assert!(
            m.contains("ranks 2 on CUDA, but this machine has 1 CUDA device(s)"),
            "{m}"
        );
    }
}
