//! The deterministic example stream of a mixture: which record of which source comes at each
//! position, as a pure function of (sources' sizes and token lengths, weights, caps, budget,
//! seed, position).
//!
//! Draw at position `k`:
//! 1. the *active* sources are those with weight > 0, at least one record, and fewer draws
//!    than their cap `⌊max_epochs · n_i⌋` (no cap when `max_epochs` is unset; with the
//!    [`Budget::Exhaust`] budget an unset cap means one epoch);
//! 2. `u = SplitMix64::derived(seed, CHOOSE, k).next_f64()`; the source is the first active `i`
//!    (in source order) with `u · Σ_active w < Σ_{active j ≤ i} w_j`, so the weights of the
//!    active sources are renormalised implicitly when a capped source drops out;
//! 3. within source `i`, records come in the order of a permutation of `0..n_i` drawn anew for
//!    each epoch `e` from `SplitMix64::derived(seed, hash(name_i), e)`.
//!
//! The stream ends before position `k` when the budget is spent (`tokens_seen >= tokens`, so
//! the last document may overshoot the budget by less than its own length; or `k >= examples`)
//! or when no source is active. [`StreamState`] (position, tokens seen, per-source epoch,
//! cursor, draws and permutation seed) is all a resumed run needs: `resume(state)` then `next()`
//! continues exactly where the saved stream stopped.

use crate::rng::SplitMix64;
use anyhow::bail;
use serde::{Deserialize, Serialize};

/// Stream key of the source choice.
const CHOOSE: u64 = 0xC40_05E;

/// One source of the stream.
#[derive(Clone, Debug)]
pub struct StreamSource {
    pub name: String,
    /// Sampling weight (need not be normalised).
    pub weight: f64,
    /// At most this many passes over the source (fractions allowed); `None` = unlimited.
    pub max_epochs: Option<f64>,
    /// Token length of each record (its number of records is `lengths.len()`); with an
    /// examples budget the values are not used and may be zeros.
    pub lengths: Vec<u64>,
}

/// When the stream ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Budget {
    /// After the position where at least this many tokens were drawn.
    Tokens(u64),
    /// After this many records.
    Examples(u64),
    /// When every source reached its cap (unset caps count as one epoch).
    Exhaust,
}

/// One drawn record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Draw {
    pub position: u64,
    pub source: usize,
    pub record: usize,
    /// Pass over the source this record belongs to (0-based).
    pub epoch: u64,
}

/// Per-source progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceState {
    pub name: String,
    pub epoch: u64,
    /// Records of the current epoch already drawn.
    pub cursor: u64,
    /// Records drawn in total.
    pub drawn: u64,
    /// Seed of the current epoch's permutation.
    pub perm_seed: u64,
}

/// Everything needed to continue the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    pub seed: u64,
    pub position: u64,
    pub tokens: u64,
    pub sources: Vec<SourceState>,
}

/// The stream.
#[derive(Clone, Debug)]
pub struct MixtureStream {
    sources: Vec<StreamSource>,
    caps: Vec<Option<u64>>,
    budget: Budget,
    state: StreamState,
    perms: Vec<Vec<u32>>,
}

