//! Test 3 of mixtures.md: permuting domains permutes weights; duplicated domains get equal
//! weights; scaling all target weights changes nothing; identical domains abstain; the same
//! seed gives the same output. Plus the bad inputs of the library API.

use super::common::*;
use recipes::influence::{estimate, DomainIn, TargetIn};
use tch::Kind;

fn close(a: &[f64], b: &[f64]) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
}

#[test]
fn invariances() {
    let m = tiny(Kind::Double, 2);
    let (a, b, c) = (gen_a(16, 1), gen_b(16, 2), gen_noise(16, 3));
    let t = gen_a(16, 9);
    let cfg = config();
    let r = run(
        &m,
        &[("a", &a), ("b", &b), ("c", &c)],
        &[("t", &t, 1.0)],
        &free(3),
        &cfg,
    );
    assert!(!r.abstained, "{:?}", r.abstain_reason);

    let p = run(
        &m,
        &[("c", &c), ("a", &a), ("b", &b)],
        &[("t", &t, 1.0)],
        &free(3),
        &cfg,
    );
    assert!(
        close(&p.w, &[r.w[2], r.w[0], r.w[1]]),
        "{:?} vs {:?}",
        p.w,
        r.w
    );

    let s = run(
        &m,
        &[("a", &a), ("b", &b), ("c", &c)],
        &[("t", &t, 7.5)],
        &free(3),
        &cfg,
    );
    assert!(close(&s.w, &r.w));
    let two = run(
        &m,
        &[("a", &a), ("b", &b), ("c", &c)],
        &[("t", &t, 2.0), ("u", &t, 2.0)],
        &free(3),
        &cfg,
    );
    assert!(close(&two.w, &r.w), "two copies of a target weigh like one");

    let d = run(
        &m,
        &[("a", &a), ("a2", &a), ("b", &b), ("c", &c)],
        &[("t", &t, 1.0)],
        &free(4),
        &cfg,
    );
    assert_eq!(d.w[0], d.w[1]);
    assert!(d.w[0] > d.w[2]);

    let again = run(
        &m,
        &[("a", &a), ("b", &b), ("c", &c)],
        &[("t", &t, 1.0)],
        &free(3),
        &cfg,
    );
    assert_eq!(again.w, r.w);
    assert_eq!(again.influence, r.influence);
}

#[test]
fn identical_domains_abstain_and_keep_the_starting_weights() {
    let m = tiny(Kind::Float, 2);
    let a = gen_a(16, 1);
    let t = gen_a(16, 9);
    let d: Vec<DomainIn> = [("x", 0.7), ("y", 0.3)]
        .iter()
        .map(|(n, w)| DomainIn {
            name: n.to_string(),
            docs: refs(&a),
            w0: *w,
        })
        .collect();
    let tt = [TargetIn {
        name: "t".into(),
        docs: refs(&t),
        weight: 1.0,
    }];
    let r = estimate(&m, &d, &tt, &free(2), &config(), &|| Ok(())).unwrap();
    assert!(r.abstained);
    assert!(r
        .abstain_reason
        .as_deref()
        .unwrap()
        .contains("kept the starting weights"));
    assert_eq!(r.w, vec![0.7, 0.3]);
    assert_eq!(r.kl, Some(0.0));
}

#[test]
fn noisy_estimates_abstain() {
    // Two domains from the same generator (different records): the difference is noise.
    let m = tiny(Kind::Float, 2);
    let (a1, a2) = (gen_a(8, 1), gen_a(8, 2));
    let t = gen_a(16, 9);
    let r = run(
        &m,
        &[("a1", &a1), ("a2", &a2)],
        &[("t", &t, 1.0)],
        &free(2),
        &config(),
    );
    eprintln!("s = {:?}, se = {:?}", r.scores.s, r.scores.se);
    assert!(r.abstained, "{:?} {:?}", r.scores.s, r.scores.se);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let m = tiny(Kind::Float, 2);
    let (a, b) = (gen_a(8, 1), gen_b(8, 2));
    let dom = |w: f64| -> Vec<DomainIn<'_>> {
        vec![
            DomainIn {
                name: "a".into(),
                docs: refs(&a),
                w0: w,
            },
            DomainIn {
                name: "b".into(),
                docs: refs(&b),
                w0: w,
            },
        ]
    };
    fn tgt(w: f64, docs: &[Vec<i64>]) -> Vec<TargetIn<'_>> {
        vec![TargetIn {
            name: "t".into(),
            docs: refs(docs),
            weight: w,
        }]
    }
    let cfg = config();
    let e = estimate(&m, &dom(1.0), &tgt(0.0, &a), &free(2), &cfg, &|| Ok(())).unwrap_err();
    assert!(
        format!("{e:#}").contains("sum to a positive number"),
        "{e:#}"
    );
    let e = estimate(&m, &dom(1.0), &tgt(1.0, &[]), &free(2), &cfg, &|| Ok(())).unwrap_err();
    assert!(format!("{e:#}").contains("target t: no records"), "{e:#}");
    let e = estimate(&m, &dom(0.0), &tgt(1.0, &a), &free(2), &cfg, &|| Ok(())).unwrap_err();
    assert!(format!("{e:#}").contains("starting mixture"), "{e:#}");
    let tight = recipes::influence::Bounds {
        floor: vec![0.0; 2],
        cap: vec![0.3; 2],
    };
    let e = estimate(&m, &dom(1.0), &tgt(1.0, &a), &tight, &cfg, &|| Ok(())).unwrap_err();
    assert!(format!("{e:#}").contains("caps sum"), "{e:#}");
}
