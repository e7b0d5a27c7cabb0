//! The sampler as a function: temperature, top-k and top-p on hand-built distributions, the
//! order of ties, the inverse-CDF pick against its distribution, the random streams, and the
//! check of broken logit rows.

use recipes::generate::sample::{check_logits, distribution, pick, stream, Sampling};

fn sampling(temperature: f64, top_k: usize, top_p: f64) -> Sampling {
    Sampling {
        temperature,
        top_k,
        top_p,
    }
}

/// Logits whose softmax is `probs` (natural logs, shifted by a constant the softmax ignores).
fn logits_of(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|p| (p.ln() + 3.0) as f32).collect()
}

fn ids(d: &[(usize, f64)]) -> Vec<usize> {
    d.iter().map(|c| c.0).collect()
}

fn assert_probs(d: &[(usize, f64)], want: &[(usize, f64)], tol: f64) {
    assert_eq!(ids(d), ids(want), "{d:?} vs {want:?}");
    for (a, b) in d.iter().zip(want) {
        assert!((a.1 - b.1).abs() < tol, "{d:?} vs {want:?}");
    }
    let total: f64 = d.iter().map(|c| c.1).sum();
    assert!((total - 1.0).abs() < 1e-12, "sum {total}");
}

#[test]
fn greedy_is_the_first_argmax() {
    let l = [0.5f32, 2.0, -1.0, 2.0];
    assert!(Sampling::greedy().is_greedy());
    assert!(!sampling(0.7, 0, 1.0).is_greedy());
    assert_eq!(distribution(&l, &Sampling::greedy()), vec![(1, 1.0)]);
    for u in [0.0, 0.5, 0.999] {
        assert_eq!(pick(&l, &Sampling::greedy(), u), 1);
    }
    // NaN and -inf never win.
    let l = [f32::NAN, f32::NEG_INFINITY, -3.0, f32::NAN];
    assert_eq!(pick(&l, &Sampling::greedy(), 0.3), 2);
}

#[test]
fn a_temperature_near_zero_is_greedy() {
    let l = [0.1f32, 1.3, 1.2, -4.0, 1.29];
    let cold = sampling(1e-6, 0, 1.0);
    assert_eq!(
        distribution(&l, &cold),
        distribution(&l, &Sampling::greedy())
    );
    for k in 0..100 {
        let u = k as f64 / 100.0;
        assert_eq!(pick(&l, &cold, u), 1);
    }
}

#[test]
fn temperature_scales_the_logits() {
    // softmax([0, ln 3] / 2) = softmax([0, ln √3]) = [1, √3] / (1 + √3).
    let l = [0.0f32, 3f32.ln()];
    let d = distribution(&l, &sampling(2.0, 0, 1.0));
    let r3 = 3f64.sqrt();
    assert_probs(&d, &[(1, r3 / (1.0 + r3)), (0, 1.0 / (1.0 + r3))], 1e-6);
    // Temperature 1 is the softmax itself.
    let probs = [0.1, 0.2, 0.3, 0.4];
    let d = distribution(&logits_of(&probs), &sampling(1.0, 0, 1.0));
    assert_probs(&d, &[(3, 0.4), (2, 0.3), (1, 0.2), (0, 0.1)], 1e-6);
}

#[test]
fn top_k_keeps_the_k_largest_renormalised() {
    let probs = [0.1, 0.4, 0.05, 0.3, 0.15];
    let d = distribution(&logits_of(&probs), &sampling(1.0, 2, 1.0));
    // 0.4 / 0.7 and 0.3 / 0.7.
    assert_probs(&d, &[(1, 4.0 / 7.0), (3, 3.0 / 7.0)], 1e-6);
    // k = 1 is greedy; k ≥ V (and 0) keeps all.
    let d1 = distribution(&logits_of(&probs), &sampling(1.0, 1, 1.0));
    assert_eq!(d1, vec![(1, 1.0)]);
    for k in [0, 5, 50] {
        let d = distribution(&logits_of(&probs), &sampling(1.0, k, 1.0));
        assert_eq!(ids(&d), vec![1, 3, 4, 0, 2], "k {k}");
    }
}

