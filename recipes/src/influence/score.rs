//! Group-influence scores from gradient dot products, their standard errors, and abstention.
//!
//! With `g_k` the mean gradient of domain k's sample, `h_j` the gradient of target j's mean
//! loss and `c_j` the target weights normalised to `Σ c_j = 1`:
//!
//! - influence (per unit learning rate) `I_jk = ⟨h_j, g_k⟩`: to first order, one step of size
//!   η on domain k lowers target j's loss by `η·I_jk`;
//! - score `s_k = Σ_j c_j · ⟨h_j, g_k⟩ / ‖h_j‖` (each target counts by its weight, not by the
//!   size of its gradient);
//! - halves: `s_k^A`, `s_k^B` are the same score with `g_k` replaced by the mean gradient of
//!   half A or B of the sample; the standard error of `s_k` (the mean of two half estimates) is
//!   `se_k = |s_k^A − s_k^B| / 2`;
//! - abstention: the differences between domains are noise when
//!   `max_k s_k − min_k s_k ≤ z · √2 · rms(se)` (`rms(se) = √(mean_k se_k²)`, `√2` because a
//!   difference of two estimates has `√2` times their error; `z = 2` by default). Then the
//!   node keeps `w0` and says so rather than amplifying noise.
//!
//! All arithmetic here is f64; the dot products come from [`super::grads::Gram`].

use serde::Serialize;

/// Dot products the scores need (all f64).
#[derive(Clone, Debug)]
pub struct Dots {
    /// `⟨h_j, g_k⟩`, `[J][K]`.
    pub hg: Vec<Vec<f64>>,
    /// `⟨h_j, g_k^A⟩`, `⟨h_j, g_k^B⟩`.
    pub hg_a: Vec<Vec<f64>>,
    pub hg_b: Vec<Vec<f64>>,
    /// `‖h_j‖`.
    pub h_norm: Vec<f64>,
}

/// Scores and their uncertainty.
#[derive(Clone, Debug, Serialize)]
pub struct Scores {
    pub s: Vec<f64>,
    pub s_a: Vec<f64>,
    pub s_b: Vec<f64>,
    pub se: Vec<f64>,
}

/// `c_j / Σ c`; an error unless the weights are finite, non-negative and sum to a positive number.
pub fn normalise_weights(c: &[f64]) -> Result<Vec<f64>, String> {
    if c.iter().any(|x| !x.is_finite() || *x < 0.0) {
        return Err("target weights must be finite and non-negative".into());
    }
    let total: f64 = c.iter().sum();
    if total <= 0.0 {
        return Err(format!(
            "the target weights sum to {total}: they must sum to a positive number"
        ));
    }
    Ok(c.iter().map(|x| x / total).collect())
}

fn combine(dots: &[Vec<f64>], h_norm: &[f64], c: &[f64]) -> Vec<f64> {
    let k = dots.first().map_or(0, Vec::len);
    (0..k)
        .map(|kk| {
            dots.iter()
                .zip(h_norm)
                .zip(c)
                .filter(|((_, n), _)| **n > 0.0)
                .map(|((row, n), cj)| cj * row[kk] / n)
                .sum()
        })
        .collect()
}

/// The scores of the module docs; `c` already normalised.
pub fn scores(d: &Dots, c: &[f64]) -> Scores {
    let s = combine(&d.hg, &d.h_norm, c);
    let s_a = combine(&d.hg_a, &d.h_norm, c);
    let s_b = combine(&d.hg_b, &d.h_norm, c);
    let se = s_a
        .iter()
        .zip(&s_b)
        .map(|(a, b)| (a - b).abs() / 2.0)
        .collect();
    Scores { s, s_a, s_b, se }
}

/// Why the node abstains, or `None` when the spread of the scores is significant.
pub fn abstain(sc: &Scores, z: f64) -> Option<String> {
    if sc.s.len() < 2 {
        return Some("a single domain: there is nothing to reweight".into());
    }
    if sc.s.iter().any(|x| !x.is_finite()) {
        return Some("a score is not finite".into());
    }
    let max = sc.s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let min = sc.s.iter().cloned().fold(f64::INFINITY, f64::min);
    let spread = max - min;
    let rms = (sc.se.iter().map(|e| e * e).sum::<f64>() / sc.se.len() as f64).sqrt();
    let noise = z * std::f64::consts::SQRT_2 * rms;
    (spread <= noise).then(|| {
        format!(
            "the spread of the domain scores ({spread:.3e}) is within {z}·√2 standard errors ({noise:.3e}): kept the starting weights"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_weighted_normalised_dots() {
        let d = Dots {
            hg: vec![vec![2.0, -1.0], vec![0.0, 4.0]],
            hg_a: vec![vec![2.0, -1.0], vec![0.0, 4.0]],
            hg_b: vec![vec![2.0, -3.0], vec![0.0, 4.0]],
            h_norm: vec![2.0, 4.0],
        };
        let c = normalise_weights(&[3.0, 1.0]).unwrap();
        let sc = scores(&d, &c);
        assert_eq!(sc.s, vec![0.75, -0.375 + 0.25]);
        assert_eq!(sc.se, vec![0.0, 0.375]);
        assert!(normalise_weights(&[0.0, 0.0]).is_err());
    }

    #[test]
    fn equal_scores_abstain() {
        let sc = Scores {
            s: vec![1.0, 1.0],
            s_a: vec![1.0, 1.0],
            s_b: vec![1.0, 1.0],
            se: vec![0.0, 0.0],
        };
        assert!(abstain(&sc, 2.0).is_some());
        let sc = Scores {
            s: vec![1.0, 2.0],
            se: vec![0.1, 0.1],
            ..sc
        };
        assert!(abstain(&sc, 2.0).is_none());
    }
}
