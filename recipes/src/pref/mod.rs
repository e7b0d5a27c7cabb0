//! Preference-optimisation losses and their registry, sequence log-probs, pair tokenisation and
//! the stored reference log-probs.
//!
//! One file per loss family, each formula in its doc comment: [`dpo`] (sigmoid / cDPO label
//! smoothing, robust, hinge, sigmoid_norm), [`ipo`], [`orpo`], [`simpo`], [`npo`], [`kto`].
//! [`LOSSES`] maps the names accepted by `dpo loss=…` to their declaration (whether a reference
//! is needed, defaults of β and of the normalisation); the `dpo` kind's schema reads it.
//!
//! Notation: `logπ(y)` is the policy's log-prob of a completion summed over its completion
//! tokens, `Lc`, `Lr` the completion lengths in tokens, `ρ = logπ(y) − logπref(y)`,
//! `h = ρc − ρr`; `a`, `b` are the per-token *average* log-probs of chosen and rejected.
//!
//! Normalisation choices, each an explicit parameter of the `dpo` kind:
//! - `logp-norm sum|mean` — whether `ρ` uses summed (default for sigmoid, robust, hinge) or
//!   per-token averaged log-probs (`ρ/L`; fixed by definition for ipo, sigmoid_norm, simpo,
//!   orpo, which ignore the parameter);
//! - `nll-weight α` (RPO; default 0, except 1 for orpo where the NLL is part of the loss) and
//!   `nll-norm mean|sum` — `mean` (default): `NLL = −logπ(yc)/Lc`, the mean over the pair's
//!   chosen completion tokens (TRL's RPO and ORPO convention); `sum`: `−logπ(yc)`.
//!
//! The per-pair losses are summed by the stage and divided by the number of pairs of the
//! optimizer step (the trainer's normalisation unit), so the step loss is the mean per pair.

pub mod dpo;
pub mod encode;
pub mod ipo;
pub mod kto;
pub mod logps;
pub mod npo;
pub mod orpo;
pub mod simpo;
pub mod stored;

use anyhow::bail;
use tch::Tensor;

/// A preference loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    Sigmoid,
    Robust,
    Hinge,
    Ipo,
    SigmoidNorm,
    Orpo,
    Simpo,
}

/// Summed or per-token averaged sequence log-probs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogpNorm {
    Sum,
    Mean,
}

impl LogpNorm {
    pub const NAMES: &'static [&'static str] = &["sum", "mean"];
    pub fn parse(s: &str) -> Option<LogpNorm> {
        match s {
            "sum" => Some(LogpNorm::Sum),
            "mean" => Some(LogpNorm::Mean),
            _ => None,
        }
    }
}

/// The declaration of a loss: its name in recipes and its defaults.
#[derive(Clone, Copy, Debug)]
pub struct LossDecl {
    pub name: &'static str,
    pub kind: LossKind,
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

/// Every loss `dpo loss=…` accepts.
pub const LOSSES: &[LossDecl] = &[
    LossDecl {
        name: "sigmoid",
        kind: LossKind::Sigmoid,
        needs_ref: true,
        beta: 0.1,
        nll_weight: 0.0,
        logp_norm: Some(LogpNorm::Sum),
        doc: "DPO −logσ(βh); cDPO with label-smoothing ε; RPO with nll-weight",
    },
    LossDecl {
        name: "robust",
        kind: LossKind::Robust,
        needs_ref: true,
        beta: 0.1,
        nll_weight: 0.0,
        logp_norm: Some(LogpNorm::Sum),
        doc: "rDPO [−(1−ε)logσ(βh) + ε·logσ(−βh)]/(1−2ε)",
    },
    LossDecl {
        name: "hinge",
        kind: LossKind::Hinge,
        needs_ref: true,
        beta: 0.1,
        nll_weight: 0.0,
        logp_norm: Some(LogpNorm::Sum),
        doc: "SLiC max(0, 1 − βh)",
    },
    LossDecl {
        name: "ipo",
        kind: LossKind::Ipo,
        needs_ref: true,
        beta: 0.1,
        nll_weight: 0.0,
        logp_norm: None,
        doc: "IPO (ρc/Lc − ρr/Lr − 1/(2β))²",
    },
    LossDecl {
        name: "sigmoid_norm",
        kind: LossKind::SigmoidNorm,
        needs_ref: true,
        beta: 0.1,
        nll_weight: 0.0,
        logp_norm: None,
        doc: "length-normalised DPO −logσ(β(ρc/Lc − ρr/Lr))",
    },
    LossDecl {
        name: "orpo",
        kind: LossKind::Orpo,
        needs_ref: false,
        beta: 0.1,
        nll_weight: 1.0,
        logp_norm: None,
        doc: "ORPO NLL(chosen) − λ·logσ(log_odds), λ = beta; no reference",
    },
    LossDecl {
        name: "simpo",
        kind: LossKind::Simpo,
        needs_ref: false,
        beta: 2.0,
        nll_weight: 0.0,
        logp_norm: None,
        doc: "SimPO −logσ(β(a − b) − γ); no reference",
    },
];

/// The loss names, for the schema's enum.
pub const LOSS_NAMES: &[&str] = &[
    "sigmoid",
    "robust",
    "hinge",
    "ipo",
    "sigmoid_norm",
    "orpo",
    "simpo",
];

/// The declaration of loss `name`.
pub fn find(name: &str) -> Option<&'static LossDecl> {
    LOSSES.iter().find(|d| d.name == name)
}

