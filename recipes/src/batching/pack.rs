//! Packing and batching of tokenised examples into fixed-shape batches of plain `Vec<i64>`
//! (row-major, `rows × cols`); the training stage turns them into tensors.
//!
//! Every [`Batch`] carries `segment_ids`: 0 marks padding, `1..` number the examples (or the
//! single document stream) of a row. Attention is allowed from query `i` to key `j` of a row iff
//! `j <= i`, `seg[i] == seg[j]` and `seg[j] != 0` ([`Batch::allowed`]): block-diagonal causal
//! for packed rows, plain causal + padding mask otherwise (`attention_mask = seg != 0`).
//! `position_ids` restart at 0 at each example. Labels follow [`super::examples`]: aligned with
//! the inputs, shifted by the loss, -100 where not trained.
//!
//! **CPT** ([`CptPacker`]): documents (each already ending with EOS) are concatenated and cut
//! into blocks of `seq_len` tokens; what does not fill a block is carried into the next one,
//! never dropped. Attention crosses document boundaries inside a block (standard pre-training:
//! one segment per block, positions `0..seq_len`), so the first token of a document is
//! predicted from the previous document's EOS. The tail left when the stream ends is emitted
//! by [`CptPacker::finish`] as one last block right-padded to `seq_len` (padding: segment 0,
//! label -100). The carried buffer is part of [`CptPacker::state`], so a resumed run emits the
//! same blocks.
//!
//! **SFT packing** ([`pack_rows`]): first-fit in input order: each example goes into the first
//! row with room for it, else opens a new row; rows are right-padded to `seq_len`. The first
//! label of each example is set to -100 (it would be predicted from the previous example).
//! **SFT padding** ([`pad_batch`]): one example per row, right-padded to the longest.
//!
//! **Loss normalisation** ([`LossNorm`]): one optimizer step accumulates several micro-batches;
//! its loss is `Σ_micro Σ_targets CE / N` where `N` is the number of target tokens of *all*
//! micro-batches of the step, counted before the first forward pass — not a mean of per-micro-
//! batch means.

use super::examples::{Example, IGNORE};
use serde::{Deserialize, Serialize};

/// A batch of `rows × cols` tokens, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub rows: usize,
    pub cols: usize,
    pub input_ids: Vec<i64>,
    pub labels: Vec<i64>,
    pub position_ids: Vec<i64>,
    /// 0 = padding; equal non-zero ids attend to each other causally.
    pub segment_ids: Vec<i64>,
    /// Target tokens: positions `t >= 1` of a row whose label is not -100.
    pub n_target_tokens: usize,
    /// True when some row holds several segments (a block-diagonal mask is needed); false when
    /// a causal mask plus `attention_mask` suffices.
    pub packed: bool,
}

impl Batch {
    /// `1` for real tokens, `0` for padding.
    pub fn attention_mask(&self) -> Vec<i64> {
        self.segment_ids
            .iter()
            .map(|&s| i64::from(s != 0))
            .collect()
    }
    /// Whether query `i` may attend to key `j` in row `r`.
    pub fn allowed(&self, r: usize, i: usize, j: usize) -> bool {
        if r >= self.rows || i >= self.cols {
            return false;
        }
        let s = &self.segment_ids[r * self.cols..(r + 1) * self.cols];
        j <= i && s[i] == s[j] && s[j] != 0
    }
    /// Real (non-padding) tokens.
    pub fn n_tokens(&self) -> usize {
        self.segment_ids.iter().filter(|&&s| s != 0).count()
    }

    fn from_rows(rows: Vec<Row>, cols: usize, pad_id: i64) -> Batch {
        let n = rows.len();
        let mut b = Batch {
            rows: n,
            cols,
            input_ids: Vec::with_capacity(n * cols),
            labels: Vec::with_capacity(n * cols),
            position_ids: Vec::with_capacity(n * cols),
            segment_ids: Vec::with_capacity(n * cols),
            n_target_tokens: 0,
            packed: false,
        };
        for row in rows {
            let used = row.input_ids.len();
            b.packed |= row.segment_ids.last().copied().unwrap_or(0) > 1;
            b.n_target_tokens += row.labels.iter().skip(1).filter(|&&l| l != IGNORE).count();
            b.input_ids.extend(row.input_ids);
            b.labels.extend(row.labels);
            b.position_ids.extend(row.position_ids);
            b.segment_ids.extend(row.segment_ids);
            let pad = cols - used;
            b.input_ids.extend(std::iter::repeat_n(pad_id, pad));
            b.labels.extend(std::iter::repeat_n(IGNORE, pad));
            b.position_ids.extend(0..pad as i64);
            b.segment_ids.extend(std::iter::repeat_n(0, pad));
        }
        b
    }
}

/// One row under construction.
#[derive(Clone, Debug, Default)]
struct Row {
    input_ids: Vec<i64>,
    labels: Vec<i64>,
    position_ids: Vec<i64>,
    segment_ids: Vec<i64>,
}

