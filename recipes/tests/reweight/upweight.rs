//! Tests 2 and 4 of mixtures.md: synthetic upweighting (A from the target's generator gains
//! weight; predicted and measured loss changes rank-correlate ≥ 0.9; training on the new
//! mixture lowers the target loss more than on the uniform one) and a harmful domain driven to
//! its floor.

use super::common::*;
use recipes::influence::Bounds;
use tch::Kind;

#[test]
fn the_helpful_domain_gains_weight_and_the_prediction_ranks_like_the_measurement() {
    let m = tiny(Kind::Double, 11);
    let (a, b, c, d) = (
        gen_a(32, 1),
        gen_b(32, 2),
        gen_noise(32, 3),
        gen_mixed(32, 4),
    );
    let target = gen_a(32, 99);
    let bounds = Bounds {
        floor: vec![0.02; 4],
        cap: vec![0.9; 4],
    };
    let mut cfg = config();
    cfg.check_lr = Some(1e-3);
    let r = run(
        &m,
        &[("a", &a), ("b", &b), ("c", &c), ("d", &d)],
        &[("target", &target, 1.0)],
        &bounds,
        &cfg,
    );
    eprintln!(
        "w = {:?}, s = {:?}, se = {:?}",
        r.w, r.scores.s, r.scores.se
    );
    assert!(!r.abstained, "{:?}", r.abstain_reason);
    let best = (0..4).max_by(|&i, &j| r.w[i].total_cmp(&r.w[j])).unwrap();
    assert_eq!(r.domains[best], "a");
    assert!(r.w[0] > r.w0[0]);
    assert!((r.w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert!(r
        .w
        .iter()
        .all(|&x| (0.02 - 1e-12..=0.9 + 1e-12).contains(&x)));
    let check = r.check.as_ref().unwrap();
    eprintln!(
        "predicted {:?}\nmeasured {:?}",
        check.predicted, check.measured
    );
    let rho = check.rank_correlation.unwrap();
    assert!(rho >= 0.9, "rank correlation {rho}");
    assert!(r.kl.unwrap() > 0.0 && r.effective_domains < 4.0);
    assert!((r.domain_cosine[0][0] - 1.0).abs() < 1e-9);
}

#[test]
fn training_on_the_new_mixture_lowers_the_target_loss_more_than_uniform() {
    let (a, b, c) = (gen_a(64, 1), gen_b(64, 2), gen_noise(64, 3));
    let target = gen_a(32, 99);
    let m = tiny(Kind::Float, 5);
    let r = run(
        &m,
        &[("a", &a), ("b", &b), ("c", &c)],
        &[("target", &target, 1.0)],
        &free(3),
        &config(),
    );
    assert!(
        r.w[0] > 1.0 / 3.0 && r.w[0] > r.w[1] && r.w[0] > r.w[2],
        "{:?}",
        r.w
    );
    let domains: [&[Vec<i64>]; 3] = [&a, &b, &c];
    let uniform = [1.0 / 3.0; 3];
    let before = loss(&m, &target);
    let (mu, mr) = (tiny(Kind::Float, 5), tiny(Kind::Float, 5));
    train(&mu, &domains, &uniform, 30, 0.5, 42);
    train(&mr, &domains, &r.w, 30, 0.5, 42);
    let (lu, lr) = (loss(&mu, &target), loss(&mr, &target));
    eprintln!(
        "target loss: before {before:.4}, uniform {lu:.4}, reweighted {lr:.4}, w {:?}",
        r.w
    );
    assert!(lr < lu, "reweighted {lr} should beat uniform {lu}");
}

#[test]
fn a_domain_that_works_against_the_target_ends_at_its_floor() {
    // Once the model has learned what the domains share (trained on their uniform mixture),
    // B's chain (t → t+7) competes with A's (t → t+1) for the same probability mass.
    let (a, b, c) = (gen_a(64, 1), gen_b(64, 2), gen_mixed(64, 3));
    let target = gen_a(32, 99);
    let m = tiny(Kind::Float, 5);
    train(&m, &[&a, &b, &c], &[1.0 / 3.0; 3], 150, 0.5, 1);
    let mut cfg = config();
    cfg.temperature = 3.0;
    let bounds = Bounds {
        floor: vec![0.05; 3],
        cap: vec![1.0; 3],
    };
    let r = run(
        &m,
        &[("a", &a), ("b", &b), ("c", &c)],
        &[("t", &target, 1.0)],
        &bounds,
        &cfg,
    );
    eprintln!("s = {:?}, w = {:?}", r.scores.s, r.w);
    assert!(
        r.scores.s[1] < 0.0,
        "B works against the target: {:?}",
        r.scores.s
    );
    assert_eq!(r.w[1], 0.05);
    assert!(r
        .bounds_hit
        .iter()
        .any(|h| h.domain == 1 && h.bound == "floor"));
}