/// A resolved loss configuration (defaults applied).
#[derive(Clone, Copy, Debug)]
pub struct LossConfig {
    pub decl: &'static LossDecl,
    pub beta: f64,
    /// cDPO / robust / simpo label smoothing ε ∈ [0, 0.5).
    pub label_smoothing: f64,
    /// SimPO's target margin γ.
    pub gamma: f64,
    /// RPO's α (the NLL weight); ORPO's NLL weight.
    pub nll_weight: f64,
    /// `mean`: NLL = −logπ(yc)/Lc; `sum`: −logπ(yc).
    pub nll_norm: LogpNorm,
    /// Normalisation of ρ for sigmoid / robust / hinge.
    pub logp_norm: LogpNorm,
}

impl LossConfig {
    /// Defaults of `decl`: ε = 0, γ = 0.5, NLL mean.
    pub fn new(decl: &'static LossDecl) -> LossConfig {
        LossConfig {
            decl,
            beta: decl.beta,
            label_smoothing: 0.0,
            gamma: 0.5,
            nll_weight: decl.nll_weight,
            nll_norm: LogpNorm::Mean,
            logp_norm: decl.logp_norm.unwrap_or(LogpNorm::Mean),
        }
    }
}

/// Per-pair inputs (all `[B]` f32 tensors; policy ones carry the graph).
pub struct PairInputs<'a> {
    /// Policy log-probs of chosen / rejected, summed over completion tokens.
    pub chosen: &'a Tensor,
    pub rejected: &'a Tensor,
    /// Reference log-probs (sums), when the loss needs them.
    pub ref_chosen: Option<&'a Tensor>,
    pub ref_rejected: Option<&'a Tensor>,
    /// Completion lengths in tokens (as floats, ≥ 1).
    pub len_chosen: &'a Tensor,
    pub len_rejected: &'a Tensor,
}

/// Per-pair outputs (`[B]`).
pub struct PairOut {
    /// The loss of each pair, NLL term included.
    pub loss: Tensor,
    /// The NLL term before weighting, when `nll_weight > 0` (or always for orpo).
    pub nll: Option<Tensor>,
    /// Implicit rewards (detached): `β·ρ` with the loss's normalisation; `β·a`, `β·b` for the
    /// reference-free losses.
    pub reward_chosen: Tensor,
    pub reward_rejected: Tensor,
}

/// The per-pair loss of `cfg` on `x`.
pub fn pair_loss(cfg: &LossConfig, x: &PairInputs) -> anyhow::Result<PairOut> {
    let (beta, eps) = (cfg.beta, cfg.label_smoothing);
    if beta <= 0.0 {
        bail!("beta must be positive, got {beta}");
    }
    if !(0.0..0.5).contains(&eps) {
        bail!("label-smoothing must be in [0, 0.5), got {eps}");
    }
    let a = x.chosen / x.len_chosen;
    let b = x.rejected / x.len_rejected;
    let (loss, rc, rr) = if cfg.decl.needs_ref {
        let (Some(refc), Some(refr)) = (x.ref_chosen, x.ref_rejected) else {
            bail!("loss `{}` needs reference log-probs", cfg.decl.name);
        };
        let rho_c = x.chosen - refc;
        let rho_r = x.rejected - refr;
        let norm = cfg.decl.logp_norm.map_or(LogpNorm::Mean, |_| cfg.logp_norm);
        let (nc, nr) = match norm {
            LogpNorm::Sum => (rho_c.shallow_clone(), rho_r.shallow_clone()),
            LogpNorm::Mean => (&rho_c / x.len_chosen, &rho_r / x.len_rejected),
        };
        let h = &nc - &nr;
        let loss = match cfg.decl.kind {
            LossKind::Sigmoid => dpo::sigmoid(&h, beta, eps),
            LossKind::Robust => dpo::robust(&h, beta, eps),
            LossKind::Hinge => dpo::hinge(&h, beta),
            LossKind::Ipo => ipo::ipo(&rho_c, &rho_r, x.len_chosen, x.len_rejected, beta),
            LossKind::SigmoidNorm => {
                dpo::sigmoid_norm(&rho_c, &rho_r, x.len_chosen, x.len_rejected, beta)
            }
            LossKind::Orpo | LossKind::Simpo => bail!("`{}` is reference-free", cfg.decl.name),
        };
        (loss, nc * beta, nr * beta)
    } else {
        let loss = match cfg.decl.kind {
            LossKind::Simpo => simpo::simpo(&a, &b, beta, cfg.gamma, eps),
            _ => orpo::odds_ratio_term(&a, &b, beta),
        };
        (loss, &a * beta, &b * beta)
    };
    let (loss, nll) = if cfg.nll_weight > 0.0 {
        let nll = match cfg.nll_norm {
            LogpNorm::Mean => -&a,
            LogpNorm::Sum => -x.chosen,
        };
        (loss + &nll * cfg.nll_weight, Some(nll))
    } else {
        (loss, None)
    };
    Ok(PairOut {
        loss,
        nll,
        reward_chosen: rc.detach(),
        reward_rejected: rr.detach(),
    })
}
