//! Fixtures: a tiny Llama model built in memory, token-level domain generators (two Markov
//! chains and noise), a measurement config, and a small SGD loop over a weighted mixture.

use recipes::arch::{HfModel, LoadOptions};
use recipes::influence::grads::{mean_loss, sample_grad, Batching, Selection};
use recipes::influence::{estimate, Bounds, Config, DomainIn, Report, TargetIn};
use recipes::rng::SplitMix64;
use serde_json::json;
use tch::{Device, Kind, Tensor};

pub const VOCAB: usize = 24;
pub const EOS: i64 = 1;

/// A tiny Llama (hidden 32, 2 layers) with weights drawn from `seed`.
pub fn tiny(kind: Kind, seed: i64) -> HfModel {
    let cfg = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB,
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": false, "torch_dtype": "float32",
        "bos_token_id": 0, "eos_token_id": 1
    });
    let m = HfModel::from_config(
        cfg,
        &LoadOptions {
            device: Device::Cpu,
            dtype: Some(kind),
        },
    )
    .unwrap();
    let _rng = crate::common::torch_rng();
    tch::manual_seed(seed);
    let _g = tch::no_grad_guard();
    let mut vars: Vec<(String, Tensor)> = m.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, v) in vars {
        let init = if name.ends_with("norm.weight") {
            Tensor::ones(v.size(), (kind, Device::Cpu))
        } else {
            Tensor::randn(v.size(), (kind, Device::Cpu)) * 0.3
        };
        v.shallow_clone().copy_(&init);
    }
    m
}

/// Documents of `n` × 20 tokens from a generator: `next(prev, rng)`.
fn docs(n: usize, seed: u64, next: impl Fn(i64, &mut SplitMix64) -> i64) -> Vec<Vec<i64>> {
    let mut g = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let mut d = vec![2 + g.below(VOCAB as u64 - 2) as i64];
            for _ in 0..19 {
                let t = next(*d.last().unwrap(), &mut g);
                d.push(t);
            }
            d.push(EOS);
            d
        })
        .collect()
}

fn wrap(t: i64) -> i64 {
    2 + (t - 2).rem_euclid(VOCAB as i64 - 2)
}

/// Generator A: `t → t + 1` (mostly), else a random step.
pub fn gen_a(n: usize, seed: u64) -> Vec<Vec<i64>> {
    docs(n, seed, |t, g| {
        if g.below(10) < 8 {
            wrap(t + 1)
        } else {
            wrap(t + g.below(5) as i64)
        }
    })
}
/// Generator B: `t → t + 7` (mostly), a different chain on the same tokens.
pub fn gen_b(n: usize, seed: u64) -> Vec<Vec<i64>> {
    docs(n, seed, |t, g| {
        if g.below(10) < 8 {
            wrap(t + 7)
        } else {
            wrap(t + g.below(5) as i64)
        }
    })
}
/// Noise: uniform tokens.
pub fn gen_noise(n: usize, seed: u64) -> Vec<Vec<i64>> {
    docs(n, seed, |_, g| 2 + g.below(VOCAB as u64 - 2) as i64)
}
/// Half A-chain, half noise.
pub fn gen_mixed(n: usize, seed: u64) -> Vec<Vec<i64>> {
    docs(n, seed, |t, g| {
        if g.below(2) == 0 {
            wrap(t + 1)
        } else {
            2 + g.below(VOCAB as u64 - 2) as i64
        }
    })
}

pub fn batching() -> Batching {
    Batching {
        seq_len: 64,
        batch_size: 16,
        pad_id: 0,
    }
}

pub fn config() -> Config {
    Config {
        batching: batching(),
        params: Vec::new(),
        project: None,
        seed: 0,
        temperature: 1.0,
        smoothing: 1e-3,
        abstain_z: 2.0,
        check_lr: None,
    }
}

pub fn free(k: usize) -> Bounds {
    Bounds {
        floor: vec![0.0; k],
        cap: vec![1.0; k],
    }
}

pub fn refs(d: &[Vec<i64>]) -> Vec<&[i64]> {
    d.iter().map(Vec::as_slice).collect()
}

/// Runs [`estimate`] on named domains (uniform `w0`) and one target.
pub fn run(
    model: &HfModel,
    domains: &[(&str, &[Vec<i64>])],
    targets: &[(&str, &[Vec<i64>], f64)],
    bounds: &Bounds,
    cfg: &Config,
) -> Report {
    let d: Vec<DomainIn> = domains
        .iter()
        .map(|(n, docs)| DomainIn {
            name: n.to_string(),
            docs: refs(docs),
            w0: 1.0,
        })
        .collect();
    let t: Vec<TargetIn> = targets
        .iter()
        .map(|(n, docs, w)| TargetIn {
            name: n.to_string(),
            docs: refs(docs),
            weight: *w,
        })
        .collect();
    estimate(model, &d, &t, bounds, cfg, &|| Ok(())).unwrap()
}

/// `steps` SGD steps at `lr`, each on 8 documents drawn from the domains with probabilities
/// `w` (a fixed-seed draw, so two calls with the same seed see the same random numbers).
pub fn train(
    model: &HfModel,
    domains: &[&[Vec<i64>]],
    w: &[f64],
    steps: usize,
    lr: f64,
    seed: u64,
) {
    let sel = Selection::new(model, &[]).unwrap();
    let mut g = SplitMix64::new(seed);
    for _ in 0..steps {
        let mut batch: Vec<&[i64]> = Vec::new();
        for _ in 0..8 {
            let u = g.next_f64();
            let (mut k, mut acc) = (0, 0.0);
            while k + 1 < w.len() && acc + w[k] <= u {
                acc += w[k];
                k += 1;
            }
            let d = domains[k];
            batch.push(&d[g.below(d.len() as u64) as usize]);
        }
        let (s, n) = sample_grad(model, &sel, &batch, batching()).unwrap();
        sel.add_scaled(&s, -lr / n as f64).unwrap();
    }
}

pub fn loss(model: &HfModel, docs: &[Vec<i64>]) -> f64 {
    mean_loss(model, &refs(docs), batching()).unwrap()
}
