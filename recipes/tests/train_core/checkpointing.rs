//! Activation checkpointing (`recipes::arch::checkpoint`) and the varlen attention of packed
//! rows (`recipes::arch::varlen`), on tiny random models:
//! - a checkpointed forward and backward gives bit-identical losses and gradients — over two
//!   accumulated micro-batches, GQA and a sliding window, tied and untied heads, and LoRA with
//!   dropout (the recomputation draws the forward's masks, and the generator is left where a
//!   plain run leaves it);
//! - a training run with `activation-checkpointing #true` writes the same bytes;
//! - the varlen layout (sequence offsets, token-major projections, the per-sequence reference
//!   kernel CPU runs) gives the dense segment mask's outputs and gradients.

use crate::arch_parity::common::{config, random_model};
use recipes::arch::mask::{packed_offsets, Packed};
use recipes::arch::{AttnMask, HfModel};
use recipes::batching::examples::Example;
use recipes::batching::pack::{pack_rows, Batch};
use recipes::trainer::lm;
use serde_json::json;
use tch::{Kind, Tensor};

/// Examples of lengths 4..=13 whose first third is prompt.
fn examples(salt: usize) -> Vec<Example> {
    let lens: Vec<usize> = (0..7).map(|i| 4 + (i * 7 + salt) % 10).collect();
    super::util::prompt_examples(&lens, salt)
}

fn t2(v: &[i64], b: &Batch) -> Tensor {
    Tensor::from_slice(v).view([b.rows as i64, b.cols as i64])
}

