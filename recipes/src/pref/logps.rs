//! Sequence log-probabilities of tokenised examples in one forward pass.
//!
//! Per-token log-probs are `log_softmax(logits[:, :-1])` gathered at `input_ids[:, 1:]`
//! (computed in f32), masked to target positions (`labels[t] ≠ −100`, `t ≥ 1`): prompt and
//! padding contribute 0. `sum[i]` is their sum for sequence `i`, `len[i]` the number of target
//! tokens. Sequences are right-padded into one `[n, T]` batch with a padding attention mask, so
//! a preference pair's chosen and rejected sides (rows `i` and `B + i`) share one forward.

use crate::arch::{AttnMask, HfModel};
use crate::batching::examples::{Example, IGNORE};
use anyhow::Context;
use tch::{Kind, Tensor};

/// Log-probs of a batch of sequences.
pub struct SeqLogps {
    /// `[n]` summed target log-probs (with the graph when the model trains).
    pub sum: Tensor,
    /// `[n]` target tokens per sequence (f32).
    pub len: Tensor,
    /// `[n, T−1]` per-token log-probs (0 off target).
    pub tok: Tensor,
    /// `[n, T−1]` 1.0 on target positions.
    pub mask: Tensor,
    /// Real (non-padding) tokens in the batch.
    pub n_tokens: usize,
}

/// The log-probs of `seqs` under `model` (one forward of the padded batch).
pub fn seq_logps(model: &HfModel, seqs: &[&Example], pad: i64) -> anyhow::Result<SeqLogps> {
    let n = seqs.len();
    let t = seqs.iter().map(|e| e.len()).max().unwrap_or(0).max(2);
    let mut ids = vec![pad; n * t];
    let mut labels = vec![IGNORE; n * t];
    let mut pos = vec![0i64; n * t];
    let mut seg = vec![0i64; n * t];
    for (r, e) in seqs.iter().enumerate() {
        for (j, (&x, &l)) in e.input_ids.iter().zip(&e.labels).enumerate() {
            ids[r * t + j] = x;
            labels[r * t + j] = l;
            pos[r * t + j] = j as i64;
            seg[r * t + j] = 1;
        }
    }
    let n_tokens: usize = seqs.iter().map(|e| e.len()).sum();
    let dev = model.device();
    let mk = |v: &[i64]| crate::trainer::host::upload(v, &[n as i64, t as i64], dev);
    let (ids, labels, pos, seg) = (mk(&ids)?, mk(&labels)?, mk(&pos)?, mk(&seg)?);
    let mask = if n_tokens < n * t {
        AttnMask::Padding(&seg)
    } else {
        AttnMask::Causal
    };
    let logits = model
        .forward(&ids, &pos, mask)
        .with_context(|| format!("forward of a {n}×{t} batch"))?;
    let t1 = t as i64 - 1;
    let lp = logits
        .f_narrow(1, 0, t1)?
        .f_to_kind(Kind::Float)?
        .f_log_softmax(-1, Kind::Float)?;
    let y = labels.f_narrow(1, 1, t1)?;
    let m = y.f_ne(IGNORE)?.f_to_kind(Kind::Float)?;
    let tok = lp
        .f_gather(2, &y.f_clamp_min(0)?.f_unsqueeze(-1)?, false)?
        .f_squeeze_dim(-1)?
        .f_mul(&m)?;
    Ok(SeqLogps {
        sum: tok.f_sum_dim_intlist(1, false, Kind::Float)?,
        len: m.f_sum_dim_intlist(1, false, Kind::Float)?,
        tok,
        mask: m,
        n_tokens,
    })
}