impl Row {
    fn push(&mut self, ex: &Example, ignore_first: bool) {
        let seg = self.segment_ids.last().copied().unwrap_or(0) + 1;
        self.input_ids.extend_from_slice(&ex.input_ids);
        let start = self.labels.len();
        self.labels.extend_from_slice(&ex.labels);
        if ignore_first && !ex.labels.is_empty() {
            self.labels[start] = IGNORE;
        }
        self.position_ids.extend(0..ex.len() as i64);
        self.segment_ids.extend(std::iter::repeat_n(seg, ex.len()));
    }
}

/// Packs SFT examples into rows of `seq_len` (first-fit in input order). Examples longer than
/// `seq_len` are an error (the caller filters them with the example encoder's `max_len`).
pub fn pack_rows(examples: &[Example], seq_len: usize, pad_id: i64) -> anyhow::Result<Batch> {
    let mut rows: Vec<Row> = Vec::new();
    for (k, ex) in examples.iter().enumerate() {
        if ex.len() > seq_len {
            anyhow::bail!(
                "example {k} has {} tokens, more than seq-len {seq_len}",
                ex.len()
            );
        }
        match rows
            .iter_mut()
            .find(|r| r.input_ids.len() + ex.len() <= seq_len)
        {
            Some(r) => r.push(ex, true),
            None => {
                let mut r = Row::default();
                r.push(ex, true);
                rows.push(r);
            }
        }
    }
    Ok(Batch::from_rows(rows, seq_len, pad_id))
}

/// One example per row, right-padded to the longest example (or `pad_to` when larger).
pub fn pad_batch(examples: &[Example], pad_id: i64, pad_to: Option<usize>) -> Batch {
    let longest = examples.iter().map(|e| e.len()).max().unwrap_or(0);
    let cols = longest.max(pad_to.unwrap_or(0));
    let rows = examples
        .iter()
        .map(|ex| {
            let mut r = Row::default();
            r.push(ex, false);
            r
        })
        .collect();
    Batch::from_rows(rows, cols, pad_id)
}

/// CPT block packer: a stream of documents in, blocks of `seq_len` tokens out.
#[derive(Clone, Debug)]
pub struct CptPacker {
    seq_len: usize,
    buf: Vec<i64>,
}

/// The packer's resumable state: the tokens carried into the next block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackerState {
    pub seq_len: usize,
    pub carry: Vec<i64>,
}

impl CptPacker {
    pub fn new(seq_len: usize) -> Self {
        assert!(seq_len > 0, "seq_len must be positive");
        CptPacker {
            seq_len,
            buf: Vec::new(),
        }
    }
    pub fn from_state(s: PackerState) -> Self {
        CptPacker {
            seq_len: s.seq_len.max(1),
            buf: s.carry,
        }
    }
    pub fn state(&self) -> PackerState {
        PackerState {
            seq_len: self.seq_len,
            carry: self.buf.clone(),
        }
    }
    /// Adds a document (ending with EOS).
    pub fn push(&mut self, doc: &[i64]) {
        self.buf.extend_from_slice(doc);
    }
    /// Tokens waiting for the next block.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
    /// The next full block, if enough tokens are buffered.
    pub fn next_block(&mut self) -> Option<Vec<i64>> {
        if self.buf.len() < self.seq_len {
            return None;
        }
        let rest = self.buf.split_off(self.seq_len);
        Some(std::mem::replace(&mut self.buf, rest))
    }
    /// The final partial block (shorter than `seq_len`), emptying the buffer; `None` if empty.
    pub fn finish(&mut self) -> Option<Vec<i64>> {
        if self.buf.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.buf))
        }
    }
}

/// A CPT batch from blocks: each row one segment, positions `0..`, every real token a
/// label, shorter (final) blocks right-padded to `seq_len`.
pub fn cpt_batch(blocks: &[Vec<i64>], seq_len: usize, pad_id: i64) -> Batch {
    let rows = blocks
        .iter()
        .map(|b| {
            let mut r = Row::default();
            r.push(
                &Example {
                    input_ids: b.clone(),
                    labels: b.clone(),
                },
                false,
            );
            r
        })
        .collect();
    Batch::from_rows(rows, seq_len, pad_id)
}

/// Normalisation of a step's loss over its micro-batches.
///
/// `loss_step = Σ_m sum_ce_m / N`, `N = Σ_m n_target_tokens_m`. Each micro-batch backpropagates
/// `sum_ce_m * scale()`; the accumulated gradient equals the gradient of `loss_step`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossNorm {
    pub total_targets: usize,
}

impl LossNorm {
    /// Counts the targets of all micro-batches of one step, up front.
    pub fn for_step(micro: &[Batch]) -> LossNorm {
        LossNorm {
            total_targets: micro.iter().map(|b| b.n_target_tokens).sum(),
        }
    }
    /// The factor applied to each micro-batch's summed loss (`1/N`; 0 when `N = 0`).
    pub fn scale(&self) -> f64 {
        if self.total_targets == 0 {
            0.0
        } else {
            1.0 / self.total_targets as f64
        }
    }
}
