//! The task-vector family shared by `task_arithmetic`, `ties`, `dare_linear` and `dare_ties`
//! (mergekit's "generalized task arithmetic").
//!
//! For each model `i`: `τᵢ = θᵢ − θbase`; sparsify `τᵢ` (see [`Sparsify`]); `Wᵢ = wᵢ·τᵢ`.
//! With sign consensus: `majority = sign(Σᵢ Wᵢ)` (a sum ≥ 0 counts as +) and
//! `maskᵢ = [sign(Wᵢ) = majority]` (zeros never vote); without it `maskᵢ = 1`.
//! `mixed = Σᵢ Wᵢ·maskᵢ`; with `normalize`, `mixed /= Σᵢ wᵢ·maskᵢ` (a zero divisor becomes 1).
//! Result: `θbase + λ·mixed`. All per element.

use super::{Real, TensorParams, Tensors};
use crate::rng::SplitMix64;

/// How each task vector is sparsified before mixing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sparsify {
    /// Keep everything.
    None,
    /// Keep the `k = ⌊density·N⌋` entries of largest magnitude (ties at the threshold: the first
    /// ones in index order).
    TopK,
    /// Keep each entry with probability `density` (drawn from [`dare_mask`]); with `rescale`, the
    /// kept entries are multiplied by `‖τ‖₁ / ‖mask⊙τ‖₁` (left as they are when that is 0/0).
    Random { rescale: bool },
}

/// Stream key of DARE's masks.
pub const DARE_STREAM: u64 = 0xDA4E;

/// DARE's keep-mask for model `model` of a tensor of `n` elements: entry `e` is kept when the
/// `e`-th draw of `SplitMix64::derived(seed, model, DARE_STREAM).next_f64()` is `< density`.
pub fn dare_mask(n: usize, density: f64, seed: u64, model: usize) -> Vec<bool> {
    let mut g = SplitMix64::derived(seed, model as u64, DARE_STREAM);
    (0..n).map(|_| g.next_f64() < density).collect()
}

/// Zeroes the entries outside `mask`; with `rescale`, multiplies the kept ones by
/// `‖τ‖₁ / ‖mask⊙τ‖₁` (unless that is 0/0).
pub fn apply_mask<T: Real>(tau: &mut [T], mask: &[bool], rescale: bool) {
    let before: f64 = tau.iter().map(|x| x.to_f64().abs()).sum();
    let mut after = 0.0;
    for (x, keep) in tau.iter_mut().zip(mask) {
        if *keep {
            after += x.to_f64().abs();
        } else {
            *x = T::default();
        }
    }
    if rescale && after > 0.0 {
        let f = T::from_f64(before / after);
        tau.iter_mut().for_each(|x| *x = *x * f);
    }
}

/// Keeps the `k = ⌊density·N⌋` largest-magnitude entries of `tau`, zeroing the rest.
pub fn top_k<T: Real>(tau: &mut [T], density: f64) {
    let n = tau.len();
    let k = ((density * n as f64).floor() as usize).min(n);
    if k == n {
        return;
    }
    if k == 0 {
        tau.iter_mut().for_each(|x| *x = T::default());
        return;
    }
    let mut mags: Vec<f64> = tau.iter().map(|x| x.to_f64().abs()).collect();
    let (_, thr, _) = mags.select_nth_unstable_by(n - k, |a, b| a.total_cmp(b));
    let thr = *thr;
    drop(mags);
    let above = tau.iter().filter(|x| x.to_f64().abs() > thr).count();
    let mut at_thr_left = k - above;
    for x in tau.iter_mut() {
        let m = x.to_f64().abs();
        if m > thr {
            continue;
        }
        if m == thr && at_thr_left > 0 {
            at_thr_left -= 1;
            continue;
        }
        *x = T::default();
    }
}

/// The family's merge (see the module doc).
pub fn merge<T: Real>(
    t: Tensors<T>,
    p: &TensorParams,
    sparsify: Sparsify,
    consensus: bool,
) -> Result<Vec<T>, String> {
    let n = super::same_len(&t)?;
    let mut base = t.base.ok_or("this method needs a base model (`base=`)")?;
    let mut taus = t.models;
    for (i, tau) in taus.iter_mut().enumerate() {
        tau.iter_mut().zip(&base).for_each(|(x, b)| *x = *x - *b);
        let density = p.density.get(i).copied().unwrap_or(1.0);
        match sparsify {
            Sparsify::None => {}
            Sparsify::TopK => top_k(tau, density),
            Sparsify::Random { rescale } => {
                apply_mask(tau, &dare_mask(n, density, p.seed, i), rescale)
            }
        }
        let w = T::from_f64(p.weight.get(i).copied().unwrap_or(1.0));
        tau.iter_mut().for_each(|x| *x = *x * w);
    }
    let lambda = T::from_f64(p.lambda);
    let zero = T::default();
    for e in 0..n {
        let plus = if consensus {
            let s: f64 = taus.iter().map(|tau| tau[e].to_f64()).sum();
            Some(s >= 0.0)
        } else {
            None
        };
        let mut mixed = zero;
        let mut divisor = 0.0f64;
        for (i, tau) in taus.iter().enumerate() {
            let x = tau[e];
            let keep = match plus {
                None => true,
                Some(pos) => (pos && x > zero) || (!pos && x < zero),
            };
            if keep {
                mixed += x;
                divisor += p.weight.get(i).copied().unwrap_or(1.0);
            }
        }
        if p.normalize {
            let d = if divisor == 0.0 { 1.0 } else { divisor };
            mixed = mixed / T::from_f64(d);
        }
        base[e] += lambda * mixed;
    }
    Ok(base)
}
