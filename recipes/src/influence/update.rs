//! The mixture update: a KL-trust-region step on standardised scores, smoothing, and the
//! projection onto the simplex within per-domain bounds.
//!
//! 1. Standardise: `ŝ_k = (s_k − mean(s)) / sd(s)` (population sd over the K domains).
//! 2. Tilt: `w_k ∝ w0_k · exp(τ·ŝ_k)`, the exact maximiser of `⟨ŝ, w⟩ − KL(w‖w0)/τ` over
//!    the simplex (a linearised TiKMiX step whose size the trust region τ sets).
//! 3. Smooth: `w = (1−ε)·w + ε/K`.
//! 4. Bounded projection: `w_k ← clip(λ·w_k, floor_k, cap_k)` with the one `λ` that makes
//!    `Σ w = 1` — the fixed point of iterative clipping (clamp the domains outside their
//!    bounds, rescale the others to the remaining mass, repeat), found by bisection on `λ`.
//!    Feasible iff `Σ floor ≤ 1 ≤ Σ cap`.
//!
//! Reported alongside: `KL(w‖w0) = Σ w_k ln(w_k / w0_k)` and the effective number of domains
//! `exp(H(w))`, `H(w) = −Σ w_k ln w_k`.

use serde::Serialize;

/// Per-domain bounds on the new weight.
#[derive(Clone, Debug, PartialEq)]
pub struct Bounds {
    pub floor: Vec<f64>,
    pub cap: Vec<f64>,
}

/// A bound the projection clamped a domain to.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BoundHit {
    pub domain: usize,
    /// `floor` or `cap`.
    pub bound: &'static str,
    pub value: f64,
}

/// `(s − mean) / sd`; `None` when all scores are equal (or not finite).
pub fn standardise(s: &[f64]) -> Option<Vec<f64>> {
    let k = s.len() as f64;
    if s.is_empty() {
        return None;
    }
    let mean = s.iter().sum::<f64>() / k;
    let var = s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / k;
    let sd = var.sqrt();
    if !(sd.is_finite() && sd > 0.0) {
        return None;
    }
    Some(s.iter().map(|x| (x - mean) / sd).collect())
}

