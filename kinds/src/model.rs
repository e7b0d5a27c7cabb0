//! `model`: exactly one of two sources.
//!
//! ```kdl
//! model base path="models/smol"                        // a local Hugging Face directory
//! model tiny tokenizer=tok hidden-size=64 layers=2 heads=4 kv-heads=2 seed=1
//! ```
//!
//! With `tokenizer`, a new Llama-family model (`arch` llama | qwen2 | mistral) is initialised
//! from the size parameters below (the vocabulary is the tokenizer's): weights
//! `~ N(0, init-std²)`, saved as `dtype`. `kv-heads` (default `heads`) must divide `heads`;
//! `head-dim` defaults to `hidden-size / heads`, which must then divide evenly. The size
//! parameters apply only when initialising: a model loaded from `path` is described by its
//! `config.json`.

use crate::params::{int, Input, ParamSet, PathParam};
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};

crate::enum_param! {
    /// The architecture of a new model.
    pub enum Arch { Llama = "llama", Qwen2 = "qwen2", Mistral = "mistral" }
}

crate::enum_param! {
    /// The dtype weights are saved in (`model dtype=…`, `merge dtype=…`).
    pub enum WeightDtype { F32 = "f32", Bf16 = "bf16", F16 = "f16" }
}

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

fn positive() -> ParamType {
    ParamType::Float {
        min: Some(0.0),
        max: None,
    }
}

crate::params! {
    /// Parameters of `model`.
    pub struct Params {
        path: Option<PathParam> = ParamSpec::new("path", ParamType::Path).optional().doc("a local Hugging Face model directory"),
        tokenizer: Option<Input> = ParamSpec::new("tokenizer", ParamType::Ref(&["tokenizer"])).optional().doc("initialise a new model with this tokenizer"),
        arch: Arch = ParamSpec::new("arch", ParamType::Enum(Arch::NAMES)).default(Value::Str("llama".into())).doc("architecture of a new model"),
        hidden_size: usize = ParamSpec::new("hidden-size", int(1)).default(Value::Int(64)),
        layers: usize = ParamSpec::new("layers", int(1)).default(Value::Int(2)),
        heads: usize = ParamSpec::new("heads", int(1)).default(Value::Int(4)),
        kv_heads: Option<usize> = ParamSpec::new("kv-heads", int(1)).optional().doc("key/value heads (GQA); default = heads"),
        head_dim: Option<usize> = ParamSpec::new("head-dim", int(1)).optional().doc("default = hidden-size / heads"),
        intermediate_size: usize = ParamSpec::new("intermediate-size", int(1)).default(Value::Int(128)),
        max_position: usize = ParamSpec::new("max-position", int(1)).default(Value::Int(2048)),
        rope_theta: f64 = ParamSpec::new("rope-theta", positive()).default(Value::Float(10000.0)),
        rms_norm_eps: f64 = ParamSpec::new("rms-norm-eps", positive()).default(Value::Float(1e-5)),
        tie_embeddings: bool = ParamSpec::new("tie-embeddings", ParamType::Bool).default(Value::Bool(false)).doc("share embed_tokens with lm_head"),
        init_std: f64 = ParamSpec::new("init-std", positive()).default(Value::Float(0.02)).doc("std of the normal initialisation"),
        seed: i64 = ParamSpec::new("seed", ParamType::Int { min: None, max: None }).default(Value::Int(0)),
        dtype: WeightDtype = ParamSpec::new("dtype", ParamType::Enum(WeightDtype::NAMES)).default(Value::Str("f32".into())).doc("dtype of the saved weights"),
    }
}

/// The `model` kind's declaration.
pub fn schema() -> KindSchema {
    KindSchema::new("model", 1, "model")
        .doc("A Hugging Face model directory: a local one (`path`) or a new Llama-family model initialised from a `tokenizer`.")
        .params(Params::specs())
        .check(check)
}

/// Exactly one of `path`/`tokenizer`; init parameters only with `tokenizer`; head counts that
/// divide (`heads | hidden-size` unless `head-dim` is set, `kv-heads | heads`).
pub fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    let set = |k: &str| !matches!(n.params.get(k), None | Some(Value::Null));
    let mut out = Vec::new();
    match (set("path"), set("tokenizer")) {
        (true, true) => out.push(ParamIssue::new(Some("tokenizer"), "`path` and `tokenizer` are exclusive: load a model or initialise one".into(), Some("a model loaded from `path` brings its own tokenizer"))),
        (false, false) => out.push(ParamIssue {
            param: None,
            message: "a model needs `path` (a local Hugging Face directory) or `tokenizer` (to initialise a new one)".into(),
            hint: Some("e.g. `model base path=\"models/smol\"` or `model tiny tokenizer=tok hidden-size=64`".into()),
        }),
        (true, false) => {
            for p in INIT_PARAMS {
                if n.param_locs.contains_key(*p) {
                    out.push(ParamIssue::new(Some(p), format!("`{p}`: size parameters apply only when initialising"), Some("a model loaded from `path` is described by its config.json; remove the parameter")));
                }
            }
        }
        (false, true) => check_heads(n, &mut out),
    }
    out
}

/// `heads | hidden-size` (unless `head-dim` is set) and `kv-heads | heads`.
fn check_heads(n: &NodeDecl, out: &mut Vec<ParamIssue>) {
    let set = |k: &str| !matches!(n.params.get(k), None | Some(Value::Null));
    let int = |k: &str| n.params.get(k).and_then(|v| v.as_i64());
    let (Some(hidden), Some(heads)) = (int("hidden-size"), int("heads")) else {
        return;
    };
    if !set("head-dim") && heads > 0 && hidden % heads != 0 {
        out.push(ParamIssue::new(
            Some("heads"),
            format!("hidden-size {hidden} is not divisible by heads {heads}"),
            Some("choose heads dividing hidden-size, or set head-dim"),
        ));
    }
    if let Some(kv) = int("kv-heads") {
        if kv > 0 && heads % kv != 0 {
            out.push(ParamIssue::new(Some("kv-heads"), format!("heads {heads} is not divisible by kv-heads {kv}"), Some("grouped-query attention shares each key/value head among heads / kv-heads query heads")));
        }
    }
}
