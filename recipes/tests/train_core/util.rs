//! Shared helpers: fixtures and a small tokenizer with the special tokens the templates use.

use std::path::PathBuf;
use tokenizers::Tokenizer;

pub fn fixture(name: &str) -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/train")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

pub const SPECIALS: &[&str] = &[
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|pad|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
];

/// A byte-level BPE trained on a few sentences, special tokens at ids 0..8.
pub fn tokenizer() -> Tokenizer {
    let texts = [
        "What is 2+2? 4. Hello there, how are you? Be brief.",
        "system user assistant Continue: a b c Say twice é é",
        "the quick brown fox jumps over the lazy dog",
    ];
    let specials: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    recipes::tok::train_bpe(
        texts.iter().cycle().take(30).map(|s| s.to_string()),
        400,
        0,
        &specials,
    )
    .unwrap()
}

pub fn id(tok: &Tokenizer, t: &str) -> i64 {
    tok.token_to_id(t).unwrap() as i64
}

/// Decodes ids keeping special tokens.
pub fn decode(tok: &Tokenizer, ids: &[i64]) -> String {
    let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    tok.decode(&ids, false).unwrap()
}

/// A `StageCtx` for `stage` with `params` (others defaulted) and `inputs` (param path →
/// (node, artifact dir)).
pub fn ctx(
    stage: &dyn recipes::Stage,
    params: &[(&str, dsl::Value)],
    inputs: &[(&str, &str, &std::path::Path)],
    out: &std::path::Path,
) -> recipes::StageCtx {
    crate::common::stage_ctx(stage, "mix", params, inputs, out, out)
}

/// `lens.len()` examples of token ids in 1..=96 (varied by `salt`), the first third of each a
/// prompt (labels ignored): SFT-shaped batches for the LM-head and checkpointing tests.
pub fn prompt_examples(lens: &[usize], salt: usize) -> Vec<recipes::batching::examples::Example> {
    lens.iter()
        .enumerate()
        .map(|(i, &len)| {
            let input_ids: Vec<i64> = (0..len)
                .map(|j| 1 + ((i * 31 + j * 17 + salt * 5) % 96) as i64)
                .collect();
            let labels = input_ids
                .iter()
                .enumerate()
                .map(|(j, &x)| {
                    if j < len / 3 {
                        recipes::batching::examples::IGNORE
                    } else {
                        x
                    }
                })
                .collect();
            recipes::batching::examples::Example { input_ids, labels }
        })
        .collect()
}
