//! The decoding loop behind [`super::decode::decode`]: `batch_size` slots decoded together,
//! refilled as completions finish (continuous batching), so a batch never spends its steps on
//! rows that are done.
//!
//! Layout: every slot is a row of `[rows, L]` columns (ids, 0/1 attention, and the KV cache's
//! columns). A prompt of `p` tokens sits left-padded in columns `L − p .. L` of its row, so all
//! rows read their next token at the last column. The first prompts are prefilled together; a
//! prompt that takes a freed slot is prefilled alone (batch 1), its keys and values copied into
//! its row at columns `L − p .. L`, the row's earlier columns masked out. Columns are only ever
//! compared by difference (causality, sliding windows), and positions count a row's own real
//! tokens, so where a prompt lands does not change its computation. When the columns run out,
//! they are re-laid: the columns left of every live row's first token are dropped (or, for a
//! prompt longer than the columns so far, padding is added on the left) — a copy of the cache,
//! rare. Once no request waits, the rows of finished slots are dropped whenever at most half
//! the rows are live.

use super::decode::{Completion, DecodeOptions, Finish, Request, StopCheck};
use super::sample;
use crate::arch::{AttnMask, HfModel, KvCache};
use crate::rng::SplitMix64;
use anyhow::{Context, Result};
use std::collections::VecDeque;
use tch::{Device, Kind, Tensor};

/// One slot's completion in progress.
pub(super) struct Slot {
    /// Index of its request.
    req: usize,
    /// Column of its first prompt token.
    first: i64,
    /// Real tokens so far (the next token's position).
    real: i64,
    budget: usize,
    limit: Finish,
    stream: SplitMix64,
    out: Completion,
}

pub(super) struct Engine<'a> {
    pub(super) model: &'a HfModel,
    pub(super) requests: &'a [Request],
    pub(super) opts: &'a DecodeOptions,
    pub(super) stop_text: Option<StopCheck<'a>>,
    pub(super) max_pos: usize,
    /// Requests not started, shortest prompts first.
    pub(super) queue: VecDeque<usize>,
    pub(super) slots: Vec<Option<Slot>>,
    pub(super) results: Vec<Option<Completion>>,
    /// `[rows, capacity]` ids and attention; columns `0..len` are in use.
    pub(super) ids: Tensor,
    pub(super) attention: Tensor,
    pub(super) cache: Option<KvCache>,
    pub(super) len: i64,
    pub(super) capacity: i64,
}

