//! Causal-LM cross-entropy summed over target tokens, for the normalisation of
//! [`super::pack::LossNorm`].
//!
//! `sum_ce(logits, labels) = Σ_{b, t ≥ 1, labels[b,t] ≠ −100} −log softmax(logits[b, t−1])[labels[b,t]]`
//! (logits `[B, T, V]`, labels `[B, T]` aligned with the inputs: the shift happens here).
//! Computed in f32 whatever the logits' dtype.

use super::examples::IGNORE;
use tch::{Kind, Reduction, Tensor};

/// Summed cross-entropy over target tokens (a scalar tensor).
pub fn sum_ce(logits: &Tensor, labels: &Tensor) -> anyhow::Result<Tensor> {
    let (b, t, v) = logits.size3()?;
    if t < 2 {
        return Ok(Tensor::zeros([], (Kind::Float, logits.device())));
    }
    let l = logits
        .f_narrow(1, 0, t - 1)?
        .f_to_kind(Kind::Float)?
        .f_reshape([b * (t - 1), v])?;
    let y = labels.f_narrow(1, 1, t - 1)?.f_reshape([b * (t - 1)])?;
    Ok(l.f_cross_entropy_loss::<Tensor>(&y, None, Reduction::Sum, IGNORE, 0.0)?)
}
