//! The causal-LM loss of a packed or padded [`Batch`]: `Σ CE` over its target tokens
//! ([`crate::train::loss::sum_ce`]), with the attention the batch needs — block-diagonal
//! causal ([`AttnMask::Segments`]) when a row holds several examples, causal plus a padding
//! mask when some positions are padding, plain causal otherwise.

use crate::arch::{AttnMask, HfModel};
use crate::train::loss::sum_ce;
use crate::train::pack::Batch;
use anyhow::Context;
use tch::{Kind, Tensor};

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

/// Logits `[rows, cols, vocab]` of a batch.
pub fn logits(model: &HfModel, b: &Batch) -> anyhow::Result<(Tensor, Tensor)> {
    let [ids, labels, pos, seg] = tensors(b, model.device())?;
    let mask = if b.packed {
        AttnMask::Segments(&seg)
    } else if b.n_tokens() < b.rows * b.cols {
        AttnMask::Padding(&seg)
    } else {
        AttnMask::Causal
    };
    let logits = model
        .forward(&ids, &pos, mask)
        .with_context(|| format!("forward of a {}×{} batch", b.rows, b.cols))?;
    Ok((logits, labels))
}

/// `Σ CE` over the batch's target tokens (a scalar with a graph).
pub fn sum_loss(model: &HfModel, b: &Batch) -> anyhow::Result<Tensor> {
    let (logits, labels) = logits(model, b)?;
    sum_ce(&logits, &labels)
}
