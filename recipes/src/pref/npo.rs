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
use crate::batching::examples::IGNORE;
use tch::Tensor;

/// `−(2/β)·logσ(−β·(logπ − logπref))`.
pub fn npo(logp: &Tensor, ref_logp: &Tensor, beta: f64) -> Tensor {
    -(log_sigmoid(&((logp - ref_logp) * -beta)) * (2.0 / beta))
}

/// The `nll` retain term of each sequence: `−logπ(y)/L` (`sum` `[R]`, `len` `[R]`, `L ≥ 1`).
pub fn retain_nll(sum: &Tensor, len: &Tensor) -> Tensor {
    -sum / len
}

/// The `kl` retain term of each sequence: `(1/L)·Σ_t ½(logπ(y_t) − logπref(y_t))²` over its
/// target tokens. `tok` and `mask` are the policy's `[R, T−1]` per-token log-probs and target
/// mask; `ref_tok[i]` the stored reference log-probs of sequence `i`'s targets in position
/// order, laid out here on its target positions, which are read from `labels[i]`, the host copy
/// of sequence `i`'s labels (position `c` is a target iff `labels[i][c + 1] ≠ IGNORE`, the
/// rule of `mask`), so nothing is read back from the device.
pub fn retain_kl(
    tok: &Tensor,
    mask: &Tensor,
    len: &Tensor,
    ref_tok: &[&[f32]],
    labels: &[&[i64]],
) -> anyhow::Result<Tensor> {
    let (rows, cols) = (mask.size()[0], mask.size()[1] as usize);
    let mut flat = vec![0f32; rows as usize * cols];
    for (row, (r, l)) in ref_tok.iter().zip(labels).enumerate() {
        let mut k = 0;
        for c in 0..cols {
            if l.get(c + 1).is_some_and(|&y| y != IGNORE) {
                flat[row * cols + c] = r.get(k).copied().unwrap_or(0.0);
                k += 1;
            }
        }
    }
    let ref_tok = Tensor::from_slice(&flat)
        .view([rows, cols as i64])
        .to_device(tok.device());
    let d = (tok - ref_tok) * mask;
    Ok((d.square() * 0.5).sum_dim_intlist(1, false, tch::Kind::Float) / len)
}
