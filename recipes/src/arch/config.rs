//! The decoder's configuration: [`RawConfig`] mirrors `config.json` as transformers writes it
//! (the common fields come from [`crate::hf::HfConfig`], flattened in; the ones only the model
//! code needs are added here), and [`ArchConfig`] is the validated form the layers are built from.
//!
//! Validation is strict on purpose: a value temper would silently compute differently from
//! transformers (another rope type, another activation, dropout, an unknown architecture) is an
//! error naming the field and its value, never a guess.

use crate::hf::{HfConfig, CONFIG_FILE};
use crate::stage::StageError;
use serde::Deserialize;
use serde_json::Value as J;
use std::path::Path;

/// The architectures (`architectures[0]` in config.json) temper runs, with their `model_type`.
pub const SUPPORTED: &[(&str, &str)] = &[
    ("LlamaForCausalLM", "llama"),
    ("MistralForCausalLM", "mistral"),
    ("Qwen2ForCausalLM", "qwen2"),
];

/// `config.json` as written by transformers for `LlamaForCausalLM`, `MistralForCausalLM` and
/// `Qwen2ForCausalLM`; unknown fields are ignored.
#[derive(Clone, Debug, Deserialize)]
pub struct RawConfig {
    #[serde(flatten)]
    pub base: HfConfig,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub rope_scaling: Option<J>,
    #[serde(default)]
    pub sliding_window: Option<J>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default)]
    pub max_window_layers: Option<usize>,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub attention_dropout: Option<f64>,
}

/// The family a checkpoint belongs to; decides which projections carry biases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
}

/// A validated decoder configuration.
///
/// Shapes: q projection `[heads·head_dim, hidden]`, k/v `[kv_heads·head_dim, hidden]`,
/// o `[hidden, heads·head_dim]`, gate/up `[intermediate, hidden]`, down `[hidden, intermediate]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    /// RoPE base θ: `inv_freq[i] = 1 / θ^(2i / head_dim)`.
    pub rope_theta: f64,
    /// `max_position_embeddings` (not enforced by the forward pass; stages check it).
    pub max_position: Option<usize>,
    pub tie_embeddings: bool,
    /// q/k/v projections have a bias (qwen2 always; llama with `attention_bias`).
    pub qkv_bias: bool,
    /// o projection has a bias (llama with `attention_bias`).
    pub o_bias: bool,
    /// gate/up/down projections have a bias (llama with `mlp_bias`).
    pub mlp_bias: bool,
    /// Per layer: the sliding attention window `w` (query i sees keys j with `i - w < j ≤ i`),
    /// or `None` for full causal attention.
    pub windows: Vec<Option<usize>>,
}

fn unsupported(file: &str, field: &str, value: &J, hint: &str) -> StageError {
    StageError::user(
        format!("{file}: {field} = {value} is not supported"),
        Some(hint.to_string()),
    )
}

fn pos_int(v: &J) -> Option<usize> {
    v.as_u64().filter(|n| *n > 0).map(|n| n as usize)
}

/// Checks a rope dictionary (`rope_parameters` or `rope_scaling`): only the default rope type.
fn check_rope(file: &str, field: &str, v: &J) -> Result<Option<f64>, StageError> {
    let hint = "temper implements the default RoPE only (rope_type \"default\", no scaling)";
    match v {
        J::Null => Ok(None),
        J::Object(m) => {
            let mut theta = None;
            for (k, x) in m {
                match k.as_str() {
                    "rope_type" | "type" => {
                        if x.as_str() != Some("default") {
                            return Err(unsupported(file, &format!("{field}.{k}"), x, hint));
                        }
                    }
                    "rope_theta" => {
                        theta = Some(x.as_f64().filter(|t| *t > 0.0).ok_or_else(|| {
                            unsupported(
                                file,
                                &format!("{field}.rope_theta"),
                                x,
                                "a positive number",
                            )
                        })?)
                    }
                    _ => return Err(unsupported(file, &format!("{field}.{k}"), x, hint)),
                }
            }
            Ok(theta)
        }
        _ => Err(unsupported(file, field, v, hint)),
    }
}

