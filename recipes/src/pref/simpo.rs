//! SimPO (Meng et al.), reference-free: `−logσ(β·((a − b) − γ/β))` where `a`, `b` are the
//! average log-probs of chosen and rejected per completion token; typical β = 2, γ = 0.5
//! (`gamma`). cDPO-style label smoothing ε applies as in `sigmoid`.

use super::dpo::sigmoid;
use super::{Loss, LossConfig, Terms};
use tch::Tensor;

/// `simpo`.
pub const LOSS: Loss = Loss {
    decl: &kinds::losses::SIMPO,
    f: simpo_loss,
};

fn simpo_loss(c: &LossConfig, t: &Terms) -> anyhow::Result<Tensor> {
    Ok(simpo(t.a, t.b, c.beta, c.gamma, c.label_smoothing))
}

/// `−(1−ε)·logσ(β(a−b) − γ) − ε·logσ(−(β(a−b) − γ))`.
pub fn simpo(a: &Tensor, b: &Tensor, beta: f64, gamma: f64, eps: f64) -> Tensor {
    // β·((a − b) − γ/β) = β·(a − b − γ/β), fed to the DPO sigmoid loss with "h" = a − b − γ/β.
    sigmoid(&(a - b - gamma / beta), beta, eps)
}
