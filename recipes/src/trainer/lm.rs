//! The causal-LM loss of a packed or padded [`Batch`]: `Σ CE` over its target tokens (the value
//! of [`crate::batching::loss::sum_ce`], the LM head applied to target positions only), with the
//! attention the batch needs — block-diagonal causal when a row holds several examples (the
//! varlen flash kernel's sequences on CUDA, [`for_packed`]; the dense [`AttnMask::Segments`]
//! mask elsewhere), causal plus a padding mask when some positions are padding, plain causal
//! otherwise.

use crate::arch::mask::{packed_offsets, Packed};
use crate::arch::{AttnMask, HfModel};
use crate::batching::examples::IGNORE;
use crate::batching::head;
use crate::batching::pack::Batch;
use crate::trainer::host;
use anyhow::Context;
use tch::{Kind, Tensor};

/// The tensors of a batch on `device`: (input ids, labels, position ids, segment ids), uploaded
/// through [`host::upload`] (pinned and non-blocking on CUDA).
fn tensors(b: &Batch, device: tch::Device) -> anyhow::Result<[Tensor; 4]> {
    let shape = [b.rows as i64, b.cols as i64];
    let t = |v: &[i64]| host::upload(v, &shape, device);
    Ok([
        t(&b.input_ids)?,
        t(&b.labels)?,
        t(&b.position_ids)?,
        t(&b.segment_ids)?,
    ])
}

/// The attention a batch needs (see the module docs); `seg` = its segment ids on the model's
/// device, `packed` where [`for_packed`] keeps the varlen offsets.
fn attn_mask<'a>(
    model: &HfModel,
    b: &Batch,
    seg: &'a Tensor,
    packed: &'a mut Option<Packed>,
) -> anyhow::Result<AttnMask<'a>> {
    Ok(if b.packed {
        for_packed(model, seg, &b.segment_ids, (b.rows, b.cols), packed)?
    } else if b.n_tokens() < b.rows * b.cols {
        crate::arch::for_padded(seg, crate::arch::right_padded(&b.segment_ids, b.cols))
    } else {
        AttnMask::Causal
    })
}

/// The mask of a packed batch with segment ids `seg` (`host_seg` on the host, `[rows, cols]`):
/// [`AttnMask::Varlen`] where the varlen flash kernel runs ([`crate::arch::varlen::supported`]:
/// CUDA, half precision, a head size it takes), its offsets computed on the host and uploaded
/// into `packed`; the dense [`AttnMask::Segments`] elsewhere.
pub fn for_packed<'a>(
    model: &HfModel,
    seg: &'a Tensor,
    host_seg: &[i64],
    (rows, cols): (usize, usize),
    packed: &'a mut Option<Packed>,
) -> anyhow::Result<AttnMask<'a>> {
    let dev = seg.device();
    let kind = model.model.embed_tokens.f_kind()?;
    if !crate::arch::varlen::supported(dev, kind, model.config.head_dim) {
        return Ok(AttnMask::Segments(seg));
    }
    let (cu, max_len) = packed_offsets(host_seg, rows, cols);
    let n = cu.len() as i64;
    let cu = host::upload(&cu, &[n], dev)?;
    let total = (rows * cols) as i64;
    Ok(AttnMask::Varlen(packed.insert(Packed {
        cu,
        max_len,
        total,
    })))
}

/// Logits `[rows, cols, vocab]` of a batch.
pub fn logits(model: &HfModel, b: &Batch) -> anyhow::Result<(Tensor, Tensor)> {
    let [ids, labels, pos, seg] = tensors(b, model.device())?;
    let mut packed = None;
    let mask = attn_mask(model, b, &seg, &mut packed)?;
    let logits = model
        .forward(&ids, &pos, mask)
        .with_context(|| format!("forward of a {}×{} batch", b.rows, b.cols))?;
    Ok((logits, labels))
}

/// `Σ CE` over the batch's target tokens (a scalar with a graph): the value of
/// `sum_ce(logits(model, b))`, computed without the logits of non-target positions and
/// without a `[tokens, vocab]` tensor ([`head::sum_ce`], chunk by chunk).
///
/// With `h` the final hidden states `[B, T, hidden]` and `y[b, t] = labels[b, t + 1]`, only the
/// rows `K = {(b, t) : t < T − 1, y[b, t] ≠ IGNORE}` (found on the host) go through the LM head:
/// `Σ_{k ∈ K} CE(h_k Wᵀ, y_k)`. The head is the largest matmul of a small model (vocab × hidden
/// per row, forward and backward), and in SFT often half the positions are prompt or padding.
pub fn sum_loss(model: &HfModel, b: &Batch) -> anyhow::Result<Tensor> {
    let dev = model.device();
    let shape = [b.rows as i64, b.cols as i64];
    let up = |v: &[i64]| host::upload(v, &shape, dev);
    let (ids, pos, seg) = (up(&b.input_ids)?, up(&b.position_ids)?, up(&b.segment_ids)?);
    let mut packed = None;
    let mask = attn_mask(model, b, &seg, &mut packed)?;
    let h = model
        .model
        .hidden_states(&ids, &pos, mask)
        .with_context(|| format!("forward of a {}×{} batch", b.rows, b.cols))?;
    target_ce(model, &h, &b.labels, b.rows, b.cols)
}

/// `Σ CE` of hidden states `h` `[rows, cols, hidden]` against `labels` `[rows, cols]` (host,
/// aligned with the inputs: the shift happens here), chunked ([`head::sum_ce`]). The target
/// rows come from the host labels: no device→host read.
pub fn target_ce(
    model: &HfModel,
    h: &Tensor,
    labels: &[i64],
    rows: usize,
    cols: usize,
) -> anyhow::Result<Tensor> {
    let dev = h.device();
    if cols < 2 {
        return Ok(Tensor::f_zeros([], (Kind::Float, dev))?);
    }
    let (keep, y) = head::target_rows(labels, rows, cols, IGNORE);
    let n = keep.len() as i64;
    let keep = host::upload(&keep, &[n], dev)?;
    let y = host::upload(&y, &[n], dev)?;
    let hk = head::select_rows(h, &keep)?;
    head::sum_ce(&hk, model.model.lm_head_weight(), &y, head::CHUNK_TOKENS)
}
