//! The preference losses `dpo loss=…` accepts, as declarations: name, whether reference
//! log-probs are needed, the defaults of `beta` and `nll-weight`, how ρ is normalised, and a
//! one-line doc. The formulas and implementations live in `recipes::pref` (one file per loss
//! family, one entry per loss in `recipes::pref::LOSSES`, in the order of [`LOSSES`]).
//!
//! Adding a loss: its `pub const` declaration here and a line in [`LOSSES`] and [`LOSS_NAMES`];
//! its implementation file in `recipes/src/pref/` and a line in that table.
//!
//! Notation: `ρ = logπ(y) − logπref(y)`, `h = ρc − ρr`, `a`, `b` the per-token *average*
//! log-probs of chosen and rejected.

use crate::params::{DecodeError, FromParam};
use dsl::Value;

crate::enum_param! {
    /// Summed or per-token averaged sequence log-probs.
    pub enum LogpNorm { Sum = "sum", Mean = "mean" }
}

/// The declaration of a loss: its name in recipes and its defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossDecl {
    pub name: &'static str,
    /// Needs reference log-probs (a `ref=` node with a model).
    pub needs_ref: bool,
    /// Default β (λ for orpo).
    pub beta: f64,
    /// Default `nll-weight`.
    pub nll_weight: f64,
    /// How `ρ` / the rewards are normalised; `None` = fixed by the loss (per-token averages).
    pub logp_norm: Option<LogpNorm>,
    pub doc: &'static str,
}

pub const SIGMOID: LossDecl = LossDecl {
    name: "sigmoid",
    needs_ref: true,
    beta: 0.1,
    nll_weight: 0.0,
    logp_norm: Some(LogpNorm::Sum),
    doc: "DPO −logσ(βh); cDPO with label-smoothing ε; RPO with nll-weight",
};
pub const ROBUST: LossDecl = LossDecl {
    name: "robust",
    needs_ref: true,
    beta: 0.1,
    nll_weight: 0.0,
    logp_norm: Some(LogpNorm::Sum),
    doc: "rDPO [−(1−ε)logσ(βh) + ε·logσ(−βh)]/(1−2ε)",
};
pub const HINGE: LossDecl = LossDecl {
    name: "hinge",
    needs_ref: true,
    beta: 0.1,
    nll_weight: 0.0,
    logp_norm: Some(LogpNorm::Sum),
    doc: "SLiC max(0, 1 − βh)",
};
pub const IPO: LossDecl = LossDecl {
    name: "ipo",
    needs_ref: true,
    beta: 0.1,
    nll_weight: 0.0,
    logp_norm: None,
    doc: "IPO (ρc/Lc − ρr/Lr − 1/(2β))²",
};
pub const SIGMOID_NORM: LossDecl = LossDecl {
    name: "sigmoid_norm",
    needs_ref: true,
    beta: 0.1,
    nll_weight: 0.0,
    logp_norm: None,
    doc: "length-normalised DPO −logσ(β(ρc/Lc − ρr/Lr))",
};
pub const ORPO: LossDecl = LossDecl {
    name: "orpo",
    needs_ref: false,
    beta: 0.1,
    nll_weight: 1.0,
    logp_norm: None,
    doc: "ORPO NLL(chosen) − λ·logσ(log_odds), λ = beta; no reference",
};
pub const SIMPO: LossDecl = LossDecl {
    name: "simpo",
    needs_ref: false,
    beta: 2.0,
    nll_weight: 0.0,
    logp_norm: None,
    doc: "SimPO −logσ(β(a − b) − γ); no reference",
};

/// Every loss `dpo loss=…` accepts, in the order of the schema's enum.
pub const LOSSES: &[LossDecl] = &[SIGMOID, ROBUST, HINGE, IPO, SIGMOID_NORM, ORPO, SIMPO];

/// The names of [`LOSSES`], in order (the schema's enum needs a `&'static [&'static str]`;
/// a unit test checks the two agree).
pub const LOSS_NAMES: &[&str] = &[
    SIGMOID.name,
    ROBUST.name,
    HINGE.name,
    IPO.name,
    SIGMOID_NORM.name,
    ORPO.name,
    SIMPO.name,
];

/// The declaration of loss `name`.
pub fn find(name: &str) -> Option<&'static LossDecl> {
    LOSSES.iter().find(|d| d.name == name)
}

impl FromParam for &'static LossDecl {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        let s = String::from_param(v, name)?;
        find(&s).ok_or_else(|| {
            DecodeError::new(
                name,
                format!("`{s}` is not one of {}", LOSS_NAMES.join(" | ")),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_list_is_the_table_in_order() {
        let names: Vec<&str> = LOSSES.iter().map(|d| d.name).collect();
        assert_eq!(names, LOSS_NAMES);
    }
}
