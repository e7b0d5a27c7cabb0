//! IPO (Azar et al.): `(ρc/Lc − ρr/Lr − 1/(2β))²` on per-token average log-ratios, where β plays
//! the role of τ. The averages are part of the definition (TRL's convention), so `logp-norm`
//! does not apply.

use super::{Loss, LossConfig, Terms};
use tch::Tensor;

/// `ipo`.
pub const LOSS: Loss = Loss {
    decl: &kinds::losses::IPO,
    f: ipo_loss,
};

fn ipo_loss(c: &LossConfig, t: &Terms) -> anyhow::Result<Tensor> {
    let r = t.ratios()?;
    Ok(ipo(&r.c, &r.r, t.len_chosen, t.len_rejected, c.beta))
}

/// `(ρc/Lc − ρr/Lr − 1/(2β))²`.
pub fn ipo(rho_c: &Tensor, rho_r: &Tensor, len_c: &Tensor, len_r: &Tensor, beta: f64) -> Tensor {
    (rho_c / len_c - rho_r / len_r - 1.0 / (2.0 * beta)).square()
}
