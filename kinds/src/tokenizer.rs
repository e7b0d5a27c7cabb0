//! `tokenizer`: exactly one of three sources.
//!
//! ```kdl
//! tokenizer tok path="tokenizers/smol"                 // a tokenizer.json or a directory holding one
//! tokenizer tok from=base                              // the tokenizer files of a model node
//! tokenizer tok vocab-size=8000 { data corpus; data chat }   // a byte-level BPE trained here
//! ```
//!
//! Training reads the texts of the `data` datasets (text; message contents; prompt +
//! completion; prompt + chosen + rejected) and learns merges that occur at least
//! `min-frequency` times; `special-tokens` get ids 0..n in the order given, and `vocab-size`
//! must leave room for the 256 byte tokens besides them. `min-frequency` and `special-tokens`
//! apply only when training. `eos-token` overrides the end-of-sequence token (default
//! `<|endoftext|>` when the vocabulary has it); `chat-template` sets the chat template (default
//! when training: ChatML when the vocabulary has `<|im_start|>`/`<|im_end|>`).

use crate::params::{Input, ParamSet, PathParam};
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};

/// Special tokens of a trained tokenizer unless `special-tokens` says otherwise.
pub const DEFAULT_SPECIALS: &[&str] = &["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"];

/// Parameters that only apply when training.
pub const TRAIN_ONLY: &[&str] = &["min-frequency", "special-tokens"];

crate::params! {
    /// Parameters of `tokenizer`.
    pub struct Params {
        path: Option<PathParam> = ParamSpec::new("path", ParamType::Path).optional()
            .doc("a tokenizer.json file or a directory holding one (with tokenizer_config.json, chat_template.jinja)"),
        from: Option<Input> = ParamSpec::new("from", ParamType::Ref(&["model"])).optional()
            .doc("use the tokenizer files of this model node"),
        vocab_size: Option<usize> = ParamSpec::new("vocab-size", ParamType::Int { min: Some(1), max: Some(1 << 24) }).optional()
            .doc("train a byte-level BPE of this many tokens (with `data` children)"),
        data: Vec<Input> = ParamSpec::new("data", ParamType::Ref(&["dataset"])).optional().repeated()
            .doc("a dataset to train on; repeat the child for several"),
        min_frequency: u64 = ParamSpec::new("min-frequency", ParamType::Int { min: Some(0), max: None })
            .default(Value::Int(2))
            .doc("training: minimum pair frequency for a merge"),
        special_tokens: Vec<String> = ParamSpec::new("special-tokens", ParamType::List(Box::new(ParamType::Str)))
            .default(Value::List(DEFAULT_SPECIALS.iter().map(|s| Value::Str(s.to_string())).collect()))
            .doc("training: special tokens, ids 0..n in this order"),
        chat_template: Option<PathParam> = ParamSpec::new("chat-template", ParamType::Path).optional()
            .doc("a .jinja file setting the chat template"),
        eos_token: Option<String> = ParamSpec::new("eos-token", ParamType::Str).optional()
            .doc("end-of-sequence token (default <|endoftext|> when present)"),
    }
}

/// The `tokenizer` kind's declaration.
pub fn schema() -> KindSchema {
    KindSchema::new("tokenizer", 1, "tokenizer")
        .doc("A tokenizer in Hugging Face layout: loaded from `path`, taken `from` a model, or a byte-level BPE trained on datasets.")
        .params(Params::specs())
        .check(check)
}

fn data_count(v: Option<&Value>) -> usize {
    match v {
        Some(Value::List(l)) => l.len(),
        Some(Value::Ref(_)) => 1,
        _ => 0,
    }
}

const HINT: &str =
    "use one of: `path=\"dir/or/tokenizer.json\"`, `from=MODEL`, or `vocab-size=N { data DATASET }`";

/// Exactly one source: `path`, `from`, or `vocab-size` + at least one `data`; a vocabulary
/// of at least 256 bytes + the special tokens; training-only parameters only when training.
pub fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    let set = |k: &str| !matches!(n.params.get(k), None | Some(Value::Null));
    let ndata = data_count(n.params.get("data"));
    let train = set("vocab-size") || ndata > 0;
    let mut issues = Vec::new();
    let modes: Vec<&str> = [
        ("path", set("path")),
        ("from", set("from")),
        ("vocab-size", train),
    ]
    .into_iter()
    .filter(|(_, on)| *on)
    .map(|(k, _)| k)
    .collect();
    match modes.len() {
        0 => issues.push(ParamIssue::new(
            None,
            "a tokenizer needs a source: `path`, `from`, or `vocab-size` with `data` to train one"
                .into(),
            Some(HINT),
        )),
        1 => {}
        _ => {
            let p = if modes[1] == "vocab-size" && !set("vocab-size") {
                "data"
            } else {
                modes[1]
            };
            issues.push(ParamIssue::new(
                Some(p),
                format!(
                    "`{}` and `{}` are exclusive: a tokenizer has one source",
                    modes[0], modes[1]
                ),
                Some(HINT),
            ));
        }
    }
    if modes.len() == 1 && train {
        check_training(n, ndata, &mut issues);
    }
    if modes.len() == 1 && !train {
        for p in TRAIN_ONLY {
            if n.param_locs.contains_key(*p) {
                issues.push(ParamIssue::new(
                    Some(p),
                    format!("`{p}` applies only when training a tokenizer"),
                    Some("remove it, or train with `vocab-size` and `data`"),
                ));
            }
        }
    }
    issues
}

/// Training mode: `vocab-size` and `data` together, and `vocab-size ≥ 256 + |special-tokens|`.
fn check_training(n: &NodeDecl, ndata: usize, issues: &mut Vec<ParamIssue>) {
    let set = |k: &str| !matches!(n.params.get(k), None | Some(Value::Null));
    if !set("vocab-size") {
        issues.push(ParamIssue::new(
            Some("data"),
            "training a tokenizer needs `vocab-size`".into(),
            Some("e.g. `tokenizer tok vocab-size=8000 { data corpus }`"),
        ));
    } else if ndata == 0 {
        issues.push(ParamIssue::new(
            Some("vocab-size"),
            "training a tokenizer needs at least one `data` child".into(),
            Some("e.g. `tokenizer tok vocab-size=8000 { data corpus }`"),
        ));
    } else {
        let nspecial = n
            .params
            .get("special-tokens")
            .and_then(|v| v.as_list())
            .map_or(0, |l| l.len());
        let v = n
            .params
            .get("vocab-size")
            .and_then(|v| v.as_i64())
            .unwrap_or(0);
        if v < 256 + nspecial as i64 {
            issues.push(ParamIssue::new(
                Some("vocab-size"),
                format!("vocab-size {v} is smaller than the 256 byte tokens plus {nspecial} special tokens"),
                Some("a byte-level BPE starts from all 256 bytes; use a larger vocab-size"),
            ));
        }
    }
}
