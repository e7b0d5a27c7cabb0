//! The `model` node kind. Exactly one of two modes:
//!
//! - `path`: a local Hugging Face directory, validated ([`crate::hf::validate_model_dir`]:
//!   config.json parses, safetensors single or sharded with every shard and tensor present,
//!   Llama-family tensors with the shapes the config implies). The artifact is the directory
//!   itself, hard-linked (copied across file systems) — see [`crate::hf::link_or_copy_dir`].
//! - init: a new Llama-family model (`arch` llama | qwen2 | mistral) from size parameters, a
//!   `seed` and a `tokenizer` node, written as an HF directory: config.json,
//!   generation_config.json, model.safetensors ([`crate::llama_init`]) and the tokenizer files
//!   (with `model_max_length` = `max-position`).

use crate::hf;
use crate::llama_init::InitSpec;
use crate::stage::{Stage, StageCtx, StageError};
use crate::tok::{self, TokenizerDir};
use anyhow::Context;
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};
use serde_json::{json, Value as J};
use std::fs;

/// The `model` kind.
pub struct Model;

/// Parameters that only apply when initialising a model.
pub const INIT_PARAMS: &[&str] = &[
    "arch",
    "hidden-size",
    "layers",
    "heads",
    "kv-heads",
    "head-dim",
    "intermediate-size",
    "max-position",
    "rope-theta",
    "rms-norm-eps",
    "tie-embeddings",
    "init-std",
    "seed",
    "dtype",
];

fn int(min: i64) -> ParamType {
    ParamType::Int {
        min: Some(min),
        max: None,
    }
}

impl Stage for Model {
    fn schema(&self) -> KindSchema {
        let pos = ParamType::Float {
            min: Some(0.0),
            max: None,
        };
        KindSchema::new("model", 1, "model")
            .doc("A Hugging Face model directory: a local one (`path`) or a new Llama-family model initialised from a `tokenizer`.")
            .param(ParamSpec::new("path", ParamType::Path).optional().doc("a local Hugging Face model directory"))
            .param(ParamSpec::new("tokenizer", ParamType::Ref(&["tokenizer"])).optional().doc("initialise a new model with this tokenizer"))
            .param(ParamSpec::new("arch", ParamType::Enum(&["llama", "qwen2", "mistral"])).default(Value::Str("llama".into())).doc("architecture of a new model"))
            .param(ParamSpec::new("hidden-size", int(1)).default(Value::Int(64)))
            .param(ParamSpec::new("layers", int(1)).default(Value::Int(2)))
            .param(ParamSpec::new("heads", int(1)).default(Value::Int(4)))
            .param(ParamSpec::new("kv-heads", int(1)).optional().doc("key/value heads (GQA); default = heads"))
            .param(ParamSpec::new("head-dim", int(1)).optional().doc("default = hidden-size / heads"))
            .param(ParamSpec::new("intermediate-size", int(1)).default(Value::Int(128)))
            .param(ParamSpec::new("max-position", int(1)).default(Value::Int(2048)))
            .param(ParamSpec::new("rope-theta", pos.clone()).default(Value::Float(10000.0)))
            .param(ParamSpec::new("rms-norm-eps", pos.clone()).default(Value::Float(1e-5)))
            .param(ParamSpec::new("tie-embeddings", ParamType::Bool).default(Value::Bool(false)).doc("share embed_tokens with lm_head"))
            .param(ParamSpec::new("init-std", pos).default(Value::Float(0.02)).doc("std of the normal initialisation"))
            .param(ParamSpec::new("seed", ParamType::Int { min: None, max: None }).default(Value::Int(0)))
            .param(ParamSpec::new("dtype", ParamType::Enum(&["f32", "bf16", "f16"])).default(Value::Str("f32".into())).doc("dtype of the saved weights"))
            .check(check)
    }

    fn run(&self, ctx: &StageCtx) -> Result<J, StageError> {
        match ctx.param("path").as_str() {
            Some(p) => path_mode(ctx, p),
            None => init_mode(ctx),
        }
    }
}

/// Exactly one of `path`/`tokenizer`; init parameters only with `tokenizer`; head counts that
/// divide.
fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    let set = |k: &str| !matches!(n.params.get(k), None | Some(Value::Null));
    let int = |k: &str| n.params.get(k).and_then(|v| v.as_i64());
    let issue = |p: &str, m: String, h: Option<&str>| ParamIssue {
        param: Some(p.to_string()),
        message: m,
        hint: h.map(str::to_string),
    };
    let mut out = Vec::new();
    match (set("path"), set("tokenizer")) {
        (true, true) => out.push(issue("tokenizer", "`path` and `tokenizer` are exclusive: load a model or initialise one".into(), Some("a model loaded from `path` brings its own tokenizer"))),
        (false, false) => out.push(ParamIssue {
            param: None,
            message: "a model needs `path` (a local Hugging Face directory) or `tokenizer` (to initialise a new one)".into(),
            hint: Some("e.g. `model base path=\"models/smol\"` or `model tiny tokenizer=tok hidden-size=64`".into()),
        }),
        (true, false) => {
            for p in INIT_PARAMS {
                if n.param_locs.contains_key(*p) {
                    out.push(issue(p, format!("`{p}`: size parameters apply only when initialising"), Some("a model loaded from `path` is described by its config.json; remove the parameter")));
                }
            }
        }
        (false, true) => {
            let (hidden, heads) = (int("hidden-size").unwrap_or(64), int("heads").unwrap_or(4));
            if !set("head-dim") && heads > 0 && hidden % heads != 0 {
                out.push(issue("heads", format!("hidden-size {hidden} is not divisible by heads {heads}"), Some("choose heads dividing hidden-size, or set head-dim")));
            }
            if let Some(kv) = int("kv-heads") {
                if kv > 0 && heads % kv != 0 {
                    out.push(issue("kv-heads", format!("heads {heads} is not divisible by kv-heads {kv}"), Some("grouped-query attention shares each key/value head among heads / kv-heads query heads")));
                }
            }
        }
    }
    out
}

