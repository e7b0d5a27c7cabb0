//! `dpo`: preference optimisation of a policy `model` on the pairs of a `ref-logps` node, with
//! any loss of [`crate::losses::LOSSES`] (sigmoid / cDPO, robust, hinge, ipo, sigmoid_norm,
//! orpo, simpo; RPO through `nll-weight`).
//!
//! Parameters besides the [`Optim`](crate::train::Optim) group: `loss` (default `sigmoid`);
//! `beta` (default: the loss's, 0.1 or 2.0 for simpo); `label-smoothing` ε ∈ [0, 0.5) for
//! sigmoid / robust / simpo; `gamma` (SimPO's margin, 0.5); `nll-weight` α (default: the
//! loss's, 0 or 1 for orpo) with `nll-norm` (`mean`: −logπ(yc)/Lc); `logp-norm` (ρ from sums or
//! per-token means, only for the losses that leave it open); `batch-size` pairs per micro-batch.

use crate::losses::{LogpNorm, LossDecl, LOSS_NAMES};
use crate::params::{float, int, is_set, Input};
use crate::train::check_training;
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};

crate::params! {
    /// Parameters of `dpo`.
    pub struct Params {
        model: Input = ParamSpec::new("model", ParamType::Ref(&["model"]))
            .doc("the policy to train (usually the SFT model the reference log-probs were computed with)"),
        reference: Input = ParamSpec::new("ref", ParamType::Ref(&["ref-logps"]))
            .doc("a ref-logps node: the pairs and the reference log-probs"),
        loss: &'static LossDecl = ParamSpec::new("loss", ParamType::Enum(LOSS_NAMES)).default(Value::Str("sigmoid".into()))
            .doc("sigmoid | robust | hinge | ipo | sigmoid_norm | orpo | simpo"),
        beta: Option<f64> = ParamSpec::new("beta", float(0.0)).optional().doc("β (λ for orpo); default 0.1, 2.0 for simpo"),
        label_smoothing: f64 = ParamSpec::new("label-smoothing", ParamType::Float { min: Some(0.0), max: Some(0.4999) })
            .default(Value::Float(0.0))
            .doc("ε of cDPO (sigmoid), robust and simpo"),
        gamma: f64 = ParamSpec::new("gamma", float(0.0)).default(Value::Float(0.5)).doc("SimPO's margin γ"),
        nll_weight: Option<f64> = ParamSpec::new("nll-weight", float(0.0)).optional()
            .doc("α of the NLL on chosen (RPO); default 0, 1 for orpo"),
        nll_norm: LogpNorm = ParamSpec::new("nll-norm", ParamType::Enum(LogpNorm::NAMES)).default(Value::Str("mean".into()))
            .doc("NLL = −logπ(yc)/Lc (mean, default) or −logπ(yc) (sum)"),
        logp_norm: Option<LogpNorm> = ParamSpec::new("logp-norm", ParamType::Enum(LogpNorm::NAMES)).optional()
            .doc("ρ from summed (default) or per-token mean log-probs, for sigmoid / robust / hinge"),
        batch_size: usize = ParamSpec::new("batch-size", int(1)).default(Value::Int(8)).doc("pairs per micro-batch"),
    }
    groups { optim: crate::train::Optim, common: crate::Common }
}

/// The kind's declaration.
pub fn schema() -> KindSchema {
    KindSchema::new("dpo", 1, "model")
        .doc("Preference optimisation (DPO, cDPO, robust, hinge, IPO, sigmoid_norm, RPO, ORPO, SimPO) on the pairs of a ref-logps node.")
        .params(<Params as crate::ParamSet>::specs())
        .check(check)
        .check_in_recipe(crate::train::check_in_recipe)
}

/// The optimiser checks, one run length, and `logp-norm` only where the loss leaves it open.
pub fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    let mut out = check_training(n);
    let loss = n
        .params
        .get("loss")
        .and_then(|v| v.as_str())
        .unwrap_or(crate::losses::SIGMOID.name);
    if is_set(n, "logp-norm") && crate::losses::find(loss).is_some_and(|d| d.logp_norm.is_none()) {
        out.push(ParamIssue {
            param: Some("logp-norm".into()),
            message: format!("loss {loss} is defined on per-token averages; `logp-norm` applies to sigmoid, robust and hinge"),
            hint: None,
        });
    }
    out
}
