//! Parameters shared by the training kinds (`cpt`, `sft`, later `dpo`): their declarations,
//! their reading into a [`TrainSpec`], the model's device and dtype, and the output directory.
//!
//! Defaults follow Hugging Face's `TrainingArguments` where one exists: `lr` 5e-5, linear
//! schedule without warmup, `weight-decay` 0, betas (0.9, 0.999), eps 1e-8, `max-grad-norm` 1.
//!
//! `schedule KIND warmup=W min-lr-ratio=R`: `W < 1` is a fraction of the steps (`⌈W·T⌉`),
//! `W ≥ 1` a whole number of steps.
//!
//! `dtype auto` resolves to f32 on the CPU and bf16 on CUDA. The resolved dtype determines
//! the result, so the runner must put it (not `auto`) into the key.
//!
//! Output ([`write_output`]): the model in Hugging Face layout (config.json, safetensors,
//! generation_config.json, tokenizer files, the chat template both in `chat_template.jinja` and
//! in `tokenizer_config.json`), `metrics.jsonl` and `train_summary.json`.

use super::{TrainSpec, TrainSummary};
use crate::arch::{default_dtype, HfModel, LoadOptions, SaveOptions};
use crate::stage::{StageCtx, StageError};
use crate::train::optim::AdamWConfig;
use crate::train::schedule::{self, Warmup};
use anyhow::Context;
use dsl::{NodeDecl, ParamIssue, ParamSpec, ParamType, Value};
use serde_json::Value as J;
use std::fs;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

pub fn int(min: i64) -> ParamType {
    ParamType::Int {
        min: Some(min),
        max: None,
    }
}
pub fn float(min: f64) -> ParamType {
    ParamType::Float {
        min: Some(min),
        max: None,
    }
}

