//! Ranking sampled completions into preference pairs (the `pairs` kind's rule, no torch).
//!
//! Input: the `samples.jsonl` of a `generate` node, one [`Sample`] per prompt. Each completion
//! gets a score (higher is better):
//! - [`reference_match`]`(c, r) = 1 − lev(c, r) / max(chars(c), chars(r))` on Unicode
//!   characters after trimming whitespace at both ends (1 when both are empty), `lev` the
//!   Levenshtein distance (insertions, deletions, substitutions of one character, each 1);
//! - [`length_score`]`(c) = −chars(trim(c))`: shorter is better;
//! - `judge-logp` is computed with a model ([`crate::generate::judge`]).
//!
//! The pair of a prompt ([`choose`]): completions blank after trimming are left out (a
//! preference record cannot hold an empty side); with fewer than two left the prompt is
//! skipped (`blank`). `chosen` = the highest score, `rejected` = the lowest, each the *first* in
//! completion order among equal scores. A prompt whose kept completions all score the same is
//! skipped (`tied`); one whose chosen and rejected texts are identical (possible only when a
//! score does not depend on the text alone) is skipped (`identical`). Skips are counted per
//! reason ([`Ranking::skipped`]).

use crate::data::Turns;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Name of the per-prompt completions file in a `generate` artifact.
pub const SAMPLES_FILE: &str = "samples.jsonl";
/// Name of the per-pair scores file in a `pairs` artifact.
pub const PAIRS_FILE: &str = "pairs.jsonl";

/// One prompt's completions: a line of `samples.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The record's index in the prompts dataset.
    pub index: u64,
    /// The prompt: text or chat turns.
    pub prompt: Turns,
    /// The prompts dataset's reference completion, when it has one.
    #[serde(default)]
    pub reference: Option<String>,
    /// The completions, in sampling order.
    pub completions: Vec<String>,
    /// Per completion: `stop`, `length` or `position-limit`.
    #[serde(default)]
    pub finish_reasons: Vec<String>,
    /// Per completion: its number of tokens.
    #[serde(default)]
    pub tokens: Vec<usize>,
    /// Per completion: its token ids (as generated, before any stop string was cut).
    #[serde(default)]
    pub token_ids: Vec<Vec<i64>>,
    /// Per completion: each generated token's log-probability (when the node recorded them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<Vec<f64>>>,
}

/// Reads `samples.jsonl`: every non-empty line a [`Sample`]; an error names the line.
pub fn read_samples(path: &Path) -> anyhow::Result<Vec<Sample>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let s: Sample = serde_json::from_str(line).with_context(|| {
            format!(
                "{}:{}: not a line of a `generate` node's completions",
                path.display(),
                i + 1
            )
        })?;
        out.push(s);
    }
    Ok(out)
}

/// The Levenshtein distance between `a` and `b` in Unicode characters: the fewest insertions,
/// deletions and substitutions of one character that turn `a` into `b`. Dynamic programming
/// over one row, `O(|a|·|b|)` time after stripping the common prefix and suffix.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let pre = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let (a, b) = (&a[pre..], &b[pre..]);
    let suf = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (a, b) = (&a[..a.len() - suf], &b[..b.len() - suf]);
    if a.is_empty() || b.is_empty() {
        return a.len() + b.len();
    }
    // row[j] = lev(a[..i], b[..j]) for the current i.
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = diag + usize::from(ca != cb);
            diag = row[j + 1];
            row[j + 1] = sub.min(row[j] + 1).min(diag + 1);
        }
    }
    row[b.len()]
}

/// `1 − lev(c, r) / max(chars(c), chars(r))` after trimming both (1 when both are empty): 1
/// for an exact match, 0 when nothing is shared.
pub fn reference_match(completion: &str, reference: &str) -> f64 {
    let (c, r) = (completion.trim(), reference.trim());
    let longest = c.chars().count().max(r.chars().count());
    if longest == 0 {
        return 1.0;
    }
    1.0 - levenshtein(c, r) as f64 / longest as f64
}

/// `−chars(trim(completion))`: shorter is better.
pub fn length_score(completion: &str) -> f64 {
    -(completion.trim().chars().count() as f64)
}

