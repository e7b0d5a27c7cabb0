//! Packed rows (block-diagonal causal attention, positions restarting per segment) equal the
//! separate forwards of their sequences — what SFT packing relies on.

use super::common::*;
use recipes::arch::{positions_from_segments, AttnMask};
use serde_json::json;
use tch::Tensor;

#[test]
fn positions_restart_per_segment() {
    let seg = ids(&[&[0, 0, 0, 1, 1, 2], &[5, 5, 5, 5, 7, 7]]);
    let pos = positions_from_segments(&seg).unwrap();
    assert_eq!(
        Vec::<i64>::try_from(pos.view(-1)).unwrap(),
        vec![0, 1, 2, 0, 1, 0, 0, 1, 2, 3, 0, 1]
    );
}

#[test]
fn packed_row_equals_separate_forwards() {
    let cases = [
        config("llama", json!({})),
        config("qwen2", json!({"num_key_value_heads": 1})),
        // a sliding window shorter than the sequences
        config("mistral", json!({"sliding_window": 3, "head_dim": 16})),
    ];
    let a: &[i64] = &[5, 17, 3, 88, 41];
    let b: &[i64] = &[9, 2, 64, 64, 30, 71, 12];
    for (i, cfg) in cases.into_iter().enumerate() {
        let m = random_model(cfg, 7 + i as i64);
        let packed: Vec<i64> = a.iter().chain(b).copied().collect();
        let seg: Vec<i64> = [0i64; 5].iter().chain(&[1i64; 7]).copied().collect();
        let seg = ids(&[&seg]);
        let pos = positions_from_segments(&seg).unwrap();
        let p =
            tch::no_grad(|| m.forward(&ids(&[&packed]), &pos, AttnMask::Segments(&seg))).unwrap();
        let sa =
            tch::no_grad(|| m.forward(&ids(&[a]), &arange_pos(1, 5), AttnMask::Causal)).unwrap();
        let sb =
            tch::no_grad(|| m.forward(&ids(&[b]), &arange_pos(1, 7), AttnMask::Causal)).unwrap();
        let together = Tensor::cat(&[sa, sb], 1);
        let d = max_diff(&p, &together);
        eprintln!("packing case {i}: max |packed - separate| = {d:.3e}");
        assert!(d < 1e-5, "case {i}: packed differs from separate by {d}");
        // Without the segment mask the second sequence sees the first: the test can fail.
        let leak = tch::no_grad(|| m.forward(&ids(&[&packed]), &pos, AttnMask::Causal)).unwrap();
        assert!(max_diff(&leak, &together) > 1e-3);
    }
}

#[test]
fn padding_matches_unpadded_rows() {
    let m = random_model(config("llama", json!({})), 3);
    let a: &[i64] = &[5, 17, 3, 88, 41, 6];
    let alone =
        tch::no_grad(|| m.forward(&ids(&[a]), &arange_pos(1, 6), AttnMask::Causal)).unwrap();
    // right padding and left padding, positions counted over real tokens
    let right = ids(&[&[5, 17, 3, 88, 41, 6, 0, 0]]);
    let rmask = ids(&[&[1, 1, 1, 1, 1, 1, 0, 0]]);
    let r =
        tch::no_grad(|| m.forward(&right, &arange_pos(1, 8), AttnMask::Padding(&rmask))).unwrap();
    assert!(max_diff(&r.narrow(1, 0, 6), &alone) < 1e-5);
    let left = ids(&[&[0, 0, 5, 17, 3, 88, 41, 6]]);
    let lmask = ids(&[&[0, 0, 1, 1, 1, 1, 1, 1]]);
    let lpos = ids(&[&[0, 0, 0, 1, 2, 3, 4, 5]]);
    let l = tch::no_grad(|| m.forward(&left, &lpos, AttnMask::Padding(&lmask))).unwrap();
    assert!(max_diff(&l.narrow(1, 2, 6), &alone) < 1e-5);
    assert!(
        bool::try_from(l.isfinite().all()).unwrap(),
        "padding rows must stay finite"
    );
}

