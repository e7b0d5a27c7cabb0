//! Loading a `model=` input that may be an adapter.
//!
//! A full model directory loads as it is. An adapter directory (it has `adapter_config.json`)
//! names its base and the adapters below it in `temper_adapter.json`; they live next to it in
//! the store (`artifacts/<key>`). The base is loaded, then each adapter of the stack and the
//! adapter itself are folded into the weights in order: `W ← W + s · (B A)`, computed in f32
//! and cast to the model's dtype (PEFT's `merge_and_unload`). The result is an ordinary model,
//! so every kind that reads a model (eval, ref-logps, training on top, merge, export
//! `--merged`) sees base + adapter.

use super::attach::linears;
use super::peft::{self, Lineage, NodeRef};
use crate::arch::{HfModel, LoadOptions};
use crate::stage::StageError;
use anyhow::Context;
use std::path::{Path, PathBuf};
use tch::Kind;

/// Whether `dir` holds an adapter rather than a full model.
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(peft::CONFIG_FILE).is_file()
}

/// The directory of artifact `r`, a sibling of `dir` in the store, or a user error saying that
/// it is gone.
fn sibling(dir: &Path, r: &NodeRef, what: &str, shown: &str) -> Result<PathBuf, StageError> {
    let d = dir.parent().map(|p| p.join(&r.key)).unwrap_or_default();
    if d.is_dir() {
        return Ok(d);
    }
    Err(StageError::user(
        format!(
            "{shown}: its {what} `{}` (key {}) is no longer in the store at {}",
            r.node,
            r.key.get(..12).unwrap_or(&r.key),
            d.display()
        ),
        Some("rerun the recipe that built it (`temper run`), then this node".into()),
    ))
}

/// Folds the adapter stored in `dir` into `model`'s weights.
pub fn fold(model: &mut HfModel, dir: &Path, shown: &str) -> Result<(), StageError> {
    let stored = peft::read(dir, shown)?;
    let _guard = tch::no_grad_guard();
    let mut lin = linears(&mut model.model);
    for (m, (a, b)) in &stored.modules {
        let Some((_, l)) = lin.iter_mut().find(|(n, _)| n == m) else {
            return Err(StageError::user(
                format!("{shown}: the adapter changes `{m}`, which its base model does not have"),
                Some("the adapter was trained on another model".into()),
            ));
        };
        let w = &mut l.weight;
        let (ws, sa, sb) = (w.size(), a.size(), b.size());
        if ws != [sb[0], sa[1]] {
            return Err(StageError::user(
                format!(
                    "{shown}: `{m}` is {ws:?} in the base, the adapter's B·A is [{}, {}]",
                    sb[0], sa[1]
                ),
                Some("the adapter was trained on another model".into()),
            ));
        }
        let delta = b
            .f_to_kind(Kind::Float)?
            .f_matmul(&a.f_to_kind(Kind::Float)?)?
            .f_mul_scalar(stored.scaling)?
            .f_to_device(w.device())?
            .f_to_kind(w.kind())?;
        let _ = w
            .f_add_(&delta)
            .with_context(|| format!("{shown}: folding `{m}`"))?;
    }
    Ok(())
}

/// Loads artifact `dir` of node `node` (key `key`): a full model, or an adapter with its base
/// and stack folded in. Returns the model and its [`Lineage`] — what an adapter trained on top
/// of it sits on.
pub fn load_model_dir(
    dir: &Path,
    node: &str,
    key: &str,
    opts: &LoadOptions,
) -> Result<(HfModel, Lineage), StageError> {
    let shown = format!("model {node}");
    let me = NodeRef {
        node: node.to_string(),
        key: key.to_string(),
    };
    if !is_adapter_dir(dir) {
        let m = HfModel::load(dir, &shown, opts)?;
        return Ok((
            m,
            Lineage {
                base: me,
                stack: vec![],
            },
        ));
    }
    let shown = format!("adapter {node}");
    let lineage = peft::read_lineage(dir, &shown)?;
    let base_dir = sibling(dir, &lineage.base, "base model", &shown)?;
    let mut m = HfModel::load(
        &base_dir,
        &format!("model {} (the base of {shown})", lineage.base.node),
        opts,
    )?;
    for r in &lineage.stack {
        let d = sibling(dir, r, "lower adapter", &shown)?;
        fold(&mut m, &d, &format!("adapter {}", r.node))?;
    }
    fold(&mut m, dir, &shown)?;
    let mut stack = lineage.stack;
    stack.push(me);
    Ok((
        m,
        Lineage {
            base: lineage.base,
            stack,
        },
    ))
}

/// The directory of the full base model under `dir`'s lineage (the model itself for a full
/// model input).
pub fn base_dir(dir: &Path, lineage: &Lineage) -> PathBuf {
    if lineage.stack.is_empty() {
        dir.to_path_buf()
    } else {
        dir.parent()
            .map(|p| p.join(&lineage.base.key))
            .unwrap_or_default()
    }
}

/// Writes the full model of adapter artifact `dir` (node `node`, key `key`) into `out`: the base
/// with every adapter folded in, saved in the base's stored dtype, with the adapter's tokenizer
/// files. Returns the adapter's lineage (what it sits on). `out` is created (it should be
/// empty or absent).
pub fn fold_to_dir(dir: &Path, node: &str, key: &str, out: &Path) -> Result<Lineage, StageError> {
    let shown = format!("adapter {node}");
    let lineage = peft::read_lineage(dir, &shown)?;
    let base = sibling(dir, &lineage.base, "base model", &shown)?;
    let stored = crate::hf::read_weights(&base, &format!("model {}", lineage.base.node))?
        .main_dtype()
        .and_then(|d| crate::arch::io::safetensors_kind(&d));
    let opts = LoadOptions {
        device: tch::Device::Cpu,
        dtype: Some(Kind::Float),
    };
    let (m, lineage) = load_model_dir(dir, node, key, &opts)?;
    m.save(
        out,
        &crate::arch::SaveOptions {
            dtype: stored,
            copy_from: Some(dir.to_path_buf()),
            ..Default::default()
        },
    )
    .with_context(|| format!("{shown}: writing the merged model to {}", out.display()))?;
    crate::trainer::output::sync_chat_template(out)?;
    Ok(lineage)
}