/// Why a prompt gave no pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    /// Fewer than two completions are non-blank.
    Blank,
    /// Every non-blank completion has the same score.
    Tied,
    /// The chosen and rejected texts are the same.
    Identical,
}

impl Skip {
    /// The reason's name in stats and messages.
    pub fn name(self) -> &'static str {
        match self {
            Skip::Blank => "blank",
            Skip::Tied => "tied",
            Skip::Identical => "identical",
        }
    }
}

/// What [`choose`] decided for one prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Indices of the chosen and rejected completions.
    Pair {
        chosen: usize,
        rejected: usize,
    },
    Skipped(Skip),
}

/// The pair of one prompt's `completions` under `scores` (one per completion), per the
/// module's rule: highest and lowest score among the non-blank completions, the first in
/// order among equals.
pub fn choose(completions: &[String], scores: &[f64]) -> Verdict {
    let kept: Vec<usize> = (0..completions.len().min(scores.len()))
        .filter(|&i| !completions[i].trim().is_empty())
        .collect();
    if kept.len() < 2 {
        return Verdict::Skipped(Skip::Blank);
    }
    let (mut hi, mut lo) = (kept[0], kept[0]);
    for &i in &kept[1..] {
        if scores[i] > scores[hi] {
            hi = i;
        }
        if scores[i] < scores[lo] {
            lo = i;
        }
    }
    if scores[hi] == scores[lo] {
        Verdict::Skipped(Skip::Tied)
    } else if completions[hi] == completions[lo] {
        Verdict::Skipped(Skip::Identical)
    } else {
        Verdict::Pair {
            chosen: hi,
            rejected: lo,
        }
    }
}

/// One pair, as a line of `pairs.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairRow {
    /// The record's index in the prompts dataset.
    pub index: u64,
    pub chosen_index: usize,
    pub rejected_index: usize,
    pub chosen_score: f64,
    pub rejected_score: f64,
}

/// The pairs of every prompt, and the prompts skipped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ranking {
    /// `(position of the sample in samples.jsonl, pair)`, in input order.
    pub pairs: Vec<(usize, PairRow)>,
    /// `(position of the sample, why)` of every prompt without a pair, in input order.
    pub skips: Vec<(usize, Skip)>,
}

impl Ranking {
    /// Skipped prompts per reason (reasons that occurred only).
    pub fn skipped(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for (_, s) in &self.skips {
            *m.entry(s.name()).or_insert(0) += 1;
        }
        m
    }

    /// Prompts skipped for `why`.
    pub fn count(&self, why: Skip) -> usize {
        self.skips.iter().filter(|(_, s)| *s == why).count()
    }

    /// Means of the chosen and rejected scores over the pairs (`None` without pairs).
    pub fn mean_scores(&self) -> Option<(f64, f64)> {
        if self.pairs.is_empty() {
            return None;
        }
        let n = self.pairs.len() as f64;
        let c: f64 = self.pairs.iter().map(|(_, p)| p.chosen_score).sum();
        let r: f64 = self.pairs.iter().map(|(_, p)| p.rejected_score).sum();
        Some((c / n, r / n))
    }
}

/// Ranks every sample: `scores[i][j]` is the score of completion `j` of `samples[i]`.
pub fn rank(samples: &[Sample], scores: &[Vec<f64>]) -> Ranking {
    let mut out = Ranking::default();
    for (at, (s, sc)) in samples.iter().zip(scores).enumerate() {
        match choose(&s.completions, sc) {
            Verdict::Pair { chosen, rejected } => out.pairs.push((
                at,
                PairRow {
                    index: s.index,
                    chosen_index: chosen,
                    rejected_index: rejected,
                    chosen_score: sc[chosen],
                    rejected_score: sc[rejected],
                },
            )),
            Verdict::Skipped(why) => out.skips.push((at, why)),
        }
    }
    out
}

/// The scores of every completion by a function of the completion and its sample (the text
/// scores; `judge-logp` needs a model).
pub fn text_scores(samples: &[Sample], f: impl Fn(&str, &Sample) -> f64) -> Vec<Vec<f64>> {
    samples
        .iter()
        .map(|s| s.completions.iter().map(|c| f(c, s)).collect())
        .collect()
}
