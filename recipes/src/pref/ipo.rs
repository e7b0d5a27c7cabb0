//! IPO (Azar et al.): `(ρc/Lc − ρr/Lr − 1/(2β))²` on per-token average log-ratios, where β plays
//! the role of τ. The averages are part of the definition (TRL's convention), so `logp-norm`
//! does not apply.

use tch::Tensor;

/// `(ρc/Lc − ρr/Lr − 1/(2β))²`.
pub fn ipo(rho_c: &Tensor, rho_r: &Tensor, len_c: &Tensor, len_r: &Tensor, beta: f64) -> Tensor {
    (rho_c / len_c - rho_r / len_r - 1.0 / (2.0 * beta)).square()
}
