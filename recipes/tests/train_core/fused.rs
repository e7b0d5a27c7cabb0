//! The fused optimizer (`_fused_adamw_`, `_foreach_norm`) against the per-tensor reference on
//! CPU: same parameters, moments, step counts and clip norms over several steps, and a timing
//! of one step of each (ignored in normal runs).

use recipes::trainer::optim::{AdamW, AdamWConfig};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

/// Named initial values: matrices (decay on), vectors (decay off), a 3-D tensor, a
/// `late.weight` that gets gradients only from step 3 and an `unused.bias` that never does.
fn init(seed: i64) -> Vec<(String, Tensor)> {
    tch::manual_seed(seed);
    let shapes: [(&str, &[i64]); 7] = [
        ("embed.weight", &[17, 8]),
        ("layer.0.weight", &[8, 8]),
        ("layer.0.bias", &[8]),
        ("norm.weight", &[8]),
        ("conv.weight", &[4, 2, 3]),
        ("late.weight", &[5, 8]),
        ("unused.bias", &[3]),
    ];
    shapes
        .iter()
        .map(|(n, s)| (n.to_string(), Tensor::randn(*s, CPU)))
        .collect()
}

/// A fresh optimizer over copies of `init`, with its parameters by name.
fn build(init: &[(String, Tensor)], reference: bool) -> (BTreeMap<String, Tensor>, AdamW) {
    let params: BTreeMap<String, Tensor> = init
        .iter()
        .map(|(n, t)| (n.clone(), t.copy().set_requires_grad(true)))
        .collect();
    let named = params
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let cfg = AdamWConfig {
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    (params, AdamW::new(named, cfg).with_reference(reference))
}

/// Sets gradients for step `s` through backward of `Σ θ·g` (the same `g` for both optimizers).
fn backward(params: &BTreeMap<String, Tensor>, s: i64) {
    tch::manual_seed(1000 + s);
    let mut loss = Tensor::zeros([], CPU);
    for (n, p) in params {
        if n == "unused.bias" || (n == "late.weight" && s < 3) {
            continue;
        }
        let g = Tensor::randn(p.size(), CPU) * (1.0 + s as f64);
        loss += (p * g).sum(Kind::Float);
    }
    loss.backward();
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).abs().max().double_value(&[]);
    d / b.abs().max().double_value(&[]).max(1e-12)
}

#[test]
fn fused_adamw_equals_the_per_tensor_reference() {
    let init = init(7);
    let (pr, mut r) = build(&init, true);
    let (pf, mut f) = build(&init, false);
    assert!(r.is_reference() && !f.is_reference());
    for s in 0..8 {
        for (params, opt) in [(&pr, &mut r), (&pf, &mut f)] {
            opt.zero_grad();
            backward(params, s);
        }
        // Clipping binds on every step (the gradients grow with s).
        let (nr, nf) = (
            r.clip_grad_norm(5.0).unwrap(),
            f.clip_grad_norm(5.0).unwrap(),
        );
        assert!((nr - nf).abs() <= 1e-6 * nr, "step {s}: norm {nf} vs {nr}");
        assert!(nr > 5.0, "step {s}: clipping must bind ({nr})");
        for (n, p) in &pr {
            let (gr, gf) = (p.grad(), pf[n].grad());
            assert_eq!(gr.defined(), gf.defined(), "{n}");
            if gr.defined() {
                let d = max_rel_diff(&gf, &gr);
                assert!(d <= 1e-6, "step {s} {n}: clipped gradients differ by {d}");
            }
        }
        let lr = 1e-2 * (1.0 + s as f64 / 4.0);
        r.step(lr).unwrap();
        f.step(lr).unwrap();
        for (n, p) in &pr {
            let d = max_rel_diff(&pf[n], p);
            assert!(d <= 1e-6, "step {s} {n}: parameters differ by {d}");
        }
    }
    assert_eq!(f.step_count(), 8);
    // The parameter without a gradient never moved; moments and steps agree.
    let unused = init.iter().find(|(n, _)| n == "unused.bias").unwrap();
    assert!(pf["unused.bias"].equal(&unused.1));
    let (dr, df) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    r.save(dr.path()).unwrap();
    f.save(df.path()).unwrap();
    let meta = |d: &tempfile::TempDir| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.path().join("optimizer.json")).unwrap())
            .unwrap()
    };
    let (mr, mf) = (meta(&dr), meta(&df));
    assert_eq!(mf["steps"], mr["steps"]);
    assert_eq!(mf["steps"]["late.weight"], 5);
    assert_eq!(mf["steps"]["unused.bias"], 0);
    assert_eq!(mf["steps"]["layer.0.bias"], 8);
    let state = |d: &tempfile::TempDir| -> BTreeMap<String, Tensor> {
        Tensor::read_safetensors(d.path().join("optimizer.safetensors"))
            .unwrap()
            .into_iter()
            .collect()
    };
    let (sr, sf) = (state(&dr), state(&df));
    assert_eq!(sr.len(), sf.len());
    for (k, t) in &sr {
        if k.ends_with("unused.bias") {
            assert_eq!(sf[k].abs().sum(Kind::Float).double_value(&[]), 0.0, "{k}");
            continue;
        }
        let d = max_rel_diff(&sf[k], t);
        assert!(d <= 1e-6, "{k}: moments differ by {d}");
    }
}

