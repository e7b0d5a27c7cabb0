//! Held-out preference accuracy: how often a model gives the chosen completion of a pair a
//! higher sequence log-probability than the rejected one.
//!
//! For a pair tokenised by [`crate::pref::encode`] (the same tokenisation and truncation as
//! `ref-logps` / `dpo`), `logπ(y)` is the sum of the model's log-probs over the completion tokens
//! ([`crate::pref::logps::seq_logps`], f32, chosen and rejected of a pair in one forward pass).
//! With the margin `m_i = logπ(yc_i) − logπ(yr_i)` over the `n` scored pairs:
//! - `accuracy = (1/n) Σ [m_i > 0]` (a tie counts as wrong, so a model that cannot tell the
//!   sides apart scores 0, not 50%, on identical log-probs);
//! - `margin = (1/n) Σ m_i` (nats);
//! - `chosen_loss = −Σ logπ(yc_i) / Σ Lc_i`, the token-weighted mean cross-entropy of the chosen
//!   completions (how likely the preferred answers stay, the quantity RPO protects).

use crate::arch::HfModel;
use crate::batching::examples::Example;
use crate::data::Record;
use crate::pref::encode::{PairEncoded, PairEncoder};
use crate::pref::logps::seq_logps;
use crate::stage::StageError;
use anyhow::{Context, Result};
use tch::Kind;

/// A tokenised preference pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub chosen: Example,
    pub rejected: Example,
}

/// Preference scores of a model on a set of pairs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrefScores {
    /// `logπ(yc) − logπ(yr)` per pair, in input order.
    pub margins: Vec<f64>,
    /// `Σ logπ(yc)` over all pairs.
    pub chosen_logp: f64,
    /// `Σ Lc`, the chosen completion tokens.
    pub chosen_tokens: usize,
}

impl PrefScores {
    /// Pairs scored.
    pub fn n(&self) -> usize {
        self.margins.len()
    }
    /// Pairs with `logπ(yc) > logπ(yr)`.
    pub fn correct(&self) -> usize {
        self.margins.iter().filter(|&&m| m > 0.0).count()
    }
    /// `correct / n` (`NaN` without pairs).
    pub fn accuracy(&self) -> f64 {
        if self.margins.is_empty() {
            f64::NAN
        } else {
            self.correct() as f64 / self.n() as f64
        }
    }
    /// Mean margin in nats (`NaN` without pairs).
    pub fn mean_margin(&self) -> f64 {
        if self.margins.is_empty() {
            f64::NAN
        } else {
            self.margins.iter().sum::<f64>() / self.n() as f64
        }
    }
    /// `−Σ logπ(yc) / Σ Lc` (`NaN` without tokens).
    pub fn chosen_loss(&self) -> f64 {
        if self.chosen_tokens == 0 {
            f64::NAN
        } else {
            -self.chosen_logp / self.chosen_tokens as f64
        }
    }
}

/// Scores `pairs` under `model`, `batch_size` pairs (2 × that many sequences) per forward.
/// `on_batch(n)` is called after each batch with the pairs it held (progress).
pub fn preference_scores(
    model: &HfModel,
    pairs: &[Pair],
    batch_size: usize,
    pad_id: i64,
    mut on_batch: impl FnMut(usize),
) -> Result<PrefScores> {
    let _guard = tch::no_grad_guard();
    let mut out = PrefScores::default();
    for (b, chunk) in pairs.chunks(batch_size.max(1)).enumerate() {
        let seqs: Vec<&Example> = chunk
            .iter()
            .map(|p| &p.chosen)
            .chain(chunk.iter().map(|p| &p.rejected))
            .collect();
        let lp = seq_logps(model, &seqs, pad_id)
            .with_context(|| format!("log-probs of pair batch {b}"))?;
        let sums = Vec::<f64>::try_from(&lp.sum.f_to_kind(Kind::Double)?)
            .context("reading sequence log-probs")?;
        let n = chunk.len();
        for (i, p) in chunk.iter().enumerate() {
            out.margins.push(sums[i] - sums[n + i]);
            out.chosen_logp += sums[i];
            out.chosen_tokens += p.chosen.n_targets();
        }
        on_batch(n);
    }
    Ok(out)
}

/// Tokenised pairs of a preference dataset.
#[derive(Clone, Debug, Default)]
pub struct EncodedPairs {
    pub pairs: Vec<Pair>,
    /// Index in the dataset of each pair kept.
    pub kept: Vec<usize>,
    /// Pairs skipped: identical after truncation, without a completion token, or (with
    /// `skip_long`) a prompt that fills the length limit.
    pub skipped: usize,
}

/// Tokenises `records` (all preference pairs) with `enc`. A prompt that fills `enc.max_len`
/// is a user error naming the record unless `skip_long`, which skips and counts it.
pub fn encode_pairs(
    enc: &PairEncoder,
    records: &[Record],
    skip_long: bool,
) -> Result<EncodedPairs, StageError> {
    let mut out = EncodedPairs::default();
    for (k, rec) in records.iter().enumerate() {
        let Record::Preference {
            prompt,
            chosen,
            rejected,
        } = rec
        else {
            return Err(StageError::user(
                format!("record {} is not a preference pair", k + 1),
                None,
            ));
        };
        let encoded = enc
            .pair(prompt, chosen, rejected)
            .map_err(|e| StageError::user(format!("record {}: {e:#}", k + 1), None))?;
        match encoded {
            PairEncoded::Ok {
                chosen, rejected, ..
            } if chosen.n_targets() > 0 && rejected.n_targets() > 0 => {
                out.pairs.push(Pair { chosen, rejected });
                out.kept.push(k);
            }
            PairEncoded::PromptTooLong { len } if !skip_long => {
                return Err(StageError::user(
                    format!(
                        "record {}: the prompt alone has {len} tokens and fills the model's limit of {}",
                        k + 1,
                        enc.max_len
                    ),
                    Some("set `skip-long #true` to skip and count such records".into()),
                ))
            }
            _ => out.skipped += 1,
        }
    }
    Ok(out)
}
