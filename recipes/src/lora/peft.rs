//! The adapter artifact, in the layout PEFT's `PeftModel.from_pretrained` reads:
//!
//! - `adapter_model.safetensors` (metadata `{"format": "pt"}`): for each adapted module `M`,
//!   `base_model.model.M.lora_A.weight` `[r, in]` and `base_model.model.M.lora_B.weight`
//!   `[out, r]` — PEFT's names with the adapter name (`default`) left out, as PEFT saves them;
//! - `adapter_config.json`: `peft_type` LORA, `task_type` CAUSAL_LM, `r`, `lora_alpha`,
//!   `lora_dropout`, `use_rslora`, `bias` none, `fan_in_fan_out` false, and an explicit
//!   `target_modules` list (a null list would make PEFT pick modules by architecture);
//!   `base_model_name_or_path` is the base artifact's directory in the store;
//! - `temper_adapter.json` ([`Lineage`]): the node and key of the base model and of every
//!   adapter folded into it below this one (stacking), which is how temper finds the base.

use super::Adapter;
use crate::stage::StageError;
use anyhow::Context;
use safetensors::tensor::TensorView;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as J};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Device, Tensor};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
pub const LINEAGE_FILE: &str = "temper_adapter.json";
/// What PEFT puts before a module's full name (the adapter name `default` is dropped on save).
pub const PREFIX: &str = "base_model.model.";

/// A node's artifact: its instance id and key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRef {
    pub node: String,
    pub key: String,
}

/// What an adapter sits on: the full base model, and the adapters folded into it first (lowest
/// first). For a full model input: the model itself and no stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    pub base: NodeRef,
    #[serde(default)]
    pub stack: Vec<NodeRef>,
}

/// A stored adapter read back: scaling and, per module, `(A, B)` on the CPU.
pub struct Stored {
    pub scaling: f64,
    pub rank: usize,
    pub modules: BTreeMap<String, (Tensor, Tensor)>,
    pub lineage: Lineage,
}

fn num(x: f64) -> J {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        J::from(x as i64)
    } else {
        J::from(x)
    }
}

/// Writes the adapter files of `adapter` into `dir`; `base_dir` is the base model's directory
/// (recorded as `base_model_name_or_path`). Returns the files written.
pub fn write(
    dir: &Path,
    adapter: &Adapter,
    lineage: &Lineage,
    base_dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let _guard = tch::no_grad_guard();
    let vars: BTreeMap<String, Tensor> = adapter.vs.variables().into_iter().collect();
    let mut raw = Vec::new();
    for (name, t) in vars {
        let t = t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?;
        let kind = t.f_kind()?;
        let (dtype, _) = crate::arch::io::dtype_names(kind)
            .with_context(|| format!("cannot save {name} as {kind:?}"))?;
        let numel = t.numel();
        let mut buf = vec![0u8; numel * kind.elt_size_in_bytes()];
        t.f_copy_data_u8(&mut buf, numel)?;
        let shape: Vec<usize> = t.size().iter().map(|d| *d as usize).collect();
        raw.push((format!("{PREFIX}{name}"), dtype, shape, buf));
    }
    let views = raw
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let path = dir.join(WEIGHTS_FILE);
    safetensors::serialize_to_file(views, Some(meta), &path)
        .with_context(|| format!("writing {}", path.display()))?;
    let s = &adapter.spec;
    let config = json!({
        "alpha_pattern": {},
        "base_model_name_or_path": base_dir.display().to_string(),
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": num(s.alpha),
        "lora_dropout": s.dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": s.rank,
        "rank_pattern": {},
        "revision": null,
        "target_modules": adapter.targets,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": s.rslora,
    });
    crate::json::write_json(&dir.join(CONFIG_FILE), &config)?;
    let lin = json!({
        "format": 1,
        "base": lineage.base,
        "stack": lineage.stack,
        "modules": adapter.modules.len(),
    });
    crate::json::write_json(&dir.join(LINEAGE_FILE), &lin)?;
    Ok(vec![
        CONFIG_FILE.into(),
        WEIGHTS_FILE.into(),
        LINEAGE_FILE.into(),
    ])
}

