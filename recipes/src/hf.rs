//! Hugging Face model directories: `config.json` (mirrored by [`HfConfig`]), safetensors
//! weights (single `model.safetensors` or sharded with `model.safetensors.index.json`), the
//! Llama-family tensor layout, and validation with errors that name the file and the field or
//! tensor. Reading a safetensors file here reads only its header, never the weights.
//!
//! Safetensors layout: 8 bytes little-endian header length `n`, then `n` bytes of JSON
//! `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {..}}`, then the data;
//! offsets are relative to the end of the header and must lie within the file.

use crate::stage::StageError;
use serde::Deserialize;
use serde_json::Value as J;
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The fields of `config.json` temper reads (transformers' `LlamaConfig`/`Qwen2Config`/
/// `MistralConfig`); unknown fields are ignored.
#[derive(Clone, Debug, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub rms_norm_eps: Option<f64>,
    /// transformers < 5: top level; ≥ 5: inside `rope_parameters`.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<J>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
    #[serde(default)]
    pub dtype: Option<String>,
    #[serde(default)]
    pub bos_token_id: Option<J>,
    #[serde(default)]
    pub eos_token_id: Option<J>,
    #[serde(default)]
    pub pad_token_id: Option<J>,
}

/// Model types whose tensor layout [`expected_tensors`] knows.
pub const LLAMA_FAMILY: &[&str] = &["llama", "qwen2", "mistral"];

impl HfConfig {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    /// `head_dim`, else `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
    /// Rope base from `rope_parameters.rope_theta`, else `rope_theta`, else 10000.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(|t| t.as_f64())
            .or(self.rope_theta)
            .unwrap_or(10000.0)
    }
    pub fn tied(&self) -> bool {
        self.tie_word_embeddings.unwrap_or(false)
    }
    /// q/k/v projections carry a bias: always for qwen2, else `attention_bias`.
    pub fn qkv_bias(&self) -> bool {
        self.model_type == "qwen2"
            || (self.model_type == "llama" && self.attention_bias.unwrap_or(false))
    }
    /// Llama's `attention_bias` also puts a bias on `o_proj` (as transformers does).
    pub fn o_bias(&self) -> bool {
        self.model_type == "llama" && self.attention_bias.unwrap_or(false)
    }
    pub fn is_llama_family(&self) -> bool {
        LLAMA_FAMILY.contains(&self.model_type.as_str())
    }
}

/// Fields of config.json checked one by one before decoding, so an error names the field:
/// (name, required, expected JSON type).
const CONFIG_FIELDS: &[(&str, bool, &str)] = &[
    ("model_type", true, "string"),
    ("vocab_size", true, "count"),
    ("hidden_size", true, "count"),
    ("intermediate_size", true, "count"),
    ("num_hidden_layers", true, "count"),
    ("num_attention_heads", true, "count"),
    ("num_key_value_heads", false, "count"),
    ("head_dim", false, "count"),
    ("max_position_embeddings", false, "count"),
    ("rms_norm_eps", false, "number"),
    ("rope_theta", false, "number"),
    ("tie_word_embeddings", false, "bool"),
    ("attention_bias", false, "bool"),
];

/// 1-based line of the first occurrence of `"key"` in `text` (1 when absent).
fn line_of(text: &str, key: &str) -> usize {
    let pat = format!("\"{key}\"");
    text.find(&pat)
        .map_or(1, |i| text[..i].matches('\n').count() + 1)
}

