//! `mixture`: named dataset sources with sampling weights, per-source caps, a budget and a seed.
//!
//! ```kdl
//! mixture cpt-mix tokenizer=tok { source web weight=0.6; source med weight=0.4 max-epochs=4; tokens 20_000_000; seed 1 }
//! ```
//!
//! Weights: the base weight of source `i` is `b_i` = its `weight` (default 1) with
//! `weight-by given`, or its size with `weight-by records` / `weight-by tokens`
//! (`tokens` needs `tokenizer=`). The sampling probability is `p_i = b_i^(1/T) / Σ_j b_j^(1/T)`
//! with `temperature T` (default 1: proportional to `b`; `T → ∞`: uniform).
//!
//! Budget: `tokens N` or `examples N`; without either, every source is read `max-epochs`
//! times (unset = once) and the stream ends. With a budget, a source without `max-epochs`
//! repeats as often as the budget needs; a capped source drops out when it reaches its cap
//! and the others' probabilities renormalise.
//!
//! Token counts need a tokenizer, so `tokenizer=` (a tokenizer or model node) is optional: with
//! it the artifact records each source's token count; without it the counts are `null` and the
//! consumer, which tokenises anyway, counts the budget.

use crate::params::{field, DecodeError, FromParam, Input, ParamSet};
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};
use std::collections::BTreeSet;

crate::enum_param! {
    /// Where the base weights `b_i` come from.
    pub enum WeightBy {
        /// Each source's `weight` (default 1).
        Given = "given",
        /// Each source's number of records.
        Records = "records",
        /// Each source's number of tokens (needs `tokenizer=`).
        Tokens = "tokens",
    }
}

/// `source DATASET weight=W max-epochs=E`.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    /// The dataset node; its instance id names the domain.
    pub name: Input,
    /// The given base weight (`weight-by given`); unset = 1.
    pub weight: Option<f64>,
    /// At most this many passes over the source.
    pub max_epochs: Option<f64>,
}

impl Source {
    /// The base weight under `weight-by given`: `weight`, default 1.
    pub fn given_weight(&self) -> f64 {
        self.weight.unwrap_or(1.0)
    }
}

impl FromParam for Source {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        match v {
            Some(Value::Record(r)) => Ok(Source {
                name: field(r, name, "name")?,
                weight: field(r, name, "weight")?,
                max_epochs: field(r, name, "max-epochs")?,
            }),
            other => Err(DecodeError::new(
                name,
                format!("expected a record, got {other:?}"),
            )),
        }
    }
}

fn source_record() -> ParamType {
    let pos = ParamType::Float {
        min: Some(0.0),
        max: None,
    };
    ParamType::Record {
        positional: &["name"],
        fields: vec![
            ParamSpec::new("name", ParamType::Ref(&["dataset"])).doc("the dataset node"),
            ParamSpec::new("weight", pos.clone())
                .optional()
                .doc("sampling weight (normalised over sources; default 1)"),
            ParamSpec::new("max-epochs", pos)
                .optional()
                .doc("at most this many passes over the source (fractions allowed)"),
        ],
    }
}

crate::params! {
    /// Parameters of `mixture`.
    pub struct Params {
        source: Vec<Source> = ParamSpec::new("source", source_record())
            .repeated()
            .doc("`source DATASET weight=0.6 max-epochs=4`; repeat for each source"),
        tokens: Option<u64> = ParamSpec::new("tokens", ParamType::Int { min: Some(1), max: None }).optional()
            .doc("token budget: the stream ends once this many tokens were drawn"),
        examples: Option<u64> = ParamSpec::new("examples", ParamType::Int { min: Some(1), max: None }).optional()
            .doc("example budget (instead of `tokens`)"),
        temperature: f64 = ParamSpec::new("temperature", ParamType::Float { min: Some(1e-6), max: None })
            .default(Value::Float(1.0))
            .doc("p_i ∝ b_i^(1/T)"),
        weight_by: WeightBy = ParamSpec::new("weight-by", ParamType::Enum(WeightBy::NAMES))
            .default(Value::Str("given".into()))
            .doc("base weights: the `weight`s given, or source sizes in records or tokens"),
        seed: u64 = ParamSpec::new("seed", ParamType::Int { min: Some(0), max: None })
            .default(Value::Int(0))
            .doc("seed of the example order"),
        tokenizer: Option<Input> = ParamSpec::new("tokenizer", ParamType::Ref(&["tokenizer", "model"])).optional()
            .doc("count tokens per source with this tokenizer (needed by `weight-by tokens`)"),
    }
}

/// The `mixture` kind's declaration.
pub fn schema() -> KindSchema {
    KindSchema::new("mixture", 1, "mixture")
        .doc("A weighted mixture of datasets with a budget, per-source caps and a seed; consumers draw a deterministic example stream from it.")
        .params(Params::specs())
        .check(check)
}

/// Cross-parameter rules: distinct source names, one budget, `weight` only with
/// `weight-by given`, `weight-by tokens` with a tokenizer.
pub fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    let set = |k: &str| !matches!(n.params.get(k), None | Some(Value::Null));
    let mut out = Vec::new();
    let sources = n
        .params
        .get("source")
        .and_then(|v| v.as_list())
        .unwrap_or(&[]);
    let mut seen = BTreeSet::new();
    let by = n
        .params
        .get("weight-by")
        .and_then(|v| v.as_str())
        .unwrap_or(WeightBy::Given.name());
    for s in sources {
        let Some(r) = s.as_record() else { continue };
        if let Some(name) = r.get("name").and_then(|v| v.as_str()) {
            if !seen.insert(name.to_string()) {
                out.push(ParamIssue::new(
                    Some("source"),
                    format!("source `{name}` is listed twice"),
                    Some("list each dataset once and set its weight"),
                ));
            }
        }
        if by != "given" && r.get("weight").is_some_and(|w| !matches!(w, Value::Null)) {
            out.push(ParamIssue::new(
                Some("source"),
                format!("`weight` is ignored with `weight-by {by}`"),
                Some("remove the weights, or use `weight-by given`"),
            ));
        }
    }
    if set("tokens") && set("examples") {
        out.push(ParamIssue::new(
            Some("examples"),
            "`tokens` and `examples` are exclusive: a mixture has one budget".into(),
            None,
        ));
    }
    if by == "tokens" && !set("tokenizer") {
        out.push(ParamIssue::new(
            Some("weight-by"),
            "`weight-by tokens` needs a tokenizer to count tokens".into(),
            Some("add `tokenizer=TOK`"),
        ));
    }
    out
}
