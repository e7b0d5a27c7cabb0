//! Times the phases of one causal-LM training step on a model directory, to compare with
//! `bench/step_phases.py` (the same phases in a plain PyTorch eager loop): forward (logits),
//! loss, backward, non-finite check + gradient clipping, AdamW step, zero-grad.
//!
//! The batch is `B × T` token ids drawn uniformly below the vocabulary size (seeded), all
//! positions real (plain causal attention), labels = inputs (every position but the first is a
//! target). Prints one JSON line of mean milliseconds per phase over `STEPS` steps after
//! `WARMUP` steps.
//!
//! Usage: `cargo run --release -p temper-recipes --example step_phases -- MODEL_DIR B T [STEPS] [WARMUP]`

use anyhow::{bail, Context, Result};
use recipes::arch::{AttnMask, HfModel, LoadOptions};
use recipes::batching::loss::sum_ce;
use recipes::trainer::optim::{AdamW, AdamWConfig};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        bail!("usage: step_phases MODEL_DIR B T [STEPS] [WARMUP]");
    }
    let num = |i: usize, default: i64| -> Result<i64> {
        match args.get(i) {
            Some(s) => s
                .parse()
                .with_context(|| format!("argument {}: {s}", i + 1)),
            None => Ok(default),
        }
    };
    let (b, t, steps, warmup) = (num(1, 0)?, num(2, 0)?, num(3, 10)?, num(4, 2)?);
    let model = HfModel::load(args[0].as_ref(), &args[0], &LoadOptions::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tch::manual_seed(0);
    let vocab = model.config.vocab_size as i64;
    let ids = Tensor::f_randint(vocab, [b, t], (Kind::Int64, Device::Cpu))?;
    let pos = Tensor::f_arange(t, (Kind::Int64, Device::Cpu))?.f_expand([b, t], false)?;
    let cfg = AdamWConfig {
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = AdamW::from_var_store(&model.vs, cfg);
    let names = [
        "forward",
        "loss",
        "backward",
        "check",
        "clip",
        "adamw",
        "zero_grad",
    ];
    let mut ms = [0.0f64; 7];
    for step in 0..warmup + steps {
        let mut lap = [0.0f64; 7];
        let mut t0 = Instant::now();
        let mut tick = |i: usize, t0: &mut Instant| {
            lap[i] = t0.elapsed().as_secs_f64() * 1e3;
            *t0 = Instant::now();
        };
        let logits = model.forward(&ids, &pos, AttnMask::Causal)?;
        tick(0, &mut t0);
        let loss = sum_ce(&logits, &ids)?.f_div_scalar((b * (t - 1)) as f64)?;
        let _ = loss.double_value(&[]);
        tick(1, &mut t0);
        loss.f_backward()?;
        tick(2, &mut t0);
        let bad = opt.non_finite_grads()?;
        if !bad.is_empty() {
            bail!("non-finite gradients in {bad:?}");
        }
        tick(3, &mut t0);
        opt.clip_grad_norm(1.0)?;
        tick(4, &mut t0);
        opt.step(1e-5)?;
        tick(5, &mut t0);
        opt.zero_grad();
        tick(6, &mut t0);
        if step >= warmup {
            for (m, l) in ms.iter_mut().zip(lap) {
                *m += l / steps as f64;
            }
        }
    }
    let fields: Vec<String> = names
        .iter()
        .zip(ms)
        .map(|(n, m)| format!("\"{n}\": {m:.1}"))
        .collect();
    println!(
        "{{\"impl\": \"temper\", \"threads\": {}, {}, \"total\": {:.1}}}",
        tch::get_num_threads(),
        fields.join(", "),
        ms.iter().sum::<f64>()
    );
    Ok(())
}