fn path_mode(ctx: &StageCtx, p: &str) -> Result<J, StageError> {
    let dir = ctx.resolve_path(p);
    let info = hf::validate_model_dir(&dir, p)?;
    // The architecture code is the authority on what temper can run: unsupported model types,
    // activations or rope variants are rejected here, before anything is published.
    crate::arch::ArchConfig::from_dir(&dir, p)?;
    if dir.join(tok::TOKENIZER_FILE).is_file() {
        let shown = format!("{}/{}", p.trim_end_matches('/'), tok::TOKENIZER_FILE);
        tok::load_tokenizer_json(&dir.join(tok::TOKENIZER_FILE), &shown)?;
    }
    ctx.check_cancel()?;
    let files =
        hf::link_or_copy_dir(&dir, &ctx.out_dir).with_context(|| format!("publishing {p}"))?;
    Ok(json!({
        "mode": "path",
        "arch": info.config.model_type,
        "architectures": info.config.architectures,
        "parameters": info.weights.param_count(),
        "dtype": info.weights.main_dtype(),
        "vocab_size": info.config.vocab_size,
        "weight_files": info.weights.files,
        "files": files.len(),
    }))
}

fn uint(ctx: &StageCtx, k: &str, default: i64) -> usize {
    ctx.param(k).as_i64().unwrap_or(default).max(0) as usize
}

fn init_mode(ctx: &StageCtx) -> Result<J, StageError> {
    let input = ctx.input("tokenizer")?;
    let tdir = TokenizerDir::load(&input.dir, &format!("tokenizer {}", input.node))?;
    let hidden = uint(ctx, "hidden-size", 64);
    let heads = uint(ctx, "heads", 4).max(1);
    let kv_heads = ctx
        .param("kv-heads")
        .as_i64()
        .map_or(heads, |v| v.max(1) as usize);
    let head_dim = ctx
        .param("head-dim")
        .as_i64()
        .map_or(hidden / heads, |v| v.max(1) as usize);
    if head_dim == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(StageError::user(
            format!("hidden-size {hidden}, heads {heads}, kv-heads {kv_heads}: no valid head size"),
            Some(
                "heads must divide hidden-size (or set head-dim), kv-heads must divide heads"
                    .into(),
            ),
        ));
    }
    let eos = tdir.eos_id();
    let spec = InitSpec {
        arch: ctx.param("arch").as_str().unwrap_or("llama").to_string(),
        vocab_size: tdir.vocab_size(),
        hidden_size: hidden,
        layers: uint(ctx, "layers", 2),
        heads,
        kv_heads,
        head_dim,
        intermediate_size: uint(ctx, "intermediate-size", 128),
        max_position: uint(ctx, "max-position", 2048),
        rope_theta: ctx.param("rope-theta").as_f64().unwrap_or(10000.0),
        rms_norm_eps: ctx.param("rms-norm-eps").as_f64().unwrap_or(1e-5),
        tie_embeddings: ctx.param("tie-embeddings").as_bool().unwrap_or(false),
        init_std: ctx.param("init-std").as_f64().unwrap_or(0.02),
        seed: ctx.param("seed").as_i64().unwrap_or(0),
        dtype: ctx.param("dtype").as_str().unwrap_or("f32").to_string(),
        bos_token_id: tdir.bos_id().or(eos),
        eos_token_id: eos,
        pad_token_id: tdir.pad_id(),
    };
    let out = &ctx.out_dir;
    tok::write_json(&out.join(hf::CONFIG_FILE), &spec.config_json())?;
    tok::write_json(
        &out.join("generation_config.json"),
        &spec.generation_config_json(),
    )?;
    copy_tokenizer(&input.dir, out, spec.max_position)?;
    let params = crate::llama_init::write_weights(&spec, out, |i, n| {
        ctx.progress.set_length(n as u64);
        ctx.progress.set_position(i as u64);
        if ctx.cancel.is_cancelled() {
            anyhow::bail!("cancelled");
        }
        Ok(())
    })
    .map_err(|e| {
        if ctx.cancel.is_cancelled() {
            StageError::Cancelled
        } else {
            StageError::Other(e)
        }
    })?;
    Ok(json!({
        "mode": "init",
        "arch": spec.arch,
        "parameters": params,
        "dtype": spec.dtype,
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "layers": spec.layers,
        "heads": spec.heads,
        "kv_heads": spec.kv_heads,
        "tie_embeddings": spec.tie_embeddings,
    }))
}

/// Copies the tokenizer files into the model directory, setting `model_max_length`.
fn copy_tokenizer(
    src: &std::path::Path,
    dst: &std::path::Path,
    max_len: usize,
) -> anyhow::Result<()> {
    for name in std::iter::once(&tok::TOKENIZER_FILE).chain(tok::COMPANION_FILES) {
        let s = src.join(name);
        if !s.is_file() {
            continue;
        }
        if *name == tok::CONFIG_FILE {
            let text =
                fs::read_to_string(&s).with_context(|| format!("reading {}", s.display()))?;
            let mut cfg: J =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", s.display()))?;
            if let Some(o) = cfg.as_object_mut() {
                o.insert("model_max_length".into(), J::from(max_len));
            }
            tok::write_json(&dst.join(name), &cfg)?;
        } else {
            fs::copy(&s, dst.join(name)).with_context(|| format!("copying {}", s.display()))?;
        }
    }
    Ok(())
}
