//! The `model` node kind (parameters and the one-source rule: `kinds::model`). Two modes:
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
use crate::stage::{Kind, StageCtx, StageError};
use crate::tok::{self, TokenizerDir};
use ::kinds::model::Params;
use anyhow::Context;
use dsl::KindSchema;
use serde_json::{json, Value as J};
use std::fs;

/// The `model` kind.
pub struct Model;

impl Kind for Model {
    type Params = Params;

    fn schema(&self) -> KindSchema {
        ::kinds::model::schema()
    }

    fn run(&self, ctx: &StageCtx, p: Params) -> Result<J, StageError> {
        match (&p.path, &p.tokenizer) {
            (Some(path), _) => path_mode(ctx, &path.0),
            (None, Some(tokenizer)) => init_mode(ctx, &p, tokenizer),
            (None, None) => Err(StageError::user(
                "a model needs `path` or `tokenizer`",
                None,
            )),
        }
    }
}

/// `path`: validate the directory (config, weights, architecture, tokenizer) and publish it
/// hard-linked.
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

/// The new model's shape: `kv-heads` defaults to `heads`, `head-dim` to `hidden-size / heads`;
/// `kv-heads` must divide `heads` and the head size be positive. The vocabulary and special
/// token ids are the tokenizer's.
fn init_spec(p: &Params, tdir: &TokenizerDir) -> Result<InitSpec, StageError> {
    let (hidden, heads) = (p.hidden_size, p.heads);
    let kv_heads = p.kv_heads.unwrap_or(heads);
    let head_dim = p.head_dim.unwrap_or(hidden / heads);
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
    Ok(InitSpec {
        arch: p.arch.name().to_string(),
        vocab_size: tdir.vocab_size(),
        hidden_size: hidden,
        layers: p.layers,
        heads,
        kv_heads,
        head_dim,
        intermediate_size: p.intermediate_size,
        max_position: p.max_position,
        rope_theta: p.rope_theta,
        rms_norm_eps: p.rms_norm_eps,
        tie_embeddings: p.tie_embeddings,
        init_std: p.init_std,
        seed: p.seed,
        dtype: p.dtype.name().to_string(),
        bos_token_id: tdir.bos_id().or(eos),
        eos_token_id: eos,
        pad_token_id: tdir.pad_id(),
    })
}

/// init: a new model from the tokenizer and the size parameters: config.json,
/// generation_config.json, the tokenizer files and the initialised weights.
fn init_mode(ctx: &StageCtx, p: &Params, tokenizer: &::kinds::Input) -> Result<J, StageError> {
    let input = ctx.input(&tokenizer.param)?;
    let tdir = TokenizerDir::load(&input.dir, &format!("tokenizer {}", input.node))?;
    let spec = init_spec(p, &tdir)?;
    let out = &ctx.out_dir;
    crate::json::write_json(&out.join(hf::CONFIG_FILE), &spec.config_json())?;
    crate::json::write_json(
        &out.join("generation_config.json"),
        &spec.generation_config_json(),
    )?;
    copy_tokenizer(&input.dir, out, spec.max_position)?;
    let params = write_weights(ctx, &spec)?;
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

/// Writes the initialised weights with progress and cancellation; returns the parameter count.
fn write_weights(ctx: &StageCtx, spec: &InitSpec) -> Result<usize, StageError> {
    crate::llama_init::write_weights(spec, &ctx.out_dir, |i, n| {
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
    })
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
            crate::json::write_json(&dst.join(name), &cfg)?;
        } else {
            fs::copy(&s, dst.join(name)).with_context(|| format!("copying {}", s.display()))?;
        }
    }
    Ok(())
}
