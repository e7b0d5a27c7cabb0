//! The chunked LM head (`recipes::batching::head`) against the unchunked computation it
//! replaces — full `[tokens, vocab]` logits, `cross_entropy` / `log_softmax` + gather, plain
//! autograd — on a tiny random model, tied and untied: the SFT loss (labels with ignored
//! positions, padded and packed batches) and the sequence log-probs of DPO/NPO, their values
//! and the gradients of the LM head, of the last hidden states and of every parameter.

use crate::arch_parity::common::{config, random_model};
use recipes::arch::{AttnMask, HfModel};
use recipes::batching::examples::{Example, IGNORE};
use recipes::batching::head;
use recipes::batching::loss::sum_ce;
use recipes::batching::pack::{pack_rows, pad_batch, Batch};
use recipes::pref::logps::seq_logps;
use recipes::trainer::lm;
use serde_json::json;
use tch::{Kind, Tensor};

const PAD: i64 = 0;

/// A tiny Llama (vocab 97, hidden 32), random weights; `tied`: the head is the embedding.
fn model(tied: bool) -> HfModel {
    random_model(config("llama", json!({"tie_word_embeddings": tied})), 11)
}

/// Examples of lengths 5..=12 whose first `len / 3` positions are prompt (ignored labels).
fn examples() -> Vec<Example> {
    let lens: Vec<usize> = (0..6).map(|i| 5 + (i * 5) % 8).collect();
    super::util::prompt_examples(&lens, 0)
}

fn t2(v: &[i64], b: &Batch) -> Tensor {
    Tensor::from_slice(v).view([b.rows as i64, b.cols as i64])
}

/// max |a − b| / max(1, max |b|).
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[]);
    d / b.abs().max().double_value(&[]).max(1.0)
}

/// Every variable's gradient (name-sorted), then zeroes them.
fn take_grads(m: &HfModel) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> =
        m.vs.variables()
            .into_iter()
            .map(|(n, t)| {
                let g = t.grad();
                let g = if g.defined() {
                    g.copy()
                } else {
                    t.zeros_like()
                };
                (n, g)
            })
            .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, t) in m.vs.variables() {
        let mut g = t.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    v
}

fn assert_grads_close(a: &[(String, Tensor)], b: &[(String, Tensor)], what: &str) {
    assert_eq!(a.len(), b.len());
    for ((n, x), (_, y)) in a.iter().zip(b) {
        let r = rel(x, y);
        assert!(r < 1e-6, "{what}: gradient of {n} differs by {r:e}");
    }
}

/// The hidden states of batch `b`, detached into a leaf that requires grad.
fn hidden_leaf(m: &HfModel, b: &Batch, mask: AttnMask) -> Tensor {
    let h = m
        .model
        .hidden_states(&t2(&b.input_ids, b), &t2(&b.position_ids, b), mask)
        .unwrap();
    h.detach().set_requires_grad(true)
}

#[test]
fn sft_loss_and_head_gradients_match_full_logits() {
    let exs = examples();
    for tied in [false, true] {
        let m = model(tied);
        let w = m.model.lm_head_weight().shallow_clone();
        for packed in [false, true] {
            let b = if packed {
                pack_rows(&exs, 24, PAD).unwrap()
            } else {
                pad_batch(&exs, PAD, None)
            };
            let seg = t2(&b.segment_ids, &b);
            let mask = if packed {
                AttnMask::Segments(&seg)
            } else {
                AttnMask::Padding(&seg)
            };
            let h = hidden_leaf(&m, &b, mask);
            // Reference: full logits, summed cross-entropy, plain autograd.
            let full = sum_ce(&h.linear::<&Tensor>(&w, None), &t2(&b.labels, &b)).unwrap();
            full.backward();
            let (gh_ref, gw_ref) = (h.grad().copy(), w.grad().copy());
            let _ = h.grad().zero_();
            let _ = w.grad().zero_();
            let chunked = lm::target_ce(&m, &h, &b.labels, b.rows, b.cols).unwrap();
            let r = rel(&chunked, &full);
            assert!(
                r < 1e-6,
                "tied {tied} packed {packed}: loss {chunked} vs {full}"
            );
            chunked.backward();
            assert!(
                rel(&h.grad(), &gh_ref) < 1e-6,
                "tied {tied} packed {packed}: ∂/∂h"
            );
            assert!(
                rel(&w.grad(), &gw_ref) < 1e-6,
                "tied {tied} packed {packed}: ∂/∂W"
            );
            let _ = w.grad().zero_();
            if !packed {
                // A position that predicts an ignored label gets no gradient: row 2 (prompt
                // of 2 tokens), position 0.
                assert_eq!(h.grad().get(2).get(0).abs().max().double_value(&[]), 0.0);
            }
        }
    }
}