/// A restored fused optimizer continues from the saved steps (its device step counters are
/// reloaded): 3 steps, save, load into a fresh one, 3 more == 6 steps of the reference.
#[test]
fn fused_adamw_resumes_its_step_counts() {
    let init = init(11);
    let (pr, mut r) = build(&init, true);
    let (pa, mut a) = build(&init, false);
    for s in 0..3 {
        for (params, opt) in [(&pr, &mut r), (&pa, &mut a)] {
            opt.zero_grad();
            backward(params, s);
            opt.step(1e-2).unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    a.save(dir.path()).unwrap();
    let now: Vec<(String, Tensor)> = pa
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().copy()))
        .collect();
    drop(a);
    let (pb, mut b) = build(&now, false);
    b.load(dir.path()).unwrap();
    for s in 3..6 {
        for (params, opt) in [(&pr, &mut r), (&pb, &mut b)] {
            opt.zero_grad();
            backward(params, s);
            opt.step(1e-2).unwrap();
        }
    }
    for (n, p) in &pr {
        let d = max_rel_diff(&pb[n], p);
        assert!(d <= 1e-6, "{n}: parameters differ by {d} after resume");
    }
}

/// One optimizer step with clipping on a 100-tensor model (48 matrices of 256×256, 52
/// vectors of 256), fused against per-tensor: the median of 5 alternated rounds of 20 steps.
#[test]
#[ignore = "benchmark: cargo test --release -p temper-recipes -- --ignored fused_step_speed --nocapture"]
fn fused_step_speed() {
    tch::manual_seed(0);
    let init: Vec<(String, Tensor)> = (0..100)
        .map(|i| {
            let shape: &[i64] = if i % 2 == 0 && i < 96 {
                &[256, 256]
            } else {
                &[256]
            };
            (format!("p{i:03}"), Tensor::randn(shape, CPU) * 0.02)
        })
        .collect();
    let mut runs = Vec::new();
    for reference in [true, false] {
        let (params, opt) = build(&init, reference);
        for p in params.values() {
            let mut g = p.grad();
            if !g.defined() {
                (p * 1.0).sum(Kind::Float).backward();
                g = p.grad();
            }
            tch::no_grad(|| g.copy_(&(Tensor::randn(p.size(), CPU) * 1e-3)));
        }
        runs.push((reference, opt));
    }
    let (rounds, steps) = (5, 20);
    let mut ms: BTreeMap<bool, Vec<f64>> = BTreeMap::new();
    for _ in 0..rounds {
        for (reference, opt) in &mut runs {
            let t = std::time::Instant::now();
            for _ in 0..steps {
                opt.clip_grad_norm(1.0).unwrap();
                opt.step(1e-4).unwrap();
            }
            ms.entry(*reference)
                .or_default()
                .push(t.elapsed().as_secs_f64() * 1e3 / steps as f64);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (per_tensor, fused) = (
        median(ms.get_mut(&true).unwrap()),
        median(ms.get_mut(&false).unwrap()),
    );
    println!(
        "optimizer step (clip + AdamW), 100 tensors, {} threads: per-tensor {per_tensor:.3} ms, \
         fused {fused:.3} ms ({:.2}x)",
        tch::get_num_threads(),
        per_tensor / fused
    );
    assert!(fused.is_finite() && per_tensor.is_finite());
}
