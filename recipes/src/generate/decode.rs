//! Batched decoding with a KV cache.
//!
//! Requests are grouped by prompt length and decoded `batch_size` at a time, left-padded: the
//! prompts' last tokens share a column, so every row's next token is read at the same column.
//! Positions count a row's real tokens only (`pos = number of real tokens before it`), so a row
//! decodes as it would alone. The prefill runs the prompts' columns once, filling a
//! [`KvCache`] allocated for `longest prompt + most new tokens` columns; each step then runs
//! one column. Rows that finished keep receiving a padding column (masked out), so the batch
//! keeps its shape.
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

use super::sample::{self, Sampling};
use crate::arch::{AttnMask, HfModel, KvCache};
use crate::rng::SplitMix64;
use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

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
/// at the limit gets an empty completion), in input order; `on_batch(n)` is called after each batch with the completions it held.
pub fn decode(
    model: &HfModel,
    requests: &[Request],
    opts: &DecodeOptions,
    stop_text: Option<StopCheck>,
    mut on_batch: impl FnMut(usize),
) -> Result<Vec<Completion>> {
    let _guard = tch::no_grad_guard();
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
    let mut out: Vec<Option<Completion>> = vec![None; requests.len()];
    for chunk in by_length(&lens).chunks(opts.batch_size.max(1)) {
        let batch: Vec<&Request> = chunk.iter().map(|&i| &requests[i]).collect();
        let done = Batch::new(model, &batch, opts, max_pos, stop_text)?
            .run()
            .with_context(|| format!("decoding prompts {chunk:?}"))?;
        for (&i, c) in chunk.iter().zip(done) {
            out[i] = Some(c);
        }
        on_batch(chunk.len());
    }
    Ok(out.into_iter().flatten().collect())
}

/// Indices of `lens` sorted by length (stable), so a batch holds prompts of similar length.
pub fn by_length(lens: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| lens[i]);
    order
}

fn tensor2(v: &[i64], rows: usize, cols: usize, dev: Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(v)
        .f_view([rows as i64, cols as i64])?
        .f_to_device(dev)?)
}

/// One left-padded batch being decoded.
struct Batch<'a> {
    model: &'a HfModel,
    opts: &'a DecodeOptions,
    stop_text: Option<StopCheck<'a>>,
    /// Per row: the token budget (new tokens and position limit) and why it would end there.
    budget: Vec<(usize, Finish)>,
    streams: Vec<SplitMix64>,
    out: Vec<Completion>,
    done: Vec<bool>,
    /// Real tokens per row so far (the next token's position).
    real: Vec<i64>,
    /// Every column so far: ids and 0/1 attention `[B, L]`.
    ids: Tensor,
    attention: Tensor,
    cache: Option<KvCache>,
}