/// Reads and parses `dir/config.json`; `shown` is the directory as the user wrote it. Errors
/// name the file, the line and the field (`models/x/config.json:6: field "hidden_size":
/// expected a positive integer, found a string`).
pub fn read_config(dir: &Path, shown: &str) -> Result<HfConfig, StageError> {
    let p = dir.join(CONFIG_FILE);
    let file = format!("{}/{CONFIG_FILE}", shown.trim_end_matches('/'));
    if !p.is_file() {
        return Err(StageError::user(
            format!("{file}: not found"),
            Some("a Hugging Face model directory holds config.json and model.safetensors".into()),
        ));
    }
    let text = fs::read_to_string(&p)
        .map_err(|e| StageError::user(format!("{file}: cannot read: {e}"), None))?;
    let value: J = serde_json::from_str(&text).map_err(|e| {
        StageError::user(
            format!("{file}:{}: invalid JSON: {}", e.line(), strip_location(&e)),
            None,
        )
    })?;
    let Some(obj) = value.as_object() else {
        return Err(StageError::user(
            format!("{file}: expected a JSON object"),
            None,
        ));
    };
    // An architecture temper does not run is named as such before its fields are checked (a
    // GPT-2 config has no `hidden_size`, and "missing field" would hide the real problem).
    if let Some(t) = obj.get("model_type").and_then(J::as_str) {
        let known: Vec<&str> = crate::arch::config::SUPPORTED
            .iter()
            .map(|(_, t)| *t)
            .collect();
        if !known.contains(&t) {
            return Err(StageError::user(
                format!("{file}: model_type \"{t}\" is not an architecture temper runs"),
                Some(format!(
                    "temper trains, scores and adapts (LoRA) Llama-family models: model_type {}",
                    known.join(", ")
                )),
            ));
        }
    }
    for (name, required, ty) in CONFIG_FIELDS {
        let found = match obj.get(*name) {
            None | Some(J::Null) if !required => continue,
            None | Some(J::Null) => {
                return Err(StageError::user(
                    format!("{file}: field \"{name}\": missing"),
                    Some("config.json must be the transformers config of the model".into()),
                ))
            }
            Some(v) => v,
        };
        let ok = match *ty {
            "string" => found.is_string(),
            "count" => found
                .as_u64()
                .is_some_and(|n| n > 0 || name.contains("head")),
            "number" => found.is_number(),
            _ => found.is_boolean(),
        };
        if !ok {
            let want = match *ty {
                "string" => "a string",
                "count" => "a positive integer",
                "number" => "a number",
                _ => "a boolean",
            };
            return Err(StageError::user(
                format!(
                    "{file}:{}: field \"{name}\": expected {want}, found {}",
                    line_of(&text, name),
                    crate::data::validate::json_type(found)
                ),
                None,
            ));
        }
    }
    let cfg: HfConfig = serde_json::from_value(value)
        .map_err(|e| StageError::user(format!("{file}: {}", strip_location(&e)), None))?;
    if cfg.num_attention_heads == 0 {
        return Err(StageError::user(
            format!("{file}: field \"num_attention_heads\": must be positive"),
            None,
        ));
    }
    Ok(cfg)
}

fn strip_location(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].replace('`', "\""),
        None => s.replace('`', "\""),
    }
}

/// One tensor's entry in a safetensors header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Safetensors dtype name (`F32`, `BF16`, `F16`, …).
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range relative to the start of the data section.
    pub offsets: (u64, u64),
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A safetensors header.
#[derive(Clone, Debug, Default)]
pub struct SafetensorsHeader {
    pub tensors: BTreeMap<String, TensorInfo>,
    pub metadata: BTreeMap<String, String>,
}

/// Bytes per element of a safetensors dtype, if known.
pub fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "F8_E4M3" | "F8_E5M2" | "I8" | "U8" | "BOOL" => 1,
        _ => return None,
    })
}

/// Reads the header of a safetensors file and checks every tensor's range lies in the file.
/// `shown` names the file in errors.
pub fn read_safetensors_header(path: &Path, shown: &str) -> Result<SafetensorsHeader, StageError> {
    let bad = |m: String| StageError::user(format!("{shown}: {m}"), None);
    let mut f = fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let size = f
        .metadata()
        .map_err(|e| bad(format!("cannot stat: {e}")))?
        .len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| bad("not a safetensors file (shorter than 8 bytes)".into()))?;
    let n = u64::from_le_bytes(len);
    if n > size.saturating_sub(8) || n > 100 << 20 {
        return Err(bad(format!(
            "not a safetensors file (header length {n} exceeds the file size {size})"
        )));
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf)
        .map_err(|e| bad(format!("cannot read the header: {e}")))?;
    let header: BTreeMap<String, J> = serde_json::from_slice(&buf)
        .map_err(|e| bad(format!("unreadable safetensors header: {e}")))?;
    let data_len = size - 8 - n;
    let mut out = SafetensorsHeader::default();
    for (name, v) in header {
        if name == "__metadata__" {
            if let Some(m) = v.as_object() {
                for (k, v) in m {
                    out.metadata
                        .insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                }
            }
            continue;
        }
        let dtype = v.get("dtype").and_then(|d| d.as_str());
        let shape: Option<Vec<usize>> = v.get("shape").and_then(|s| {
            s.as_array()?
                .iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect()
        });
        let offs: Option<Vec<u64>> = v
            .get("data_offsets")
            .and_then(|o| o.as_array()?.iter().map(|x| x.as_u64()).collect());
        let (Some(dtype), Some(shape), Some(offs)) = (dtype, shape, offs) else {
            return Err(bad(format!(
                "tensor \"{name}\": header entry lacks dtype, shape or data_offsets"
            )));
        };
        if offs.len() != 2 || offs[0] > offs[1] || offs[1] > data_len {
            return Err(bad(format!(
                "tensor \"{name}\": data_offsets {offs:?} outside the data ({data_len} bytes); the file is truncated or corrupt"
            )));
        }
        let info = TensorInfo {
            dtype: dtype.to_string(),
            shape,
            offsets: (offs[0], offs[1]),
        };
        if let Some(sz) = dtype_size(dtype) {
            if info.numel() as u64 * sz != offs[1] - offs[0] {
                return Err(bad(format!(
                    "tensor \"{name}\": {} bytes for shape {:?} of {dtype}",
                    offs[1] - offs[0],
                    info.shape
                )));
            }
        }
        out.tensors.insert(name, info);
    }
    Ok(out)
}

