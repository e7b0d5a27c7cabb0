//! The decoder against transformers' `generate` (greedy, float32) on the tiny checkpoints of
//! make_tiny_hf.py: Llama, tied Llama with biases, Qwen2 with q/k/v biases and a sliding window
//! on one layer, Mistral with a window (6) much shorter than prompt + generation (3–9 + 24).
//! Prompts are decoded together (left-padded, batch 4) with the KV cache, and must give
//! transformers' tokens, each of which it generated alone.

use crate::arch_parity::common::{fixtures, run_python, MODELS};
use recipes::arch::{HfModel, LoadOptions};
use recipes::generate::decode::{decode, DecodeOptions, Request};
use recipes::generate::sample::Sampling;

const NEW: usize = 24;

#[test]
fn greedy_decoding_matches_transformers_generate() {
    let prompts: Vec<Vec<i64>> = vec![
        vec![17, 99, 3],
        vec![5, 200, 31, 44, 12, 150, 7, 81, 9],
        vec![250, 1],
        vec![64, 128, 32, 16, 8],
    ];
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("prompts.json");
    let out = dir.path().join("out.json");
    let spec_json =
        serde_json::json!({"models": MODELS, "prompts": prompts, "max_new_tokens": NEW});
    std::fs::write(&spec, spec_json.to_string()).unwrap();
    run_python("hf_generate_ids.py", &[fixtures(), &spec, &out]);
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let requests: Vec<Request> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| Request {
            prompt: p.clone(),
            record: i as u64,
            sample: 0,
        })
        .collect();
    let opts = DecodeOptions {
        max_new_tokens: NEW,
        stop_ids: vec![],
        pad_id: 0,
        batch_size: 4,
        sampling: Sampling::greedy(),
        seed: 0,
        logprobs: false,
        cache: true,
    };
    for name in MODELS {
        let m = HfModel::load(&fixtures().join(name), name, &LoadOptions::default()).unwrap();
        let got = decode(&m, &requests, &opts, None, |_| {}).unwrap();
        let got: Vec<Vec<i64>> = got.into_iter().map(|c| c.tokens).collect();
        let want: Vec<Vec<i64>> = serde_json::from_value(want[*name].clone()).unwrap();
        assert_eq!(got, want, "{name}");
    }
}