/// The gradients of every variable requiring grad (name-sorted copies; model and adapter).
fn grads(m: &HfModel) -> Vec<(String, Tensor)> {
    let mut vars = m.vs.variables();
    if let Some(a) = &m.adapter {
        vars.extend(a.vs.variables());
    }
    let mut v: Vec<(String, Tensor)> = vars
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(n, t)| {
            let g = t.grad();
            assert!(g.defined(), "{n} has no gradient");
            (n, g.copy())
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn zero_grads(m: &HfModel) {
    let mut vars = m.vs.variables();
    if let Some(a) = &m.adapter {
        vars.extend(a.vs.variables());
    }
    for (_, t) in vars {
        let mut g = t.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

/// Two accumulated micro-batches of packed SFT loss (each seeded like the trainer seeds
/// adapter dropout); returns the losses, the gradients and a draw of the generator afterwards.
fn two_micro_batches(m: &HfModel) -> (Vec<f64>, Vec<(String, Tensor)>, Tensor) {
    let mut losses = Vec::new();
    for micro in 0..2 {
        tch::manual_seed(100 + micro);
        let b = pack_rows(&examples(micro as usize), 24, 0).unwrap();
        let loss = lm::sum_loss(m, &b).unwrap();
        loss.backward();
        losses.push(loss.double_value(&[]));
    }
    let after = Tensor::rand([4], (Kind::Float, tch::Device::Cpu));
    let g = grads(m);
    zero_grads(m);
    (losses, g, after)
}

fn assert_same(plain: &[(String, Tensor)], ckpt: &[(String, Tensor)], what: &str) {
    assert_eq!(plain.len(), ckpt.len());
    for ((n, a), (_, b)) in plain.iter().zip(ckpt) {
        assert!(a.equal(b), "{what}: gradient of {n} differs");
    }
}

#[test]
fn checkpointed_blocks_give_bit_identical_gradients() {
    let cases = [
        ("llama", json!({"tie_word_embeddings": false})),
        ("llama", json!({"tie_word_embeddings": true})),
        ("mistral", json!({"sliding_window": 5})),
    ];
    for (family, extra) in cases {
        let what = format!("{family} {extra}");
        let mut m = random_model(config(family, extra), 5);
        let _rng = crate::common::torch_rng();
        let (l0, g0, r0) = two_micro_batches(&m);
        m.model.checkpointing = true;
        let (l1, g1, r1) = two_micro_batches(&m);
        assert_eq!(l0, l1, "{what}: losses");
        assert_same(&g0, &g1, &what);
        assert!(r0.equal(&r1), "{what}: generator state after backward");
        // Without autograd the blocks are plain calls: the same hidden states.
        let b = pack_rows(&examples(0), 24, 0).unwrap();
        let seg = t2(&b.segment_ids, &b);
        let h = |m: &HfModel| {
            tch::no_grad(|| {
                m.model
                    .hidden_states(
                        &t2(&b.input_ids, &b),
                        &t2(&b.position_ids, &b),
                        AttnMask::Segments(&seg),
                    )
                    .unwrap()
            })
        };
        let with = h(&m);
        m.model.checkpointing = false;
        assert!(with.equal(&h(&m)), "{what}: no-grad forward");
    }
}

#[test]
fn checkpointed_lora_with_dropout_draws_the_same_masks() {
    let mut m = random_model(config("llama", json!({})), 8);
    // The generator is shared by the tests of this process: hold it from here on.
    let _rng = crate::common::torch_rng();
    let spec = kinds::lora::Lora {
        rank: 4,
        alpha: 8.0,
        dropout: 0.3,
        rslora: false,
        target: vec!["all-linear".into()],
    };
    recipes::lora::attach(&mut m, &spec, 1, "test").unwrap();
    // B starts at zero; random B gives every adapter variable a gradient.
    tch::no_grad(|| {
        for (n, mut t) in m.adapter.as_ref().unwrap().vs.variables() {
            if n.contains("lora_B") {
                t.copy_(&(Tensor::randn(t.size(), (Kind::Float, t.device())) * 0.1));
            }
        }
    });
    recipes::lora::attach::set_training(&m, true);
    let (l0, g0, r0) = two_micro_batches(&m);
    m.model.checkpointing = true;
    let (l1, g1, r1) = two_micro_batches(&m);
    assert_eq!(l0, l1, "losses");
    assert!(!g0.is_empty());
    assert_same(&g0, &g1, "lora");
    assert!(r0.equal(&r1), "generator state after backward");
    // Dropout is really on: another seed gives another loss.
    tch::manual_seed(7);
    let b = pack_rows(&examples(0), 24, 0).unwrap();
    let other = lm::sum_loss(&m, &b).unwrap().double_value(&[]);
    assert_ne!(other, l1[0], "dropout draws nothing");
}

#[test]
fn packed_offsets_start_a_sequence_at_every_segment_and_row() {
    // Two rows of 6: [a a b b b pad], [c c c c d d].
    let seg = [1, 1, 2, 2, 2, 0, 3, 3, 3, 3, 4, 4];
    let (cu, max_len) = packed_offsets(&seg, 2, 6);
    assert_eq!(cu, vec![0, 2, 5, 6, 10, 12]);
    assert_eq!(max_len, 4);
    // The same id across a row boundary still splits.
    let (cu, _) = packed_offsets(&[7, 7, 7, 7], 2, 2);
    assert_eq!(cu, vec![0, 2, 4]);
}

/// max |a − b| / max(1, max |b|).
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[]);
    d / b.abs().max().double_value(&[]).max(1.0)
}

#[test]
fn varlen_layout_matches_the_dense_segment_mask() {
    let cases = [
        ("llama", json!({})),
        ("qwen2", json!({"num_key_value_heads": 1})),
        ("mistral", json!({"sliding_window": 3})),
    ];
    for (family, extra) in cases {
        let what = format!("{family} {extra}");
        let m = random_model(config(family, extra), 12);
        let b = pack_rows(&examples(3), 20, 0).unwrap();
        let seg = t2(&b.segment_ids, &b);
        let (cu, max_len) = packed_offsets(&b.segment_ids, b.rows, b.cols);
        let packed = Packed {
            cu: Tensor::from_slice(&cu),
            max_len,
            total: (b.rows * b.cols) as i64,
        };
        let run = |mask: AttnMask| {
            let h = m
                .model
                .hidden_states(&t2(&b.input_ids, &b), &t2(&b.position_ids, &b), mask)
                .unwrap();
            let loss = lm::target_ce(&m, &h, &b.labels, b.rows, b.cols).unwrap();
            loss.backward();
            let mut g: Vec<(String, Tensor)> =
                m.vs.variables()
                    .into_iter()
                    .map(|(n, t)| (n, t.grad().copy()))
                    .collect();
            g.sort_by(|a, b| a.0.cmp(&b.0));
            zero_grads(&m);
            (h.detach(), g)
        };
        let (h_dense, g_dense) = run(AttnMask::Segments(&seg));
        let (h_var, g_var) = run(AttnMask::Varlen(&packed));
        let r = rel(&h_var, &h_dense);
        assert!(r < 1e-5, "{what}: hidden states differ by {r:e}");
        for ((n, a), (_, d)) in g_var.iter().zip(&g_dense) {
            let r = rel(a, d);
            assert!(r < 1e-5, "{what}: gradient of {n} differs by {r:e}");
        }
    }
}

/// The node really recomputes: the block runs once in the forward and once more in the
/// backward (never under `no_grad`), the input gradient is the plain one, and an error of the
/// recomputation reaches the caller of `backward` as an error.
#[test]
fn a_checkpointed_block_runs_again_in_backward_and_reports_errors() {
    use recipes::arch::checkpoint::{anchor, checkpointed};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let calls = Arc::new(AtomicUsize::new(0));
    let block = |fail_second: bool| {
        let calls = calls.clone();
        Box::new(move |x: &Tensor| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            if fail_second && n % 2 == 1 {
                return Err(tch::TchError::Torch("recomputation failed".into()));
            }
            x.f_tanh()?.f_mul_scalar(3.0)
        })
    };
    let x = Tensor::from_slice(&[0.5f32, -1.0, 2.0]).set_requires_grad(true);
    let a = anchor(tch::Device::Cpu).unwrap();
    let y = checkpointed(&x, &a, block(false)).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    y.sum(Kind::Float).backward();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "recomputed in backward");
    let plain = x.detach().set_requires_grad(true);
    (plain.tanh() * 3.0).sum(Kind::Float).backward();
    assert!(x.grad().equal(&plain.grad()));
    assert!(!a.grad().defined(), "the anchor gets no gradient");

    let _ = tch::no_grad(|| checkpointed(&x, &a, block(false)).unwrap());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "a plain call without autograd"
    );

    calls.store(0, Ordering::SeqCst);
    let y = checkpointed(&x, &a, block(true)).unwrap();
    let err = y.sum(Kind::Float).f_backward().unwrap_err().to_string();
    assert!(err.contains("recomputation failed"), "{err}");
}

