//! `reweight`: influence-based reweighting of a mixture's domains at a checkpoint, producing a
//! `mixture` (the formulas are in `recipes::influence`, shared/reference/mixtures.md).
//!
//! Parameters: `model` (the checkpoint), `mixture` (the domains and `w0`), one or more
//! `target DATASET weight=c` (c default 1, normalised); `samples` per domain and
//! `target-samples` per target (64 each), `seq-len` truncation (512), `params` (globs of the
//! tensors whose gradients count), `project` (random projection dimension), the update's
//! `temperature` τ (1), `smoothing` ε (1e-3), bounds `floor`/`cap` (0/1), `max-repeats` and
//! per-domain `bound DOMAIN floor=… cap=…`, `abstain-z` (2), `seed`, `check` mode with
//! `check-lr` η (1e-3), `dtype` (auto | f32 | bf16 | f64) and `batch-size` (not in the key).

use crate::params::{field, float, int, DecodeError, FromParam, Input};
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};
use std::collections::BTreeSet;

crate::enum_param! {
    /// The compute dtype of `reweight` (f64 for exact checks); `auto` as for every kind.
    pub enum ReweightDtype { Auto = "auto", F32 = "f32", Bf16 = "bf16", F64 = "f64" }
}

/// `target DATASET weight=c`.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub name: Input,
    /// `c_j` as written; see [`Target::weight`].
    pub weight: Option<f64>,
}

impl Target {
    /// `c_j`: 1 when not written (the spec leaves it unset so that keys do not change).
    pub fn weight(&self) -> f64 {
        self.weight.unwrap_or(1.0)
    }
}

impl FromParam for Target {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        match v {
            Some(Value::Record(r)) => Ok(Target {
                name: field(r, name, "name")?,
                weight: field(r, name, "weight")?,
            }),
            other => Err(DecodeError::new(
                name,
                format!("expected a record, got {other:?}"),
            )),
        }
    }
}

/// `bound DOMAIN floor=… cap=…`.
#[derive(Clone, Debug, PartialEq)]
pub struct Bound {
    pub domain: String,
    pub floor: Option<f64>,
    pub cap: Option<f64>,
}

impl FromParam for Bound {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        match v {
            Some(Value::Record(r)) => Ok(Bound {
                domain: field(r, name, "domain")?,
                floor: field(r, name, "floor")?,
                cap: field(r, name, "cap")?,
            }),
            other => Err(DecodeError::new(
                name,
                format!("expected a record, got {other:?}"),
            )),
        }
    }
}

fn unit() -> ParamType {
    crate::params::float_in(0.0, 1.0)
}

