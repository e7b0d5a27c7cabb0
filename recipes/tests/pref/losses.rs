//! Golden values of every loss (inputs from losses.md: logπ(yc) = −10, logπ(yr) = −12,
//! logπref = −11 for both, β = 0.1, Lc = 4, Lr = 5) and a finite-difference gradient check.

use recipes::pref::{self, dpo, ipo, npo, orpo, simpo, LogpNorm, LossConfig, PairInputs};
use tch::{Kind, Tensor};

fn t(x: f64) -> Tensor {
    Tensor::from_slice(&[x]).to_kind(Kind::Double)
}
fn v(x: &Tensor) -> f64 {
    x.sum(Kind::Double).double_value(&[])
}
fn close(got: f64, want: f64) {
    assert!((got - want).abs() < 5e-6, "got {got}, want {want}");
}

/// The golden inputs through [`pref::pair_loss`].
fn golden(name: &str, tweak: impl Fn(&mut LossConfig)) -> pref::PairOut {
    let mut c = LossConfig::new(pref::find(name).unwrap());
    c.beta = 0.1;
    tweak(&mut c);
    let (pc, pr, rc, rr, lc, lr) = (t(-10.0), t(-12.0), t(-11.0), t(-11.0), t(4.0), t(5.0));
    pref::pair_loss(
        &c,
        &PairInputs {
            chosen: &pc,
            rejected: &pr,
            ref_chosen: Some(&rc),
            ref_rejected: Some(&rr),
            len_chosen: &lc,
            len_rejected: &lr,
        },
    )
    .unwrap()
}

#[test]
fn golden_values_of_every_loss() {
    let h = t(2.0);
    close(v(&dpo::sigmoid(&h, 0.1, 0.0)), 0.598139);
    close(v(&dpo::sigmoid(&h, 0.1, 0.1)), 0.618139);
    close(v(&dpo::robust(&h, 0.1, 0.1)), 0.573139);
    close(v(&dpo::hinge(&h, 0.1)), 0.8);
    close(
        v(&ipo::ipo(&t(1.0), &t(-1.0), &t(4.0), &t(5.0), 0.1)),
        20.7025,
    );
    let (a, b) = (t(-10.0 / 4.0), t(-12.0 / 5.0));
    close(v(&simpo::simpo(&a, &b, 2.0, 0.5, 0.0)), 1.103186);
    close(v(&orpo::log_odds(&a, &b)), -0.109449);
    close(v(&(-&a + orpo::odds_ratio_term(&a, &b, 0.1))), 2.574937);
    close(v(&npo::npo(&t(-10.0), &t(-11.0), 0.1)), 14.887933);
    // sigmoid_norm on the golden inputs: −logσ(0.1·(1/4 + 1/5)).
    let want = -(1.0f64 / (1.0 + (-0.045f64).exp())).ln();
    close(
        v(&dpo::sigmoid_norm(&t(1.0), &t(-1.0), &t(4.0), &t(5.0), 0.1)),
        want,
    );
}

