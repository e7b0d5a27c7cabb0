//! The `tokenizer` kind: deterministic BPE training, round trips, HF files, path/from modes,
//! broken files, and the one-mode check.

use super::common::*;
use recipes::kinds::dataset::Dataset;
use recipes::kinds::tokenizer::Tokenizer;
use recipes::tok::TokenizerDir;
use std::path::{Path, PathBuf};

/// A small corpus dataset artifact; returns its directory.
pub fn corpus(env: &Env) -> PathBuf {
    let mut text = String::new();
    for i in 0..200 {
        text.push_str(&format!(
            "{{\"text\": \"the quick brown fox {i} jumps over the lazy dog; hello world, tokenizers are fun\"}}\n"
        ));
    }
    env.write("corpus.jsonl", &text);
    env.write("chat.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"hello there\"}, {\"role\": \"assistant\", \"content\": \"general kenobi\"}]}\n");
    let (_, d1) = env
        .run(
            &Dataset,
            &[("path", p("corpus.jsonl")), ("format", s("text"))],
            &[],
        )
        .unwrap();
    d1
}

pub fn train(env: &Env, data: &Path, vocab: i64) -> PathBuf {
    env.run(
        &Tokenizer,
        &[
            ("vocab-size", i(vocab)),
            ("data", dsl::Value::List(vec![r("corpus")])),
        ],
        &[("data[0]", data)],
    )
    .unwrap()
    .1
}

#[test]
fn training_is_deterministic_and_round_trips() {
    let env = Env::new();
    let data = corpus(&env);
    let a = train(&env, &data, 300);
    let b = train(&env, &data, 300);
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
    ] {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(x == y, "{f} differs between two trainings");
    }
    // Golden digest, same in every process (hash-map seeds differ per process): a change means
    // the trainer's output changed — bump the `tokenizer` kind's version.
    assert_eq!(
        blake3::hash(&std::fs::read(a.join("tokenizer.json")).unwrap())
            .to_hex()
            .as_str(),
        "be53dea3f3b09cfd7d068690240bdf7b3228b666caf46f464f84d776d4fd817d"
    );
    let d = TokenizerDir::load(&a, "a").unwrap();
    assert_eq!(d.vocab_size(), 300);
    for (id, t) in ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
        .iter()
        .enumerate()
    {
        assert_eq!(d.tokenizer.token_to_id(t), Some(id as u32), "{t}");
    }
    let text = "the quick brown fox, ünïcödé 🦊 <|im_end|>";
    let enc = d.tokenizer.encode(text, false).unwrap();
    assert!(enc.get_ids().contains(&2), "special token kept whole");
    assert_eq!(d.tokenizer.decode(enc.get_ids(), false).unwrap(), text);
    // merges learnt: frequent text takes far fewer tokens than bytes
    let line = "the quick brown fox 7 jumps over the lazy dog";
    assert!(d.tokenizer.encode(line, false).unwrap().get_ids().len() * 2 < line.len());
    assert_eq!(d.special.eos.as_deref(), Some("<|endoftext|>"));
    assert_eq!(d.special.pad.as_deref(), Some("<|pad|>"));
    assert_eq!(d.eos_id(), Some(0));
    assert!(d.chat_template.as_deref().unwrap().contains("<|im_start|>"));
    let cfg = &d.config;
    assert_eq!(cfg["tokenizer_class"], "PreTrainedTokenizerFast");
    assert_eq!(cfg["added_tokens_decoder"]["3"]["content"], "<|pad|>");
    assert_eq!(cfg["added_tokens_decoder"]["3"]["special"], true);
    assert_eq!(cfg["chat_template"].as_str(), d.chat_template.as_deref());
    let map: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("special_tokens_map.json")).unwrap())
            .unwrap();
    assert_eq!(
        map["additional_special_tokens"],
        serde_json::json!(["<|im_start|>", "<|im_end|>"])
    );
}

#[test]
fn different_vocab_sizes_and_specials() {
    let env = Env::new();
    let data = corpus(&env);
    let (sum, out) = env
        .run(
            &Tokenizer,
            &[
                ("vocab-size", i(280)),
                ("data", dsl::Value::List(vec![r("c")])),
                ("special-tokens", dsl::Value::List(vec![s("<eos>")])),
                ("eos-token", s("<eos>")),
            ],
            &[("data[0]", &data)],
        )
        .unwrap();
    assert_eq!(sum["vocab_size"], 280);
    assert_eq!(sum["special_tokens"], serde_json::json!(["<eos>"]));
    let d = TokenizerDir::load(&out, "t").unwrap();
    assert_eq!(d.special.eos.as_deref(), Some("<eos>"));
    assert!(d.chat_template.is_none(), "no ChatML without its tokens");
    assert!(!out.join("chat_template.jinja").exists());
}