impl Engine<'_> {
    fn slot(&self, req: usize, first: i64) -> Slot {
        let r = &self.requests[req];
        let room = self.max_pos.saturating_sub(r.prompt.len());
        let (budget, limit) = if room < self.opts.max_new_tokens {
            (room, Finish::PositionLimit)
        } else {
            (self.opts.max_new_tokens, Finish::Length)
        };
        Slot {
            req,
            first,
            real: r.prompt.len() as i64,
            budget,
            limit,
            stream: sample::stream(self.opts.seed, r.record, r.sample),
            out: Completion {
                tokens: Vec::new(),
                finish: limit,
                logprobs: Vec::new(),
            },
        }
    }

    pub(super) fn run(&mut self, on_done: &mut dyn FnMut(usize)) -> Result<()> {
        while !self.queue.is_empty() {
            let mut logits = self.start_batch(on_done)?;
            loop {
                let rows: Vec<usize> = (0..self.slots.len())
                    .filter(|&r| self.slots[r].is_some())
                    .collect();
                // The logits have a row per slot; keep the live ones.
                if rows.len() < logits.size().first().copied().unwrap_or(0) as usize {
                    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
                    let idx = Tensor::from_slice(&idx).f_to_device(logits.device())?;
                    logits = logits.f_index_select(0, &idx)?;
                }
                let next = self.choose(&logits, &rows)?;
                let mut column: Vec<Option<i64>> = vec![None; self.slots.len()];
                for (&r, t) in rows.iter().zip(next) {
                    column[r] = self.advance(r, t, on_done);
                }
                self.refill(&mut column, on_done)?;
                if column.iter().all(Option::is_none) {
                    break; // every slot ended and nothing could start: a fresh batch
                }
                let live = column.iter().flatten().count();
                if self.queue.is_empty() && live * 2 <= column.len() {
                    column = self.compact(&column)?;
                }
                logits = self.step(&column)?;
            }
        }
        Ok(())
    }

    /// Takes up to `batch_size` queued requests and prefills them together; returns the logits
    /// at their last column. Requests with no room for a token end at once.
    fn start_batch(&mut self, on_done: &mut dyn FnMut(usize)) -> Result<Tensor> {
        let dev = self.model.device();
        let mut take = Vec::new();
        while take.len() < self.opts.batch_size.max(1) {
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            let s = self.slot(q, 0);
            if s.budget == 0 {
                self.results[q] = Some(s.out);
                on_done(1);
                continue;
            }
            take.push(q);
        }
        let rows = take.len();
        let width = take
            .iter()
            .map(|&q| self.requests[q].prompt.len())
            .max()
            .unwrap_or(1);
        let most = self.opts.max_new_tokens.min(self.max_pos);
        self.capacity = (width + most + 1) as i64;
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        self.slots = Vec::with_capacity(rows);
        for &q in &take {
            let p = &self.requests[q].prompt;
            let pad = width - p.len();
            ids.extend(std::iter::repeat_n(self.opts.pad_id, pad));
            ids.extend_from_slice(p);
            mask.extend(std::iter::repeat_n(0i64, pad));
            mask.extend(std::iter::repeat_n(1i64, p.len()));
            let s = self.slot(q, pad as i64);
            self.slots.push(Some(s));
        }
        self.len = width as i64;
        let ids = tensor2(&ids, rows, width, dev)?;
        let mask = tensor2(&mask, rows, width, dev)?;
        self.ids = self.blank(rows, self.opts.pad_id)?;
        self.attention = self.blank(rows, 0)?;
        self.ids.f_narrow(1, 0, self.len)?.f_copy_(&ids)?;
        self.attention.f_narrow(1, 0, self.len)?.f_copy_(&mask)?;
        self.cache = if self.opts.cache {
            Some(KvCache::new(&self.model.model, rows as i64, self.capacity)?)
        } else {
            None
        };
        if rows == 0 {
            return Ok(Tensor::new());
        }
        let pos = mask
            .f_cumsum(1, Kind::Int64)?
            .f_sub_scalar(1)?
            .f_clamp_min(0)?;
        self.forward(&ids, &pos)
    }

    fn blank(&self, rows: usize, fill: i64) -> Result<Tensor> {
        Ok(Tensor::f_full(
            [rows as i64, self.capacity],
            fill,
            (Kind::Int64, self.model.device()),
        )?)
    }

    /// Logits `[rows, vocab]` (f32) at the last column after feeding the new columns `new`
    /// (`[rows, T]`, already written into `ids`/`attention` at `len − T .. len`) at `pos`.
    fn forward(&mut self, new: &Tensor, pos: &Tensor) -> Result<Tensor> {
        let m = &self.model.model;
        let attention = self.attention.f_narrow(1, 0, self.len)?;
        let h = match &mut self.cache {
            Some(cache) => m.forward_cached(new, pos, &attention, cache)?,
            None => {
                let ids = self.ids.f_narrow(1, 0, self.len)?;
                let pos = attention
                    .f_cumsum(1, Kind::Int64)?
                    .f_sub_scalar(1)?
                    .f_clamp_min(0)?;
                m.hidden_states(&ids, &pos, AttnMask::Padding(&attention))?
            }
        };
        last_logits(self.model, &h)
    }

    /// The next token (and log-prob) of each slot in `rows`, from `logits` row by row.
    fn choose(&mut self, logits: &Tensor, rows: &[usize]) -> Result<Vec<(i64, Option<f64>)>> {
        let n = rows.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let picked: Vec<i64> = if self.opts.sampling.is_greedy() {
            let t = logits.f_argmax(-1, false)?.f_to_device(Device::Cpu)?;
            Vec::<i64>::try_from(&t).context("reading decoded tokens")?
        } else {
            let cpu = logits.f_to_device(Device::Cpu)?.f_contiguous()?;
            let v = cpu.size()[1] as usize;
            let mut flat = vec![0f32; n * v];
            cpu.f_copy_data(&mut flat, n * v)
                .context("reading logits")?;
            let mut out = Vec::with_capacity(n);
            for (k, &r) in rows.iter().enumerate() {
                let row = &flat[k * v..(k + 1) * v];
                let s = self.slots[r].as_mut().context("a live slot")?;
                sample::check_logits(row)
                    .map_err(|e| anyhow::anyhow!("token {}: {e}", s.out.tokens.len() + 1))?;
                out.push(sample::pick(row, &self.opts.sampling, s.stream.next_f64()) as i64);
            }
            out
        };
        let lps: Vec<Option<f64>> = if self.opts.logprobs {
            let idx = Tensor::from_slice(&picked)
                .f_to_device(logits.device())?
                .f_unsqueeze(1)?;
            let t = logits
                .f_log_softmax(-1, Kind::Float)?
                .f_gather(1, &idx, false)?
                .f_squeeze_dim(1)?
                .f_to_kind(Kind::Double)?
                .f_to_device(Device::Cpu)?;
            Vec::<f64>::try_from(&t)
                .context("reading log-probs")?
                .into_iter()
                .map(Some)
                .collect()
        } else {
            vec![None; n]
        };
        Ok(picked.into_iter().zip(lps).collect())
    }

    /// Gives slot `r` its chosen token: ends it (stop token, stop text, budget) or returns the
    /// token to append.
    fn advance(
        &mut self,
        r: usize,
        (tok, lp): (i64, Option<f64>),
        on_done: &mut dyn FnMut(usize),
    ) -> Option<i64> {
        let s = self.slots[r].as_mut()?;
        let ended = if self.opts.stop_ids.contains(&tok) {
            s.out.finish = Finish::Stop;
            true
        } else {
            s.out.tokens.push(tok);
            s.out.logprobs.extend(lp);
            if self.stop_text.is_some_and(|f| f(&s.out.tokens)) {
                s.out.finish = Finish::Stop;
                true
            } else if s.out.tokens.len() >= s.budget {
                s.out.finish = s.limit;
                true
            } else {
                false
            }
        };
        if !ended {
            return Some(tok);
        }
        let s = self.slots[r].take()?;
        self.results[s.req] = Some(s.out);
        on_done(1);
        None
    }

    /// Starts queued requests in free slots (while some slot is live: otherwise the next
    /// batch starts afresh), each prefilled alone; their first tokens join `column`.
    fn refill(&mut self, column: &mut [Option<i64>], on_done: &mut dyn FnMut(usize)) -> Result<()> {
        for r in 0..self.slots.len() {
            while self.slots[r].is_none() && column.iter().any(Option::is_some) {
                let Some(q) = self.queue.pop_front() else {
                    return Ok(());
                };
                let p = self.requests[q].prompt.len() as i64;
                if p > self.len {
                    self.relayout(0, p - self.len)?;
                }
                let s = self.slot(q, self.len - p);
                if s.budget == 0 {
                    self.results[q] = Some(s.out);
                    on_done(1);
                    continue;
                }
                self.slots[r] = Some(s);
                let logits = self.prefill_alone(r, q)?;
                let t = self.choose(&logits, &[r])?.remove(0);
                column[r] = self.advance(r, t, on_done);
            }
        }
        Ok(())
    }

    /// Prefills request `q`'s prompt alone into row `r` at columns `len − p .. len`; returns its
    /// logits `[1, vocab]`.
    fn prefill_alone(&mut self, r: usize, q: usize) -> Result<Tensor> {
        let dev = self.model.device();
        let prompt = &self.requests[q].prompt;
        let p = prompt.len() as i64;
        let start = self.len - p;
        let ids = tensor2(prompt, 1, prompt.len(), dev)?;
        let pos = Tensor::f_arange(p, (Kind::Int64, dev))?.f_view([1, p])?;
        let ones = Tensor::f_ones([1, p], (Kind::Int64, dev))?;
        let mut row_ids = self.ids.f_narrow(0, r as i64, 1)?;
        let mut row_att = self.attention.f_narrow(0, r as i64, 1)?;
        let _ = row_ids.f_fill_(self.opts.pad_id)?;
        let _ = row_att.f_fill_(0)?;
        row_ids.f_narrow(1, start, p)?.f_copy_(&ids)?;
        row_att.f_narrow(1, start, p)?.f_copy_(&ones)?;
        let m = &self.model.model;
        let h = match &mut self.cache {
            Some(cache) => {
                let mut own = KvCache::new(m, 1, p)?;
                let h = m.forward_cached(&ids, &pos, &ones, &mut own)?;
                for (big, small) in cache
                    .keys
                    .iter()
                    .chain(&cache.values)
                    .zip(own.keys.iter().chain(&own.values))
                {
                    big.f_narrow(0, r as i64, 1)?
                        .f_narrow(2, start, p)?
                        .f_copy_(small)?;
                }
                h
            }
            None => m.hidden_states(&ids, &pos, AttnMask::Causal)?,
        };
        last_logits(self.model, &h)
    }

    /// Appends `column` (a token per live slot, padding elsewhere) and runs it.
    fn step(&mut self, column: &[Option<i64>]) -> Result<Tensor> {
        if self.len + 1 > self.capacity {
            let drop = self
                .slots
                .iter()
                .flatten()
                .map(|s| s.first)
                .min()
                .unwrap_or(0);
            self.relayout(drop, 0)?;
        }
        let dev = self.model.device();
        let rows = self.slots.len();
        let toks: Vec<i64> = column
            .iter()
            .map(|t| t.unwrap_or(self.opts.pad_id))
            .collect();
        let mask: Vec<i64> = column.iter().map(|t| i64::from(t.is_some())).collect();
        let pos: Vec<i64> = self
            .slots
            .iter()
            .zip(column)
            .map(|(s, t)| match (s, t) {
                (Some(s), Some(_)) => s.real,
                _ => 0,
            })
            .collect();
        for (s, t) in self.slots.iter_mut().zip(column) {
            if let (Some(s), Some(_)) = (s, t) {
                s.real += 1;
            }
        }
        let new = tensor2(&toks, rows, 1, dev)?;
        self.ids.f_narrow(1, self.len, 1)?.f_copy_(&new)?;
        self.attention
            .f_narrow(1, self.len, 1)?
            .f_copy_(&tensor2(&mask, rows, 1, dev)?)?;
        self.len += 1;
        self.forward(&new, &tensor2(&pos, rows, 1, dev)?)
    }

    /// Drops the rows of finished slots (once the queue is empty and at most half the rows
    /// live, so at most log₂(batch) times): a step costs by rows, live or not. Returns `column`
    /// without those rows.
    fn compact(&mut self, column: &[Option<i64>]) -> Result<Vec<Option<i64>>> {
        let keep: Vec<usize> = (0..column.len()).filter(|&r| column[r].is_some()).collect();
        let idx: Vec<i64> = keep.iter().map(|&r| r as i64).collect();
        let idx = Tensor::from_slice(&idx).f_to_device(self.model.device())?;
        self.ids = self.ids.f_index_select(0, &idx)?;
        self.attention = self.attention.f_index_select(0, &idx)?;
        if let Some(cache) = &mut self.cache {
            for t in cache.keys.iter_mut().chain(cache.values.iter_mut()) {
                *t = t.f_index_select(0, &idx)?;
            }
        }
        self.slots = keep.iter().map(|&r| self.slots[r].take()).collect();
        Ok(keep.iter().map(|&r| column[r]).collect())
    }

    /// Re-lays the columns: drops the first `drop` (masked in every live row) and adds `add`
    /// padding columns on the left, growing the capacity when what is kept would not leave room.
    fn relayout(&mut self, drop: i64, add: i64) -> Result<()> {
        let kept = self.len - drop;
        let len = kept + add;
        let most = self.opts.max_new_tokens.min(self.max_pos) as i64;
        let capacity = self.capacity.max(len + most + 1);
        let rows = self.slots.len();
        let move_cols = |old: &Tensor, new: &Tensor, dim: i64| -> Result<()> {
            new.f_narrow(dim, add, kept)?
                .f_copy_(&old.f_narrow(dim, drop, kept)?)?;
            Ok(())
        };
        self.capacity = capacity;
        let ids = self.blank(rows, self.opts.pad_id)?;
        let att = self.blank(rows, 0)?;
        move_cols(&self.ids, &ids, 1)?;
        move_cols(&self.attention, &att, 1)?;
        self.ids = ids;
        self.attention = att;
        if let Some(cache) = &mut self.cache {
            let mut fresh = KvCache::new(&self.model.model, rows as i64, capacity)?;
            for (old, new) in cache
                .keys
                .iter()
                .chain(&cache.values)
                .zip(fresh.keys.iter().chain(&fresh.values))
            {
                move_cols(old, new, 2)?;
            }
            fresh.len = len;
            *cache = fresh;
        }
        for s in self.slots.iter_mut().flatten() {
            s.first += add - drop;
        }
        self.len = len;
        Ok(())
    }
}

/// The logits `[B, vocab]` (f32) at the last column of hidden states `h` `[B, T, hidden]`.
fn last_logits(model: &HfModel, h: &Tensor) -> Result<Tensor> {
    let t = h.size()[1];
    let m = &model.model;
    Ok(h.f_select(1, t - 1)?
        .f_linear::<&Tensor>(m.lm_head_weight(), None)?
        .f_to_kind(Kind::Float)?)
}

fn tensor2(v: &[i64], rows: usize, cols: usize, dev: Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(v)
        .f_view([rows as i64, cols as i64])?
        .f_to_device(dev)?)
}