#[test]
fn top_k_keeps_ties_at_the_boundary() {
    // The 2nd largest value (1.0) is shared by tokens 0 and 3: both stay.
    let l = [1.0f32, 2.0, -1.0, 1.0];
    let d = distribution(&l, &sampling(1.0, 2, 1.0));
    assert_eq!(ids(&d), vec![1, 0, 3]);
    let (e, z) = (1f64.exp(), 1.0 + 2.0 * (-1f64).exp());
    assert_probs(
        &d,
        &[(1, 1.0 / z), (0, 1.0 / (e * z)), (3, 1.0 / (e * z))],
        1e-9,
    );
}

#[test]
fn top_p_keeps_the_smallest_prefix_reaching_p() {
    let probs = [0.15, 0.5, 0.05, 0.3];
    let l = logits_of(&probs);
    let at = |p: f64| distribution(&l, &sampling(1.0, 0, p));
    // 0.5 + 0.3 reaches 0.8: two tokens.
    assert_probs(&at(0.8), &[(1, 0.5 / 0.8), (3, 0.3 / 0.8)], 1e-6);
    // 0.81 needs the third.
    assert_probs(
        &at(0.81),
        &[(1, 0.5 / 0.95), (3, 0.3 / 0.95), (0, 0.15 / 0.95)],
        1e-6,
    );
    assert_eq!(ids(&at(0.95)), vec![1, 3, 0]);
    assert_eq!(ids(&at(0.96)), vec![1, 3, 0, 2]);
    assert_probs(&at(1.0), &[(1, 0.5), (3, 0.3), (0, 0.15), (2, 0.05)], 1e-6);
    // Always at least one token.
    assert_eq!(at(0.2), vec![(1, 1.0)]);
    assert_eq!(at(1e-9), vec![(1, 1.0)]);
}

#[test]
fn top_k_then_top_p() {
    // top-k 3 keeps [0.4, 0.3, 0.2] → renormalised [4/9, 3/9, 2/9]; top-p 0.7 needs 4/9 + 3/9
    // = 0.778 ≥ 0.7 → two tokens, renormalised [4/7, 3/7].
    let probs = [0.2, 0.1, 0.4, 0.3];
    let l = logits_of(&probs);
    let d = distribution(&l, &sampling(1.0, 3, 0.7));
    assert_probs(&d, &[(2, 4.0 / 7.0), (3, 3.0 / 7.0)], 1e-6);
    // Without top-k the same top-p keeps the same two (0.4 + 0.3 = 0.7).
    assert_eq!(ids(&distribution(&l, &sampling(1.0, 0, 0.7))), vec![2, 3]);
    // top-p 0.78 after top-k 3: 0.778 < 0.78 → three tokens.
    let d = distribution(&l, &sampling(1.0, 3, 0.78));
    assert_probs(&d, &[(2, 4.0 / 9.0), (3, 3.0 / 9.0), (0, 2.0 / 9.0)], 1e-6);
    // With temperature: [0, ln 4] / 2 → [1, 2] / 3 before top-p 0.5 keeps the larger alone.
    let l = [0.0f32, 4f32.ln(), f32::NEG_INFINITY];
    assert_probs(
        &distribution(&l, &sampling(2.0, 2, 1.0)),
        &[(1, 2.0 / 3.0), (0, 1.0 / 3.0)],
        1e-7,
    );
    assert_eq!(distribution(&l, &sampling(2.0, 2, 0.5)), vec![(1, 1.0)]);
}

