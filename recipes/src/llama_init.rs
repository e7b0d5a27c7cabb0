//! Initialisation of a new Llama-family model (llama, qwen2, mistral) in Hugging Face layout:
//! `config.json` as transformers writes it for the architecture, and `model.safetensors` with
//! the checkpoint's tensor names and shapes ([`crate::hf::expected_tensors`]).
//!
//! Weights: linear and embedding weights ~ N(0, init_std²), RMSNorm weights 1, biases 0.
//! Randomness: tch's generator is process-global, so another stage drawing random numbers at
//! the same time would change the weights. Each tensor instead gets its own SplitMix64 stream
//! seeded by `blake3(seed ‖ tensor name)`, turned into normals by Box–Muller; the values then
//! become a tch tensor converted to the requested dtype (round-to-nearest-even for bf16/f16).
//! Same seed → byte-identical file, whatever else runs and whatever order tensors are built in.

use crate::hf::{self, HfConfig};
use anyhow::Context;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Map, Value as J};
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// Everything that determines an initialised model.
#[derive(Clone, Debug)]
pub struct InitSpec {
    /// `llama`, `qwen2` or `mistral`.
    pub arch: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub max_position: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_embeddings: bool,
    pub init_std: f64,
    pub seed: i64,
    /// `f32`, `bf16` or `f16`.
    pub dtype: String,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

/// transformers' name of a temper dtype.
pub fn torch_dtype_name(dtype: &str) -> &'static str {
    match dtype {
        "bf16" => "bfloat16",
        "f16" => "float16",
        _ => "float32",
    }
}

fn kinds(dtype: &str) -> (Kind, Dtype) {
    match dtype {
        "bf16" => (Kind::BFloat16, Dtype::BF16),
        "f16" => (Kind::Half, Dtype::F16),
        _ => (Kind::Float, Dtype::F32),
    }
}

impl InitSpec {
    /// `config.json` for the architecture, keys sorted as transformers writes them.
    pub fn config_json(&self) -> J {
        let id = |i: Option<u32>| i.map(J::from).unwrap_or(J::Null);
        let (class, extra): (&str, Vec<(&str, J)>) = match self.arch.as_str() {
            "qwen2" => (
                "Qwen2ForCausalLM",
                vec![
                    ("attention_bias", J::Bool(true)),
                    ("max_window_layers", J::from(self.layers)),
                    ("rope_scaling", J::Null),
                    ("sliding_window", J::Null),
                    ("use_sliding_window", J::Bool(false)),
                ],
            ),
            "mistral" => (
                "MistralForCausalLM",
                vec![
                    ("attention_bias", J::Bool(false)),
                    ("sliding_window", J::Null),
                ],
            ),
            _ => (
                "LlamaForCausalLM",
                vec![
                    ("attention_bias", J::Bool(false)),
                    ("mlp_bias", J::Bool(false)),
                    ("pretraining_tp", J::from(1)),
                    ("rope_scaling", J::Null),
                ],
            ),
        };
        let mut fields: Vec<(&str, J)> = vec![
            ("architectures", json!([class])),
            ("attention_dropout", json!(0.0)),
            ("bos_token_id", id(self.bos_token_id)),
            ("eos_token_id", id(self.eos_token_id)),
            ("head_dim", J::from(self.head_dim)),
            ("hidden_act", J::from("silu")),
            ("hidden_size", J::from(self.hidden_size)),
            ("initializer_range", J::from(self.init_std)),
            ("intermediate_size", J::from(self.intermediate_size)),
            ("max_position_embeddings", J::from(self.max_position)),
            ("model_type", J::from(self.arch.as_str())),
            ("num_attention_heads", J::from(self.heads)),
            ("num_hidden_layers", J::from(self.layers)),
            ("num_key_value_heads", J::from(self.kv_heads)),
            ("pad_token_id", id(self.pad_token_id)),
            ("rms_norm_eps", J::from(self.rms_norm_eps)),
            ("rope_theta", J::from(self.rope_theta)),
            ("tie_word_embeddings", J::Bool(self.tie_embeddings)),
            ("torch_dtype", J::from(torch_dtype_name(&self.dtype))),
            ("use_cache", J::Bool(true)),
            ("vocab_size", J::from(self.vocab_size)),
        ];
        fields.extend(extra);
        fields.sort_by(|a, b| a.0.cmp(b.0));
        J::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<Map<_, _>>(),
        )
    }

    /// `generation_config.json`.
    pub fn generation_config_json(&self) -> J {
        let mut m = Map::new();
        m.insert("_from_model_config".into(), J::Bool(true));
        for (k, v) in [
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
            ("pad_token_id", self.pad_token_id),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), J::from(v));
            }
        }
        J::Object(m)
    }

    /// The config as temper reads it back.
    pub fn hf_config(&self) -> anyhow::Result<HfConfig> {
        serde_json::from_value(self.config_json()).context("building the model config")
    }
}

/// SplitMix64: a tiny, well-mixed 64-bit generator (Steele, Lea & Flood 2014).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1].
    fn open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

/// `n` samples of N(0, std²) for tensor `name` under `seed` (Box–Muller).
pub fn normal_values(seed: i64, name: &str, n: usize, std: f64) -> Vec<f32> {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(name.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_bytes()[..8]);
    let mut rng = SplitMix64(u64::from_le_bytes(b));
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let (u1, u2) = (rng.open01(), rng.open01());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos() * std) as f32);
        out.push((r * t.sin() * std) as f32);
    }
    out.truncate(n);
    out
}

/// Initial values of one tensor by its role: norms 1, biases 0, everything else normal.
fn init_values(spec: &InitSpec, name: &str, numel: usize) -> Vec<f32> {
    if name.ends_with("norm.weight") {
        vec![1.0; numel]
    } else if name.ends_with(".bias") {
        vec![0.0; numel]
    } else {
        normal_values(spec.seed, name, numel, spec.init_std)
    }
}

/// Raw bytes of `values` as a tch tensor of `shape` in `kind`.
fn to_bytes(values: &[f32], shape: &[usize], kind: Kind) -> anyhow::Result<Vec<u8>> {
    let dims: Vec<i64> = shape.iter().map(|d| *d as i64).collect();
    let t = Tensor::f_from_slice(values)?
        .f_view(dims.as_slice())?
        .f_to_kind(kind)?
        .f_contiguous()?;
    let numel = values.len();
    let mut buf = vec![0u8; numel * kind.elt_size_in_bytes()];
    t.f_copy_data_u8(&mut buf, numel)?;
    Ok(buf)
}

/// Writes `model.safetensors` (metadata `{"format": "pt"}`) into `dir`; returns the parameter
/// count. `on_tensor` is called after each tensor (progress, cancellation).
pub fn write_weights(
    spec: &InitSpec,
    dir: &Path,
    mut on_tensor: impl FnMut(usize, usize) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    let cfg = spec.hf_config()?;
    let (kind, dtype) = kinds(&spec.dtype);
    let layout = hf::expected_tensors(&cfg);
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(layout.len());
    let mut params = 0usize;
    for (i, (name, shape)) in layout.iter().enumerate() {
        let numel: usize = shape.iter().product();
        let values = init_values(spec, name, numel);
        let bytes = to_bytes(&values, shape, kind).with_context(|| format!("tensor {name}"))?;
        params += numel;
        data.push((name.clone(), shape.clone(), bytes));
        on_tensor(i + 1, layout.len())?;
    }
    let views = data
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(dtype, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let path = dir.join(hf::WEIGHTS_FILE);
    safetensors::serialize_to_file(views, Some(meta), &path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(params)
}