fn bad(shown: &str, file: &str, msg: impl std::fmt::Display) -> StageError {
    StageError::user(
        format!("{shown}/{file}: {msg}"),
        Some("the adapter directory is not one temper wrote (or it was changed)".into()),
    )
}

fn read_json(dir: &Path, file: &str, shown: &str) -> Result<J, StageError> {
    let text = std::fs::read_to_string(dir.join(file))
        .map_err(|e| bad(shown, file, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| bad(shown, file, e))
}

/// The lineage of the adapter in `dir`.
pub fn read_lineage(dir: &Path, shown: &str) -> Result<Lineage, StageError> {
    let v = read_json(dir, LINEAGE_FILE, shown)?;
    serde_json::from_value(v).map_err(|e| bad(shown, LINEAGE_FILE, e))
}

/// Reads the adapter in `dir` (named `shown`): config, tensors (checked pairwise), lineage.
pub fn read(dir: &Path, shown: &str) -> Result<Stored, StageError> {
    let cfg = read_json(dir, CONFIG_FILE, shown)?;
    let get = |k: &str| cfg.get(k).cloned().unwrap_or(J::Null);
    if get("peft_type").as_str() != Some("LORA") {
        return Err(bad(shown, CONFIG_FILE, "peft_type is not LORA"));
    }
    for (k, ok) in [
        (
            "fan_in_fan_out",
            !get("fan_in_fan_out").as_bool().unwrap_or(false),
        ),
        ("use_dora", !get("use_dora").as_bool().unwrap_or(false)),
        ("bias", get("bias").as_str().unwrap_or("none") == "none"),
    ] {
        if !ok {
            return Err(bad(shown, CONFIG_FILE, format!("`{k}` is not supported")));
        }
    }
    let rank = get("r")
        .as_u64()
        .filter(|r| *r > 0)
        .ok_or_else(|| bad(shown, CONFIG_FILE, "`r` must be a positive integer"))?
        as usize;
    let alpha = get("lora_alpha")
        .as_f64()
        .ok_or_else(|| bad(shown, CONFIG_FILE, "`lora_alpha` must be a number"))?;
    let scaling = if get("use_rslora").as_bool().unwrap_or(false) {
        alpha / (rank as f64).sqrt()
    } else {
        alpha / rank as f64
    };
    let path = dir.join(WEIGHTS_FILE);
    let tensors = Tensor::read_safetensors(&path).map_err(|e| bad(shown, WEIGHTS_FILE, e))?;
    let mut a: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut b: BTreeMap<String, Tensor> = BTreeMap::new();
    for (name, t) in tensors {
        let rest = name.strip_prefix(PREFIX);
        match rest.and_then(|r| r.strip_suffix(".lora_A.weight")) {
            Some(m) => a.insert(m.to_string(), t),
            None => match rest.and_then(|r| r.strip_suffix(".lora_B.weight")) {
                Some(m) => b.insert(m.to_string(), t),
                None => {
                    return Err(bad(
                        shown,
                        WEIGHTS_FILE,
                        format!("tensor `{name}` is not a LoRA A or B weight"),
                    ))
                }
            },
        };
    }
    let mut modules = BTreeMap::new();
    for (m, ta) in a {
        let tb = b.remove(&m).ok_or_else(|| {
            bad(
                shown,
                WEIGHTS_FILE,
                format!("`{m}` has lora_A but no lora_B"),
            )
        })?;
        let (sa, sb) = (ta.size(), tb.size());
        if sa.len() != 2 || sb.len() != 2 || sa[0] != rank as i64 || sb[1] != rank as i64 {
            return Err(bad(
                shown,
                WEIGHTS_FILE,
                format!("`{m}`: lora_A {sa:?} and lora_B {sb:?} do not have rank r = {rank}"),
            ));
        }
        modules.insert(m, (ta, tb));
    }
    if let Some(m) = b.keys().next() {
        return Err(bad(
            shown,
            WEIGHTS_FILE,
            format!("`{m}` has lora_B but no lora_A"),
        ));
    }
    Ok(Stored {
        scaling,
        rank,
        modules,
        lineage: read_lineage(dir, shown)?,
    })
}