/// The optimisation parameters every training kind declares.
pub fn optim_params() -> Vec<ParamSpec> {
    vec![
        ParamSpec::new("lr", float(0.0))
            .default(Value::Float(5e-5))
            .doc("peak learning rate"),
        ParamSpec::new(
            "schedule",
            ParamType::Record {
                positional: &["kind"],
                fields: vec![
                    ParamSpec::new("kind", ParamType::Enum(schedule::Kind::NAMES))
                        .doc("constant | linear | cosine"),
                    ParamSpec::new("warmup", float(0.0))
                        .optional()
                        .doc("a fraction of the steps (< 1) or a number of steps (>= 1)"),
                    ParamSpec::new(
                        "min-lr-ratio",
                        ParamType::Float {
                            min: Some(0.0),
                            max: Some(1.0),
                        },
                    )
                    .optional()
                    .doc("cosine floor as a fraction of lr"),
                ],
            },
        )
        .optional()
        .doc("`schedule cosine warmup=0.03`; default linear decay without warmup"),
        ParamSpec::new("steps", int(1))
            .optional()
            .doc("optimizer steps (instead of epochs / tokens)"),
        ParamSpec::new("epochs", float(0.0))
            .optional()
            .doc("passes over the data"),
        ParamSpec::new("grad-accum", int(1))
            .default(Value::Int(1))
            .doc("micro-batches per optimizer step"),
        ParamSpec::new("max-grad-norm", float(0.0))
            .default(Value::Float(1.0))
            .doc("clip the global gradient norm (0 = off)"),
        ParamSpec::new("weight-decay", float(0.0))
            .default(Value::Float(0.0))
            .doc("decoupled weight decay (not on norms and biases)"),
        ParamSpec::new(
            "adam-beta1",
            ParamType::Float {
                min: Some(0.0),
                max: Some(1.0),
            },
        )
        .default(Value::Float(0.9)),
        ParamSpec::new(
            "adam-beta2",
            ParamType::Float {
                min: Some(0.0),
                max: Some(1.0),
            },
        )
        .default(Value::Float(0.999)),
        ParamSpec::new("adam-eps", float(0.0)).default(Value::Float(1e-8)),
        ParamSpec::new("seed", int(0))
            .default(Value::Int(0))
            .doc("seed of the data order"),
        ParamSpec::new("dtype", ParamType::Enum(&["auto", "f32", "bf16"]))
            .default(Value::Str("auto".into()))
            .doc("compute dtype: auto = f32 on CPU, bf16 on CUDA"),
        ParamSpec::new("checkpoint-every", int(0))
            .default(Value::Int(100))
            .non_semantic()
            .doc("checkpoint every N steps (0 = only at the end and on Ctrl-C)"),
        ParamSpec::new("keep-checkpoints", int(1))
            .default(Value::Int(1))
            .non_semantic()
            .doc("complete checkpoints kept in the work directory"),
    ]
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

/// Checks shared by the training kinds: a valid warmup, and `adam-eps` > 0 (AdamW divides by
/// `√v̂ + eps`; with eps = 0 a parameter whose gradient was always zero gets 0/0 = NaN).
pub fn check_optim(n: &NodeDecl, out: &mut Vec<ParamIssue>) {
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

/// Whether the recipe set `k` (explicitly or to a non-null value).
pub fn is_set(n: &NodeDecl, k: &str) -> bool {
    n.param_locs.contains_key(k) && !matches!(n.params.get(k), None | Some(Value::Null))
}

pub fn get_u64(ctx: &StageCtx, k: &str) -> Option<u64> {
    ctx.param(k).as_i64().map(|v| v.max(0) as u64)
}
pub fn get_f64(ctx: &StageCtx, k: &str, default: f64) -> f64 {
    ctx.param(k).as_f64().unwrap_or(default)
}

/// The spec from the node's parameters; `total_steps` is filled by the stage.
pub fn train_spec(ctx: &StageCtx) -> TrainSpec {
    let sched = ctx.param("schedule").as_record();
    let field = |k: &str| sched.and_then(|r| r.get(k));
    let min_ratio = field("min-lr-ratio")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0);
    let kind = match field("kind")
        .and_then(|v| v.as_str())
        .and_then(schedule::Kind::parse)
    {
        Some(schedule::Kind::Cosine { .. }) => schedule::Kind::Cosine { min_ratio },
        Some(k) => k,
        None => schedule::Kind::Linear,
    };
    let warmup = match field("warmup").and_then(|v| v.as_f64()) {
        Some(w) if w >= 1.0 => Warmup::Steps(w as u64),
        Some(w) => Warmup::Fraction(w),
        None => Warmup::Steps(0),
    };
    let mgn = get_f64(ctx, "max-grad-norm", 1.0);
    TrainSpec {
        lr: get_f64(ctx, "lr", 5e-5),
        schedule: kind,
        warmup,
        total_steps: 0,
        max_grad_norm: (mgn > 0.0).then_some(mgn),
        adamw: AdamWConfig {
            beta1: get_f64(ctx, "adam-beta1", 0.9),
            beta2: get_f64(ctx, "adam-beta2", 0.999),
            eps: get_f64(ctx, "adam-eps", 1e-8),
            weight_decay: get_f64(ctx, "weight-decay", 0.0),
        },
        seed: get_u64(ctx, "seed").unwrap_or(0),
        checkpoint_every: get_u64(ctx, "checkpoint-every").unwrap_or(100),
        keep_checkpoints: get_u64(ctx, "keep-checkpoints").unwrap_or(1).max(1) as usize,
        log_every: get_u64(ctx, "log-every").unwrap_or(10).max(1),
        threads: get_u64(ctx, "threads").unwrap_or(0) as usize,
    }
}

/// `cpu` | `cuda` | `cuda:N` → a tch device.
pub fn parse_device(s: &str) -> Result<Device, StageError> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(Device::Cuda)
            .ok_or_else(|| {
                StageError::user(
                    format!("unknown device `{s}`"),
                    Some("use cpu, cuda or cuda:N".into()),
                )
            }),
    }
}