impl ArchConfig {
    /// Reads and validates `dir/config.json`; `shown` is the directory as the user wrote it.
    pub fn from_dir(dir: &Path, shown: &str) -> Result<(ArchConfig, J), StageError> {
        let file = format!("{}/{CONFIG_FILE}", shown.trim_end_matches('/'));
        let text = std::fs::read_to_string(dir.join(CONFIG_FILE)).map_err(|e| {
            StageError::user(
                format!("{file}: cannot read: {e}"),
                Some("a Hugging Face model directory holds config.json".into()),
            )
        })?;
        let raw: J = serde_json::from_str(&text)
            .map_err(|e| StageError::user(format!("{file}:{}: {e}", e.line()), None))?;
        let cfg = ArchConfig::from_json(&raw, &file)?;
        Ok((cfg, raw))
    }

    /// Validates a parsed config.json; `file` names it in errors.
    pub fn from_json(raw: &J, file: &str) -> Result<ArchConfig, StageError> {
        let rc: RawConfig = serde_json::from_value(raw.clone())
            .map_err(|e| StageError::user(format!("{file}: {e}"), None))?;
        let b = &rc.base;
        let family = match b.model_type.as_str() {
            "llama" => Family::Llama,
            "mistral" => Family::Mistral,
            "qwen2" => Family::Qwen2,
            other => {
                return Err(unsupported(
                    file,
                    "model_type",
                    &J::from(other),
                    "supported model types: llama, mistral, qwen2",
                ))
            }
        };
        for a in &b.architectures {
            match SUPPORTED.iter().find(|(n, _)| n == a) {
                Some((_, t)) if *t == b.model_type => {}
                _ => {
                    return Err(unsupported(
                        file,
                        "architectures",
                        &J::from(a.as_str()),
                        "supported: LlamaForCausalLM (model_type llama), MistralForCausalLM \
                         (mistral), Qwen2ForCausalLM (qwen2)",
                    ))
                }
            }
        }
        let act = rc.hidden_act.clone().unwrap_or_else(|| "silu".into());
        if act != "silu" {
            return Err(unsupported(
                file,
                "hidden_act",
                &J::from(act),
                "the Llama family's MLP is SwiGLU: hidden_act \"silu\"",
            ));
        }
        if let Some(p) = rc.attention_dropout.filter(|p| *p != 0.0) {
            return Err(unsupported(
                file,
                "attention_dropout",
                &J::from(p),
                "use 0.0",
            ));
        }
        let theta_p = match &b.rope_parameters {
            Some(v) => check_rope(file, "rope_parameters", v)?,
            None => None,
        };
        if let Some(v) = &rc.rope_scaling {
            check_rope(file, "rope_scaling", v)?;
        }
        let rope_theta = theta_p.or(b.rope_theta).unwrap_or(10000.0);
        if rope_theta.is_nan() || rope_theta <= 0.0 {
            return Err(unsupported(
                file,
                "rope_theta",
                &J::from(rope_theta),
                "a positive number",
            ));
        }
        let attention_bias = b.attention_bias.unwrap_or(false);
        let mlp_bias = rc.mlp_bias.unwrap_or(false);
        let (qkv_bias, o_bias, mlp_bias) = match family {
            Family::Llama => (attention_bias, attention_bias, mlp_bias),
            Family::Qwen2 => (true, false, false),
            Family::Mistral => (false, false, false),
        };
        if family != Family::Llama && (rc.mlp_bias == Some(true)) {
            return Err(unsupported(
                file,
                "mlp_bias",
                &J::Bool(true),
                "only llama has MLP biases",
            ));
        }
        if family == Family::Mistral && attention_bias {
            return Err(unsupported(
                file,
                "attention_bias",
                &J::Bool(true),
                "MistralForCausalLM has no attention biases",
            ));
        }
        let (h, nh) = (b.hidden_size, b.num_attention_heads);
        let nkv = b.num_key_value_heads.unwrap_or(nh);
        for (field, v) in [
            ("vocab_size", b.vocab_size),
            ("hidden_size", h),
            ("intermediate_size", b.intermediate_size),
            ("num_hidden_layers", b.num_hidden_layers),
            ("num_attention_heads", nh),
            ("num_key_value_heads", nkv),
        ] {
            if v == 0 {
                return Err(unsupported(file, field, &J::from(0), "must be positive"));
            }
        }
        if nh % nkv != 0 {
            return Err(unsupported(
                file,
                "num_key_value_heads",
                &J::from(nkv),
                &format!("must divide num_attention_heads ({nh})"),
            ));
        }
        let head_dim = match b.head_dim {
            Some(d) => d,
            None if h % nh == 0 => h / nh,
            None => {
                return Err(unsupported(
                    file,
                    "hidden_size",
                    &J::from(h),
                    &format!("without head_dim, hidden_size must be a multiple of num_attention_heads ({nh})"),
                ))
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(unsupported(
                file,
                "head_dim",
                &J::from(head_dim),
                "RoPE needs an even head_dim",
            ));
        }
        let windows = layer_windows(&rc, family, file)?;
        Ok(ArchConfig {
            family,
            vocab_size: b.vocab_size,
            hidden_size: h,
            intermediate_size: b.intermediate_size,
            num_layers: b.num_hidden_layers,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim,
            rms_norm_eps: b.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            max_position: b.max_position_embeddings,
            tie_embeddings: b.tied(),
            qkv_bias,
            o_bias,
            mlp_bias,
            windows,
        })
    }

    /// `model_type` as config.json spells it.
    pub fn model_type(&self) -> &'static str {
        match self.family {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
        }
    }
}

