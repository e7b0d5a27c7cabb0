//! AdamW and gradient clipping against torch.optim.AdamW / clip_grad_norm_ (golden values from
//! `fixtures/train/adamw.json`), state save/load, and schedules against transformers'.

use super::util::fixture;
use recipes::trainer::optim::{AdamW, AdamWConfig};
use recipes::trainer::schedule::{Kind as SKind, Schedule, Warmup};
use serde_json::Value as J;
use tch::{Kind, Tensor};

fn floats(v: &J) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn tensor(v: &J, shape: &J) -> Tensor {
    let shape: Vec<i64> = shape
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    Tensor::from_slice(&floats(v)).reshape(shape)
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.detach().flatten(0, -1)).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const NAMES: [&str; 2] = ["layer.bias", "layer.weight"];

fn setup(fx: &J) -> (Vec<Tensor>, AdamW) {
    let params: Vec<Tensor> = NAMES
        .iter()
        .map(|n| tensor(&fx["init"][n], &fx["shapes"][n]).set_requires_grad(true))
        .collect();
    let cfg = AdamWConfig {
        beta1: fx["betas"][0].as_f64().unwrap(),
        beta2: fx["betas"][1].as_f64().unwrap(),
        eps: fx["eps"].as_f64().unwrap(),
        weight_decay: fx["weight_decay"].as_f64().unwrap(),
    };
    let named = NAMES
        .iter()
        .zip(&params)
        .map(|(n, t)| (n.to_string(), t.shallow_clone()))
        .collect();
    (params, AdamW::new(named, cfg))
}

/// Sets each parameter's gradient to `g` through backward of `Σ θ·g`.
fn set_grads(params: &[Tensor], opt: &mut AdamW, step: &J, fx: &J) {
    opt.zero_grad();
    let mut loss = Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
    for (n, p) in NAMES.iter().zip(params) {
        let g = tensor(&step["grads"][n], &fx["shapes"][n]);
        loss += (p * g).sum(Kind::Float);
    }
    loss.backward();
}

/// Both implementations: the fused kernels (the default) and the per-tensor reference.
#[test]
fn adamw_and_clipping_match_torch() {
    for reference in [false, true] {
        adamw_and_clipping_match_torch_with(reference);
    }
}

fn adamw_and_clipping_match_torch_with(reference: bool) {
    let fx = fixture("adamw.json");
    let (params, opt) = setup(&fx);
    let mut opt = opt.with_reference(reference);
    assert_eq!(opt.is_reference(), reference);
    assert_eq!(
        opt.decay_split(),
        (vec!["layer.weight"], vec!["layer.bias"])
    );
    for (s, step) in fx["steps"].as_array().unwrap().iter().enumerate() {
        set_grads(&params, &mut opt, step, &fx);
        let norm = opt
            .clip_grad_norm(fx["max_norm"].as_f64().unwrap())
            .unwrap();
        let want = step["pre_clip_norm"].as_f64().unwrap();
        assert!(
            (norm - want).abs() < 1e-5 * want.max(1.0),
            "step {s}: norm {norm} vs {want}"
        );
        for (n, p) in NAMES.iter().zip(&params) {
            let d = max_diff(&values(&p.grad()), &floats(&step["clipped"][n]));
            assert!(d < 1e-6, "step {s} {n}: clipped grads differ by {d}");
        }
        opt.step(step["lr"].as_f64().unwrap()).unwrap();
        for (n, p) in NAMES.iter().zip(&params) {
            let d = max_diff(&values(p), &floats(&step["params"][n]));
            assert!(d < 1e-6, "step {s} {n}: params differ by {d}");
        }
    }
    assert_eq!(opt.step_count(), 6);
}

/// 3 steps, save, rebuild, load, 3 more steps == 6 uninterrupted steps, bit for bit.
#[test]
fn adamw_state_roundtrip_is_exact() {
    let fx = fixture("adamw.json");
    let steps = fx["steps"].as_array().unwrap();
    let (pa, mut a) = setup(&fx);
    for st in steps {
        set_grads(&pa, &mut a, st, &fx);
        a.step(st["lr"].as_f64().unwrap()).unwrap();
    }

    let (pb, mut b) = setup(&fx);
    for st in &steps[..3] {
        set_grads(&pb, &mut b, st, &fx);
        b.step(st["lr"].as_f64().unwrap()).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    b.save(dir.path()).unwrap();
    let saved: Vec<Vec<f32>> = pb.iter().map(values).collect();
    drop(b);
    let (pc, mut c) = setup(&fx);
    tch::no_grad(|| {
        for (p, v) in pc.iter().zip(&saved) {
            p.shallow_clone()
                .copy_(&Tensor::from_slice(v).reshape(p.size()));
        }
    });
    c.load(dir.path()).unwrap();
    assert_eq!(c.step_count(), 3);
    for st in &steps[3..] {
        set_grads(&pc, &mut c, st, &fx);
        c.step(st["lr"].as_f64().unwrap()).unwrap();
    }
    for (x, y) in pa.iter().zip(&pc) {
        assert_eq!(values(x), values(y), "bit-identical after resume");
    }
    // A state for other parameters is refused with the tensor's name.
    let other = Tensor::zeros([2, 2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let mut d = AdamW::new(vec![("other.weight".into(), other)], AdamWConfig::default());
    let e = format!("{:#}", d.load(dir.path()).unwrap_err());
    assert!(e.contains("exp_avg.other.weight"), "{e}");
}

#[test]
fn non_finite_gradients_are_detected() {
    let p = Tensor::ones([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let mut opt = AdamW::new(
        vec![("w".into(), p.shallow_clone())],
        AdamWConfig::default(),
    );
    let g = Tensor::from_slice(&[1.0f32, f32::NAN, 0.0]);
    (&p * &g).sum(Kind::Float).backward();
    assert_eq!(opt.non_finite_grads().unwrap(), vec!["w".to_string()]);
    let e = opt.clip_grad_norm(1.0).unwrap_err().to_string();
    assert!(e.contains("non-finite"), "{e}");
}

#[test]
fn schedules_match_transformers() {
    let fx = fixture("schedules.json");
    let total = fx["total"].as_u64().unwrap();
    let warm = fx["warmup"].as_u64().unwrap();
    for name in ["constant", "linear", "cosine"] {
        let s = Schedule::new(SKind::parse(name).unwrap(), 2.0, Warmup::Steps(warm), total);
        for (step, want) in fx["factors"][name].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap();
            assert!(
                (s.factor(step as u64) - want).abs() < 1e-12,
                "{name} step {step}"
            );
            assert!((s.lr(step as u64) - 2.0 * want).abs() < 1e-12);
        }
    }
    assert_eq!(Warmup::Fraction(0.03).steps(100), 3);
    assert_eq!(Warmup::Fraction(0.1).steps(25), 3, "⌈2.5⌉");
    let c = Schedule::new(SKind::Cosine { min_ratio: 0.1 }, 1.0, Warmup::Steps(0), 10);
    assert!((c.factor(10) - 0.1).abs() < 1e-12 && (c.factor(0) - 1.0).abs() < 1e-12);
}
