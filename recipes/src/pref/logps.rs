//! Sequence log-probabilities of tokenised examples in one forward pass.
//!
//! Per-token log-probs are `log_softmax(logits[:, :-1])` gathered at `labels[:, 1:]`
//! (computed in f32), masked to target positions (`labels[t] ≠ −100`, `t ≥ 1`): prompt and
//! padding contribute 0. `sum[i]` is their sum for sequence `i`, `len[i]` the number of target
//! tokens. Sequences are right-padded into one `[n, T]` batch with a padding attention mask, so
//! a preference pair's chosen and rejected sides (rows `i` and `B + i`) share one forward.
//!
//! Only target positions go through the LM head, chunk by chunk ([`crate::batching::head`]):
//! no `[n, T, vocab]` tensor exists. A training loss built on `sum`/`tok` gets its gradient
//! through [`SeqLogps::attach`].

use crate::arch::{AttnMask, HfModel};
use crate::batching::examples::{Example, IGNORE};
use crate::batching::head::{self, TokenLogps};
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
    /// The target log-probs `sum` and `tok` are built from, and the head pass that gives
    /// their gradient.
    head: TokenLogps,
}

impl SeqLogps {
    /// A loss built on `sum`/`tok` with its gradient carried to the model (see
    /// [`TokenLogps::attach`]): what a training objective returns. Without gradients, `loss`.
    pub fn attach(&self, loss: &Tensor) -> anyhow::Result<Tensor> {
        self.head.attach(loss)
    }
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
    let (ids, pos, seg) = (mk(&ids)?, mk(&pos)?, mk(&seg)?);
    // Each sequence starts its row: right-padded (causal SDPA on CUDA, `arch::for_padded`).
    let mask = if n_tokens < n * t {
        crate::arch::for_padded(&seg, true)
    } else {
        AttnMask::Causal
    };
    let h = model
        .model
        .hidden_states(&ids, &pos, mask)
        .with_context(|| format!("forward of a {n}×{t} batch"))?;
    let t1 = t as i64 - 1;
    let (keep, y) = head::target_rows(&labels, n, t, IGNORE);
    let mut m = vec![0f32; n * (t - 1)];
    for &k in &keep {
        m[k as usize] = 1.0;
    }
    let m = Tensor::from_slice(&m)
        .f_view([n as i64, t1])?
        .f_to_device(dev)?;
    let keep = Tensor::from_slice(&keep).f_to_device(dev)?;
    let y = Tensor::from_slice(&y).f_to_device(dev)?;
    let hk = head::select_rows(&h, &keep)?;
    let lp = head::token_logps(&hk, model.model.lm_head_weight(), &y, head::CHUNK_TOKENS)?;
    let tok = Tensor::f_zeros([n as i64 * t1], (Kind::Float, dev))?
        .f_index_add(0, &keep, &lp.logp.f_to_kind(Kind::Float)?)?
        .f_view([n as i64, t1])?;
    Ok(SeqLogps {
        sum: tok.f_sum_dim_intlist(1, false, Kind::Float)?,
        len: m.f_sum_dim_intlist(1, false, Kind::Float)?,
        tok,
        mask: m,
        n_tokens,
        head: lp,
    })
}
