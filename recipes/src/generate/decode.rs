//! Batched decoding with a KV cache.
//!
//! Up to `batch_size` completions decode together, left-padded: the prompts' last tokens share
//! a column, so every row's next token is read at the same column. Positions count a row's
//! real tokens only (`pos = number of real tokens before it`), so a row decodes as it would
//! alone. A prefill runs the prompts' columns once, filling a [`crate::arch::KvCache`]; each step then runs
//! one column. Prompts start shortest first, and a row whose completion ends takes the next
//! waiting prompt (continuous batching, [`super::engine`]).
//!
//! A row finishes when it emits a stop token (not part of the output; [`Finish::Stop`]), when
//! the caller's stop-text check says so (stop strings; [`Finish::Stop`]), after
//! `max_new_tokens` tokens ([`Finish::Length`]) or when it reaches the model's position limit
//! ([`Finish::PositionLimit`]).
//!
//! The next token is `argmax` of the last column's logits (greedy, first maximum) or drawn by
//! [`super::sample::pick`] with the row's own random stream, one draw per generated token, so
//! the output does not depend on the batch. `cache: false` runs the whole prefix at every step
//! instead (the reference the cache is checked against, and a benchmark baseline).

use super::engine::Engine;
use super::sample::Sampling;
use crate::arch::HfModel;
use anyhow::{bail, Result};
use tch::Tensor;

/// How to decode.
#[derive(Clone, Debug)]
pub struct DecodeOptions {
    /// At most this many new tokens per completion.
    pub max_new_tokens: usize,
    /// Tokens that end a completion (EOS, end-of-turn markers); not part of the output.
    pub stop_ids: Vec<i64>,
    /// Token written into padding (never attended to).
    pub pad_id: i64,
    /// Completions decoded together.
    pub batch_size: usize,
    pub sampling: Sampling,
    /// Seed of the sampling streams ([`sample::stream`]).
    pub seed: u64,
    /// Record each generated token's log-probability under the model (unscaled logits).
    pub logprobs: bool,
    /// Use the KV cache (else re-run the whole prefix at every step).
    pub cache: bool,
}

/// One completion to decode: the prompt's tokens and the keys of its random stream.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: Vec<i64>,
    /// Index of the record the prompt comes from.
    pub record: u64,
    /// Index of this completion among the record's.
    pub sample: u64,
}

/// Why a completion ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// A stop token or stop string.
    Stop,
    /// `max_new_tokens` reached.
    Length,
    /// The model's `max_position_embeddings` reached.
    PositionLimit,
}

impl Finish {
    pub fn name(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::PositionLimit => "position-limit",
        }
    }
}

/// One decoded completion.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// New tokens, without the stop token.
    pub tokens: Vec<i64>,
    pub finish: Finish,
    /// Per new token, its log-probability (only with [`DecodeOptions::logprobs`]).
    pub logprobs: Vec<f64>,
}

/// Whether a completion's tokens so far end it (stop strings); called after every token.
pub type StopCheck<'a> = &'a dyn Fn(&[i64]) -> bool;

/// Completions of `requests` (each prompt non-empty and at most the position limit: a prompt
/// at the limit gets an empty completion), in input order; `on_done(n)` is called as
/// completions finish. On CPU the model's linear weights are first re-laid column-major
/// ([`HfModel::column_major_linears`]: same values, a faster product at small batches).
pub fn decode(
    model: &HfModel,
    requests: &[Request],
    opts: &DecodeOptions,
    stop_text: Option<StopCheck>,
    mut on_done: impl FnMut(usize),
) -> Result<Vec<Completion>> {
    let _guard = tch::no_grad_guard();
    if model.device() == tch::Device::Cpu {
        model.column_major_linears()?;
    }
    let max_pos = model.config.max_position.unwrap_or(usize::MAX);
    for (k, r) in requests.iter().enumerate() {
        if r.prompt.is_empty() {
            bail!("prompt {k} is empty: decoding needs at least one token");
        }
        if r.prompt.len() > max_pos {
            bail!(
                "prompt {k} has {} tokens, more than the model's max_position_embeddings \
                 ({max_pos})",
                r.prompt.len()
            );
        }
    }
    let lens: Vec<usize> = requests.iter().map(|r| r.prompt.len()).collect();
    let mut e = Engine {
        model,
        requests,
        opts,
        stop_text,
        max_pos,
        queue: by_length(&lens).into(),
        slots: Vec::new(),
        results: vec![None; requests.len()],
        ids: Tensor::new(),
        attention: Tensor::new(),
        cache: None,
        len: 0,
        capacity: 0,
    };
    e.run(&mut on_done)?;
    Ok(e.results.into_iter().flatten().collect())
}

/// Indices of `lens` sorted by length (stable), so a batch holds prompts of similar length.
pub fn by_length(lens: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| lens[i]);
    order
}
