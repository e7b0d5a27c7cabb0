//! Packing: CPT blocks with the remainder carried; SFT rows with restarting positions and
//! block-diagonal segments; loss normalisation over the whole step.

use recipes::batching::examples::{Example, IGNORE};
use recipes::batching::loss::sum_ce;
use recipes::batching::pack::{cpt_batch, pack_rows, pad_batch, CptPacker, LossNorm};
use tch::{Kind, Tensor};

fn ex(ids: &[i64], first_target: usize) -> Example {
    let labels = ids
        .iter()
        .enumerate()
        .map(|(i, &t)| if i >= first_target { t } else { IGNORE })
        .collect();
    Example {
        input_ids: ids.to_vec(),
        labels,
    }
}

#[test]
fn cpt_blocks_carry_the_remainder() {
    let mut p = CptPacker::new(4);
    p.push(&[1, 2, 3, 0]); // documents end with EOS = 0
    assert_eq!(p.next_block(), Some(vec![1, 2, 3, 0]));
    assert_eq!(p.next_block(), None);
    p.push(&[4, 5, 0]);
    assert_eq!(p.next_block(), None, "3 tokens wait for the next document");
    p.push(&[6, 7, 8, 9, 10, 0]);
    assert_eq!(
        p.next_block(),
        Some(vec![4, 5, 0, 6]),
        "crosses the document boundary"
    );
    assert_eq!(p.next_block(), Some(vec![7, 8, 9, 10]));
    assert_eq!(p.pending(), 1);

    // Resuming from the saved state emits the same blocks.
    let mut q = CptPacker::from_state(p.state());
    for doc in [[11i64, 12, 0], [13, 14, 0]] {
        p.push(&doc);
        q.push(&doc);
    }
    let (a, b): (Vec<_>, Vec<_>) = (
        std::iter::from_fn(|| p.next_block()).collect(),
        std::iter::from_fn(|| q.next_block()).collect(),
    );
    assert_eq!(a, vec![vec![0, 11, 12, 0]]);
    assert_eq!(a, b);
    assert_eq!(p.finish(), Some(vec![13, 14, 0]), "the tail is not dropped");
    assert_eq!(p.finish(), None);

    let batch = cpt_batch(&[vec![1, 2, 3, 4], vec![5, 6]], 4, 99);
    assert_eq!(batch.input_ids, vec![1, 2, 3, 4, 5, 6, 99, 99]);
    assert_eq!(batch.labels, vec![1, 2, 3, 4, 5, 6, IGNORE, IGNORE]);
    assert_eq!(batch.segment_ids, vec![1, 1, 1, 1, 1, 1, 0, 0]);
    assert_eq!(batch.position_ids[..6], [0, 1, 2, 3, 0, 1]);
    assert_eq!(
        batch.n_target_tokens,
        3 + 1,
        "labels[0] of each row is never predicted"
    );
    assert!(!batch.packed);
}

#[test]
fn sft_packing_restarts_positions_and_isolates_examples() {
    let a = ex(&[10, 11, 12], 1);
    let b = ex(&[20, 21, 22, 23, 24], 2);
    let c = ex(&[30, 31], 0);
    let d = ex(&[40, 41, 42, 43], 1);
    let batch = pack_rows(&[a, b, c, d], 8, 0).unwrap();
    // First fit: row 0 = a + b, row 1 = c + d (c does not fit in row 0: 8 used).
    assert_eq!((batch.rows, batch.cols), (2, 8));
    assert_eq!(
        batch.input_ids,
        vec![10, 11, 12, 20, 21, 22, 23, 24, 30, 31, 40, 41, 42, 43, 0, 0]
    );
    assert_eq!(
        batch.position_ids,
        vec![0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 0, 1, 2, 3, 0, 1]
    );
    assert_eq!(
        batch.segment_ids,
        vec![1, 1, 1, 2, 2, 2, 2, 2, 1, 1, 2, 2, 2, 2, 0, 0]
    );
    let n = IGNORE;
    assert_eq!(
        batch.labels,
        vec![n, 11, 12, n, n, 22, 23, 24, n, 31, n, 41, 42, 43, n, n],
        "the first label of each example is ignored, padding too"
    );
    assert_eq!(batch.n_target_tokens, 2 + 3 + 1 + 3);
    assert!(batch.packed);
    // Block-diagonal causal attention.
    assert!(batch.allowed(0, 2, 0));
    assert!(!batch.allowed(0, 3, 2), "b does not see a");
    assert!(batch.allowed(0, 7, 3));
    assert!(!batch.allowed(0, 3, 4), "causal");
    assert!(!batch.allowed(1, 6, 6), "padding attends nowhere");
    assert!(
        batch.allowed(1, 5, 2) && !batch.allowed(1, 2, 1),
        "row 1: d sees d, not c"
    );
    assert_eq!(batch.attention_mask()[14..], [0, 0]);

    assert!(pack_rows(&[ex(&[1; 9], 0)], 8, 0).is_err());
}

#[test]
fn padding_batch() {
    let batch = pad_batch(&[ex(&[1, 2], 1), ex(&[3, 4, 5, 6], 2)], 7, Some(5));
    assert_eq!(batch.cols, 5);
    assert_eq!(batch.input_ids, vec![1, 2, 7, 7, 7, 3, 4, 5, 6, 7]);
    assert_eq!(
        batch.labels,
        vec![IGNORE, 2, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE, 5, 6, IGNORE]
    );
    assert_eq!(batch.attention_mask(), vec![1, 1, 0, 0, 0, 1, 1, 1, 1, 0]);
    assert_eq!(batch.n_target_tokens, 3);
    assert!(!batch.packed);
}

/// Σ micro-batch sums / total targets of the step == the token mean over the union; a mean of
/// per-micro-batch means differs when micro-batches have different target counts.
#[test]
fn loss_normalisation_over_accumulated_micro_batches() {
    let _rng = crate::common::torch_rng();
    tch::manual_seed(3);
    let vocab = 11;
    let m1 = pad_batch(&[ex(&[1, 2, 3, 4, 5], 1)], 0, None); // 4 targets
    let m2 = pad_batch(&[ex(&[6, 7, 8], 2)], 0, None); // 1 target
    let norm = LossNorm::for_step(&[m1.clone(), m2.clone()]);
    assert_eq!(norm.total_targets, 5);
    let mut sums = Vec::new();
    let mut per_token = Vec::new();
    for m in [&m1, &m2] {
        let logits = Tensor::randn([1, m.cols as i64, vocab], (Kind::Float, tch::Device::Cpu));
        let labels = Tensor::from_slice(&m.labels).reshape([1, m.cols as i64]);
        let s = sum_ce(&logits, &labels).unwrap().double_value(&[]);
        // Reference: explicit shifted per-token CE.
        let lsm = logits.log_softmax(-1, Kind::Float);
        let mut manual = 0.0;
        for t in 1..m.cols {
            let y = m.labels[t];
            if y != IGNORE {
                let v = -lsm.double_value(&[0, t as i64 - 1, y]);
                manual += v;
                per_token.push(v);
            }
        }
        assert!((s - manual).abs() < 1e-5, "{s} vs {manual}");
        sums.push(s);
    }
    let step = sums.iter().sum::<f64>() * norm.scale();
    let mean = per_token.iter().sum::<f64>() / per_token.len() as f64;
    assert!((step - mean).abs() < 1e-6);
    let mean_of_means = (sums[0] / 4.0 + sums[1] / 1.0) / 2.0;
    assert!(
        (step - mean_of_means).abs() > 1e-4,
        "the two normalisations differ here"
    );
}