/// The compute dtype: the `dtype` parameter, `auto` resolved for `device`.
pub fn resolve_dtype(param: &str, device: Device) -> Kind {
    match param {
        "f32" => Kind::Float,
        "bf16" => Kind::BFloat16,
        _ => default_dtype(device),
    }
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

/// Loads the `model=` input on the node's device in its dtype.
pub fn load_model(ctx: &StageCtx) -> Result<(HfModel, PathBuf), StageError> {
    let input = ctx.input("model")?;
    let device = parse_device(&ctx.device)?;
    let dtype = resolve_dtype(ctx.param("dtype").as_str().unwrap_or("auto"), device);
    let m = HfModel::load(
        &input.dir,
        &format!("model {}", input.node),
        &LoadOptions {
            device,
            dtype: Some(dtype),
        },
    )?;
    Ok((m, input.dir.clone()))
}

/// The tokenizer directory: the `tokenizer=` input if given, else the model's directory.
pub fn tokenizer_dir(ctx: &StageCtx, model_dir: &Path) -> Result<(PathBuf, String), StageError> {
    match ctx.param("tokenizer") {
        Value::Null => Ok((
            model_dir.to_path_buf(),
            format!("model {}", ctx.input("model")?.node),
        )),
        _ => {
            let t = ctx.input("tokenizer")?;
            Ok((t.dir.clone(), format!("tokenizer {}", t.node)))
        }
    }
}

/// Writes the trained model, the metrics and the summary into `ctx.out_dir`.
pub fn write_output(
    ctx: &StageCtx,
    model: &HfModel,
    tok_dir: &Path,
    summary: &TrainSummary,
    extra: J,
) -> Result<J, StageError> {
    let out = &ctx.out_dir;
    model
        .save(
            out,
            &SaveOptions {
                copy_from: Some(tok_dir.to_path_buf()),
                ..Default::default()
            },
        )
        .with_context(|| format!("node {}: saving the model", ctx.node))?;
    sync_chat_template(out)
        .with_context(|| format!("node {}: writing the chat template", ctx.node))?;
    let m = ctx.metrics.path();
    if m.is_file() {
        fs::copy(m, out.join("metrics.jsonl")).context("copying metrics.jsonl")?;
    }
    let mut s = serde_json::to_value(summary).context("serialising the summary")?;
    if let (Some(o), J::Object(e)) = (s.as_object_mut(), extra) {
        o.extend(e);
    }
    crate::tok::write_json(&out.join("train_summary.json"), &s)?;
    Ok(s)
}

/// Makes the chat template present both as `chat_template.jinja` and as
/// `tokenizer_config.json["chat_template"]` when either holds one (the file wins).
pub fn sync_chat_template(dir: &Path) -> anyhow::Result<()> {
    let jinja = dir.join("chat_template.jinja");
    let cfg_path = dir.join("tokenizer_config.json");
    let mut cfg: J = match fs::read_to_string(&cfg_path) {
        Ok(t) => {
            serde_json::from_str(&t).with_context(|| format!("parsing {}", cfg_path.display()))?
        }
        Err(_) => J::Object(Default::default()),
    };
    let template = match fs::read_to_string(&jinja) {
        Ok(t) => Some(t),
        Err(_) => cfg
            .get("chat_template")
            .and_then(|t| t.as_str())
            .map(str::to_string),
    };
    let Some(t) = template else { return Ok(()) };
    if !jinja.is_file() {
        fs::write(&jinja, &t).with_context(|| format!("writing {}", jinja.display()))?;
    }
    if let Some(o) = cfg.as_object_mut() {
        // A list of named templates (older transformers) is left as it is.
        let named = o.get("chat_template").is_some_and(|v| v.is_array());
        if !named && o.get("chat_template").and_then(|v| v.as_str()) != Some(t.as_str()) {
            o.insert("chat_template".into(), J::String(t));
            crate::tok::write_json(&cfg_path, &cfg)?;
        }
    }
    Ok(())
}
