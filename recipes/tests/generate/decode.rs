//! The KV-cached decoder: greedy with the cache gives the tokens of the cache-free decoder
//! (Llama, Qwen2 with q/k/v biases, Mistral with a sliding window shorter than the generation,
//! tied embeddings), batched = one by one, the finish reasons, stop checks and log-probs; and
//! sampling gives the same completions at batch size 1 and 8.

use crate::arch_parity::common::{config, random_model};
use recipes::arch::HfModel;
use recipes::generate::decode::{decode, Completion, DecodeOptions, Finish, Request};
use recipes::generate::sample::Sampling;
use serde_json::json;

fn requests(lens: &[usize], n: u64) -> Vec<Request> {
    lens.iter()
        .enumerate()
        .flat_map(|(i, &len)| {
            (0..n).map(move |j| Request {
                prompt: (0..len as i64)
                    .map(|k| 3 + (k * 11 + i as i64 * 5) % 90)
                    .collect(),
                record: i as u64,
                sample: j,
            })
        })
        .collect()
}

fn opts(max_new: usize, batch: usize, cache: bool) -> DecodeOptions {
    DecodeOptions {
        max_new_tokens: max_new,
        stop_ids: vec![],
        pad_id: 0,
        batch_size: batch,
        sampling: Sampling::greedy(),
        seed: 0,
        logprobs: false,
        cache,
    }
}

fn models() -> Vec<(&'static str, HfModel)> {
    vec![
        ("llama", random_model(config("llama", json!({})), 1)),
        (
            "llama tied",
            random_model(config("llama", json!({"tie_word_embeddings": true})), 2),
        ),
        (
            "qwen2 (biases)",
            random_model(config("qwen2", json!({})), 3),
        ),
        (
            "mistral (window 4)",
            random_model(config("mistral", json!({"sliding_window": 4})), 4),
        ),
    ]
}

fn tokens(c: &[Completion]) -> Vec<Vec<i64>> {
    c.iter().map(|c| c.tokens.clone()).collect()
}

#[test]
fn greedy_with_the_cache_equals_greedy_without_it_token_for_token() {
    let reqs = requests(&[5, 1, 9, 3, 12, 7], 1);
    for (name, m) in models() {
        assert!(
            m.config.qkv_bias == name.starts_with("qwen2"),
            "{name}: the fixture has the biases it claims"
        );
        let with = decode(&m, &reqs, &opts(16, 4, true), None, |_| {}).unwrap();
        let without = decode(&m, &reqs, &opts(16, 4, false), None, |_| {}).unwrap();
        assert_eq!(tokens(&with), tokens(&without), "{name}");
        let one = decode(&m, &reqs, &opts(16, 1, true), None, |_| {}).unwrap();
        assert_eq!(tokens(&with), tokens(&one), "{name}: batched = one by one");
        // Random weights: the completions are not degenerate (the check would be vacuous).
        let distinct: std::collections::BTreeSet<i64> =
            with.iter().flat_map(|c| c.tokens.clone()).collect();
        assert!(distinct.len() > 5, "{name}: {distinct:?}");
        assert!(with
            .iter()
            .all(|c| c.tokens.len() == 16 && c.finish == Finish::Length));
    }
}