/// `lm::sum_loss` (LM head on target positions only) equals `sum_ce` of the full logits, in
/// value and in gradient, on a padded batch with prompt positions masked out (GQA: 4 heads over
/// 2 k/v heads, so the `enable_gqa` attention path is the one trained through).
#[test]
fn target_only_loss_equals_full_logits_loss() {
    use recipes::batching::examples::IGNORE;
    use recipes::batching::loss::sum_ce;
    use recipes::batching::pack::Batch;
    use recipes::trainer::lm;
    let m = random_model(config("llama", json!({"tie_word_embeddings": true})), 11);
    let (rows, cols) = (2usize, 6usize);
    let input_ids = vec![5, 17, 3, 88, 41, 6, 9, 2, 64, 30, 0, 0];
    let labels = vec![
        IGNORE, IGNORE, IGNORE, 88, 41, 6, //
        IGNORE, IGNORE, 64, 30, IGNORE, IGNORE,
    ];
    let batch = Batch {
        rows,
        cols,
        input_ids,
        labels,
        position_ids: vec![0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5],
        segment_ids: vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0],
        n_target_tokens: 5,
        packed: false,
    };
    let grads = |loss: &Tensor| -> Vec<Tensor> {
        let mut v: Vec<_> = m.vs.variables().into_iter().collect();
        for (_, t) in v.iter_mut() {
            t.zero_grad();
        }
        loss.backward();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.into_iter().map(|(_, t)| t.grad().copy()).collect()
    };
    let fast = lm::sum_loss(&m, &batch).unwrap();
    let (logits, lab) = lm::logits(&m, &batch).unwrap();
    let full = sum_ce(&logits, &lab).unwrap();
    let (f, r) = (fast.double_value(&[]), full.double_value(&[]));
    assert!((f - r).abs() < 1e-5 * r.abs().max(1.0), "{f} vs {r}");
    let (gf, gr) = (grads(&fast), grads(&full));
    for (a, b) in gf.iter().zip(&gr) {
        let d = max_diff(a, b);
        assert!(d < 1e-5, "gradients differ by {d}");
    }
    assert!(gr.iter().any(|g| max_diff(g, &g.zeros_like()) > 1e-3));
}

/// What the CUDA path for right-padded rows relies on (`arch::for_padded`: plain causal SDPA
/// instead of the padding mask): on rows whose padding comes last, `Causal` and `Padding` give
/// the real positions the same outputs and the same parameter gradients (GQA and a sliding
/// window included); `right_padded` tells such rows from left-padded or holed ones.
#[test]
fn right_padded_rows_read_the_same_under_plain_causal_attention() {
    use recipes::arch::{for_padded, right_padded};
    assert!(right_padded(&[1, 1, 0, 0, 1, 1, 1, 1], 4));
    assert!(!right_padded(&[0, 1, 1, 1], 4), "left padding");
    assert!(!right_padded(&[1, 0, 1, 1], 4), "a hole");
    assert!(right_padded(&[], 0));
    let keep = ids(&[&[1, 1, 1, 1, 1, 0, 0, 0], &[1, 1, 1, 1, 1, 1, 1, 1]]);
    assert!(
        matches!(for_padded(&keep, true), AttnMask::Padding(_)),
        "CPU keeps the mask"
    );
    let cases = [
        config("llama", json!({})),
        config("qwen2", json!({"num_key_value_heads": 1})),
        config("mistral", json!({"sliding_window": 3, "head_dim": 16})),
    ];
    let x = ids(&[&[5, 17, 3, 88, 41, 0, 0, 0], &[9, 2, 64, 64, 30, 71, 12, 4]]);
    let pos = arange_pos(2, 8);
    for (i, cfg) in cases.into_iter().enumerate() {
        let m = random_model(cfg, 21 + i as i64);
        let out = |mask: AttnMask| -> (Tensor, Vec<Tensor>) {
            for (_, v) in m.vs.variables() {
                let mut g = v.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            let y = m.forward(&x, &pos, mask).unwrap();
            let real = keep.unsqueeze(-1).to_kind(y.kind());
            (&y * &real).sum(tch::Kind::Float).backward();
            let vars: std::collections::BTreeMap<_, _> = m.vs.variables().into_iter().collect();
            let grads = vars.into_values().map(|v| v.grad().copy()).collect();
            (y.detach(), grads)
        };
        let (yp, gp) = out(AttnMask::Padding(&keep));
        let (yc, gc) = out(AttnMask::Causal);
        let d = max_diff_valid(&yp, &yc, &keep);
        let dg = gp
            .iter()
            .zip(&gc)
            .map(|(a, b)| max_diff(a, b))
            .fold(0.0, f64::max);
        eprintln!("right-padded case {i}: outputs {d:.2e}, gradients {dg:.2e}");
        assert!(d < 1e-5 && dg < 1e-5, "case {i}: {d} / {dg}");
    }
}
