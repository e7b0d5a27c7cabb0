//! The output of a training kind ([`write_output`]): the model in Hugging Face layout
//! (config.json, safetensors, generation_config.json, tokenizer files, the chat template both in
//! `chat_template.jinja` and in `tokenizer_config.json`), `metrics.jsonl` and
//! `train_summary.json`. The weights are written in the summary's `save_dtype`
//! ([`super::params::save_kind`]). A LoRA run writes the adapter in PEFT's layout instead of the weights
//! ([`crate::lora::peft`]), with the same tokenizer files, metrics and summary: the base model
//! stays where it is in the store.

use super::TrainSummary;
use crate::arch::io::copy_tokenizer_files;
use crate::arch::SaveOptions;
use crate::prologue::Model;
use crate::stage::{StageCtx, StageError};
use anyhow::Context;
use serde_json::Value as J;
use std::fs;
use std::path::Path;

/// Writes the trained model (or adapter), the metrics and the summary into `ctx.out_dir`.
pub fn write_output(
    ctx: &StageCtx,
    trained: &Model,
    tok_dir: &Path,
    summary: &TrainSummary,
    extra: J,
) -> Result<J, StageError> {
    let out = &ctx.out_dir;
    let model = &trained.hf;
    match &model.adapter {
        Some(a) => {
            let base = crate::lora::load::base_dir(&trained.dir, &trained.lineage);
            crate::lora::peft::write(out, a, &trained.lineage, &base)
                .and_then(|_| copy_tokenizer_files(tok_dir, out))
                .map(|_| ())
                .with_context(|| format!("node {}: saving the adapter", ctx.node))?;
        }
        None => {
            model
                .save(
                    out,
                    &SaveOptions {
                        copy_from: Some(tok_dir.to_path_buf()),
                        dtype: super::params::kind_named(&summary.numerics.save_dtype),
                        ..Default::default()
                    },
                )
                .with_context(|| format!("node {}: saving the model", ctx.node))?;
        }
    }
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
    if let (Some(o), Some(a)) = (s.as_object_mut(), &model.adapter) {
        o.insert("lora".into(), lora_summary(model, a, &trained.lineage));
    }
    crate::json::write_json(&out.join("train_summary.json"), &s)?;
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
            crate::json::write_json(&cfg_path, &cfg)?;
        }
    }
    Ok(())
}

/// The `lora` entry of a LoRA run's summary: the adapter's shape, what it sits on, and its
/// size against the base's.
fn lora_summary(
    model: &crate::arch::HfModel,
    a: &crate::lora::Adapter,
    l: &crate::lora::Lineage,
) -> J {
    let trainable: usize = a.vs.variables().values().map(|t| t.numel()).sum();
    let base = model.num_params();
    serde_json::json!({
        "rank": a.spec.rank,
        "alpha": a.spec.alpha,
        "dropout": a.spec.dropout,
        "rslora": a.spec.rslora,
        "target_modules": a.targets,
        "modules": a.modules.len(),
        "trainable_params": trainable,
        "base_params": base,
        "trainable_percent": 100.0 * trainable as f64 / base.max(1) as f64,
        "base": l.base.node,
        "stack": l.stack.iter().map(|r| r.node.clone()).collect::<Vec<_>>(),
    })
}
