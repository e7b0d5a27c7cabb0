//! Peak memory of the LM-head loss, forward and backward, chunked ([`recipes::batching::head`])
//! against the full `[tokens, vocab]` logits it replaces, on CPU.
//!
//! Random hidden states `[N, H]` (a leaf that requires grad) and head weight `[V, H]` (f32);
//! targets uniform below `V`. Four cases, each from the same resident baseline: `sum-ce full`
//! (`cross_entropy` of the logits, plain autograd), `sum-ce chunked`, `seq-logps full`
//! (`log_softmax` + gather, a DPO loss on two halves' sums) and `seq-logps chunked`
//! (`token_logps` + `attach`). The peak is the process's resident high-water mark (`VmHWM`),
//! reset before each case through `/proc/self/clear_refs`; reported above the resident size
//! before the case (inputs included there). Prints one line per case.
//!
//! Usage: `cargo run --release -p temper-recipes --example ce_memory -- [N] [V] [H] [CHUNK]`
//! (defaults 4096 151936 896 1024: Qwen2.5-0.5B's vocabulary and width).

use anyhow::{bail, Context, Result};
use recipes::batching::head;
use tch::{Device, Kind, Reduction, Tensor};

/// A field of `/proc/self/status` in MiB.
fn status_mib(field: &str) -> Result<f64> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    let line = s
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/self/status"))?;
    let kb: f64 = line
        .split_whitespace()
        .nth(1)
        .context("a number")?
        .parse()?;
    Ok(kb / 1024.0)
}

/// Runs `f` (forward and backward of one case) and returns (peak above the start, seconds).
fn measure(f: impl FnOnce() -> Result<()>) -> Result<(f64, f64)> {
    std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak RSS")?;
    let before = status_mib("VmRSS:")?;
    let t = std::time::Instant::now();
    f()?;
    let secs = t.elapsed().as_secs_f64();
    Ok((status_mib("VmHWM:")? - before, secs))
}

/// One case: a forward and backward.
type Case<'a> = Box<dyn Fn() -> Result<()> + 'a>;

/// DPO's loss on the sums of the two halves of `logp` `[N]`.
fn dpo(logp: &Tensor) -> Tensor {
    let k = logp.size()[0] / 2;
    let s = logp.view([2, k]).sum_dim_intlist(1, false, Kind::Float);
    -((s.get(0) - s.get(1)) * 0.1).log_sigmoid()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: i64| -> Result<i64> {
        match args.get(i) {
            Some(s) => s
                .parse()
                .with_context(|| format!("argument {}: {s}", i + 1)),
            None => Ok(default),
        }
    };
    let (n, v, h, chunk) = (num(0, 4096)?, num(1, 151936)?, num(2, 896)?, num(3, 1024)?);
    if n < 2 || v < 1 || h < 1 || chunk < 1 {
        bail!("usage: ce_memory [N ≥ 2] [V] [H] [CHUNK]");
    }
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let opts = (Kind::Float, Device::Cpu);
    let x = Tensor::f_randn([n, h], opts)?.set_requires_grad(true);
    let w = (Tensor::f_randn([v, h], opts)? * 0.02).set_requires_grad(true);
    let y = Tensor::f_randint(v, [n], (Kind::Int64, Device::Cpu))?;
    // The gradient buffers exist before any case (as they do in training).
    (x.f_sum(Kind::Float)? + w.f_sum(Kind::Float)?).f_backward()?;
    let zero = |t: &Tensor| {
        let mut g = t.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    };
    println!(
        "N={n} V={v} H={h} chunk={chunk}: one [N, V] f32 tensor is {:.0} MiB, [V, H] f32 {:.0} MiB",
        (n * v * 4) as f64 / 1048576.0,
        (v * h * 4) as f64 / 1048576.0
    );
    let cases: [(&str, Case); 4] = [
        (
            "sum-ce full",
            Box::new(|| {
                let logits = x.f_linear::<&Tensor>(&w, None)?;
                let l =
                    logits.f_cross_entropy_loss::<Tensor>(&y, None, Reduction::Sum, -100, 0.0)?;
                drop(logits);
                l.f_backward()?;
                Ok(())
            }),
        ),
        (
            "sum-ce chunked",
            Box::new(|| {
                head::sum_ce(&x, &w, &y, chunk as usize)?.f_backward()?;
                Ok(())
            }),
        ),
        (
            "seq-logps full",
            Box::new(|| {
                let lp = x
                    .f_linear::<&Tensor>(&w, None)?
                    .f_log_softmax(-1, Kind::Float)?
                    .f_gather(1, &y.f_unsqueeze(1)?, false)?
                    .f_squeeze_dim(1)?;
                dpo(&lp).f_backward()?;
                Ok(())
            }),
        ),
        (
            "seq-logps chunked",
            Box::new(|| {
                let lp = head::token_logps(&x, &w, &y, chunk as usize)?;
                lp.attach(&dpo(&lp.logp))?.f_backward()?;
                Ok(())
            }),
        ),
    ];
    for (name, case) in cases.iter() {
        zero(&x);
        zero(&w);
        let (peak, secs) = measure(case)?;
        println!("{name:>18}: peak +{peak:.0} MiB above the inputs, {secs:.2} s");
    }
    Ok(())
}
