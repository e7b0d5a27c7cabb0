//! Test 1 of mixtures.md: `⟨h, g⟩ ≈ [L(θ) − L(θ − e·g)] / e` in f64, relative error < 1e-3;
//! and the random projection keeps dot products close in expectation.

use super::common::*;
use recipes::influence::grads::{mean_loss, sample_grad, Selection};
use recipes::influence::project::Projector;
use tch::Kind;

#[test]
fn gradient_identity_against_a_finite_difference() {
    let m = tiny(Kind::Double, 1);
    let (dom, tgt) = (gen_a(16, 1), gen_a(16, 2));
    let sel = Selection::new(&m, &[]).unwrap();
    let (sg, ng) = sample_grad(&m, &sel, &refs(&dom), batching()).unwrap();
    let (sh, nh) = sample_grad(&m, &sel, &refs(&tgt), batching()).unwrap();
    let g = sg / ng as f64;
    let h = sh / nh as f64;
    let dot = h.dot(&g).double_value(&[]);
    let l0 = mean_loss(&m, &refs(&tgt), batching()).unwrap();
    // RmsNorm computes in f32 even for an f64 model (as transformers does), so the loss
    // carries ~1e-8 of rounding: e is large enough to dwarf it and small enough for first order.
    let e = 1e-4;
    sel.add_scaled(&g, -e).unwrap();
    let l1 = mean_loss(&m, &refs(&tgt), batching()).unwrap();
    let fd = (l0 - l1) / e;
    let rel = (dot - fd).abs() / dot.abs();
    eprintln!("⟨h,g⟩ = {dot}, finite difference {fd}, relative error {rel:.2e}");
    assert!(dot > 0.0, "same generator: the gradients agree ({dot})");
    assert!(
        rel < 1e-3,
        "⟨h,g⟩ = {dot}, finite difference {fd}, relative error {rel}"
    );
}

#[test]
fn a_parameter_filter_counts_only_matching_tensors() {
    let m = tiny(Kind::Float, 1);
    let all = Selection::new(&m, &[]).unwrap().numel;
    let sel = Selection::new(&m, &["*mlp*".into()]).unwrap();
    assert!(sel.names.iter().all(|n| n.contains("mlp")));
    assert_eq!(sel.numel, 2 * 3 * 32 * 64);
    assert!(sel.numel < all);
    drop(sel);
    assert!(Selection::new(&m, &["nothing*".into()]).is_err());
}

#[test]
fn projection_preserves_dot_products_roughly() {
    let m = tiny(Kind::Double, 3);
    let sel = Selection::new(&m, &[]).unwrap();
    let (a, _) = sample_grad(&m, &sel, &refs(&gen_a(8, 5)), batching()).unwrap();
    let (b, _) = sample_grad(&m, &sel, &refs(&gen_a(8, 6)), batching()).unwrap();
    let p = Projector { dim: 2048, seed: 7 };
    let exact = a.dot(&b).double_value(&[]);
    let approx = p
        .apply(&a)
        .unwrap()
        .dot(&p.apply(&b).unwrap())
        .double_value(&[]);
    let scale = a.norm().double_value(&[]) * b.norm().double_value(&[]);
    // Spread ≈ √(2/d)·‖a‖‖b‖ ≈ 0.03·‖a‖‖b‖.
    assert!(
        (exact - approx).abs() < 0.12 * scale,
        "{exact} vs {approx} (scale {scale})"
    );
    let again = p.apply(&a).unwrap();
    assert!(
        again.equal(&p.apply(&a).unwrap()),
        "a projection is a pure function of its seed"
    );
}
