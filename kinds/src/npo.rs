//! `npo`: unlearning with Negative Preference Optimisation on a forget set (a `ref-logps`
//! node), optionally regularised on a retain set.
//!
//! Parameters besides the [`Optim`](crate::train::Optim) group: `beta` (NPO's β, 0.1);
//! `retain-loss` (`nll`: −logπ(y)/L, or `kl`: the per-token k2 KL to the stored reference);
//! `retain-weight` c (1.0); `batch-size` forget sequences per micro-batch (8) and
//! `retain-batch-size` retain sequences per micro-batch (default: `batch-size`).

use crate::params::{float, int, Input};
use crate::train::check_training;
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};

crate::enum_param! {
    /// The retain term.
    pub enum RetainLoss { Nll = "nll", Kl = "kl" }
}

crate::params! {
    /// Parameters of `npo`.
    pub struct Params {
        model: Input = ParamSpec::new("model", ParamType::Ref(&["model"]))
            .doc("the model to make forget (usually the reference of `forget=`)"),
        forget: Input = ParamSpec::new("forget", ParamType::Ref(&["ref-logps"])).doc("ref-logps node over the forget set"),
        retain: Option<Input> = ParamSpec::new("retain", ParamType::Ref(&["ref-logps"])).optional()
            .doc("ref-logps node over the retain set"),
        beta: f64 = ParamSpec::new("beta", float(0.0)).default(Value::Float(0.1)).doc("NPO's β"),
        retain_loss: RetainLoss = ParamSpec::new("retain-loss", ParamType::Enum(RetainLoss::NAMES)).default(Value::Str("nll".into()))
            .doc("nll: −logπ(y)/L; kl: per-token k2 KL to the stored reference"),
        retain_weight: f64 = ParamSpec::new("retain-weight", float(0.0)).default(Value::Float(1.0))
            .doc("c, the weight of the retain term"),
        batch_size: usize = ParamSpec::new("batch-size", int(1)).default(Value::Int(8)).doc("forget sequences per micro-batch"),
        retain_batch_size: Option<usize> = ParamSpec::new("retain-batch-size", int(1)).optional()
            .doc("retain sequences per micro-batch (default: batch-size)"),
    }
    groups { optim: crate::train::Optim, common: crate::Common }
}

/// The kind's declaration.
pub fn schema() -> KindSchema {
    KindSchema::new("npo", 1, "model")
        .doc("Unlearning with NPO on a forget set (ref-logps node), optionally with an NLL or KL term on a retain set.")
        .params(<Params as crate::ParamSet>::specs())
        .check(check)
        .check_in_recipe(crate::train::check_in_recipe)
}

/// The optimiser checks and one run length.
pub fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    check_training(n)
}
