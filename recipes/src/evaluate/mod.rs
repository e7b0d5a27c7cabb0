//! Evaluation primitives on a loaded [`HfModel`]: held-out loss and greedy decoding. The `eval`
//! node kind ([`crate::kinds::eval`]) builds on them; both run under `no_grad`.
//!
//! - [`loss_sum`]: `Σ CE` over the target tokens of tokenised examples (labels as in
//!   [`crate::batching::examples`]: aligned with the inputs, −100 where not a target, shifted inside
//!   the loss) and the number of target tokens, so that the *token-weighted* mean over a whole
//!   data set is `loss = Σ CE / Σ targets` and `perplexity = exp(loss)`. Examples are batched
//!   right-padded, grouped by length (the sum does not depend on the grouping beyond float
//!   rounding); only target positions go through the LM head, chunk by chunk
//!   ([`crate::trainer::lm::target_ce`]), so no `[tokens, vocab]` tensor exists.
//! - [`greedy`]: batched greedy decoding of left-padded prompts with the KV cache
//!   ([`crate::generate::decode`]): at each step the next token of every unfinished row is
//!   `argmax logits[row, last]` (the first maximum on ties); a row finishes when it emits a
//!   stop token (not included in the output) or after `max_new_tokens` tokens, or when its
//!   length reaches the model's position limit.
//! - [`pref::preference_scores`]: held-out preference accuracy and margin of tokenised pairs.
//! - [`report`]: the result rows' table (what the `eval` node logs and `temper show` prints).
//! - [`score`]: one model on one dataset → a result row (loss, exact-match or preference
//!   accuracy), the unit the `eval` node repeats.

pub mod pref;
pub mod report;
pub mod score;

use crate::arch::HfModel;
use crate::batching::examples::Example;
use crate::batching::pack::pad_batch;
use crate::trainer::lm;
use anyhow::Result;
use std::path::Path;
use tch::{Device, Tensor};

/// Summed cross-entropy over target tokens and their count.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossSum {
    /// `Σ −log p(target)` in nats (accumulated in f64).
    pub sum: f64,
    /// Target tokens counted.
    pub targets: usize,
}

impl LossSum {
    /// Mean CE per target token (`NaN` when there is none).
    pub fn mean(&self) -> f64 {
        if self.targets == 0 {
            f64::NAN
        } else {
            self.sum / self.targets as f64
        }
    }
    /// `exp(mean)`.
    pub fn perplexity(&self) -> f64 {
        self.mean().exp()
    }
    pub fn add(&mut self, other: LossSum) {
        self.sum += other.sum;
        self.targets += other.targets;
    }
}

/// Order of indices that groups items of similar length (stable: ties keep input order).
fn by_length(lens: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| lens[i]);
    order
}

fn tensor2(data: &[i64], rows: usize, cols: usize, dev: Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(data)
        .f_view([rows as i64, cols as i64])?
        .f_to_device(dev)?)
}

/// `Σ CE` and target count over `examples`, `batch_size` examples per forward pass.
/// `on_batch(n)` is called after each batch with the examples it held (progress).
pub fn loss_sum(
    model: &HfModel,
    examples: &[Example],
    batch_size: usize,
    pad_id: i64,
    mut on_batch: impl FnMut(usize),
) -> Result<LossSum> {
    let _guard = tch::no_grad_guard();
    let dev = model.device();
    let lens: Vec<usize> = examples.iter().map(Example::len).collect();
    let order = by_length(&lens);
    let mut total = LossSum::default();
    for chunk in order.chunks(batch_size.max(1)) {
        let exs: Vec<Example> = chunk.iter().map(|&i| examples[i].clone()).collect();
        let b = pad_batch(&exs, pad_id, None);
        if b.cols == 0 {
            on_batch(chunk.len());
            continue;
        }
        let ids = tensor2(&b.input_ids, b.rows, b.cols, dev)?;
        let pos = tensor2(&b.position_ids, b.rows, b.cols, dev)?;
        let keep = b.attention_mask();
        let right = crate::arch::right_padded(&keep, b.cols);
        let mask = tensor2(&keep, b.rows, b.cols, dev)?;
        let h = model
            .model
            .hidden_states(&ids, &pos, crate::arch::for_padded(&mask, right))?;
        let s = lm::target_ce(model, &h, &b.labels, b.rows, b.cols)?.f_double_value(&[])?;
        total.add(LossSum {
            sum: s,
            targets: b.n_target_tokens,
        });
        on_batch(chunk.len());
    }
    Ok(total)
}

/// How to decode.
#[derive(Clone, Debug)]
pub struct GreedyOptions {
    /// At most this many new tokens per prompt.
    pub max_new_tokens: usize,
    /// Tokens that end a completion (EOS, end-of-turn markers); not part of the output.
    pub stop: Vec<i64>,
    /// Token written into left padding (never attended to).
    pub pad_id: i64,
    /// Prompts decoded together.
    pub batch_size: usize,
}

/// One decoded completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    /// New tokens, without the stop token.
    pub tokens: Vec<i64>,
    /// Whether a stop token ended it (else the token or position limit did).
    pub stopped: bool,
}

/// Greedy completions of `prompts` (token ids, each non-empty, at most the position limit),
/// in input order, through the KV-cached decoder ([`crate::generate::decode`]).
/// `on_batch(n)` is called after each batch with the prompts it held.
pub fn greedy(
    model: &HfModel,
    prompts: &[Vec<i64>],
    opts: &GreedyOptions,
    on_batch: impl FnMut(usize),
) -> Result<Vec<Generation>> {
    use crate::generate::decode::{decode, DecodeOptions, Finish, Request};
    let requests: Vec<Request> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| Request {
            prompt: p.clone(),
            record: i as u64,
            sample: 0,
        })
        .collect();
    let d = DecodeOptions {
        max_new_tokens: opts.max_new_tokens,
        stop_ids: opts.stop.clone(),
        pad_id: opts.pad_id,
        batch_size: opts.batch_size,
        sampling: crate::generate::sample::Sampling::greedy(),
        seed: 0,
        logprobs: false,
        cache: true,
    };
    Ok(decode(model, &requests, &d, None, on_batch)?
        .into_iter()
        .map(|c| Generation {
            stopped: c.finish == Finish::Stop,
            tokens: c.tokens,
        })
        .collect())
}

/// The exact-match rule: the prediction equals the reference after trimming whitespace at both
/// ends.
pub fn exact_match(prediction: &str, reference: &str) -> bool {
    prediction.trim() == reference.trim()
}

/// `eos_token_id` of the directory's generation_config.json (an id or a list), if any.
pub fn generation_eos(dir: &Path) -> Vec<i64> {
    let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    match v.get("eos_token_id") {
        Some(serde_json::Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_i64()).collect(),
        _ => Vec::new(),
    }
}
