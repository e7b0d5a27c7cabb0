//! Attention masks. A mask says, for every row `b`, query index `i` and key index `j` (indices in
//! the row, not positions), whether `i` may attend to `j`:
//!
//! - [`AttnMask::Causal`]: `j ≤ i`;
//! - [`AttnMask::Padding`]: `j ≤ i ∧ attention[b, j] = 1` (left or right padding);
//! - [`AttnMask::Segments`]: `j ≤ i ∧ seg[b, i] = seg[b, j]` — block-diagonal causal attention
//!   for packed rows (give padding its own segment id). Positions restart per segment, but the
//!   caller passes them as `position_ids`; the mask only separates the segments.
//!
//! - [`AttnMask::Varlen`]: the same attention as `Segments`, given as sequence offsets for a
//!   varlen kernel (packed rows on CUDA, [`for_packed`]): no `T×T` mask is ever built.
//!
//! A sliding window `w` adds `i − j < w` (transformers' rule, on indices). A query that may attend
//! to nothing (a left-padding token) attends to itself instead, so no row of the softmax is empty
//! and no NaN can reach the real tokens through `0 · NaN`; logits at padding are unspecified.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// Which keys each query sees; see the module docs.
#[derive(Clone, Copy, Debug)]
pub enum AttnMask<'a> {
    Causal,
    /// `[B, T]` of 0/1 (any integer or bool kind): 1 = real token.
    Padding(&'a Tensor),
    /// `[B, T]` integer segment ids.
    Segments(&'a Tensor),
    /// The segments of a packed batch as sequences of its flattened tokens.
    Varlen(&'a Packed),
}

/// A packed batch's segments as the sequences of its `B·T` flattened tokens (row after row):
/// sequence `s` is tokens `cu[s]..cu[s + 1]`. Every change of segment id along a row and every
/// row start begins a sequence, so no sequence crosses a row (padding is its own sequence).
#[derive(Debug)]
pub struct Packed {
    /// int32 `[n + 1]` on the model's device: `0 = cu[0] < … < cu[n] = B·T`.
    pub cu: Tensor,
    /// The longest sequence (an upper bound is enough for the kernel).
    pub max_len: i64,
    /// `B·T`.
    pub total: i64,
}

/// The host offsets of [`Packed`] for segment ids `seg` (`[rows, cols]` row-major):
/// `(cu, max_len)`.
pub fn packed_offsets(seg: &[i64], rows: usize, cols: usize) -> (Vec<i32>, i64) {
    let mut cu = vec![0i32];
    let mut max_len = 0i64;
    for r in 0..rows {
        let row = &seg[r * cols..(r + 1) * cols];
        let mut start = 0usize;
        for i in 1..=cols {
            if i == cols || row[i] != row[i - 1] {
                max_len = max_len.max((i - start) as i64);
                cu.push((r * cols + i) as i32);
                start = i;
            }
        }
    }
    (cu, max_len)
}

/// Whether every row of the host mask `keep` (`[rows, cols]` row-major, 0 = padding) is its
/// real tokens first, then padding only.
pub fn right_padded(keep: &[i64], cols: usize) -> bool {
    cols == 0
        || keep
            .chunks(cols)
            .all(|row| row.windows(2).all(|w| !(w[0] == 0 && w[1] != 0)))
}

/// The mask of a batch whose rows are right-padded (`right` from [`right_padded`]) with
/// attention `attention` (1 = real). On CUDA, plain [`AttnMask::Causal`]: SDPA's `is_causal`
/// path (flash-eligible, GQA without copying k/v, no `[B, 1, T, T]` mask), since a real query
/// `i` only sees keys `j ≤ i`, all real when padding comes last — the real positions' outputs,
/// all a loss reads, are those of [`AttnMask::Padding`]; padding positions' outputs are
/// unspecified either way. Elsewhere (CPU) [`AttnMask::Padding`], today's numerics. Left-padded
/// rows (decoding) always get [`AttnMask::Padding`].
pub fn for_padded(attention: &Tensor, right: bool) -> AttnMask<'_> {
    if right && attention.device().is_cuda() {
        AttnMask::Causal
    } else {
        AttnMask::Padding(attention)
    }
}

/// A mask ready for a layer.
#[derive(Debug)]
pub enum Prepared {
    /// Plain causal (`is_causal` of `scaled_dot_product_attention`).
    Causal,
    /// A boolean `[B, 1, Tq, Tk]` (true = may attend).
    Dense(Tensor),
    /// Sequences of the flattened tokens ([`Packed`]), with the window as the kernel counts it:
    /// `Some(w − 1)` for a sliding window `w`.
    Varlen {
        cu: Tensor,
        max_len: i64,
        window_left: Option<i64>,
    },
}

impl Prepared {
    /// The same mask, sharing its tensors.
    pub fn shallow_clone(&self) -> Prepared {
        match self {
            Prepared::Causal => Prepared::Causal,
            Prepared::Dense(m) => Prepared::Dense(m.shallow_clone()),
            Prepared::Varlen {
                cu,
                max_len,
                window_left,
            } => Prepared::Varlen {
                cu: cu.shallow_clone(),
                max_len: *max_len,
                window_left: *window_left,
            },
        }
    }
}

impl AttnMask<'_> {
    /// Checks the mask's shape against the input ids `[B, T]`.
    pub fn check(&self, b: i64, t: i64) -> Result<()> {
        if let AttnMask::Varlen(p) = self {
            if p.total != b * t {
                bail!(
                    "packed offsets cover {} tokens, the input ids [{b}, {t}]",
                    p.total
                );
            }
        }
        if let AttnMask::Padding(m) | AttnMask::Segments(m) = self {
            if m.size() != [b, t] {
                bail!(
                    "attention mask has shape {:?}, the input ids [{b}, {t}]",
                    m.size()
                );
            }
        }
        Ok(())
    }

    /// The boolean mask for a layer with sliding window `window` on a sequence of length `t`.
    pub fn prepare(&self, t: i64, window: Option<usize>, device: tch::Device) -> Result<Prepared> {
        let window = window.map(|w| w as i64).filter(|w| *w < t);
        if let AttnMask::Varlen(p) = self {
            return Ok(Prepared::Varlen {
                cu: p.cu.shallow_clone(),
                max_len: p.max_len,
                window_left: window.map(|w| w - 1),
            });
        }
        if matches!(self, AttnMask::Causal) && window.is_none() {
            return Ok(Prepared::Causal);
        }
        let ones = Tensor::f_ones([t, t], (Kind::Bool, device))?;
        let mut allowed = ones.f_tril(0)?;
        if let Some(w) = window {
            allowed = allowed.f_logical_and(&ones.f_triu(-(w - 1))?)?;
        }
        let allowed = allowed.f_view([1, 1, t, t])?;
        let m = match self {
            // (Varlen returned above.)
            AttnMask::Causal | AttnMask::Varlen(_) => return Ok(Prepared::Dense(allowed)),
            AttnMask::Padding(a) => {
                let keys = a
                    .f_ne(0)?
                    .f_to_device(device)?
                    .f_unsqueeze(1)?
                    .f_unsqueeze(1)?;
                allowed.f_logical_and(&keys)?
            }
            AttnMask::Segments(s) => {
                let s = s.f_to_device(device)?;
                let same = s
                    .f_unsqueeze(2)?
                    .f_eq_tensor(&s.f_unsqueeze(1)?)?
                    .f_unsqueeze(1)?;
                allowed.f_logical_and(&same)?
            }
        };
        let empty = m.f_any_dim(-1, true)?.f_logical_not()?;
        let eye = Tensor::f_eye(t, (Kind::Bool, device))?.f_view([1, 1, t, t])?;
        Ok(Prepared::Dense(
            m.f_logical_or(&eye.f_logical_and(&empty)?)?,
        ))
    }
}