#[test]
fn path_mode_copies_and_applies_overrides() {
    let env = Env::new();
    let data = corpus(&env);
    let trained = train(&env, &data, 300);
    let dir = env.root().join("models/tok");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(trained.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    // no tokenizer_config.json: one is written
    let (sum, out) = env
        .run(&Tokenizer, &[("path", p("models/tok"))], &[])
        .unwrap();
    assert_eq!(sum["mode"], "path");
    assert_eq!(sum["eos_token"], "<|endoftext|>");
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        std::fs::read(dir.join("tokenizer.json")).unwrap()
    );
    assert!(out.join("tokenizer_config.json").is_file());
    // a file path, a template override and an eos override
    env.write("tpl.jinja", "{{ messages[0]['content'] }}");
    let (_, out) = env
        .run(
            &Tokenizer,
            &[
                ("path", p("models/tok/tokenizer.json")),
                ("chat-template", p("tpl.jinja")),
                ("eos-token", s("<|im_end|>")),
            ],
            &[],
        )
        .unwrap();
    let d = TokenizerDir::load(&out, "t").unwrap();
    assert_eq!(
        d.chat_template.as_deref(),
        Some("{{ messages[0]['content'] }}")
    );
    assert_eq!(d.special.eos.as_deref(), Some("<|im_end|>"));
    let (m, _) = env.user_err(
        &Tokenizer,
        &[("path", p("models/tok")), ("eos-token", s("<nope>"))],
        &[],
    );
    assert_eq!(m, "eos-token \"<nope>\" is not in the vocabulary");
    // from mode: a model directory
    let (sum, _) = env
        .run(&Tokenizer, &[("from", r("base"))], &[("from", &trained)])
        .unwrap();
    assert_eq!(sum["mode"], "from");
}

#[test]
fn broken_tokenizer_files_are_user_errors() {
    let env = Env::new();
    env.write(
        "bad/tokenizer.json",
        "{\"version\": \"1.0\", \"model\": {\"type\": \"BPE\"",
    );
    let (m, h) = env.user_err(&Tokenizer, &[("path", p("bad"))], &[]);
    assert!(
        m.starts_with("bad/tokenizer.json: not a loadable tokenizer"),
        "{m}"
    );
    assert!(h.contains("tokenizer.json"), "{h}");
    let (m, _) = env.user_err(&Tokenizer, &[("path", p("missing"))], &[]);
    assert_eq!(m, "path \"missing\": no such file there");
}

#[test]
fn exactly_one_mode_is_checked() {
    let env = Env::new();
    env.write("c.jsonl", "");
    env.write("tok/tokenizer.json", "{}");
    env.write("m/config.json", "{}");
    let base = "dataset c path=\"c.jsonl\" format=text\nmodel m path=\"m\"\n";
    let ok = [
        "tokenizer t path=\"tok\"",
        "tokenizer t from=m",
        "tokenizer t vocab-size=512 { data c }",
    ];
    for t in ok {
        assert_eq!(
            check_messages(env.root(), &format!("{base}{t}\n")),
            Vec::<String>::new(),
            "{t}"
        );
    }
    let bad = [
        ("tokenizer t", "a tokenizer needs a source"),
        (
            "tokenizer t path=\"tok\" from=m",
            "`path` and `from` are exclusive",
        ),
        (
            "tokenizer t vocab-size=512",
            "needs at least one `data` child",
        ),
        ("tokenizer t { data c }", "needs `vocab-size`"),
        (
            "tokenizer t vocab-size=100 { data c }",
            "smaller than the 256 byte tokens",
        ),
        (
            "tokenizer t path=\"tok\" min-frequency=3",
            "applies only when training",
        ),
    ];
    for (t, want) in bad {
        let msgs = check_messages(env.root(), &format!("{base}{t}\n"));
        assert!(msgs.iter().any(|m| m.contains(want)), "{t}: {msgs:?}");
    }
}