impl<'a> Batch<'a> {
    fn new(
        model: &'a HfModel,
        prompts: &[&Request],
        opts: &'a DecodeOptions,
        max_pos: usize,
        stop_text: Option<StopCheck<'a>>,
    ) -> Result<Batch<'a>> {
        let dev = model.device();
        let rows = prompts.len();
        let width = prompts.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        for r in prompts {
            let pad = width - r.prompt.len();
            ids.extend(std::iter::repeat_n(opts.pad_id, pad));
            ids.extend_from_slice(&r.prompt);
            mask.extend(std::iter::repeat_n(0i64, pad));
            mask.extend(std::iter::repeat_n(1i64, r.prompt.len()));
        }
        let budget: Vec<(usize, Finish)> = prompts
            .iter()
            .map(|r| {
                let room = max_pos.saturating_sub(r.prompt.len());
                if room < opts.max_new_tokens {
                    (room, Finish::PositionLimit)
                } else {
                    (opts.max_new_tokens, Finish::Length)
                }
            })
            .collect();
        let most = budget.iter().map(|b| b.0).max().unwrap_or(0);
        let cache = if opts.cache {
            Some(KvCache::new(
                &model.model,
                rows as i64,
                (width + most) as i64,
            )?)
        } else {
            None
        };
        Ok(Batch {
            model,
            opts,
            stop_text,
            streams: prompts
                .iter()
                .map(|r| sample::stream(opts.seed, r.record, r.sample))
                .collect(),
            out: budget
                .iter()
                .map(|b| Completion {
                    tokens: Vec::new(),
                    finish: b.1,
                    logprobs: Vec::new(),
                })
                .collect(),
            done: budget.iter().map(|b| b.0 == 0).collect(),
            real: prompts.iter().map(|r| r.prompt.len() as i64).collect(),
            budget,
            ids: tensor2(&ids, rows, width, dev)?,
            attention: tensor2(&mask, rows, width, dev)?,
            cache,
        })
    }

    /// Logits `[B, vocab]` (f32) at the last column, after feeding `new` (`[B, T]`, the
    /// columns appended last) to the model.
    fn logits(&mut self, new: &Tensor, new_pos: &Tensor) -> Result<Tensor> {
        let m = &self.model.model;
        let h = match &mut self.cache {
            Some(cache) => m.forward_cached(new, new_pos, &self.attention, cache)?,
            None => {
                let pos = self
                    .attention
                    .f_cumsum(1, Kind::Int64)?
                    .f_sub_scalar(1)?
                    .f_clamp_min(0)?;
                m.hidden_states(&self.ids, &pos, AttnMask::Padding(&self.attention))?
            }
        };
        let t = h.size()[1];
        let last = h.f_select(1, t - 1)?;
        Ok(last
            .f_linear::<&Tensor>(m.lm_head_weight(), None)?
            .f_to_kind(Kind::Float)?)
    }

    /// The next token of every row (pad for finished rows) and, when asked, its log-prob.
    fn choose(&mut self, logits: &Tensor) -> Result<(Vec<i64>, Vec<f64>)> {
        let rows = self.done.len();
        let next: Vec<i64> = if self.opts.sampling.is_greedy() {
            let t = logits.f_argmax(-1, false)?.f_to_device(Device::Cpu)?;
            Vec::<i64>::try_from(&t).context("reading decoded tokens")?
        } else {
            let cpu = logits.f_to_device(Device::Cpu)?.f_contiguous()?;
            let v = cpu.size()[1] as usize;
            let mut flat = vec![0f32; rows * v];
            cpu.f_copy_data(&mut flat, rows * v)
                .context("reading logits")?;
            let mut next = vec![self.opts.pad_id; rows];
            for r in (0..rows).filter(|&r| !self.done[r]) {
                let row = &flat[r * v..(r + 1) * v];
                sample::check_logits(row).map_err(|e| {
                    anyhow::anyhow!("completion {}: {e}", self.out[r].tokens.len() + 1)
                })?;
                let u = self.streams[r].next_f64();
                next[r] = sample::pick(row, &self.opts.sampling, u) as i64;
            }
            next
        };
        let lp = if self.opts.logprobs {
            let idx = Tensor::from_slice(&next)
                .f_to_device(logits.device())?
                .f_clamp_min(0)?
                .f_unsqueeze(1)?;
            let t = logits
                .f_log_softmax(-1, Kind::Float)?
                .f_gather(1, &idx, false)?
                .f_squeeze_dim(1)?
                .f_to_kind(Kind::Double)?
                .f_to_device(Device::Cpu)?;
            Vec::<f64>::try_from(&t).context("reading log-probs")?
        } else {
            Vec::new()
        };
        Ok((next, lp))
    }

    fn run(mut self) -> Result<Vec<Completion>> {
        let dev = self.model.device();
        let rows = self.done.len();
        // Prefill: every prompt column (positions of real tokens; padding clamped to 0).
        let mut new = self.ids.shallow_clone();
        let mut new_pos = self
            .attention
            .f_cumsum(1, Kind::Int64)?
            .f_sub_scalar(1)?
            .f_clamp_min(0)?;
        while !self.done.iter().all(|&d| d) {
            let logits = self.logits(&new, &new_pos)?;
            let (next, lp) = self.choose(&logits)?;
            let mut col = Vec::with_capacity(rows);
            let mut mcol = Vec::with_capacity(rows);
            let mut pcol = Vec::with_capacity(rows);
            #[allow(clippy::needless_range_loop)] // r indexes six per-row vectors
            for r in 0..rows {
                pcol.push(self.real[r]);
                if self.done[r] {
                    col.push(self.opts.pad_id);
                    mcol.push(0i64);
                    continue;
                }
                let tok = next[r];
                if self.opts.stop_ids.contains(&tok) {
                    self.out[r].finish = Finish::Stop;
                    self.done[r] = true;
                    col.push(self.opts.pad_id);
                    mcol.push(0);
                    continue;
                }
                let o = &mut self.out[r];
                o.tokens.push(tok);
                if let Some(&l) = lp.get(r) {
                    o.logprobs.push(l);
                }
                if self.stop_text.is_some_and(|f| f(&o.tokens)) {
                    o.finish = Finish::Stop;
                    self.done[r] = true;
                } else if o.tokens.len() >= self.budget[r].0 {
                    o.finish = self.budget[r].1;
                    self.done[r] = true;
                }
                col.push(tok);
                mcol.push(1);
                self.real[r] += 1;
            }
            if self.done.iter().all(|&d| d) {
                break;
            }
            new = tensor2(&col, rows, 1, dev)?;
            new_pos = tensor2(&pcol, rows, 1, dev)?;
            self.ids = Tensor::f_cat(&[&self.ids, &new], 1)?;
            self.attention = Tensor::f_cat(&[&self.attention, &tensor2(&mcol, rows, 1, dev)?], 1)?;
        }
        Ok(self.out)
    }
}
