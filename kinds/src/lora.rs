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
//!
//! A `rank` above `min(in, out)` of a targeted layer adds nothing ([`rank_excess`]): a
//! warning, located at the value, where `check` knows the model's shapes ([`check_rank`]),
//! and in the node's log when the stage attaches the adapter; above
//! [`REFUSED_RANK_FACTOR`] × that, an error in both places.

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

/// A rank above this many times the largest `min(in, out)` of the targeted layers is refused,
/// not only warned about: such an adapter is at least that many times larger than any useful
/// one and can only be a slip (`rank=100000` for `rank=16`). Between the two, PEFT's rule
/// holds: allowed, with a warning.
pub const REFUSED_RANK_FACTOR: usize = 16;

/// What a rank means for the layers it adapts (see [`rank_excess`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RankExcess {
    pub message: String,
    pub hint: String,
    /// Above [`REFUSED_RANK_FACTOR`] × the largest `min(in, out)`: an error, not a warning.
    pub refused: bool,
}

/// `rank` against the layers it adapts, `(module, in, out)` once per module name, on a model
/// of `blocks` decoder blocks: `None` when it is at most `min(in, out)` of each. Above that,
/// `B·A` of a layer has rank at most `min(in, out)`: the extra rank adds parameters and memory,
/// no capacity. One rule, used by `check` (shapes from the recipe, [`crate::shapes`]) and by
/// the stage attaching the adapter (shapes from the weights).
pub fn rank_excess(
    rank: usize,
    layers: &[(&str, usize, usize)],
    blocks: usize,
) -> Option<RankExcess> {
    let over: Vec<String> = layers
        .iter()
        .filter(|(_, i, o)| rank > *i.min(o))
        .map(|(m, i, o)| format!("{m} ({i} → {o})"))
        .collect();
    if over.is_empty() {
        return None;
    }
    let smallest = layers.iter().map(|(_, i, o)| *i.min(o)).min().unwrap_or(0);
    let largest = layers.iter().map(|(_, i, o)| *i.min(o)).max().unwrap_or(0);
    let params: usize = layers
        .iter()
        .map(|(_, i, o)| rank.saturating_mul(i + o))
        .fold(0usize, usize::saturating_add)
        .saturating_mul(blocks.max(1));
    let (count, size) = (dsl::limits::count(params), bytes(params.saturating_mul(4)));
    if rank > REFUSED_RANK_FACTOR.saturating_mul(largest) {
        return Some(RankExcess {
            message: format!(
                "LoRA rank {rank} is more than {REFUSED_RANK_FACTOR} × min(in, out) of every \
                 targeted layer, {}: an adapter of {count} parameters ({size} in f32) that learns \
                 no more than one of rank {largest}",
                and_list(&over)
            ),
            hint: format!(
                "a rank of at most {smallest} (the smallest min(in, out) of the targeted layers) \
                 gives these layers all the capacity LoRA can; temper refuses a rank above \
                 {REFUSED_RANK_FACTOR} × {largest} as a slip"
            ),
            refused: true,
        });
    }
    Some(RankExcess {
        message: format!(
            "LoRA rank {rank} is above min(in, out) of {}: the update B·A of such a layer has \
             rank at most min(in, out), so the extra rank adds parameters and memory, no \
             capacity (the adapter: {count} parameters, {size} in f32)",
            and_list(&over)
        ),
        hint: format!("lower `rank` to at most {smallest}, or adapt larger layers"),
        refused: false,
    })
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// A byte count for messages: `86 KB`, `179 MB`, `1.8 GB` (decimal units).
fn bytes(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1} GB", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{} MB", n / 1_000_000),
        n if n >= 1_000 => format!("{} KB", n / 1_000),
        n => format!("{n} B"),
    }
}

/// The module names a target list adapts (`all-linear`: every one; a dotted target by its
/// last segment), once each, in [`LINEAR_MODULES`] order.
pub fn targeted_modules(targets: &[&str]) -> Vec<&'static str> {
    LINEAR_MODULES
        .iter()
        .copied()
        .filter(|m| {
            targets
                .iter()
                .any(|t| *t == ALL_LINEAR || t.rsplit('.').next() == Some(*m))
        })
        .collect()
}

/// The `target` patterns of a node's `lora` record, as written.
pub fn targets_of(lora: &std::collections::BTreeMap<String, Value>) -> Vec<&str> {
    lora.get("target")
        .and_then(Value::as_list)
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// `lora rank` against the shapes of the model the node trains, when the recipe tells them
/// ([`crate::shapes`]): [`rank_excess`] as a warning, or an error when refused, at the `rank`
/// value (else at `lora`).
pub fn check_rank(n: &NodeDecl, cx: &dsl::CheckContext<'_>, f: &mut dsl::Findings) {
    let Some(r) = n.params.get("lora").and_then(|v| v.as_record()) else {
        return;
    };
    let Some(rank) = r.get("rank").and_then(Value::as_i64) else {
        return;
    };
    let targets = targets_of(r);
    let Some(Value::Ref(model)) = n.params.get("model") else {
        return;
    };
    let Some(shapes) = crate::shapes::of_node(cx, model) else {
        return;
    };
    let layers: Vec<(&str, usize, usize)> = targeted_modules(&targets)
        .into_iter()
        .filter_map(|m| shapes.linear(m).map(|(i, o)| (m, i, o)))
        .collect();
    let Some(x) = rank_excess(rank.max(0) as usize, &layers, shapes.layers) else {
        return;
    };
    let issue = ParamIssue::new(Some("lora.rank"), x.message, Some(&x.hint));
    if x.refused {
        f.errors.push(issue);
    } else {
        f.warnings.push(issue);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_excess_warns_above_min_in_out_and_refuses_far_above() {
        // hidden 64, 4 heads, 2 kv-heads, 2 blocks; PEFT's default targets.
        let layers = [("q_proj", 64, 64), ("v_proj", 64, 32)];
        assert_eq!(rank_excess(32, &layers, 2), None);
        let w = rank_excess(48, &layers, 2).unwrap();
        assert!(!w.refused);
        assert!(
            w.message.contains("above min(in, out) of v_proj (64 → 32)"),
            "{}",
            w.message
        );
        assert!(
            w.message.contains("21,504 parameters, 86 KB in f32"),
            "{}",
            w.message
        );
        assert!(!w.message.contains("q_proj"), "{}", w.message);
        assert!(w.hint.contains("at most 32"), "{}", w.hint);
        assert!(!rank_excess(16 * 64, &layers, 2).unwrap().refused);
        // The issue's repro: 2 × 100,000 × (128 + 96) parameters, 179 MB.
        let e = rank_excess(100_000, &layers, 2).unwrap();
        assert!(e.refused);
        assert!(
            e.message.contains("q_proj (64 → 64) and v_proj (64 → 32): an adapter of 44,800,000 parameters (179 MB"),
            "{}",
            e.message
        );
        assert_eq!(
            targeted_modules(&["all-linear"]).len(),
            LINEAR_MODULES.len()
        );
        assert_eq!(
            targeted_modules(&["self_attn.v_proj", "q_proj"]),
            ["q_proj", "v_proj"]
        );
    }
}