#[test]
fn golden_values_through_the_registry() {
    let o = golden("sigmoid", |_| {});
    close(v(&o.loss), 0.598139);
    close(v(&o.reward_chosen), 0.1);
    close(v(&o.reward_rejected), -0.1);
    close(
        v(&golden("sigmoid", |c| c.label_smoothing = 0.1).loss),
        0.618139,
    );
    close(
        v(&golden("robust", |c| c.label_smoothing = 0.1).loss),
        0.573139,
    );
    close(v(&golden("hinge", |_| {}).loss), 0.8);
    close(v(&golden("ipo", |_| {}).loss), 20.7025);
    // RPO: α = 1, NLL = −logπ(yc)/Lc (nll-norm mean).
    let rpo = golden("sigmoid", |c| c.nll_weight = 1.0);
    close(v(&rpo.loss), 3.098139);
    close(v(rpo.nll.as_ref().unwrap()), 2.5);
    let rpo_sum = golden("sigmoid", |c| {
        c.nll_weight = 1.0;
        c.nll_norm = LogpNorm::Sum;
    });
    close(v(&rpo_sum.loss), 0.598139 + 10.0);
    close(v(&golden("simpo", |c| c.beta = 2.0).loss), 1.103186);
    close(v(&golden("orpo", |_| {}).loss), 2.574937);
    // logp-norm mean turns sigmoid into sigmoid_norm.
    let n = golden("sigmoid", |c| c.logp_norm = LogpNorm::Mean);
    close(v(&n.loss), v(&golden("sigmoid_norm", |_| {}).loss));
    // Defaults documented in the registry.
    assert_eq!(pref::find("simpo").unwrap().beta, 2.0);
    assert_eq!(pref::find("orpo").unwrap().nll_weight, 1.0);
    assert!(!pref::find("orpo").unwrap().needs_ref && pref::find("ipo").unwrap().needs_ref);
    for loss in pref::LOSSES {
        assert!(
            pref::find(loss.decl.name).is_some(),
            "{} declared",
            loss.decl.name
        );
    }
}

#[test]
fn reference_losses_fail_without_reference_and_bad_epsilon_is_rejected() {
    let c = LossConfig::new(pref::find("sigmoid").unwrap());
    let x = t(-1.0);
    let inp = PairInputs {
        chosen: &x,
        rejected: &x,
        ref_chosen: None,
        ref_rejected: None,
        len_chosen: &x,
        len_rejected: &x,
    };
    let e = pref::pair_loss(&c, &inp).err().unwrap();
    assert!(e.to_string().contains("needs reference"), "{e}");
    let mut c2 = c;
    c2.label_smoothing = 0.5;
    assert!(pref::pair_loss(&c2, &inp).is_err());
}

/// ∂L/∂logπ(yc), ∂L/∂logπ(yr) of sigmoid (with label smoothing and RPO) and of ipo by autograd
/// vs central differences, in f64.
#[test]
fn finite_difference_gradient_check() {
    for (name, eps, alpha) in [
        ("sigmoid", 0.1, 1.0),
        ("ipo", 0.0, 0.0),
        ("simpo", 0.0, 0.0),
    ] {
        let mut c = LossConfig::new(pref::find(name).unwrap());
        c.label_smoothing = eps;
        c.nll_weight = alpha;
        let f = |pc: &Tensor, pr: &Tensor| {
            let (rc, rr, lc, lr) = (t(-11.0), t(-11.5), t(4.0), t(5.0));
            pref::pair_loss(
                &c,
                &PairInputs {
                    chosen: pc,
                    rejected: pr,
                    ref_chosen: Some(&rc),
                    ref_rejected: Some(&rr),
                    len_chosen: &lc,
                    len_rejected: &lr,
                },
            )
            .unwrap()
            .loss
            .sum(Kind::Double)
        };
        let pc = t(-10.0).set_requires_grad(true);
        let pr = t(-12.0).set_requires_grad(true);
        f(&pc, &pr).backward();
        let (gc, gr) = (v(&pc.grad()), v(&pr.grad()));
        let d = 1e-5;
        let fd_c = (v(&f(&t(-10.0 + d), &t(-12.0))) - v(&f(&t(-10.0 - d), &t(-12.0)))) / (2.0 * d);
        let fd_r = (v(&f(&t(-10.0), &t(-12.0 + d))) - v(&f(&t(-10.0), &t(-12.0 - d)))) / (2.0 * d);
        assert!((gc - fd_c).abs() < 1e-7, "{name}: d/dchosen {gc} vs {fd_c}");
        assert!(
            (gr - fd_r).abs() < 1e-7,
            "{name}: d/drejected {gr} vs {fd_r}"
        );
        assert!(
            gc < 0.0 && gr > 0.0,
            "{name}: raising chosen / lowering rejected lowers the loss"
        );
    }
}
