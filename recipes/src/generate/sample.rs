//! The sampler: how the next token is picked from one row of logits, as Hugging Face
//! transformers' logits warpers do it (temperature, then top-k, then top-p), with the uniform
//! draw of an explicit random stream so that a completion depends only on its seed, its record
//! and its index.
//!
//! With `z_i = logit_i / T` (in f64) over the vocabulary:
//! 1. temperature `T`: `T = 0` is greedy — the argmax, the first index among equal maxima;
//! 2. top-k: every token whose `z_i ≥ z_(k)` (the k-th largest) is kept, ties at the boundary
//!    included; `k = 0` or `k ≥ V` keeps all;
//! 3. top-p: `p_i = softmax(z)_i` over the tokens top-k kept, sorted by descending
//!    probability; the smallest prefix whose cumulative probability reaches `top_p` is kept
//!    (always at least one token; `top_p ≥ 1` keeps all). "Reaches" allows [`TOP_P_SLACK`]:
//!    logits arrive in f32, whose rounding moves probabilities by ~1e-7, so a boundary set by
//!    hand (`0.5 + 0.3 = 0.8`) holds;
//! 4. the kept probabilities are renormalised to sum to 1.
//!
//! Non-finite logits: `−∞` (and NaN) is a token that cannot be drawn; `+∞` tokens, when there
//! are any, share all the probability (the limit of the softmax). A token whose probability
//! underflows to 0 in f64 is dropped: it could never be drawn. A row with NaN, `+∞` or no
//! finite logit is almost always a broken model: [`check_logits`] says so, and decoders call it
//! before sampling.
//!
//! Cost per row of `V` logits: O(V) passes for the scaling, the softmax weights, top-k (a
//! selection, not a sort) and the top-p pre-filter (only tokens of probability
//! `≥ (1 − top_p) / n` can be in the nucleus: the others hold less than `1 − top_p` together).
//! Sorting goes only as far as needed: chunks of the largest remaining weights are selected,
//! then sorted, until the nucleus is complete or — in [`pick`] without top-p — the draw is
//! reached; [`distribution`] without top-p sorts everything (it returns everything). Every sum
//! is taken in the same order in both, so [`pick`] lands on exactly the token a walk over
//! [`distribution`] finds. [`pick`] reuses one buffer per thread.

use crate::rng::SplitMix64;
use std::cell::RefCell;
use std::cmp::Ordering;

/// How much a top-p prefix may fall short of `top_p` and still count as reaching it.
pub const TOP_P_SLACK: f64 = 1e-6;

/// How the next token is picked.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 = greedy.
    pub temperature: f64,
    /// Keep the `top_k` most likely tokens (ties at the boundary included); 0 = off.
    pub top_k: usize,
    /// Nucleus: keep the most likely tokens up to this probability; 1.0 = off.
    pub top_p: f64,
}

impl Sampling {
    /// Greedy decoding: temperature 0, no filtering.
    pub fn greedy() -> Sampling {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
        }
    }

    /// Whether the argmax is taken: temperature 0 (or anything not positive, NaN included).
    pub fn is_greedy(&self) -> bool {
        self.temperature.partial_cmp(&0.0) != Some(Ordering::Greater)
    }
}

/// The kept tokens and their probabilities after temperature, top-k then top-p, as
/// `(token id, probability)` sorted by descending probability, ties by ascending id;
/// probabilities sum to 1 (f64). Greedy: the single argmax (first max index) with probability 1.
/// A row with no drawable token (all `−∞`/NaN) gives its argmax ([`check_logits`] rejects such
/// rows); an empty row gives an empty list.
pub fn distribution(logits: &[f32], s: &Sampling) -> Vec<(usize, f64)> {
    let mut out = Vec::new();
    fill(logits, s, &mut out);
    out
}