/// The weights of a model directory: every tensor with the file holding it.
#[derive(Clone, Debug, Default)]
pub struct Weights {
    /// Weight files, relative to the model directory, sorted.
    pub files: Vec<String>,
    /// Tensor name → (file, info).
    pub tensors: BTreeMap<String, (String, TensorInfo)>,
}

impl Weights {
    pub fn param_count(&self) -> usize {
        self.tensors.values().map(|(_, t)| t.numel()).sum()
    }
    /// The most common dtype among the tensors (by element count).
    pub fn main_dtype(&self) -> Option<String> {
        let mut by: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, t) in self.tensors.values() {
            *by.entry(t.dtype.as_str()).or_default() += t.numel();
        }
        by.into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(d, _)| d.to_string())
    }
}

/// Finds and checks the weights of `dir`: `model.safetensors`, or `model.safetensors.index.json`
/// whose every shard exists and holds every tensor the index assigns to it.
pub fn read_weights(dir: &Path, shown: &str) -> Result<Weights, StageError> {
    let shown = shown.trim_end_matches('/');
    let index = dir.join(INDEX_FILE);
    let single = dir.join(WEIGHTS_FILE);
    let mut w = Weights::default();
    if index.is_file() {
        let ishown = format!("{shown}/{INDEX_FILE}");
        let text = fs::read_to_string(&index)
            .map_err(|e| StageError::user(format!("{ishown}: cannot read: {e}"), None))?;
        let idx: J = serde_json::from_str(&text).map_err(|e| {
            StageError::user(
                format!("{ishown}:{}: {}", e.line(), strip_location(&e)),
                None,
            )
        })?;
        let map = idx
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                StageError::user(
                    format!("{ishown}: no \"weight_map\" object"),
                    Some("the index maps each tensor name to its shard file".into()),
                )
            })?;
        let mut by_shard: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for (t, s) in map {
            let s = s.as_str().ok_or_else(|| {
                StageError::user(
                    format!("{ishown}: weight_map[\"{t}\"] is not a file name"),
                    None,
                )
            })?;
            by_shard.entry(s.to_string()).or_default().push(t);
        }
        for (shard, names) in by_shard {
            let p = dir.join(&shard);
            let sshown = format!("{shown}/{shard}");
            if shard.contains("..") || !p.is_file() {
                return Err(StageError::user(
                    format!(
                        "{ishown}: shard \"{shard}\" (holding {} tensors, e.g. \"{}\") does not exist",
                        names.len(),
                        names[0]
                    ),
                    Some("the download is incomplete: every shard named in the index must be in the directory".into()),
                ));
            }
            let h = read_safetensors_header(&p, &sshown)?;
            for n in names {
                let info = h.tensors.get(n).ok_or_else(|| {
                    StageError::user(
                        format!(
                            "{sshown}: tensor \"{n}\" named by {INDEX_FILE} is not in the shard"
                        ),
                        Some("the index and the shards do not belong together".into()),
                    )
                })?;
                w.tensors
                    .insert(n.to_string(), (shard.clone(), info.clone()));
            }
            w.files.push(shard);
        }
    } else if single.is_file() {
        let h = read_safetensors_header(&single, &format!("{shown}/{WEIGHTS_FILE}"))?;
        for (n, t) in h.tensors {
            w.tensors.insert(n, (WEIGHTS_FILE.to_string(), t));
        }
        w.files.push(WEIGHTS_FILE.to_string());
    } else {
        let has_bin = dir.join("pytorch_model.bin").exists()
            || dir.join("pytorch_model.bin.index.json").exists();
        return Err(StageError::user(
            format!("{shown}: no {WEIGHTS_FILE} or {INDEX_FILE}"),
            Some(if has_bin {
                "pytorch_model.bin checkpoints are not read (pickle); convert them to safetensors"
                    .into()
            } else {
                "a Hugging Face model directory holds its weights as safetensors".into()
            }),
        ));
    }
    Ok(w)
}

