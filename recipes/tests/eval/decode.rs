//! Greedy decoding: stops at EOS, respects max-new-tokens and the position limit, batched =
//! one by one; exact-match 1.0 for a model wired to always answer the reference.

use super::common::*;
use recipes::arch::{HfModel, LoadOptions, SaveOptions};
use recipes::evaluate::{exact_match, greedy, Generation, GreedyOptions};
use recipes::kinds::eval::Eval;
use recipes::kinds::model::Model;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::Tensor;

/// An untied tiny model of the fixture's tokenizer (weights random; rewired below).
fn untied() -> &'static PathBuf {
    static U: OnceLock<PathBuf> = OnceLock::new();
    U.get_or_init(|| {
        let f = fixture();
        let tok = f.model.clone(); // a model directory is also a tokenizer directory
        let mp = [
            ("tokenizer", r("tok")),
            ("hidden-size", i(32)),
            ("layers", i(1)),
            ("heads", i(4)),
            ("intermediate-size", i(64)),
            ("max-position", i(64)),
        ];
        run(&Model, &f.root, &mp, &[("tokenizer", "tok", &tok)])
            .unwrap()
            .1
    })
}

/// Token ids of `b` and `c` (single bytes, so single tokens).
fn bc(dir: &Path) -> (i64, i64, i64) {
    let tok = recipes::tok::TokenizerDir::load(dir, "m").unwrap();
    let id = |t: &str| tok.tokenizer.token_to_id(t).unwrap() as i64;
    (id("b"), id("c"), tok.eos_id().unwrap() as i64)
}

/// Rewires the untied model into a bigram machine: every block adds nothing (o_proj and
/// down_proj zero), so the last hidden state is the embedding of the last token. Embeddings:
/// `b` → e1, `c` → e2, anything else → e0. LM head: `b` reads e0, `c` reads e1, and EOS reads
/// e2 (`looping`: `b` reads e2 as well, EOS nothing). So after any prompt the model writes
/// `b c` then EOS (or `b c b c …` forever when looping).
fn wired(looping: bool) -> PathBuf {
    let src = untied();
    let (tb, tc, eos) = bc(src);
    let m = HfModel::load(src, "m", &LoadOptions::default()).unwrap();
    tch::no_grad(|| {
        for (name, mut v) in m.vs.variables() {
            if name.contains("o_proj") || name.contains("down_proj") {
                let _ = v.zero_();
            }
        }
        let vars = m.vs.variables();
        let mut emb = vars["model.embed_tokens.weight"].shallow_clone();
        let mut head = vars["lm_head.weight"].shallow_clone();
        let _ = emb.zero_();
        let _ = head.zero_();
        let _ = emb.narrow(1, 0, 1).fill_(1.0);
        let set = |t: &mut Tensor, row: i64, col: i64, x: f64| {
            let _ = t.get(row).get(col).fill_(x);
        };
        for (tok, col) in [(tb, 1), (tc, 2)] {
            set(&mut emb, tok, 0, 0.0);
            set(&mut emb, tok, col, 1.0);
        }
        set(&mut head, tb, 0, 1.0);
        set(&mut head, tc, 1, 1.0);
        if looping {
            set(&mut head, tb, 2, 1.0);
        } else {
            set(&mut head, eos, 2, 1.0);
        }
    });
    let out = tmp();
    let opts = SaveOptions {
        copy_from: Some(src.clone()),
        ..Default::default()
    };
    m.save(&out, &opts).unwrap();
    out
}

fn opts(max_new: usize, stop: i64, batch: usize) -> GreedyOptions {
    GreedyOptions {
        max_new_tokens: max_new,
        stop: vec![stop],
        pad_id: 3,
        batch_size: batch,
    }
}

fn prompts(lens: &[usize]) -> Vec<Vec<i64>> {
    lens.iter()
        .map(|&n| (0..n as i64).map(|k| 10 + (k * 7) % 50).collect())
        .collect()
}

#[test]
fn greedy_stops_at_eos() {
    let dir = wired(false);
    let (tb, tc, eos) = bc(&dir);
    let m = HfModel::load(&dir, "m", &LoadOptions::default()).unwrap();
    let gens = greedy(&m, &prompts(&[3, 9, 1]), &opts(10, eos, 2), |_| {}).unwrap();
    for g in gens {
        assert_eq!(
            g,
            Generation {
                tokens: vec![tb, tc],
                stopped: true
            }
        );
    }
}