crate::params! {
    /// Parameters of `reweight`.
    pub struct Params {
        model: Input = ParamSpec::new("model", ParamType::Ref(&["model"])).doc("the checkpoint where influence is measured"),
        mixture: Input = ParamSpec::new("mixture", ParamType::Ref(&["mixture"])).doc("the domains and the starting weights w0"),
        target: Vec<Target> = ParamSpec::new(
            "target",
            ParamType::Record {
                positional: &["name"],
                fields: vec![
                    ParamSpec::new("name", ParamType::Ref(&["dataset"])).doc("a text dataset"),
                    ParamSpec::new("weight", float(0.0)).optional().doc("c_j (default 1; normalised)"),
                ],
            },
        )
        .repeated()
        .doc("`target DATASET weight=1`; repeat for several targets"),
        samples: usize = ParamSpec::new("samples", int(2)).default(Value::Int(64)).doc("records sampled per domain"),
        target_samples: usize = ParamSpec::new("target-samples", int(1)).default(Value::Int(64)).doc("records sampled per target"),
        seq_len: usize = ParamSpec::new("seq-len", int(2)).default(Value::Int(512)).doc("documents are truncated to this many tokens"),
        params: Vec<String> = ParamSpec::new("params", ParamType::List(Box::new(ParamType::Str))).optional()
            .doc("glob patterns of tensor names whose gradients count (default: all)"),
        project: Option<usize> = ParamSpec::new("project", int(1)).optional().doc("random projection dimension of the gradients"),
        temperature: f64 = ParamSpec::new("temperature", float(0.0)).default(Value::Float(1.0)).doc("trust region τ: w ∝ w0·exp(τ·ŝ)"),
        smoothing: f64 = ParamSpec::new("smoothing", unit()).default(Value::Float(1e-3)).doc("ε: w = (1−ε)·w + ε/K"),
        floor: f64 = ParamSpec::new("floor", unit()).default(Value::Float(0.0)).doc("lowest weight of a domain"),
        cap: f64 = ParamSpec::new("cap", unit()).default(Value::Float(1.0)).doc("highest weight of a domain"),
        max_repeats: Option<f64> = ParamSpec::new("max-repeats", float(0.0)).optional()
            .doc("cap a domain at max-repeats·size/budget (default: each domain's max-epochs)"),
        bound: Vec<Bound> = ParamSpec::new(
            "bound",
            ParamType::Record {
                positional: &["domain"],
                fields: vec![
                    ParamSpec::new("domain", ParamType::Str).doc("a domain of the mixture"),
                    ParamSpec::new("floor", unit()).optional(),
                    ParamSpec::new("cap", unit()).optional(),
                ],
            },
        )
        .repeated()
        .optional()
        .doc("`bound DOMAIN floor=0.05 cap=0.5`: per-domain bounds"),
        abstain_z: f64 = ParamSpec::new("abstain-z", float(0.0)).default(Value::Float(2.0))
            .doc("keep w0 when the spread of scores is within z·√2 standard errors"),
        seed: u64 = ParamSpec::new("seed", int(0)).default(Value::Int(0)).doc("seed of the samples and the projection"),
        check: bool = ParamSpec::new("check", ParamType::Bool).default(Value::Bool(false))
            .doc("also measure L_j(θ) − L_j(θ − η·g_k) and its rank correlation with the prediction"),
        check_lr: f64 = ParamSpec::new("check-lr", float(0.0)).default(Value::Float(1e-3)).doc("η of check mode"),
        dtype: ReweightDtype = ParamSpec::new("dtype", ParamType::Enum(ReweightDtype::NAMES)).default(Value::Str("auto".into()))
            .doc("compute dtype: auto = f32 on CPU, bf16 on CUDA"),
        batch_size: usize = ParamSpec::new("batch-size", int(1)).default(Value::Int(8)).non_semantic().doc("documents per forward pass"),
    }
}

/// The kind's declaration.
pub fn schema() -> KindSchema {
    KindSchema::new("reweight", 1, "mixture")
        .doc("Influence-based reweighting: measures how much each domain of a mixture helps target datasets at a checkpoint and writes a new mixture (plus diagnostics).")
        .params(<Params as crate::ParamSet>::specs())
        .check(check)
}

/// At least one target, target weights summing to a positive number, each target once.
pub fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    let mut out = Vec::new();
    let targets = n
        .params
        .get("target")
        .and_then(|v| v.as_list())
        .unwrap_or(&[]);
    if targets.is_empty() {
        out.push(ParamIssue {
            param: None,
            message: "a reweight node needs at least one `target DATASET`".into(),
            hint: Some("add `target my-val weight=1` inside the node's block".into()),
        });
    }
    let total: f64 = targets
        .iter()
        .filter_map(|t| t.as_record())
        .map(|r| r.get("weight").and_then(|w| w.as_f64()).unwrap_or(1.0))
        .sum();
    if !targets.is_empty() && total <= 0.0 {
        out.push(ParamIssue {
            param: Some("target".into()),
            message: format!(
                "the target weights sum to {total}: they must sum to a positive number"
            ),
            hint: Some("give at least one target a positive weight".into()),
        });
    }
    let mut seen = BTreeSet::new();
    for t in targets.iter().filter_map(|t| t.as_record()) {
        if let Some(name) = t.get("name").and_then(|v| v.as_str()) {
            if !seen.insert(name.to_string()) {
                out.push(ParamIssue {
                    param: Some("target".into()),
                    message: format!("target `{name}` is listed twice"),
                    hint: Some("list each target once and set its weight".into()),
                });
            }
        }
    }
    out
}