/// `w_k ∝ w0_k · exp(τ·ŝ_k)`, computed as `exp(ln w0_k + τ ŝ_k − max)` for stability.
pub fn tilt(w0: &[f64], shat: &[f64], tau: f64) -> Vec<f64> {
    let logits: Vec<f64> = w0
        .iter()
        .zip(shat)
        .map(|(&w, &s)| {
            if w > 0.0 {
                w.ln() + tau * s
            } else {
                f64::NEG_INFINITY
            }
        })
        .collect();
    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits.iter().map(|&l| (l - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}

/// `(1−ε)·w + ε/K`.
pub fn smooth(w: &[f64], eps: f64) -> Vec<f64> {
    let k = w.len() as f64;
    w.iter().map(|x| (1.0 - eps) * x + eps / k).collect()
}

/// Checks `Σ floor ≤ 1 ≤ Σ cap` and `floor_k ≤ cap_k`; the error says which fails.
pub fn check_bounds(b: &Bounds, names: &[String]) -> Result<(), String> {
    for (i, (f, c)) in b.floor.iter().zip(&b.cap).enumerate() {
        if f > c {
            return Err(format!(
                "domain {}: floor {f} is above its cap {c}",
                names.get(i).map_or("?", String::as_str)
            ));
        }
    }
    let fs: f64 = b.floor.iter().sum();
    let cs: f64 = b.cap.iter().sum();
    if fs > 1.0 + 1e-12 {
        return Err(format!(
            "the floors sum to {fs:.4} > 1: no mixture satisfies them"
        ));
    }
    if cs < 1.0 - 1e-12 {
        return Err(format!(
            "the caps sum to {cs:.4} < 1: the domains cannot fill the budget without repeating more often than allowed"
        ));
    }
    Ok(())
}

/// Projection onto `{w : Σw = 1, floor ≤ w ≤ cap}` (module docs): `w_k ← clip(λ·w_k)` with
/// `λ` found by bisection (`Σ_k clip(λ·w_k)` is non-decreasing in `λ`). Bounds must be
/// feasible ([`check_bounds`]). Should no `λ` reach a total of 1 (zero weights that scaling
/// cannot lift), the rest is spread over the domains below their cap, in proportion to room.
pub fn project(w: &[f64], b: &Bounds) -> (Vec<f64>, Vec<BoundHit>) {
    let clip = |i: usize, x: f64| x.max(b.floor[i]).min(b.cap[i]);
    let at = |l: f64| -> Vec<f64> { w.iter().enumerate().map(|(i, &x)| clip(i, l * x)).collect() };
    let mass = |l: f64| at(l).iter().sum::<f64>();
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while mass(hi) < 1.0 && hi < 1e300 {
        lo = hi;
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mass(mid) < 1.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let mut out = at(hi);
    let mut hits = Vec::new();
    for (i, &x) in w.iter().enumerate() {
        if hi * x <= b.floor[i] {
            hits.push(BoundHit {
                domain: i,
                bound: "floor",
                value: b.floor[i],
            });
        } else if hi * x >= b.cap[i] {
            hits.push(BoundHit {
                domain: i,
                bound: "cap",
                value: b.cap[i],
            });
        }
    }
    // Residual: bisection leaves ~1e-16; an unreachable total leaves more.
    let rest = 1.0 - out.iter().sum::<f64>();
    let room: Vec<f64> = (0..w.len())
        .map(|i| {
            if rest > 0.0 {
                b.cap[i] - out[i]
            } else {
                out[i] - b.floor[i]
            }
        })
        .collect();
    let total_room: f64 = room.iter().sum();
    if total_room > 0.0 {
        for (o, r) in out.iter_mut().zip(&room) {
            *o += rest * r / total_room;
        }
    }
    (out, hits)
}

/// `KL(w‖w0)`; `None` when `w` puts mass where `w0` has none.
pub fn kl(w: &[f64], w0: &[f64]) -> Option<f64> {
    let mut s = 0.0;
    for (&a, &b) in w.iter().zip(w0) {
        if a > 0.0 {
            if b <= 0.0 {
                return None;
            }
            s += a * (a / b).ln();
        }
    }
    Some(s)
}

/// `exp(H(w))`.
pub fn effective_domains(w: &[f64]) -> f64 {
    let h: f64 = w.iter().filter(|&&x| x > 0.0).map(|&x| -x * x.ln()).sum();
    h.exp()
}

/// The result of steps 1–4.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub w: Vec<f64>,
    pub hits: Vec<BoundHit>,
}

/// Steps 1–4 of the module docs; `None` when the scores cannot be standardised (all equal).
pub fn update(w0: &[f64], s: &[f64], tau: f64, eps: f64, b: &Bounds) -> Option<Update> {
    let shat = standardise(s)?;
    let w = smooth(&tilt(w0, &shat, tau), eps);
    let (w, hits) = project(&w, b);
    Some(Update { w, hits })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilt_maximises_the_trust_region_objective() {
        let (w0, s, tau) = ([0.2, 0.3, 0.5], [1.0, -0.5, 0.2], 0.7);
        let w = tilt(&w0, &s, tau);
        let obj = |w: &[f64]| {
            let dot: f64 = w.iter().zip(&s).map(|(a, b)| a * b).sum();
            dot - kl(w, &w0).unwrap() / tau
        };
        let best = obj(&w);
        for d in [[0.01, -0.01, 0.0], [0.0, 0.01, -0.01], [-0.01, 0.0, 0.01]] {
            let v: Vec<f64> = w.iter().zip(d).map(|(a, b)| a + b).collect();
            assert!(obj(&v) < best);
        }
    }

    #[test]
    fn projection_respects_bounds_and_sums_to_one() {
        let b = Bounds {
            floor: vec![0.1, 0.1, 0.1],
            cap: vec![0.5, 1.0, 1.0],
        };
        let (w, hits) = project(&[0.9, 0.09, 0.01], &b);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(w[0], 0.5);
        assert_eq!(w[2], 0.1);
        assert_eq!(hits.len(), 2);
        assert!(w.iter().zip(&b.floor).all(|(a, f)| a >= f));
    }

    #[test]
    fn infeasible_bounds_are_reported() {
        let n = vec!["a".to_string(), "b".to_string()];
        let b = Bounds {
            floor: vec![0.6, 0.6],
            cap: vec![1.0, 1.0],
        };
        assert!(check_bounds(&b, &n).unwrap_err().contains("floors sum"));
        let b = Bounds {
            floor: vec![0.0, 0.0],
            cap: vec![0.3, 0.3],
        };
        assert!(check_bounds(&b, &n).unwrap_err().contains("caps sum"));
    }
}
