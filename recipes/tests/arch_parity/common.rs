//! Shared helpers: configs, random weights, the Python fixtures, tensor comparisons.

use recipes::arch::{AttnMask, HfModel, LoadOptions};
use serde_json::{json, Value as J};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use tch::{Kind, Tensor};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tiny config.json of `model_type` with `extra` fields merged over the defaults.
pub fn config(model_type: &str, extra: J) -> J {
    let arch = match model_type {
        "qwen2" => "Qwen2ForCausalLM",
        "mistral" => "MistralForCausalLM",
        _ => "LlamaForCausalLM",
    };
    let mut c = json!({
        "architectures": [arch], "model_type": model_type, "vocab_size": 97, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "hidden_act": "silu",
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2, "dtype": "float32"
    });
    if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    c
}

/// A model of `cfg` with random weights (norms near 1, O(1) activations), seeded.
pub fn random_model(cfg: J, seed: i64) -> HfModel {
    let m = HfModel::from_config(cfg, &LoadOptions::default()).expect("config is valid");
    let _rng = crate::common::torch_rng();
    tch::manual_seed(seed);
    let _g = tch::no_grad_guard();
    let mut vars: Vec<_> = m.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mut v) in vars {
        let noise = Tensor::randn(v.size(), (Kind::Float, v.device()));
        let val = if name.contains("norm") {
            noise * 0.1 + 1.0
        } else if name.ends_with("bias") {
            noise * 0.1
        } else if name.contains("embed_tokens") {
            noise
        } else {
            noise / (*v.size().last().unwrap() as f64).sqrt()
        };
        v.copy_(&val);
    }
    m
}

pub fn ids(rows: &[&[i64]]) -> Tensor {
    let t = rows[0].len() as i64;
    let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, t])
}

pub fn arange_pos(b: i64, t: i64) -> Tensor {
    Tensor::arange(t, (Kind::Int64, tch::Device::Cpu))
        .unsqueeze(0)
        .expand([b, t], false)
        .contiguous()
}

/// max |a − b| over all elements.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// max |a − b| over the positions `[b, t]` where `mask` is 1 (logits `[B, T, V]`).
pub fn max_diff_valid(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let keep = mask.ne(0).unsqueeze(-1).to_kind(Kind::Double);
    ((a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs() * keep)
        .max()
        .double_value(&[])
}

pub fn read_st(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// The project's Python (`.venv/bin/python`), which `make test` provides with transformers.
pub fn python() -> PathBuf {
    let py = repo_root().join(".venv/bin/python");
    assert!(
        py.is_file(),
        "{} is missing: the parity tests need the project's Python environment with \
         transformers; run `make test` (it installs tests/requirements.txt into .venv)",
        py.display()
    );
    py
}

/// Runs `tests/python/<script>` with `args`; panics with its stderr when it fails.
pub fn run_python(script: &str, args: &[&Path]) {
    let path = repo_root().join("tests/python").join(script);
    let out = Command::new(python())
        .arg(&path)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{} failed ({}); is transformers installed in .venv? `make test` installs it.\n{}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The tiny checkpoints written once per test process by make_tiny_hf.py.
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().expect("temp dir");
        let t = std::time::Instant::now();
        run_python("make_tiny_hf.py", &[d.path()]);
        eprintln!("make_tiny_hf.py: {:.1}s", t.elapsed().as_secs_f64());
        d
    })
    .path()
}

pub const MODELS: &[&str] = &["llama", "llama_tied", "qwen2", "mistral"];

/// The fixture batches: (name, input_ids, attention_mask, position_ids).
pub fn batches(inputs: &HashMap<String, Tensor>) -> Vec<(String, Tensor, Tensor, Tensor)> {
    ["b0", "b1"]
        .iter()
        .map(|b| {
            let g = |k: &str| inputs[&format!("{b}.{k}")].shallow_clone();
            (
                b.to_string(),
                g("input_ids"),
                g("attention_mask"),
                g("position_ids"),
            )
        })
        .collect()
}

/// temper's logits for a fixture batch (padding mask when any position is padding).
pub fn temper_logits(m: &HfModel, ids: &Tensor, mask: &Tensor, pos: &Tensor) -> Tensor {
    let padded = mask.eq(0).any().int64_value(&[]) != 0;
    let am = if padded {
        AttnMask::Padding(mask)
    } else {
        AttnMask::Causal
    };
    tch::no_grad(|| m.forward(ids, pos, am)).expect("forward")
}