/// Sliding windows per layer, as transformers decides them: mistral applies `sliding_window`
/// to every layer; qwen2 only when `use_sliding_window`, to the layers `layer_types` marks
/// `sliding_attention` (default: layers `≥ max_window_layers`); llama never.
fn layer_windows(
    rc: &RawConfig,
    family: Family,
    file: &str,
) -> Result<Vec<Option<usize>>, StageError> {
    let n = rc.base.num_hidden_layers;
    let window =
        match &rc.sliding_window {
            None | Some(J::Null) => None,
            Some(v) => Some(pos_int(v).ok_or_else(|| {
                unsupported(file, "sliding_window", v, "a positive integer or null")
            })?),
        };
    if let Some(t) = &rc.layer_types {
        if t.len() != n {
            return Err(StageError::user(
                format!("{file}: layer_types has {} entries for {n} layers", t.len()),
                None,
            ));
        }
        if let Some(bad) = t
            .iter()
            .find(|x| *x != "full_attention" && *x != "sliding_attention")
        {
            return Err(unsupported(
                file,
                "layer_types",
                &J::from(bad.as_str()),
                "full_attention or sliding_attention",
            ));
        }
    }
    Ok(match family {
        Family::Llama => {
            if rc
                .layer_types
                .iter()
                .flatten()
                .any(|x| x == "sliding_attention")
            {
                return Err(unsupported(
                    file,
                    "layer_types",
                    &J::from("sliding_attention"),
                    "llama has no sliding window",
                ));
            }
            vec![None; n]
        }
        Family::Mistral => vec![window; n],
        Family::Qwen2 => {
            let window = window.filter(|_| rc.use_sliding_window.unwrap_or(false));
            let Some(w) = window else {
                return Ok(vec![None; n]);
            };
            let from = rc.max_window_layers.unwrap_or(n);
            (0..n)
                .map(|i| {
                    let sliding = match &rc.layer_types {
                        Some(t) => t[i] == "sliding_attention",
                        None => i >= from,
                    };
                    sliding.then_some(w)
                })
                .collect()
        }
    })
}
