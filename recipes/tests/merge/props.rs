//! Properties of the methods and of parameter resolution: identities, determinism, gradients
//! and filters.

use recipes::merge::params::{gradient_at, layer_position, ParamValue};
use recipes::merge::{self, TensorParams, Tensors};

fn vals(seed: u64, n: usize) -> Vec<f64> {
    super::common::values(seed, n)
        .into_iter()
        .map(f64::from)
        .collect()
}

fn params(n: usize, seed: u64) -> TensorParams {
    TensorParams {
        weight: vec![0.5; n],
        density: vec![0.6; n],
        t: 0.35,
        lambda: 1.0,
        normalize: true,
        seed,
    }
}

#[test]
fn merging_a_model_with_itself_is_the_identity_for_every_method() {
    let x = vals(7, 257);
    for m in merge::METHODS {
        let n = m.decl.min_models.max(2);
        let (base, models) = match m.decl.base {
            merge::BaseUse::None => (None, vec![x.clone(); n]),
            merge::BaseUse::FirstOfTwo => (Some(x.clone()), vec![x.clone()]),
            merge::BaseUse::Required => (Some(x.clone()), vec![x.clone(); n]),
        };
        let k = models.len();
        for normalize in [false, true] {
            let mut p = params(k, 3);
            p.normalize = normalize;
            let got = (m.merge_f64)(
                Tensors {
                    base: base.clone(),
                    models: models.clone(),
                },
                &p,
            )
            .unwrap();
            for (a, b) in got.iter().zip(&x) {
                assert!(
                    (a - b).abs() <= 1e-15 * (1.0 + b.abs()),
                    "{}: {a} vs {b}",
                    m.decl.name
                );
            }
            let x32: Vec<f32> = x.iter().map(|v| *v as f32).collect();
            let got32 = (m.merge_f32)(
                Tensors {
                    base: base.as_ref().map(|_| x32.clone()),
                    models: vec![x32.clone(); k],
                },
                &p,
            )
            .unwrap();
            for (a, b) in got32.iter().zip(&x32) {
                assert!(
                    (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                    "{} f32: {a} vs {b}",
                    m.decl.name
                );
            }
        }
    }
}

#[test]
fn linear_with_one_model_of_weight_one_is_bit_identical() {
    let x: Vec<f32> = super::common::values(11, 1000);
    let p = TensorParams {
        weight: vec![1.0],
        ..params(1, 0)
    };
    let got = (merge::linear::METHOD.merge_f32)(
        Tensors {
            base: None,
            models: vec![x.clone()],
        },
        &p,
    )
    .unwrap();
    assert_eq!(
        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        x.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn slerp_t0_returns_the_base_and_t1_the_other_bit_for_bit() {
    let (a, b) = (vals(1, 300), vals(2, 300));
    for (t, want) in [(0.0, &a), (1.0, &b)] {
        let p = TensorParams { t, ..params(1, 0) };
        let got = merge::slerp::merge(
            Tensors {
                base: Some(a.clone()),
                models: vec![b.clone()],
            },
            &p,
        )
        .unwrap();
        assert_eq!(&got, want);
    }
}

#[test]
fn dare_is_deterministic_per_seed_and_differs_across_seeds() {
    let base = vals(1, 500);
    let ms = vec![vals(2, 500), vals(3, 500)];
    for m in [&merge::dare_linear::METHOD, &merge::dare_ties::METHOD] {
        let run = |seed| {
            (m.merge_f64)(
                Tensors {
                    base: Some(base.clone()),
                    models: ms.clone(),
                },
                &params(2, seed),
            )
            .unwrap()
        };
        let (x, y, z) = (run(5), run(5), run(6));
        assert_eq!(
            x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{}",
            m.decl.name
        );
        assert_ne!(x, z, "{}: seeds 5 and 6 gave the same result", m.decl.name);
    }
}

#[test]
fn dare_keeps_about_density_of_the_entries() {
    let mask = merge::task_vector::dare_mask(100_000, 0.3, 1, 0);
    let kept = mask.iter().filter(|k| **k).count() as f64 / 1e5;
    assert!((kept - 0.3).abs() < 0.01, "kept {kept}");
    assert!(merge::task_vector::dare_mask(1000, 1.0, 1, 0)
        .iter()
        .all(|k| *k));
}

#[test]
fn gradient_interpolates_over_layers() {
    // 5 layers, gradient [0, 1]: layer i at i/4.
    let g = ParamValue::Gradient(vec![0.0, 1.0]);
    for i in 0..5 {
        let v = g
            .resolve(&format!("model.layers.{i}.mlp.up_proj.weight"), 5)
            .unwrap();
        assert!((v - i as f64 / 4.0).abs() < 1e-15);
    }
    // [0, 0.5, 0.3, 0.7, 1] over 3 layers: t = 0, 0.5, 1 → x = 0, 2, 4.
    let g = ParamValue::Gradient(vec![0.0, 0.5, 0.3, 0.7, 1.0]);
    let at = |i: usize| {
        g.resolve(&format!("model.layers.{i}.self_attn.q_proj.weight"), 3)
            .unwrap()
    };
    assert_eq!((at(0), at(1), at(2)), (0.0, 0.3, 1.0));
    // Between knots: 4 layers, layer 1 at t = 1/3 → x = 4/3 → 0.5·(2/3) + 0.3·(1/3).
    let v = g.resolve("model.layers.1.mlp.down_proj.weight", 4).unwrap();
    assert!((v - (0.5 * (2.0 / 3.0) + 0.3 / 3.0)).abs() < 1e-15, "{v}");
    // Embeddings, final norm and LM head take t = 0.
    for n in [
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
    ] {
        assert_eq!(g.resolve(n, 3), Some(0.0));
    }
    // One layer: t = 1.
    assert_eq!(layer_position("model.layers.0.mlp.up_proj.weight", 1), 1.0);
    assert_eq!(gradient_at(&[0.0, 1.0], 1.0), 1.0);
}

#[test]
fn a_one_entry_gradient_is_a_constant() {
    let g = ParamValue::Gradient(vec![0.42]);
    for n in [
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.7.mlp.up_proj.weight",
        "lm_head.weight",
    ] {
        assert_eq!(g.resolve(n, 8), Some(0.42));
    }
}

#[test]
fn filters_first_match_wins_and_no_match_gives_none() {
    let f = ParamValue::Filters(vec![
        ("self_attn".into(), ParamValue::Scalar(0.1)),
        ("mlp".into(), ParamValue::Gradient(vec![1.0, 0.0])),
        ("layers.1".into(), ParamValue::Scalar(0.9)),
    ]);
    assert_eq!(
        f.resolve("model.layers.1.self_attn.q_proj.weight", 2),
        Some(0.1)
    );
    assert_eq!(f.resolve("model.layers.1.mlp.up_proj.weight", 2), Some(0.0));
    assert_eq!(f.resolve("model.layers.0.mlp.up_proj.weight", 2), Some(1.0));
    assert_eq!(
        f.resolve("model.layers.1.input_layernorm.weight", 2),
        Some(0.9)
    );
    assert_eq!(f.resolve("model.embed_tokens.weight", 2), None);
    let with_default = ParamValue::Filters(vec![
        ("mlp".into(), ParamValue::Scalar(0.2)),
        ("*".into(), ParamValue::Scalar(0.7)),
    ]);
    assert_eq!(
        with_default.resolve("model.embed_tokens.weight", 2),
        Some(0.7)
    );
    let empty = ParamValue::Filters(vec![(String::new(), ParamValue::Scalar(0.3))]);
    assert_eq!(empty.resolve("lm_head.weight", 2), Some(0.3));
}
