//! The DPO family on the log-ratio margin `h = ρc − ρr`, where `ρ = logπ(y) − logπref(y)`
//! (sums over completion tokens by default, see [`super::LogpNorm`]).
//!
//! - `sigmoid` (DPO, with cDPO label smoothing ε): `−(1−ε)·logσ(βh) − ε·logσ(−βh)`; ε = 0 is
//!   plain DPO.
//! - `robust` (rDPO): `[−(1−ε)·logσ(βh) + ε·logσ(−βh)] / (1 − 2ε)`.
//! - `hinge` (SLiC): `max(0, 1 − βh)`.
//! - `sigmoid_norm`: `−logσ(β·(ρc/Lc − ρr/Lr))`, DPO on per-token averages — the same as
//!   `sigmoid` with `logp-norm mean`.
//!
//! `logσ` is computed as `−softplus(−x)`, stable for large |x|.

use super::{Loss, LossConfig, Terms};
use tch::Tensor;

/// `sigmoid` (DPO / cDPO).
pub const SIGMOID: Loss = Loss {
    decl: &kinds::losses::SIGMOID,
    f: sigmoid_loss,
};
/// `robust` (rDPO).
pub const ROBUST: Loss = Loss {
    decl: &kinds::losses::ROBUST,
    f: robust_loss,
};
/// `hinge` (SLiC).
pub const HINGE: Loss = Loss {
    decl: &kinds::losses::HINGE,
    f: hinge_loss,
};
/// `sigmoid_norm` (length-normalised DPO).
pub const SIGMOID_NORM: Loss = Loss {
    decl: &kinds::losses::SIGMOID_NORM,
    f: sigmoid_norm_loss,
};

fn sigmoid_loss(c: &LossConfig, t: &Terms) -> anyhow::Result<Tensor> {
    Ok(sigmoid(&t.ratios()?.h, c.beta, c.label_smoothing))
}

fn robust_loss(c: &LossConfig, t: &Terms) -> anyhow::Result<Tensor> {
    Ok(robust(&t.ratios()?.h, c.beta, c.label_smoothing))
}

fn hinge_loss(c: &LossConfig, t: &Terms) -> anyhow::Result<Tensor> {
    Ok(hinge(&t.ratios()?.h, c.beta))
}

fn sigmoid_norm_loss(c: &LossConfig, t: &Terms) -> anyhow::Result<Tensor> {
    let r = t.ratios()?;
    Ok(sigmoid_norm(
        &r.c,
        &r.r,
        t.len_chosen,
        t.len_rejected,
        c.beta,
    ))
}

/// `log σ(x)`, numerically stable.
pub fn log_sigmoid(x: &Tensor) -> Tensor {
    -((-x).softplus())
}

/// `−(1−ε)·logσ(βh) − ε·logσ(−βh)`.
pub fn sigmoid(h: &Tensor, beta: f64, eps: f64) -> Tensor {
    let z = h * beta;
    -(log_sigmoid(&z) * (1.0 - eps)) - log_sigmoid(&-&z) * eps
}

/// `[−(1−ε)·logσ(βh) + ε·logσ(−βh)] / (1 − 2ε)`; ε < 0.5.
pub fn robust(h: &Tensor, beta: f64, eps: f64) -> Tensor {
    let z = h * beta;
    (-(log_sigmoid(&z) * (1.0 - eps)) + log_sigmoid(&-&z) * eps) / (1.0 - 2.0 * eps)
}

/// `max(0, 1 − βh)`.
pub fn hinge(h: &Tensor, beta: f64) -> Tensor {
    (-(h * beta) + 1.0).relu()
}

/// `−logσ(β·(ρc/Lc − ρr/Lr))`.
pub fn sigmoid_norm(
    rho_c: &Tensor,
    rho_r: &Tensor,
    len_c: &Tensor,
    len_r: &Tensor,
    beta: f64,
) -> Tensor {
    sigmoid(&(rho_c / len_c - rho_r / len_r), beta, 0.0)
}
