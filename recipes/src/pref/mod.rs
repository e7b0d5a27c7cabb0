//! Preference-optimisation losses and their registry, sequence log-probs, pair tokenisation,
//! the stored reference log-probs and the pair data source the `dpo` kind trains on.
//!
//! One file per loss family, each formula in its doc comment: [`dpo`] (sigmoid / cDPO label
//! smoothing, robust, hinge, sigmoid_norm), [`ipo`], [`orpo`], [`simpo`], and [`npo`] (the
//! unlearning loss of the `npo` kind and its retain terms). Each `dpo` loss family file exports
//! its registry entries ([`Loss`]: the torch-free declaration in `kinds::losses` and the
//! function); [`LOSSES`] lists them in the order of `kinds::losses::LOSSES`, which the `dpo`
//! kind's schema and check read. Adding a loss: its declaration and a line in `kinds::losses`,
//! its file here and a line in [`LOSSES`].
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
pub mod logps;
pub mod npo;
pub mod orpo;
pub mod pairs;
pub mod simpo;
pub mod stored;

use anyhow::{anyhow, bail};
pub use kinds::losses::{LogpNorm, LossDecl};
use tch::Tensor;

/// A loss's per-pair function: the loss of each pair (`[B]`) from the pair's [`Terms`],
/// without the NLL term (added by [`pair_loss`]).
pub type LossFn = fn(&LossConfig, &Terms) -> anyhow::Result<Tensor>;

/// A registry entry: a loss's declaration and its implementation.
#[derive(Clone, Copy, Debug)]
pub struct Loss {
    pub decl: &'static LossDecl,
    pub f: LossFn,
}

/// Every loss `dpo loss=…` accepts, in the order of `kinds::losses::LOSSES` (tested).
pub const LOSSES: &[Loss] = &[
    dpo::SIGMOID,
    dpo::ROBUST,
    dpo::HINGE,
    ipo::LOSS,
    dpo::SIGMOID_NORM,
    orpo::LOSS,
    simpo::LOSS,
];

/// The declaration of loss `name`.
pub fn find(name: &str) -> Option<&'static LossDecl> {
    kinds::losses::find(name)
}

/// The implementation of `decl`.
pub fn implementation(decl: &LossDecl) -> Option<&'static Loss> {
    LOSSES.iter().find(|l| l.decl.name == decl.name)
}

/// A resolved loss configuration (defaults applied).
#[derive(Clone, Copy, Debug)]
pub struct LossConfig {
    pub decl: &'static LossDecl,
    /// The loss's function (from [`LOSSES`]).
    pub f: LossFn,
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
    /// Defaults of `decl`: ε = 0, γ = 0.5, NLL mean (the `dpo` kind's defaults; a node
    /// overrides every field from its typed parameters).
    pub fn new(decl: &'static LossDecl) -> LossConfig {
        let f = implementation(decl)
            .unwrap_or_else(|| panic!("loss `{}` is declared without an implementation", decl.name))
            .f;
        LossConfig {
            decl,
            f,
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

/// The log-ratios of a pair against the reference.
pub struct Ratios {
    /// `ρc`, `ρr` (sums).
    pub c: Tensor,
    pub r: Tensor,
    /// `ρc`, `ρr` with the loss's normalisation (sums, or `ρ/L`).
    pub norm_c: Tensor,
    pub norm_r: Tensor,
    /// `h`: `norm_c − norm_r`.
    pub h: Tensor,
}

/// What a loss function reads.
pub struct Terms<'a> {
    /// The log-ratios; `None` for the reference-free losses.
    pub ratios: Option<&'a Ratios>,
    /// `a`, `b`: per-token average log-probs of chosen / rejected.
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub len_chosen: &'a Tensor,
    pub len_rejected: &'a Tensor,
}

impl Terms<'_> {
    /// The log-ratios, for a loss that needs the reference.
    pub fn ratios(&self) -> anyhow::Result<&Ratios> {
        self.ratios
            .ok_or_else(|| anyhow!("internal: a reference loss called without log-ratios"))
    }
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

/// The log-ratios of `x` against its reference, normalised per `cfg` (per-token means when
/// the loss fixes its normalisation).
fn ratios(cfg: &LossConfig, x: &PairInputs) -> anyhow::Result<Ratios> {
    let (Some(refc), Some(refr)) = (x.ref_chosen, x.ref_rejected) else {
        bail!("loss `{}` needs reference log-probs", cfg.decl.name);
    };
    let c = x.chosen - refc;
    let r = x.rejected - refr;
    let norm = cfg.decl.logp_norm.map_or(LogpNorm::Mean, |_| cfg.logp_norm);
    let (norm_c, norm_r) = match norm {
        LogpNorm::Sum => (c.shallow_clone(), r.shallow_clone()),
        LogpNorm::Mean => (&c / x.len_chosen, &r / x.len_rejected),
    };
    let h = &norm_c - &norm_r;
    Ok(Ratios {
        c,
        r,
        norm_c,
        norm_r,
        h,
    })
}

/// The per-pair loss of `cfg` on `x`: `loss + α·NLL` with `NLL = −a` (`nll-norm mean`) or
/// `−logπ(yc)` (`sum`) when `α = nll_weight > 0`.
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
    let rho = if cfg.decl.needs_ref {
        Some(ratios(cfg, x)?)
    } else {
        None
    };
    let terms = Terms {
        ratios: rho.as_ref(),
        a: &a,
        b: &b,
        len_chosen: x.len_chosen,
        len_rejected: x.len_rejected,
    };
    let loss = (cfg.f)(cfg, &terms)?;
    let (rc, rr) = match &rho {
        Some(r) => (&r.norm_c * beta, &r.norm_r * beta),
        None => (&a * beta, &b * beta),
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_implementations_are_the_declarations_in_order() {
        let impls: Vec<&str> = super::LOSSES.iter().map(|l| l.decl.name).collect();
        let decls: Vec<&str> = kinds::losses::LOSSES.iter().map(|d| d.name).collect();
        assert_eq!(impls, decls);
    }
}