#[test]
fn finish_reasons_stop_tokens_stop_checks_and_the_position_limit() {
    let m = random_model(config("llama", json!({"max_position_embeddings": 20})), 5);
    let reqs = requests(&[4, 17, 20], 1);
    let free = decode(&m, &reqs, &opts(8, 3, true), None, |_| {}).unwrap();
    assert_eq!(free[0].finish, Finish::Length);
    assert_eq!(free[1].tokens.len(), 3, "17 + 3 = the position limit 20");
    assert_eq!(free[1].finish, Finish::PositionLimit);
    assert!(free[2].tokens.is_empty());
    assert_eq!(free[2].finish, Finish::PositionLimit);
    // The third token of the first completion as a stop token: it ends there, not kept.
    let stop = free[0].tokens[2];
    let mut o = opts(8, 3, true);
    o.stop_ids = vec![stop];
    let stopped = decode(&m, &reqs[..1], &o, None, |_| {}).unwrap();
    let first = free[0].tokens.iter().position(|&t| t == stop).unwrap();
    assert_eq!(stopped[0].tokens, free[0].tokens[..first]);
    assert_eq!(stopped[0].finish, Finish::Stop);
    // A stop check (stop strings) ends after the token that satisfied it, kept.
    let check = |ids: &[i64]| ids.len() == 2;
    let checked = decode(&m, &reqs[..1], &opts(8, 1, true), Some(&check), |_| {}).unwrap();
    assert_eq!(checked[0].tokens, free[0].tokens[..2]);
    assert_eq!(checked[0].finish, Finish::Stop);
    // Longer than the limit: an error naming both numbers.
    let e = decode(&m, &requests(&[21], 1), &opts(8, 1, true), None, |_| {}).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("21 tokens") && msg.contains("(20)"), "{msg}");
}

#[test]
fn logprobs_are_the_models_log_softmax_at_the_chosen_tokens() {
    let m = random_model(config("llama", json!({})), 6);
    let reqs = requests(&[6], 1);
    let mut o = opts(5, 1, true);
    o.logprobs = true;
    let c = &decode(&m, &reqs, &o, None, |_| {}).unwrap()[0];
    assert_eq!(c.logprobs.len(), 5);
    // Recompute with full forwards over prompt + tokens.
    let mut seq = reqs[0].prompt.clone();
    for (k, &t) in c.tokens.iter().enumerate() {
        let n = seq.len() as i64;
        let ids = tch::Tensor::from_slice(&seq).view([1, n]);
        let pos = tch::Tensor::arange(n, (tch::Kind::Int64, tch::Device::Cpu)).view([1, n]);
        let logits = tch::no_grad(|| m.forward(&ids, &pos, recipes::arch::AttnMask::Causal))
            .unwrap()
            .select(1, n - 1)
            .log_softmax(-1, tch::Kind::Float);
        let want = logits.double_value(&[0, t]);
        assert!(
            (want - c.logprobs[k]).abs() < 1e-5,
            "token {k}: {want} vs {}",
            c.logprobs[k]
        );
        assert!(c.logprobs[k] <= 0.0);
        seq.push(t);
    }
}

#[test]
fn sampling_is_the_same_at_batch_size_1_and_8_and_seeded() {
    let m = random_model(config("qwen2", json!({})), 7);
    let reqs = requests(&[3, 8, 5, 11, 2], 3);
    let mut o = opts(12, 1, true);
    o.sampling = Sampling {
        temperature: 0.9,
        top_k: 20,
        top_p: 0.95,
    };
    o.seed = 11;
    let one = decode(&m, &reqs, &o, None, |_| {}).unwrap();
    o.batch_size = 8;
    let eight = decode(&m, &reqs, &o, None, |_| {}).unwrap();
    assert_eq!(tokens(&one), tokens(&eight));
    // The three samples of a prompt differ (their streams do), and another seed changes them.
    assert!(one[0].tokens != one[1].tokens || one[1].tokens != one[2].tokens);
    o.seed = 12;
    let other = decode(&m, &reqs, &o, None, |_| {}).unwrap();
    assert_ne!(tokens(&one), tokens(&other));
    // Temperature → 0 is greedy.
    o.sampling = Sampling {
        temperature: 1e-6,
        top_k: 0,
        top_p: 1.0,
    };
    let cold = decode(&m, &reqs, &o, None, |_| {}).unwrap();
    let greedy = decode(&m, &reqs, &opts(12, 8, true), None, |_| {}).unwrap();
    assert_eq!(tokens(&cold), tokens(&greedy));
}