/// A kept unit (sharded training without checkpointing) runs its block once, with autograd,
/// and calls its `done` hook once its backward is over — after the block's parameter has its
/// gradient — giving the plain gradients; a recomputed unit calls the hook after the
/// recomputation's backward, and a failing hook fails `backward()`.
#[test]
fn a_unit_calls_its_hook_when_its_backward_is_done() {
    use recipes::arch::checkpoint::{anchor, unit};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let mut w = Tensor::from_slice(&[1.5f32, -0.5, 2.0]).set_requires_grad(true);
    let mut x = Tensor::from_slice(&[0.5f32, -1.0, 2.0]).set_requires_grad(true);
    let a = anchor(tch::Device::Cpu).unwrap();
    for recompute in [false, true] {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<Option<Tensor>>> = Arc::new(Mutex::new(None));
        let f = {
            let (w, calls) = (w.shallow_clone(), calls.clone());
            Box::new(move |x: &Tensor, grad: bool| {
                calls.fetch_add(1, Ordering::SeqCst);
                assert_eq!(grad, !recompute || calls.load(Ordering::SeqCst) == 2);
                (x * &w).f_tanh()
            })
        };
        let done = {
            let (w, seen) = (w.shallow_clone(), seen.clone());
            Box::new(move || {
                *seen.lock().unwrap() = Some(w.grad().copy());
                Ok(())
            })
        };
        w.zero_grad();
        x.zero_grad();
        let y = unit(&x, &a, recompute, f, Some(done)).unwrap();
        y.sum(Kind::Float).backward();
        let runs = if recompute { 2 } else { 1 };
        assert_eq!(calls.load(Ordering::SeqCst), runs, "recompute {recompute}");
        let (pw, px) = (
            w.detach().set_requires_grad(true),
            x.detach().set_requires_grad(true),
        );
        (&px * &pw).tanh().sum(Kind::Float).backward();
        assert!(w.grad().equal(&pw.grad()) && x.grad().equal(&px.grad()));
        let at_done = seen.lock().unwrap().take().expect("the hook ran");
        assert!(
            at_done.equal(&pw.grad()),
            "the hook saw the block's gradient"
        );
    }
    let y = unit(
        &x,
        &a,
        false,
        Box::new(|x: &Tensor, _| x.f_mul_scalar(2.0)),
        Some(Box::new(|| {
            Err(tch::TchError::Torch("reduce failed".into()))
        })),
    )
    .unwrap();
    let err = y.sum(Kind::Float).f_backward().unwrap_err().to_string();
    assert!(err.contains("reduce failed"), "{err}");
}