#[test]
fn ties_are_ordered_by_ascending_id() {
    let l = [0.0f32, 1.0, 0.0, 1.0, 0.0];
    let d = distribution(&l, &sampling(1.0, 0, 1.0));
    assert_eq!(ids(&d), vec![1, 3, 0, 2, 4]);
    assert_eq!(d[0].1, d[1].1);
    assert_eq!(d[2].1, d[4].1);
    // pick follows that order: the first tie takes the low end of the interval.
    let s = sampling(1.0, 0, 1.0);
    assert_eq!(pick(&l, &s, 0.0), 1);
    assert_eq!(pick(&l, &s, d[0].1 + 1e-9), 3);
    assert_eq!(pick(&l, &s, 0.999_999_999), 4);
    // A uniform row under top-p 0.5 keeps the lowest ids first.
    let u = [2.0f32; 4];
    assert_eq!(
        distribution(&u, &sampling(1.0, 0, 0.5)),
        vec![(0, 0.5), (1, 0.5)]
    );
}

#[test]
fn non_finite_logits() {
    let s = sampling(1.0, 0, 1.0);
    // -inf and NaN tokens cannot be drawn.
    let l = [f32::NEG_INFINITY, 0.0, f32::NAN, 0.0];
    assert_eq!(distribution(&l, &s), vec![(1, 0.5), (3, 0.5)]);
    // +inf tokens share everything.
    let l = [1.0, f32::INFINITY, 2.0, f32::INFINITY];
    assert_eq!(distribution(&l, &s), vec![(1, 0.5), (3, 0.5)]);
    // Nothing drawable: the argmax (check_logits rejects such rows first).
    let l = [f32::NEG_INFINITY, f32::NAN];
    assert_eq!(distribution(&l, &s), vec![(0, 1.0)]);
    assert_eq!(pick(&l, &s, 0.5), 0);
    assert!(distribution(&[], &s).is_empty());
    assert_eq!(pick(&[], &s, 0.5), 0);
}

#[test]
fn pick_is_the_inverse_cdf() {
    let probs = [0.1, 0.4, 0.2, 0.3];
    let l = logits_of(&probs);
    let s = sampling(1.0, 0, 1.0);
    // Order 1 (0.4), 3 (0.3), 2 (0.2), 0 (0.1): cumulative 0.4, 0.7, 0.9, 1.0.
    let cases = [
        (0.0, 1),
        (0.39, 1),
        (0.41, 3),
        (0.69, 3),
        (0.71, 2),
        (0.89, 2),
        (0.91, 0),
        (0.999_999, 0),
    ];
    for (u, want) in cases {
        assert_eq!(pick(&l, &s, u), want, "u = {u}");
    }
    // A draw above the total (rounding) gives the last kept token.
    assert_eq!(pick(&l, &s, 1.0), 0);
    assert_eq!(pick(&l, &sampling(1.0, 2, 1.0), 1.0), 3);
}

/// The inverse CDF walked over `distribution`, as `pick` is specified.
fn walk(d: &[(usize, f64)], u: f64) -> usize {
    let mut cum = 0.0;
    for &(id, p) in d {
        cum += p;
        if cum > u {
            return id;
        }
    }
    d.last().unwrap().0
}

#[test]
fn pick_agrees_with_a_walk_over_the_distribution() {
    // Peaked and flat rows, small and large: pick sorts only as far as its draw reaches
    // (in chunks) and must land on exactly the token the full walk finds.
    let mut g = stream(11, 0, 0);
    for (v, spread) in [(10, 3.0), (300, 0.5), (5_000, 0.01), (5_000, 8.0)] {
        let l: Vec<f32> = (0..v).map(|_| (g.next_f64() * spread) as f32).collect();
        for s in [
            sampling(1.0, 0, 1.0),
            sampling(0.6, 0, 1.0),
            sampling(1.0, 200, 1.0),
            sampling(1.2, 0, 0.9),
            sampling(1.0, 1000, 0.5),
        ] {
            let d = distribution(&l, &s);
            for k in 0..400 {
                let u = if k < 4 {
                    [0.0, 0.5, 0.999_999, 1.0][k]
                } else {
                    g.next_f64()
                };
                assert_eq!(pick(&l, &s, u), walk(&d, u), "V {v}, {s:?}, u {u}");
            }
        }
    }
}