/// The mask of queries at columns `start..start + tq` of a left- or right-padded batch against
/// keys at columns `0..start + tq`, for decoding with a KV cache: `attention` `[B, start + tq]`
/// (1 = real token) covers every column so far. Query `i` (column `start + i`) may attend to key
/// `j` when `j ≤ start + i`, `attention[b, j] = 1` and, with a sliding window `w`,
/// `start + i − j < w`; a query that may attend to nothing attends to itself. Boolean
/// `[B, 1, tq, start + tq]`. With `start = 0` it equals [`AttnMask::Padding`]'s mask, so a
/// prefill and a cache-free forward see the same keys.
pub fn padding_at(
    attention: &Tensor,
    start: i64,
    tq: i64,
    window: Option<usize>,
    device: tch::Device,
) -> Result<Tensor> {
    let tk = start + tq;
    let size = attention.size();
    if size.len() != 2 || size[1] != tk {
        bail!("attention mask has shape {size:?}, expected [batch, {tk}]");
    }
    let q = Tensor::f_arange_start(start, tk, (Kind::Int64, device))?.f_view([tq, 1])?;
    let k = Tensor::f_arange(tk, (Kind::Int64, device))?.f_view([1, tk])?;
    let mut allowed = k.f_le_tensor(&q)?;
    if let Some(w) = window {
        allowed = allowed.f_logical_and(&q.f_sub(&k)?.f_lt(w as i64)?)?;
    }
    let keys = attention
        .f_ne(0)?
        .f_to_device(device)?
        .f_unsqueeze(1)?
        .f_unsqueeze(1)?;
    let m = allowed.f_view([1, 1, tq, tk])?.f_logical_and(&keys)?;
    let empty = m.f_any_dim(-1, true)?.f_logical_not()?;
    let own = k.f_eq_tensor(&q)?.f_view([1, 1, tq, tk])?;
    Ok(m.f_logical_or(&own.f_logical_and(&empty)?)?)
}

/// Positions restarting at 0 at every change of segment id along a row: for `seg` `[B, T]`,
/// `pos[b, i] = i − (first index of the run containing i)`. What a packer passes as
/// `position_ids` with [`AttnMask::Segments`] (segments are contiguous runs).
pub fn positions_from_segments(seg: &Tensor) -> Result<Tensor> {
    let size = seg.size();
    let [b, t] = size[..] else {
        bail!("segment ids must be [B, T], got {size:?}")
    };
    let dev = seg.device();
    let idx = Tensor::f_arange(t, (Kind::Int64, dev))?.f_expand([b, t], false)?;
    if t == 0 {
        return Ok(idx);
    }
    // start[b, i] = 1 where a run begins; the run's first index is the cumulative max of
    // (start ? i : 0).
    let first = Tensor::f_ones([b, 1], (Kind::Bool, dev))?;
    let change = seg
        .f_narrow(1, 1, t - 1)?
        .f_ne_tensor(&seg.f_narrow(1, 0, t - 1)?)?;
    let start = Tensor::f_cat(&[first, change], 1)?;
    let begin = idx.f_where_self(&start, &idx.f_zeros_like()?)?;
    let (run_start, _) = begin.f_cummax(1)?;
    Ok(idx.f_sub(&run_start)?)
}
