//! The causal-LM loss of a packed or padded [`Batch`]: `Σ CE` over its target tokens (the value
//! of [`crate::batching::loss::sum_ce`], the LM head applied to target positions only), with the
//! attention the batch needs — block-diagonal causal ([`AttnMask::Segments`]) when a row holds
//! several examples, causal plus a padding mask when some positions are padding, plain causal
//! otherwise.

use crate::arch::{AttnMask, HfModel};
use crate::batching::examples::IGNORE;
use crate::batching::pack::Batch;
use anyhow::Context;
use tch::{Kind, Reduction, Tensor};

/// The tensors of a batch on `device`: (input ids, labels, position ids, segment ids).
fn tensors(b: &Batch, device: tch::Device) -> anyhow::Result<[Tensor; 4]> {
    let shape = [b.rows as i64, b.cols as i64];
    let t = |v: &[i64]| -> anyhow::Result<Tensor> {
        Ok(Tensor::from_slice(v)
            .f_view(shape)?
            .f_to_device(device)?
            .f_to_kind(Kind::Int64)?)
    };
    Ok([
        t(&b.input_ids)?,
        t(&b.labels)?,
        t(&b.position_ids)?,
        t(&b.segment_ids)?,
    ])
}

/// The attention a batch needs (see the module docs); `seg` = its segment ids.
fn attn_mask<'a>(b: &Batch, seg: &'a Tensor) -> AttnMask<'a> {
    if b.packed {
        AttnMask::Segments(seg)
    } else if b.n_tokens() < b.rows * b.cols {
        AttnMask::Padding(seg)
    } else {
        AttnMask::Causal
    }
}

/// Logits `[rows, cols, vocab]` of a batch.
pub fn logits(model: &HfModel, b: &Batch) -> anyhow::Result<(Tensor, Tensor)> {
    let [ids, labels, pos, seg] = tensors(b, model.device())?;
    let mask = attn_mask(b, &seg);
    let logits = model
        .forward(&ids, &pos, mask)
        .with_context(|| format!("forward of a {}×{} batch", b.rows, b.cols))?;
    Ok((logits, labels))
}

/// `Σ CE` over the batch's target tokens (a scalar with a graph): the value of
/// `sum_ce(logits(model, b))`, computed without the logits of non-target positions.
///
/// With `h` the final hidden states `[B, T, hidden]` and `y[b, t] = labels[b, t + 1]`, only the
/// rows `K = {(b, t) : t < T − 1, y[b, t] ≠ IGNORE}` go through the LM head:
/// `Σ_{k ∈ K} CE(h_k Wᵀ, y_k)`. The head is the largest matmul of a small model (vocab × hidden
/// per row, forward and backward), and in SFT often half the positions are prompt or padding.
pub fn sum_loss(model: &HfModel, b: &Batch) -> anyhow::Result<Tensor> {
    let [ids, labels, pos, seg] = tensors(b, model.device())?;
    let mask = attn_mask(b, &seg);
    let h = model
        .model
        .hidden_states(&ids, &pos, mask)
        .with_context(|| format!("forward of a {}×{} batch", b.rows, b.cols))?;
    let (rows, t, hidden) = h.size3()?;
    if t < 2 {
        return Ok(Tensor::f_zeros([], (Kind::Float, h.device()))?);
    }
    let y = labels.f_narrow(1, 1, t - 1)?.f_reshape([rows * (t - 1)])?;
    let keep = y.f_ne(IGNORE)?.f_nonzero()?.f_squeeze_dim(1)?;
    let hk = h
        .f_narrow(1, 0, t - 1)?
        .f_reshape([rows * (t - 1), hidden])?
        .f_index_select(0, &keep)?;
    let logits = hk
        .f_linear::<&Tensor>(model.model.lm_head_weight(), None)?
        .f_to_kind(Kind::Float)?;
    let yk = y.f_index_select(0, &keep)?;
    Ok(logits.f_cross_entropy_loss::<Tensor>(&yk, None, Reduction::Sum, IGNORE, 0.0)?)
}
