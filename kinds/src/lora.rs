//! The `lora` parameter every training kind declares (in the [`Optim`](crate::train::Optim)
//! group): train low-rank adapters on a frozen base instead of the full weights.
//!
//! ```kdl
//! sft tuned model=base data=chat {
//!     lora rank=16 alpha=32 dropout=0.05 {
//!         target "q_proj" "k_proj" "v_proj" "o_proj"   // or `target "all-linear"`
//!     }
//! }
//! ```
//!
//! For each adapted linear layer `y = x Wᵀ + b`, LoRA adds `s · B(A(dropout(x)))` with
//! `A: rank × in`, `B: out × rank`, `s = alpha / rank` (rsLoRA: `alpha / √rank`), as PEFT does.
//! Defaults are PEFT's: `rank` 8, `alpha` 8, `dropout` 0, and for Llama-family models the
//! targets `q_proj` and `v_proj`.
//!
//! A target names modules the way PEFT's `target_modules` list does: a module matches when its
//! full name (`model.layers.3.self_attn.q_proj`) equals the target or ends with `.` + target.
//! `all-linear` is every linear layer of the decoder blocks (never `lm_head`). At `check` time a
//! target must end in one of [`LINEAR_MODULES`]; whether it matches a module of the actual model
//! is checked when the model is loaded. `embed_tokens` and `lm_head` are refused: on a model
//! with tied embeddings they are one tensor, and two adapters on it would drift apart.

use crate::params::{field, float_in, int, DecodeError, FromParam};
use dsl::{NodeDecl, ParamIssue, ParamSpec, ParamType, Value};

/// The linear layers of a Llama-family decoder block, by module name.
pub const LINEAR_MODULES: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];
/// The target that stands for every linear layer of the blocks.
pub const ALL_LINEAR: &str = "all-linear";
/// PEFT's default targets for Llama-family models.
pub const DEFAULT_TARGETS: &[&str] = &["q_proj", "v_proj"];

/// A node's `lora` record.
#[derive(Clone, Debug, PartialEq)]
pub struct Lora {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Scale by `alpha / √rank` (rsLoRA) instead of `alpha / rank`.
    pub rslora: bool,
    /// Module name patterns (see the module doc), as written.
    pub target: Vec<String>,
}

impl Lora {
    /// `s`: `alpha / rank`, or `alpha / √rank` with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }
}

impl FromParam for Lora {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        match v {
            Some(Value::Record(r)) => Ok(Lora {
                rank: field(r, name, "rank")?,
                alpha: field(r, name, "alpha")?,
                dropout: field(r, name, "dropout")?,
                rslora: field(r, name, "rslora")?,
                target: field(r, name, "target")?,
            }),
            other => Err(DecodeError::new(
                name,
                format!("expected a record, got {other:?}"),
            )),
        }
    }
}

/// The declaration of `lora`: added after the training kinds' first release, so a node without
/// it keeps its key.
pub fn spec() -> ParamSpec {
    let targets = Value::List(
        DEFAULT_TARGETS
            .iter()
            .map(|t| Value::Str(t.to_string()))
            .collect(),
    );
    ParamSpec::new(
        "lora",
        ParamType::Record {
            positional: &[],
            fields: vec![
                ParamSpec::new("rank", int(1))
                    .default(Value::Int(8))
                    .doc("r: the adapters' inner dimension"),
                ParamSpec::new("alpha", float_in(0.0, f64::MAX))
                    .default(Value::Float(8.0))
                    .doc("α: the adapter output is scaled by α / r"),
                ParamSpec::new("dropout", float_in(0.0, 0.99))
                    .default(Value::Float(0.0))
                    .doc("dropout on the adapters' input (training only)"),
                ParamSpec::new("rslora", ParamType::Bool)
                    .default(Value::Bool(false))
                    .doc("scale by α / √r (rank-stabilised LoRA)"),
                ParamSpec::new("target", ParamType::List(Box::new(ParamType::Str)))
                    .default(targets)
                    .doc("module names (`q_proj`, `self_attn.o_proj`…) or `all-linear`; default q_proj v_proj"),
            ],
        },
    )
    .optional()
    .added_later()
    .doc("train LoRA adapters on the frozen model instead of all weights")
}

/// Why a target cannot name a linear layer of the blocks, if it cannot.
pub fn target_problem(target: &str) -> Option<(String, String)> {
    if target == ALL_LINEAR {
        return None;
    }
    let last = target.rsplit('.').next().unwrap_or(target);
    if LINEAR_MODULES.contains(&last) {
        return None;
    }
    let all: Vec<&str> = LINEAR_MODULES.iter().copied().chain([ALL_LINEAR]).collect();
    if matches!(last, "lm_head" | "embed_tokens") {
        return Some((
            format!(
                "LoRA target `{target}`: temper does not adapt `{last}` (with tied embeddings \
                 `embed_tokens` and `lm_head` are one tensor, and an adapter on each would drift \
                 apart)"
            ),
            format!(
                "adapt the blocks' linear layers ({}), or train the full model without `lora`",
                dsl::suggest::list(&all)
            ),
        ));
    }
    let hint = dsl::suggest::hint_then(
        last,
        &all,
        &format!(
            "the linear layers of a Llama-family block: {}",
            dsl::suggest::list(&all)
        ),
    );
    Some((
        format!("LoRA target `{target}` matches no linear layer of a Llama-family model"),
        hint,
    ))
}

/// The `lora` checks: each target names a linear layer of the blocks.
pub fn check(n: &NodeDecl, out: &mut Vec<ParamIssue>) {
    let Some(r) = n.params.get("lora").and_then(|v| v.as_record()) else {
        return;
    };
    let targets = r.get("target").and_then(|t| match t {
        Value::List(items) => Some(items.iter().filter_map(|i| i.as_str()).collect::<Vec<_>>()),
        _ => None,
    });
    let targets = targets.unwrap_or_default();
    if targets.is_empty() {
        out.push(ParamIssue {
            param: Some("lora".into()),
            message: "`lora` has an empty `target` list: no layer would be adapted".into(),
            hint: Some("e.g. `target \"q_proj\" \"v_proj\"`, or `target \"all-linear\"`".into()),
        });
    }
    for t in targets {
        if let Some((message, hint)) = target_problem(t) {
            out.push(ParamIssue {
                param: Some("lora".into()),
                message,
                hint: Some(hint),
            });
        }
    }
}
