//! SmolLM2-135M-Instruct, when it is prepared (`examples/models/smollm2-135m-instruct`, which
//! `make test` prepares with scripts/prepare-smollm2.sh; without it the test says SKIPPED): greedy chat
//! completions of the `generate` node equal transformers' `generate` token for token (float32,
//! tests/python/hf_generate.py), and the decoder gives the same tokens with and without its KV
//! cache.

use crate::arch_parity::common::{repo_root, run_python};
use crate::eval::common::{dataset, i, r, run, s, tmp};
use dsl::Value;
use recipes::arch::{HfModel, LoadOptions};
use recipes::generate::decode::{decode, DecodeOptions, Request};
use recipes::generate::sample::Sampling;
use recipes::kinds::generate::Generate;

const NEW: usize = 48;

const PROMPTS: &[&str] = &[
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Give me three tips for learning to cook.",
    "Explain what a prime number is in one sentence.",
    "How many legs does a spider have?",
];

#[test]
fn smollm2_greedy_chat_completions_match_transformers_and_the_cache_free_decoder() {
    let dir = repo_root().join("examples/models/smollm2-135m-instruct");
    if !dir.join("config.json").is_file() {
        eprintln!(
            "SKIPPED: {} is not prepared (see the README's SmolLM2 section)",
            dir.display()
        );
        return;
    }
    let work = tmp();
    let spec = work.join("prompts.json");
    let out = work.join("hf.json");
    std::fs::write(&spec, serde_json::to_string(PROMPTS).unwrap()).unwrap();
    let n = NEW.to_string();
    run_python(
        "hf_generate.py",
        &[
            &dir,
            &spec,
            &out,
            "--max-new-tokens".as_ref(),
            n.as_ref(),
            "--chat".as_ref(),
            "--warmup-batches".as_ref(),
            "0".as_ref(),
        ],
    );
    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let want: Vec<Vec<i64>> = serde_json::from_value(hf["new_ids"].clone()).unwrap();
    let prompt_ids: Vec<Vec<i64>> = serde_json::from_value(hf["prompt_ids"].clone()).unwrap();
    // The node: chat rendering, tokenisation, decoding, EOS handling.
    let lines: Vec<serde_json::Value> = PROMPTS
        .iter()
        .map(|p| serde_json::json!({"prompt": p, "completion": "n/a"}))
        .collect();
    let data = dataset(&work, "p.jsonl", "prompt-completion", &lines);
    let params = [
        ("model", r("smol")),
        ("data", r("p")),
        ("max-new-tokens", i(NEW as i64)),
        ("temperature", Value::Float(0.0)),
        ("use-chat-template", Value::Bool(true)),
        ("dtype", s("f32")),
        ("batch-size", i(5)),
    ];
    let (_, art) = run(
        &Generate,
        &work,
        &params,
        &[("model", "smol", &dir), ("data", "p", &data)],
    )
    .unwrap();
    let got: Vec<Vec<i64>> = std::fs::read_to_string(art.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            serde_json::from_value(v["token_ids"][0].clone()).unwrap()
        })
        .collect();
    assert_eq!(got, want, "the generate node against transformers");
    // The decoder on transformers' prompt ids, with and without the cache.
    let m = HfModel::load(&dir, "smol", &LoadOptions::default()).unwrap();
    let reqs: Vec<Request> = prompt_ids
        .iter()
        .enumerate()
        .map(|(k, p)| Request {
            prompt: p.clone(),
            record: k as u64,
            sample: 0,
        })
        .collect();
    let mut opts = DecodeOptions {
        max_new_tokens: NEW,
        stop_ids: vec![2],
        pad_id: 2,
        batch_size: 5,
        sampling: Sampling::greedy(),
        seed: 0,
        logprobs: false,
        cache: true,
    };
    let cached = decode(&m, &reqs, &opts, None, |_| {}).unwrap();
    opts.cache = false;
    let free = decode(&m, &reqs, &opts, None, |_| {}).unwrap();
    let toks = |c: &[recipes::generate::decode::Completion]| -> Vec<Vec<i64>> {
        c.iter().map(|c| c.tokens.clone()).collect()
    };
    assert_eq!(toks(&cached), toks(&free), "cache against no cache");
    assert_eq!(toks(&cached), want);
    assert!(
        want.iter().map(Vec::len).sum::<usize>() > 5 * 10,
        "{want:?}"
    );
}
