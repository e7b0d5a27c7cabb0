//! Packed rows (block-diagonal causal attention, positions restarting per segment) equal the
//! separate forwards of their sequences — what SFT packing relies on.

use crate::common::*;
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