/// Llama-family tensor names and shapes (`[out, in]` for linear weights), in a fixed order.
pub fn expected_tensors(cfg: &HfConfig) -> Vec<(String, Vec<usize>)> {
    let (h, v, i) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
    let (q, kv) = (
        cfg.num_attention_heads * cfg.head_dim(),
        cfg.kv_heads() * cfg.head_dim(),
    );
    let mut t = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        t.push((format!("{p}.input_layernorm.weight"), vec![h]));
        t.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
        t.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
        t.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
        if cfg.qkv_bias() {
            t.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
            t.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
            t.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
        }
        t.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
        if cfg.o_bias() {
            t.push((format!("{p}.self_attn.o_proj.bias"), vec![h]));
        }
        t.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        t.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
        t.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
        t.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
    }
    t.push(("model.norm.weight".to_string(), vec![h]));
    if !cfg.tied() {
        t.push(("lm_head.weight".to_string(), vec![v, h]));
    }
    t
}

/// Checks that the weights hold every Llama-family tensor `cfg` implies, with its shape.
pub fn check_llama_tensors(cfg: &HfConfig, w: &Weights, shown: &str) -> Result<(), StageError> {
    for (name, shape) in expected_tensors(cfg) {
        match w.tensors.get(&name) {
            None => {
                return Err(StageError::user(
                    format!("{shown}: tensor \"{name}\" is missing from the weights"),
                    Some("config.json and the safetensors files do not describe the same model".into()),
                ))
            }
            Some((file, t)) if t.shape != shape => {
                return Err(StageError::user(
                    format!(
                        "{shown}/{file}: tensor \"{name}\" has shape {:?}, config.json implies {shape:?}",
                        t.shape
                    ),
                    None,
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Hard-links every file of `src` (recursively, skipping hidden entries such as `.git`) into
/// `dst`, falling back to a copy when linking fails (another file system, no permission).
///
/// Why links: a model directory can be many gigabytes; a hard link publishes it into the store
/// without doubling the disk use or the time. The artifact shares the inode with the user's file,
/// so editing that file in place changes the artifact too — `temper verify` reports it, and the
/// key (content hash) changes on the next plan. Returns the relative paths written, sorted.
pub fn link_or_copy_dir(src: &Path, dst: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(src)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'))
    {
        let e = e?;
        let rel = e.path().strip_prefix(src)?.to_path_buf();
        let target = dst.join(&rel);
        if e.file_type().is_dir() {
            fs::create_dir_all(&target)?;
        } else if e.path().is_file() {
            if fs::hard_link(e.path(), &target).is_err() {
                fs::copy(e.path(), &target)?;
            }
            out.push(rel);
        }
    }
    Ok(out)
}

/// Summary of a validated model directory.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub config: HfConfig,
    pub weights: Weights,
}

/// Validates an HF model directory: config.json parses, weights are present and readable, and
/// for the Llama family every expected tensor is there with its shape.
pub fn validate_model_dir(dir: &Path, shown: &str) -> Result<ModelInfo, StageError> {
    if !dir.is_dir() {
        return Err(StageError::user(
            format!("{shown}: not a directory"),
            Some(if dir.is_file() {
                "`path` names the model directory, not a file inside it".into()
            } else {
                "paths are relative to the recipe's directory".into()
            }),
        ));
    }
    let config = read_config(dir, shown)?;
    let weights = read_weights(dir, shown)?;
    if config.is_llama_family() {
        check_llama_tensors(&config, &weights, shown.trim_end_matches('/'))?;
    }
    Ok(ModelInfo { config, weights })
}
