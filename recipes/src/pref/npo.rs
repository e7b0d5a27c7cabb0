//! NPO (Zhang et al., unlearning) on a forget set: `−(2/β)·logσ(−β·(logπ(y) − logπref(y)))`
//! with sequence log-probs summed over completion tokens. It is bounded below by 0 and, unlike
//! gradient ascent on the NLL, its gradient vanishes as `logπ(y)` falls far below the
//! reference, so it does not diverge.
//!
//! Retain terms (`retain-loss`), per retain sequence of `L` completion tokens:
//! - `nll`: `−logπ(y)/L` (mean over its tokens);
//! - `kl`: `(1/L)·Σ_t ½(logπ(y_t) − logπref(y_t))²`, the k2 estimator of the KL between the
//!   policy and the reference on the retain tokens, from the stored per-token reference
//!   log-probs (≥ 0, zero iff the two agree on every retain token).

use super::dpo::log_sigmoid;
use tch::Tensor;

/// `−(2/β)·logσ(−β·(logπ − logπref))`.
pub fn npo(logp: &Tensor, ref_logp: &Tensor, beta: f64) -> Tensor {
    -(log_sigmoid(&((logp - ref_logp) * -beta)) * (2.0 / beta))
}