fn name_hash(name: &str) -> u64 {
    let h = blake3::hash(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

fn perm_seed(seed: u64, name: &str, epoch: u64) -> u64 {
    SplitMix64::derived(seed, name_hash(name), epoch).next_u64()
}

impl MixtureStream {
    /// A stream at position 0.
    pub fn new(sources: Vec<StreamSource>, budget: Budget, seed: u64) -> anyhow::Result<Self> {
        let state = StreamState {
            seed,
            position: 0,
            tokens: 0,
            sources: sources
                .iter()
                .map(|s| SourceState {
                    name: s.name.clone(),
                    epoch: 0,
                    cursor: 0,
                    drawn: 0,
                    perm_seed: perm_seed(seed, &s.name, 0),
                })
                .collect(),
        };
        Self::resume(sources, budget, state)
    }

    /// A stream continuing from `state` (saved by [`MixtureStream::state`]).
    pub fn resume(
        sources: Vec<StreamSource>,
        budget: Budget,
        state: StreamState,
    ) -> anyhow::Result<Self> {
        if sources.len() != state.sources.len()
            || sources
                .iter()
                .zip(&state.sources)
                .any(|(a, b)| a.name != b.name)
        {
            bail!(
                "the saved stream state is for sources [{}], not [{}]",
                state
                    .sources
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                sources
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let mut caps = Vec::with_capacity(sources.len());
        let mut perms = Vec::with_capacity(sources.len());
        for (s, st) in sources.iter().zip(&state.sources) {
            if !(s.weight.is_finite() && s.weight >= 0.0) {
                bail!(
                    "source {}: weight must be a finite number >= 0, got {}",
                    s.name,
                    s.weight
                );
            }
            let n = s.lengths.len() as u64;
            let epochs = match (s.max_epochs, budget) {
                (Some(e), _) => Some(e),
                (None, Budget::Exhaust) => Some(1.0),
                (None, _) => None,
            };
            caps.push(epochs.map(|e| (e.max(0.0) * n as f64).floor() as u64));
            if st.cursor > n || st.perm_seed != perm_seed(state.seed, &s.name, st.epoch) {
                bail!(
                    "source {}: the saved stream state does not match this source",
                    s.name
                );
            }
            perms.push(SplitMix64::new(st.perm_seed).permutation(n as usize));
        }
        Ok(MixtureStream {
            sources,
            caps,
            budget,
            state,
            perms,
        })
    }

    /// The state after the records drawn so far.
    pub fn state(&self) -> &StreamState {
        &self.state
    }
    pub fn position(&self) -> u64 {
        self.state.position
    }
    pub fn tokens_seen(&self) -> u64 {
        self.state.tokens
    }
    pub fn sources(&self) -> &[StreamSource] {
        &self.sources
    }

    fn active(&self, i: usize) -> bool {
        let s = &self.sources[i];
        s.weight > 0.0
            && !s.lengths.is_empty()
            && self.caps[i].is_none_or(|c| self.state.sources[i].drawn < c)
    }

    /// Whether the budget is spent.
    pub fn budget_spent(&self) -> bool {
        match self.budget {
            Budget::Tokens(t) => self.state.tokens >= t,
            Budget::Examples(n) => self.state.position >= n,
            Budget::Exhaust => false,
        }
    }

    /// Normalised probabilities of the sources at the current position (0 for inactive ones).
    pub fn probabilities(&self) -> Vec<f64> {
        let total: f64 = (0..self.sources.len())
            .filter(|&i| self.active(i))
            .map(|i| self.sources[i].weight)
            .sum();
        (0..self.sources.len())
            .map(|i| {
                if self.active(i) && total > 0.0 {
                    self.sources[i].weight / total
                } else {
                    0.0
                }
            })
            .collect()
    }
}

impl Iterator for MixtureStream {
    type Item = Draw;

    fn next(&mut self) -> Option<Draw> {
        if self.budget_spent() {
            return None;
        }
        let active: Vec<usize> = (0..self.sources.len())
            .filter(|&i| self.active(i))
            .collect();
        let total: f64 = active.iter().map(|&i| self.sources[i].weight).sum();
        if active.is_empty() || total <= 0.0 {
            return None;
        }
        let pos = self.state.position;
        let u = SplitMix64::derived(self.state.seed, CHOOSE, pos).next_f64() * total;
        let mut acc = 0.0;
        let mut pick = active[active.len() - 1];
        for &i in &active {
            acc += self.sources[i].weight;
            if u < acc {
                pick = i;
                break;
            }
        }
        let n = self.sources[pick].lengths.len() as u64;
        let seed = self.state.seed;
        let st = &mut self.state.sources[pick];
        if st.cursor >= n {
            st.epoch += 1;
            st.cursor = 0;
            st.perm_seed = perm_seed(seed, &st.name, st.epoch);
            self.perms[pick] = SplitMix64::new(st.perm_seed).permutation(n as usize);
        }
        let record = self.perms[pick][st.cursor as usize] as usize;
        let draw = Draw {
            position: pos,
            source: pick,
            record,
            epoch: st.epoch,
        };
        st.cursor += 1;
        st.drawn += 1;
        self.state.tokens += self.sources[pick].lengths[record];
        self.state.position += 1;
        Some(draw)
    }
}