/// The token picked with the uniform draw `u` in `[0, 1)`: inverse CDF over [`distribution`] in
/// its order (the first token whose cumulative probability exceeds `u`; the last kept token if
/// rounding leaves `u` above the total). Greedy: argmax, `u` unused. An empty row gives 0.
pub fn pick(logits: &[f32], s: &Sampling, u: f64) -> usize {
    if s.is_greedy() {
        return argmax(logits);
    }
    thread_local! {
        static BUF: RefCell<Vec<(usize, f64)>> = const { RefCell::new(Vec::new()) };
    }
    BUF.with(|b| {
        let mut buf = b.borrow_mut();
        buf.clear();
        if logits.is_empty() {
            return 0;
        }
        let total = weights(logits, s, &mut buf);
        if buf.is_empty() {
            return argmax(logits);
        }
        if s.top_p >= 1.0 {
            return walk_unsorted(&mut buf, total, u);
        }
        nucleus(&mut buf, total, s.top_p);
        let mut cum = 0.0;
        for &(id, p) in buf.iter() {
            cum += p;
            if cum > u {
                return id;
            }
        }
        buf.last().map_or(0, |&(id, _)| id)
    })
}

/// The random stream of completion `sample` of record `record` under `seed`:
/// [`SplitMix64::derived`]`(seed, record, sample)`. One `next_f64()` per generated token.
pub fn stream(seed: u64, record: u64, sample: u64) -> SplitMix64 {
    SplitMix64::derived(seed, record, sample)
}

/// `Ok` when a row of logits can be sampled: not empty, no NaN, no `+∞`, at least one finite
/// value. The error says what is wrong and where (token ids), for the decoder to put in context.
pub fn check_logits(logits: &[f32]) -> Result<(), String> {
    if logits.is_empty() {
        return Err("the row of logits is empty (a vocabulary of 0 tokens)".into());
    }
    let nan: Vec<usize> = (0..logits.len()).filter(|&i| logits[i].is_nan()).collect();
    if let Some(&first) = nan.first() {
        return Err(format!(
            "{} of {} logits are NaN (the first at token {first}): the model's computation diverged",
            nan.len(),
            logits.len()
        ));
    }
    if let Some(i) = logits.iter().position(|&x| x == f32::INFINITY) {
        return Err(format!(
            "the logit of token {i} is +inf: the model's computation overflowed"
        ));
    }
    if !logits.iter().any(|x| x.is_finite()) {
        return Err(format!(
            "all {} logits are -inf: no token can be drawn",
            logits.len()
        ));
    }
    Ok(())
}

/// The first index of the largest logit, NaN ignored (0 when there is none).
fn argmax(logits: &[f32]) -> usize {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in logits.iter().enumerate() {
        if x.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if x <= b => {}
            _ => best = Some((i, x)),
        }
    }
    best.map_or(0, |(i, _)| i)
}

