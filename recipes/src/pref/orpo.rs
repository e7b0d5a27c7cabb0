//! ORPO (Hong et al.), reference-free:
//! `NLL(chosen) − λ·logσ(log_odds)` with
//! `log_odds = (a − b) − (log(1 − eᵃ) − log(1 − eᵇ))`, where `a`, `b` are the **average**
//! log-probs of chosen and rejected (per completion token) and `NLL = −a` by default.
//! `log(1 − eˣ)` is computed as `log(−expm1(x))`, stable for `x` near 0⁻.
//! λ is the `beta` parameter of the `dpo` kind (default for ORPO: 0.1).

use super::dpo::log_sigmoid;
use super::{Loss, LossConfig, Terms};
use tch::Tensor;

/// `orpo`: the odds-ratio term here; its NLL is the `nll-weight` term (default 1 for orpo).
pub const LOSS: Loss = Loss {
    decl: &kinds::losses::ORPO,
    f: orpo_loss,
};

fn orpo_loss(c: &LossConfig, t: &Terms) -> anyhow::Result<Tensor> {
    Ok(odds_ratio_term(t.a, t.b, c.beta))
}

/// `log(1 − eˣ)` for `x < 0`.
fn log1m_exp(x: &Tensor) -> Tensor {
    (-(x.expm1())).log()
}

/// `(a − b) − (log(1 − eᵃ) − log(1 − eᵇ))`.
pub fn log_odds(a: &Tensor, b: &Tensor) -> Tensor {
    (a - b) - (log1m_exp(a) - log1m_exp(b))
}

/// The odds-ratio term `−λ·logσ(log_odds)` (without the NLL, which the caller adds with its
/// normalisation).
pub fn odds_ratio_term(a: &Tensor, b: &Tensor, lambda: f64) -> Tensor {
    -(log_sigmoid(&log_odds(a, b)) * lambda)
}
