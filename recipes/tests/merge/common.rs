//! Helpers: tiny Llama-family HF directories written by hand, and running the `merge` kind.

use dsl::Value;
use recipes::{CancelToken, InputArtifact, NoProgress, Stage, StageCtx, StageError};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Shape options of a tiny model.
#[derive(Clone)]
pub struct Tiny {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub seed: u64,
    pub dtype: Dtype,
    /// Tensor to leave out.
    pub drop: Option<&'static str>,
    pub tokenizer: &'static str,
}

impl Default for Tiny {
    fn default() -> Self {
        Tiny {
            vocab: 16,
            hidden: 8,
            layers: 2,
            seed: 1,
            dtype: Dtype::F32,
            drop: None,
            tokenizer: "{\"version\":\"1.0\"}",
        }
    }
}

/// Deterministic pseudo-random values in (-1, 1).
pub fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Writes a tiny Llama model directory (config.json, model.safetensors, tokenizer.json).
pub fn tiny_model(dir: &Path, t: &Tiny) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": t.vocab,
        "hidden_size": t.hidden, "intermediate_size": 2 * t.hidden, "num_hidden_layers": t.layers,
        "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": false, "torch_dtype": "float32",
        "bos_token_id": 0, "eos_token_id": 1
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), t.tokenizer).unwrap();
    let h = t.hidden;
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![t.vocab, h]),
        ("model.norm.weight".into(), vec![h]),
        ("lm_head.weight".into(), vec![t.vocab, h]),
    ];
    for l in 0..t.layers {
        for (n, s) in [
            ("input_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![h, h]),
            ("self_attn.k_proj.weight", vec![h, h]),
            ("self_attn.v_proj.weight", vec![h, h]),
            ("self_attn.o_proj.weight", vec![h, h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("mlp.gate_proj.weight", vec![2 * h, h]),
            ("mlp.up_proj.weight", vec![2 * h, h]),
            ("mlp.down_proj.weight", vec![h, 2 * h]),
        ] {
            shapes.push((format!("model.layers.{l}.{n}"), s));
        }
    }
    let mut bufs = Vec::new();
    for (i, (name, shape)) in shapes.iter().enumerate() {
        if t.drop == Some(name.as_str()) {
            continue;
        }
        let n: usize = shape.iter().product();
        let v = values(t.seed * 1000 + i as u64, n);
        let bytes: Vec<u8> = match t.dtype {
            Dtype::BF16 => v
                .iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect(),
            _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        bufs.push((name.clone(), shape.clone(), bytes));
    }
    let views: Vec<(String, TensorView)> = bufs
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(t.dtype, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    dir.to_path_buf()
}

/// Every tensor of a model directory (any sharding), as f64, plus its dtype.
pub fn read_all(dir: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<f64>)> {
    let w = recipes::hf::read_weights(dir, "out").unwrap();
    let mut out = BTreeMap::new();
    for (name, (file, info)) in &w.tensors {
        let m = recipes::merge::shards::MappedFile::open(&dir.join(file), file).unwrap();
        let v: Vec<f64> = m.read(name, info).unwrap();
        out.insert(name.clone(), (info.dtype.clone(), info.shape.clone(), v));
    }
    out
}

/// Raw bytes of a tensor (for bit-identity checks).
pub fn raw(dir: &Path, name: &str) -> Vec<u8> {
    let w = recipes::hf::read_weights(dir, "m").unwrap();
    let (file, info) = &w.tensors[name];
    let bytes = std::fs::read(dir.join(file)).unwrap();
    let start = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[start + info.offsets.0 as usize..start + info.offsets.1 as usize].to_vec()
}

pub use crate::common::{r, s};

pub fn list(xs: &[f64]) -> Value {
    Value::List(xs.iter().map(|x| Value::Float(*x)).collect())
}
/// `model NAME weight=… density=…`.
pub fn model(name: &str, weight: Option<f64>, density: Option<f64>) -> Value {
    let mut m = BTreeMap::new();
    m.insert("model".into(), r(name));
    m.insert("weight".into(), weight.map_or(Value::Null, Value::Float));
    m.insert("density".into(), density.map_or(Value::Null, Value::Float));
    Value::Record(m)
}

/// Runs the `merge` kind with `params` (others defaulted) and `inputs` (node name → dir; the
/// parameter paths `model[i].model`, `base`, `tokenizer-from` are derived from `params`).
pub fn run_merge(
    params: &[(&str, Value)],
    dirs: &[(&str, &Path)],
) -> (Result<serde_json::Value, StageError>, tempfile::TempDir) {
    let stage = recipes::kinds::merge::Merge;
    let schema = stage.schema();
    let mut full = BTreeMap::new();
    for p in &schema.params {
        let v = match &p.default {
            dsl::Default::Value(v) => v.clone(),
            _ if p.repeated => Value::List(vec![]),
            _ => Value::Null,
        };
        full.insert(p.name.to_string(), v);
    }
    for (k, v) in params {
        assert!(schema.find_param(k).is_some(), "unknown parameter {k}");
        full.insert(k.to_string(), v.clone());
    }
    let dir_of = |n: &str| {
        dirs.iter()
            .find(|(k, _)| *k == n)
            .map(|(_, d)| d.to_path_buf())
            .unwrap_or_else(|| panic!("no dir for {n}"))
    };
    let art = |n: &str| InputArtifact {
        node: n.to_string(),
        kind: "model".into(),
        produces: "model".into(),
        key: "1".repeat(64),
        dir: dir_of(n),
    };
    let mut inputs = BTreeMap::new();
    if let Some(l) = full.get("model").and_then(Value::as_list) {
        for (i, m) in l.iter().enumerate() {
            let n = m.as_record().unwrap()["model"]
                .as_str()
                .unwrap()
                .to_string();
            inputs.insert(format!("model[{i}].model"), art(&n));
        }
    }
    for k in ["base", "tokenizer-from"] {
        if let Some(Value::Ref(n)) = full.get(k) {
            inputs.insert(k.to_string(), art(n));
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let ctx = StageCtx::new(
        recipes::Job {
            node: "m".into(),
            kind: "merge".into(),
            key: "0".repeat(64),
            params: full,
            root_dir: tmp.path().to_path_buf(),
            inputs,
            out_dir,
            work_dir: tmp.path().join("work"),
            device: "cpu".into(),
            ..Default::default()
        },
        Arc::new(NoProgress),
        CancelToken::new(),
    );
    (stage.run(&ctx), tmp)
}

pub fn out(tmp: &tempfile::TempDir) -> PathBuf {
    tmp.path().join("out")
}

/// The message of a user error.
pub fn user_msg(r: Result<serde_json::Value, StageError>) -> String {
    match r {
        Err(StageError::User { message, hint }) => {
            format!("{message}\n{}", hint.unwrap_or_default())
        }
        Err(e) => panic!("expected a user error, got {e:?}"),
        Ok(s) => panic!("expected a user error, got {s}"),
    }
}