#[test]
fn pick_frequencies_match_the_distribution() {
    let probs = [0.05, 0.25, 0.1, 0.35, 0.15, 0.1];
    let l = logits_of(&probs);
    for s in [
        sampling(1.0, 0, 1.0),
        sampling(0.7, 0, 1.0),
        sampling(1.3, 4, 1.0),
        sampling(1.0, 0, 0.8),
        sampling(1.5, 5, 0.9),
    ] {
        let d = distribution(&l, &s);
        let mut rng = stream(7, 3, 1);
        let n = 20_000;
        let mut counts = vec![0usize; probs.len()];
        for _ in 0..n {
            counts[pick(&l, &s, rng.next_f64())] += 1;
        }
        let mut want = vec![0.0; probs.len()];
        for &(id, p) in &d {
            want[id] = p;
        }
        for (id, (&c, &w)) in counts.iter().zip(&want).enumerate() {
            let freq = c as f64 / n as f64;
            assert!(
                (freq - w).abs() < 0.015,
                "{s:?}: token {id} drawn {freq}, probability {w}"
            );
            if w == 0.0 {
                assert_eq!(c, 0, "{s:?}: token {id} is not kept");
            }
        }
    }
}

#[test]
fn streams_are_keyed_by_seed_record_and_sample() {
    let draws = |seed, record, sample| -> Vec<f64> {
        let mut g = stream(seed, record, sample);
        (0..16).map(|_| g.next_f64()).collect()
    };
    let a = draws(5, 10, 2);
    assert_eq!(a, draws(5, 10, 2));
    assert!(a.iter().all(|u| (0.0..1.0).contains(u)));
    assert_ne!(a, draws(5, 11, 2), "another record");
    assert_ne!(a, draws(5, 10, 3), "another sample");
    assert_ne!(a, draws(6, 10, 2), "another seed");
    assert_ne!(
        draws(0, 1, 0),
        draws(0, 0, 1),
        "record and sample are not interchangeable"
    );
    assert_eq!(
        stream(5, 10, 2),
        recipes::rng::SplitMix64::derived(5, 10, 2)
    );
}

#[test]
fn check_logits_rejects_broken_rows() {
    assert!(check_logits(&[0.0, -1.0, f32::NEG_INFINITY]).is_ok());
    let e = check_logits(&[0.0, f32::NAN, 1.0, f32::NAN]).unwrap_err();
    assert!(
        e.contains("2 of 4 logits are NaN") && e.contains("token 1"),
        "{e}"
    );
    let e = check_logits(&[f32::NEG_INFINITY; 3]).unwrap_err();
    assert!(e.contains("all 3 logits are -inf"), "{e}");
    let e = check_logits(&[0.0, f32::INFINITY]).unwrap_err();
    assert!(e.contains("token 1 is +inf"), "{e}");
    assert!(check_logits(&[]).unwrap_err().contains("empty"));
}

#[test]
fn a_large_vocabulary_is_handled() {
    // 50k tokens: top-p keeps a short nucleus and top-k exactly k (distinct values).
    let v = 50_000;
    let l: Vec<f32> = (0..v).map(|i| ((i * 7919) % v) as f32 / 1000.0).collect();
    let d = distribution(&l, &sampling(1.0, 0, 0.9));
    assert!(!d.is_empty() && d.len() < v);
    assert!(d.windows(2).all(|w| w[0].1 >= w[1].1));
    let d = distribution(&l, &sampling(0.8, 100, 1.0));
    assert_eq!(d.len(), 100);
    let full = distribution(&l, &sampling(1.0, 0, 1.0));
    let total: f64 = full.iter().map(|c| c.1).sum();
    assert!((total - 1.0).abs() < 1e-9);
}