/// Descending by the value, ascending by id among equals: the order of every list here (whose
/// values are never NaN, so `total_cmp` is the numeric order).
fn by_value_desc(a: &(usize, f64), b: &(usize, f64)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Fills `out` with [`distribution`]'s result, reusing its allocation.
fn fill(logits: &[f32], s: &Sampling, out: &mut Vec<(usize, f64)>) {
    out.clear();
    if logits.is_empty() {
        return;
    }
    if s.is_greedy() {
        out.push((argmax(logits), 1.0));
        return;
    }
    let total = weights(logits, s, out);
    if out.is_empty() {
        out.push((argmax(logits), 1.0));
    } else if s.top_p < 1.0 {
        nucleus(out, total, s.top_p);
    } else {
        out.sort_unstable_by(by_value_desc);
        for c in out.iter_mut() {
            c.1 /= total;
        }
    }
}

/// Temperature, top-k and the softmax weights: `out` = the drawable tokens top-k keeps, in no
/// particular order, with `w_i = exp(d_i) > 0` (`d ≤ 0`, the max at 0, so the sum is in
/// `[1, n]`); returns `Σ w_i`, summed in `out`'s order (which [`pick`] reproduces).
fn weights(logits: &[f32], s: &Sampling, out: &mut Vec<(usize, f64)>) -> f64 {
    scaled(logits, s.temperature, out);
    top_k(out, s.top_k);
    for c in out.iter_mut() {
        c.1 = c.1.exp();
    }
    out.retain(|c| c.1 > 0.0);
    out.iter().map(|c| c.1).sum()
}

/// Top-p over weights summing to `total`: the shortest prefix of the descending order reaching
/// `top_p` (at least one token), sorted and renormalised.
fn nucleus(out: &mut Vec<(usize, f64)>, total: f64, top_p: f64) {
    // Tokens below (1 − top_p)/n of the mass hold less than 1 − top_p together: the nucleus
    // lies among the others.
    let floor = (1.0 - top_p) / out.len() as f64 * total;
    out.retain(|c| c.1 >= floor);
    let reach = (top_p - TOP_P_SLACK) * total;
    let mut cum = 0.0;
    let keep = sorted_until(out, |&(_, w)| {
        cum += w;
        cum >= reach
    })
    .map_or(out.len(), |j| j + 1);
    out.truncate(keep.max(1));
    let kept: f64 = out.iter().map(|c| c.1).sum();
    for c in out.iter_mut() {
        c.1 /= kept;
    }
}

/// Sorts `buf` descending ([`by_value_desc`]) only as far as needed: chunks of the largest
/// remaining entries (64, then twice as many each time) are selected, then sorted, and `stop`
/// sees the entries in the full sorted order until it returns true. Returns that entry's
/// position (`buf[..=j]` is then sorted and holds the `j + 1` largest), or `None` after the
/// whole of `buf`, then sorted. Worst case O(n log n), usually one chunk.
fn sorted_until(
    buf: &mut [(usize, f64)],
    mut stop: impl FnMut(&(usize, f64)) -> bool,
) -> Option<usize> {
    let mut done = 0;
    let mut chunk = 64;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let m = chunk.min(rest.len());
        if m < rest.len() {
            rest.select_nth_unstable_by(m - 1, by_value_desc);
        }
        rest[..m].sort_unstable_by(by_value_desc);
        if let Some(j) = rest[..m].iter().position(&mut stop) {
            return Some(done + j);
        }
        done += m;
        chunk *= 2;
    }
    None
}

/// [`pick`] without top-p: the inverse CDF over the descending order, sorted only as far as
/// the draw reaches ([`sorted_until`]). Each step is the same f64 operation as in [`fill`]
/// (`p = w / total`, `cum += p`) in the same order, so the token is exactly the one a walk
/// over [`distribution`] finds.
fn walk_unsorted(buf: &mut [(usize, f64)], total: f64, u: f64) -> usize {
    let mut cum = 0.0;
    match sorted_until(buf, |&(_, w)| {
        cum += w / total;
        cum > u
    }) {
        Some(j) => buf[j].0,
        None => buf.last().map_or(0, |c| c.0),
    }
}

/// The drawable tokens with their scaled logits relative to the largest,
/// `d_i = (logit_i − max) / T ≤ 0` (exact in f64, never ∞ − ∞); the `+∞` tokens alone, at
/// `d = 0`, when there are any.
fn scaled(logits: &[f32], t: f64, out: &mut Vec<(usize, f64)>) {
    if logits.contains(&f32::INFINITY) {
        out.extend(
            (0..logits.len())
                .filter(|&i| logits[i] == f32::INFINITY)
                .map(|i| (i, 0.0)),
        );
        return;
    }
    let max = logits
        .iter()
        .filter(|x| x.is_finite())
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    if max == f32::NEG_INFINITY {
        return;
    }
    let max = f64::from(max);
    out.extend(
        logits
            .iter()
            .enumerate()
            .filter(|(_, x)| x.is_finite())
            .map(|(i, &x)| (i, (f64::from(x) - max) / t)),
    );
}

/// Keeps the tokens whose scaled logit is at least the `k`-th largest (all when `k` is 0 or
/// not below their number): a selection, O(n).
fn top_k(c: &mut Vec<(usize, f64)>, k: usize) {
    if k == 0 || k >= c.len() {
        return;
    }
    let (_, kth, _) = c.select_nth_unstable_by(k - 1, by_value_desc);
    let kth = kth.1;
    c.retain(|x| x.1 >= kth);
}