#[test]
fn sft_training_loss_gives_every_parameter_the_full_logits_gradient() {
    let exs = examples();
    let b = pad_batch(&exs, PAD, None);
    for tied in [false, true] {
        let m = model(tied);
        let seg = t2(&b.segment_ids, &b);
        let logits = m
            .forward(
                &t2(&b.input_ids, &b),
                &t2(&b.position_ids, &b),
                AttnMask::Padding(&seg),
            )
            .unwrap();
        let full = sum_ce(&logits, &t2(&b.labels, &b)).unwrap();
        (&full * 0.25).backward();
        let g_full = take_grads(&m);
        let chunked = lm::sum_loss(&m, &b).unwrap();
        assert!(
            rel(&chunked, &full) < 1e-6,
            "tied {tied}: {chunked} vs {full}"
        );
        // The trainer scales the summed loss: the injected gradient scales with it.
        (&chunked * 0.25).backward();
        assert_grads_close(&take_grads(&m), &g_full, &format!("tied {tied}"));
    }
}

#[test]
fn chunk_size_changes_only_rounding_and_a_given_size_is_bit_stable() {
    let m = model(false);
    let w = m.model.lm_head_weight().shallow_clone();
    let _rng = crate::common::torch_rng();
    tch::manual_seed(5);
    let h = Tensor::randn([37, 32], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let y = Tensor::randint(97, [37], (Kind::Int64, tch::Device::Cpu));
    let run = |chunk: usize| {
        let loss = head::sum_ce(&h, &w, &y, chunk).unwrap();
        loss.backward();
        let out = (loss.detach(), h.grad().copy(), w.grad().copy());
        let _ = h.grad().zero_();
        let _ = w.grad().zero_();
        out
    };
    let base = run(head::CHUNK_TOKENS);
    for chunk in [1, 4, 10, 36, 37] {
        let (l, gh, gw) = run(chunk);
        assert!(rel(&l, &base.0) < 1e-6, "chunk {chunk}: loss");
        assert!(rel(&gh, &base.1) < 1e-6, "chunk {chunk}: ∂/∂h");
        assert!(rel(&gw, &base.2) < 1e-6, "chunk {chunk}: ∂/∂W");
        let again = run(chunk);
        assert!(
            l.equal(&again.0) && gh.equal(&again.1) && gw.equal(&again.2),
            "chunk {chunk}: not bit-stable"
        );
    }
    // Without grad mode: the value, no graph.
    let v = tch::no_grad(|| head::sum_ce(&h, &w, &y, 4).unwrap());
    assert!(!v.requires_grad());
    assert!(rel(&v, &base.0) < 1e-6);
}

/// Today's per-token log-probs from full logits: `[n, T−1]`, 0 off target (the reference).
fn full_tok(logits: &Tensor, labels: &Tensor) -> Tensor {
    let t = logits.size()[1];
    let y = labels.narrow(1, 1, t - 1);
    let m = y.ne(IGNORE).to_kind(Kind::Float);
    logits
        .narrow(1, 0, t - 1)
        .to_kind(Kind::Float)
        .log_softmax(-1, Kind::Float)
        .gather(2, &y.clamp_min(0).unsqueeze(-1), false)
        .squeeze_dim(-1)
        * m
}

/// A loss that is not linear in the log-probs: DPO's on (row i, row k + i) plus NPO's k2-style
/// per-token term.
fn nonlinear_loss(sum: &Tensor, tok: &Tensor) -> Tensor {
    let k = sum.size()[0] / 2;
    let h = (sum.narrow(0, 0, k) - sum.narrow(0, k, k)) * 0.1;
    let dpo = -h.log_sigmoid().sum(Kind::Float);
    let k2 = (tok * 0.3).exp().sum(Kind::Float) * 0.01;
    dpo + k2
}

#[test]
fn sequence_logps_and_gradients_match_full_logits() {
    let exs = examples();
    let seqs: Vec<&Example> = exs.iter().collect();
    let b = pad_batch(&exs, PAD, None);
    for tied in [false, true] {
        let m = model(tied);
        let w = m.model.lm_head_weight().shallow_clone();
        // Head level: the gradient of the last hidden states and of W.
        let seg = t2(&b.segment_ids, &b);
        let h = hidden_leaf(&m, &b, AttnMask::Padding(&seg));
        let labels = t2(&b.labels, &b);
        let tok_ref = full_tok(&h.linear::<&Tensor>(&w, None), &labels);
        let loss_ref = nonlinear_loss(&tok_ref.sum_dim_intlist(1, false, Kind::Float), &tok_ref);
        loss_ref.backward();
        let (gh_ref, gw_ref) = (h.grad().copy(), w.grad().copy());
        let _ = h.grad().zero_();
        let _ = w.grad().zero_();
        let (keep, y) = head::target_rows(&b.labels, b.rows, b.cols, IGNORE);
        let keep = Tensor::from_slice(&keep);
        let hk = head::select_rows(&h, &keep).unwrap();
        let lp = head::token_logps(&hk, &w, &Tensor::from_slice(&y), 3).unwrap();
        let tok = Tensor::zeros(
            [b.rows as i64 * (b.cols as i64 - 1)],
            (Kind::Float, tch::Device::Cpu),
        )
        .index_add(0, &keep, &lp.logp)
        .view([b.rows as i64, b.cols as i64 - 1]);
        assert!(
            rel(&tok, &tok_ref.detach()) < 1e-6,
            "tied {tied}: per-token log-probs"
        );
        let loss = lp
            .attach(&nonlinear_loss(
                &tok.sum_dim_intlist(1, false, Kind::Float),
                &tok,
            ))
            .unwrap();
        assert!(
            rel(&loss, &loss_ref) < 1e-6,
            "tied {tied}: loss {loss} vs {loss_ref}"
        );
        loss.backward();
        assert!(rel(&h.grad(), &gh_ref) < 1e-6, "tied {tied}: ∂/∂h");
        assert!(rel(&w.grad(), &gw_ref) < 1e-6, "tied {tied}: ∂/∂W");
        let _ = w.grad().zero_();
        let _ = take_grads(&m);

        // Model level: `seq_logps` + `attach` against the full-logits loss, every parameter.
        let logits = m
            .forward(
                &t2(&b.input_ids, &b),
                &t2(&b.position_ids, &b),
                AttnMask::Padding(&seg),
            )
            .unwrap();
        let tok_full = full_tok(&logits, &labels);
        let sum_full = tok_full.sum_dim_intlist(1, false, Kind::Float);
        nonlinear_loss(&sum_full, &tok_full).backward();
        let g_full = take_grads(&m);
        let lp = seq_logps(&m, &seqs, PAD).unwrap();
        assert!(rel(&lp.sum, &sum_full.detach()) < 1e-6, "tied {tied}: sums");
        assert!(rel(&lp.tok, &tok_full.detach()) < 1e-6, "tied {tied}: tok");
        lp.attach(&nonlinear_loss(&lp.sum, &lp.tok))
            .unwrap()
            .backward();
        assert_grads_close(&take_grads(&m), &g_full, &format!("seq logps, tied {tied}"));
    }
}