#[test]
fn greedy_respects_max_new_tokens_and_the_position_limit() {
    let dir = wired(true);
    let (tb, tc, eos) = bc(&dir);
    let m = HfModel::load(&dir, "m", &LoadOptions::default()).unwrap();
    let gens = greedy(&m, &prompts(&[4, 61, 64]), &opts(5, eos, 4), |_| {}).unwrap();
    assert_eq!(gens[0].tokens, vec![tb, tc, tb, tc, tb]);
    assert!(!gens[0].stopped);
    assert_eq!(gens[1].tokens, vec![tb, tc, tb], "61 + 3 = max-position 64");
    assert!(
        gens[2].tokens.is_empty(),
        "a prompt at the limit gets nothing"
    );
    let too_long = greedy(&m, &prompts(&[65]), &opts(5, eos, 4), |_| {});
    let msg = format!("{:#}", too_long.unwrap_err());
    assert!(msg.contains("65 tokens") && msg.contains("64"), "{msg}");
}

#[test]
fn batched_left_padded_decoding_equals_one_by_one() {
    let f = fixture();
    let m = HfModel::load(&f.model, "m", &LoadOptions::default()).unwrap();
    let eos = bc(&f.model).2;
    let ps = prompts(&[5, 1, 12, 7, 7, 20, 2]);
    let one = greedy(&m, &ps, &opts(8, eos, 1), |_| {}).unwrap();
    let mut seen = 0;
    let all = greedy(&m, &ps, &opts(8, eos, 4), |n| seen += n).unwrap();
    assert_eq!(seen, ps.len(), "progress counts every prompt");
    assert_eq!(one, all);
    assert!(one.iter().any(|g| !g.tokens.is_empty()));
}

#[test]
fn exact_match_trims_whitespace_only() {
    assert!(exact_match(" 47\n", "47"));
    assert!(exact_match("a b", " a b "));
    assert!(!exact_match("a  b", "a b"));
    assert!(!exact_match("47", "470"));
}

#[test]
fn a_model_that_always_answers_bc_scores_exact_match_one_on_bc_data() {
    let f = fixture();
    let dir = wired(false);
    let root = tmp();
    let rows = |c: &str| -> Vec<serde_json::Value> {
        pairs()
            .iter()
            .map(|(p, _)| serde_json::json!({"prompt": p, "completion": c}))
            .collect()
    };
    let yes = dataset(&root, "yes.jsonl", "prompt-completion", &rows(" bc "));
    let no = dataset(&root, "no.jsonl", "prompt-completion", &rows("cb"));
    let data = |n: &str| dsl::Value::Record([("name".to_string(), r(n))].into_iter().collect());
    let params = [
        ("model", dsl::Value::List(vec![r("wired"), r("random")])),
        ("data", dsl::Value::List(vec![data("yes"), data("no")])),
        ("examples", i(2)),
    ];
    let inputs = [
        ("model[0]", "wired", dir.as_path()),
        ("model[1]", "random", f.model.as_path()),
        ("data[0].name", "yes", yes.as_path()),
        ("data[1].name", "no", no.as_path()),
    ];
    let (summary, out) = run(&Eval, &root, &params, &inputs).unwrap();
    let rows = summary["results"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "models × datasets");
    let find = |m: &str, d: &str| {
        rows.iter()
            .find(|r| r["model"] == m && r["data"] == d)
            .unwrap()
    };
    assert_eq!(find("wired", "yes")["exact_match"], 1.0);
    assert_eq!(find("wired", "yes")["correct"], 12);
    assert_eq!(find("wired", "no")["exact_match"], 0.0);
    assert_eq!(find("random", "yes")["exact_match"], 0.0);
    let res = read_json(&out.join("results.json"));
    let ex = res["results"][0]["examples"].as_array().unwrap();
    assert_eq!(ex.len(), 2);
    assert_eq!(ex[0]["prediction"], "bc");
    assert_eq!(ex[0]["reference"], " bc ");
    assert_eq!(ex[0]["correct"], true);
    assert_eq!(ex[0]["stopped"], true);
    assert_eq!(ex[0]["prompt"], "0+0=");
    assert_eq!(res["max_new_tokens"], 32);
    let metrics =
        std::fs::read_to_string(out.parent().unwrap().join("work/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 4, "one metrics line per result");
}
