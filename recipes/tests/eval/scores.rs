//! Held-out loss against a manual computation, metric defaults, results.json and the summary,
//! and bad input (exact-match on text, records over the model's limit).

use super::common::*;
use recipes::arch::{AttnMask, HfModel, LoadOptions};
use recipes::kinds::eval::Eval;
use recipes::StageError;
use serde_json::json;
use std::path::Path;
use tch::{Kind, Tensor};

/// `Σ −log p(ids[t] | ids[..t])` over `t ∈ targets`, one sequence per forward pass.
pub fn manual_sum(m: &HfModel, ids: &[i64], targets: std::ops::Range<usize>) -> f64 {
    let n = ids.len() as i64;
    let x = Tensor::from_slice(ids).view([1, n]);
    let pos = Tensor::arange(n, (Kind::Int64, tch::Device::Cpu)).view([1, n]);
    let logp = tch::no_grad(|| m.forward(&x, &pos, AttnMask::Causal).unwrap())
        .log_softmax(-1, Kind::Double);
    targets
        .map(|t| -logp.double_value(&[0, t as i64 - 1, ids[t]]))
        .sum()
}

pub fn encode(tok: &tokenizers::Tokenizer, text: &str) -> Vec<i64> {
    let e = tok.encode(text, true).unwrap();
    e.get_ids().iter().map(|&i| i as i64).collect()
}

/// Loss of the fixture model as defined by the eval docs, computed independently.
fn manual(model_dir: &Path) -> (f64, usize, f64, usize) {
    let m = HfModel::load(model_dir, "m", &LoadOptions::default()).unwrap();
    let tok = recipes::tok::TokenizerDir::load(model_dir, "m").unwrap();
    let eos = tok.eos_id().unwrap() as i64;
    // prompt-completion: targets = completion tokens + EOS.
    let (mut pc_sum, mut pc_n) = (0.0, 0);
    for (p, c) in pairs() {
        let pi = encode(&tok.tokenizer, &p);
        let mut full = encode(&tok.tokenizer, &format!("{p}{c}"));
        full.push(eos);
        let start = pi.iter().zip(&full).take_while(|(a, b)| a == b).count();
        assert!(start >= 1 && start < full.len());
        pc_sum += manual_sum(&m, &full, start..full.len());
        pc_n += full.len() - start;
    }
    // text: every token after the first, EOS appended.
    let (mut tx_sum, mut tx_n) = (0.0, 0);
    for k in 0..40 {
        let text = format!(
            "doc {k}: the sum of {k} and {} is {}. abc bca cab",
            k * 3,
            k * 4
        );
        let mut ids = encode(&tok.tokenizer, &text);
        ids.push(eos);
        assert!(ids.len() <= 64, "fixture documents fit the model");
        tx_sum += manual_sum(&m, &ids, 1..ids.len());
        tx_n += ids.len() - 1;
    }
    (pc_sum, pc_n, tx_sum, tx_n)
}

pub fn data(name: &str, metric: Option<&str>) -> dsl::Value {
    let mut m = std::collections::BTreeMap::new();
    m.insert("name".to_string(), r(name));
    if let Some(x) = metric {
        m.insert("metric".to_string(), s(x));
    }
    dsl::Value::Record(m)
}

#[test]
fn loss_and_perplexity_match_a_manual_computation() {
    let f = fixture();
    let (pc_sum, pc_n, tx_sum, tx_n) = manual(&f.model);
    let params = [
        ("model", dsl::Value::List(vec![r("tiny")])),
        (
            "data",
            dsl::Value::List(vec![data("pc", Some("loss")), data("text", None)]),
        ),
        ("batch-size", i(5)),
    ];
    let inputs = [
        ("model[0]", "tiny", f.model.as_path()),
        ("data[0].name", "pc", f.pc.as_path()),
        ("data[1].name", "text", f.text.as_path()),
    ];
    let (summary, out) = run(&Eval, &f.root, &params, &inputs).unwrap();
    let res = read_json(&out.join("results.json"));
    let rows = res["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let (pc, tx) = (&rows[0], &rows[1]);
    assert_eq!(pc["model"], "tiny");
    assert_eq!(pc["data"], "pc");
    assert_eq!(pc["metric"], "loss");
    assert_eq!(pc["n"], 12);
    assert_eq!(pc["target_tokens"], pc_n);
    assert_eq!(pc["exact_match"], json!(null), "metric=loss: no decoding");
    let want = pc_sum / pc_n as f64;
    let got = pc["loss"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-5 * want, "pc loss {got} vs {want}");
    let ppl = pc["perplexity"].as_f64().unwrap();
    assert!((ppl - want.exp()).abs() < 1e-4 * want.exp());
    // A random model over 300 tokens is near log(300) = 5.7 nats.
    assert!(want > 3.0 && want < 9.0, "{want}");

    assert_eq!(tx["format"], "text");
    assert_eq!(tx["metric"], "loss", "text defaults to loss");
    assert_eq!(tx["n"], 40);
    assert_eq!(tx["target_tokens"], tx_n);
    let want = tx_sum / tx_n as f64;
    let got = tx["loss"].as_f64().unwrap();
    assert!(
        (got - want).abs() < 1e-5 * want,
        "text loss {got} vs {want}"
    );

    // The summary has the same rows, without example predictions.
    let srows = summary["results"].as_array().unwrap();
    assert_eq!(srows.len(), 2);
    assert_eq!(srows[0]["loss"], rows[0]["loss"]);
    assert!(srows.iter().all(|r| r.get("examples").is_none()));
}

#[test]
fn batch_size_does_not_change_the_numbers() {
    let f = fixture();
    let mut losses = Vec::new();
    for bs in [1, 7] {
        let params = [
            ("model", dsl::Value::List(vec![r("tiny")])),
            ("data", dsl::Value::List(vec![data("pc", None)])),
            ("batch-size", i(bs)),
            ("max-new-tokens", i(4)),
        ];
        let inputs = [
            ("model[0]", "tiny", f.model.as_path()),
            ("data[0].name", "pc", f.pc.as_path()),
        ];
        let (summary, _) = run(&Eval, &f.root, &params, &inputs).unwrap();
        let row = summary["results"][0].clone();
        assert_eq!(row["metric"], "exact-match", "prompt-completion default");
        losses.push(row);
    }
    let (a, b) = (&losses[0], &losses[1]);
    let (la, lb) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
    assert!((la - lb).abs() < 1e-5 * la);
    assert_eq!(a["correct"], b["correct"]);
}

#[test]
fn max_records_keeps_the_first_records() {
    let f = fixture();
    let params = [
        ("model", dsl::Value::List(vec![r("tiny")])),
        (
            "data",
            dsl::Value::List(vec![data("pc", Some("perplexity"))]),
        ),
        ("max-records", i(3)),
    ];
    let inputs = [
        ("model[0]", "tiny", f.model.as_path()),
        ("data[0].name", "pc", f.pc.as_path()),
    ];
    let (summary, _) = run(&Eval, &f.root, &params, &inputs).unwrap();
    assert_eq!(summary["results"][0]["n"], 3);
    // Same as a dataset holding only those three records.
    let root = tmp();
    let three = dataset(
        &root,
        "three.jsonl",
        "prompt-completion",
        &pc_lines(&pairs()[..3]),
    );
    let inputs = [
        ("model[0]", "tiny", f.model.as_path()),
        ("data[0].name", "pc", three.as_path()),
    ];
    let (s3, _) = run(&Eval, &root, &params[..2], &inputs).unwrap();
    assert_eq!(s3["results"][0]["loss"], summary["results"][0]["loss"]);
}

#[test]
fn exact_match_on_text_data_is_a_user_error() {
    let f = fixture();
    let params = [
        ("model", dsl::Value::List(vec![r("tiny")])),
        (
            "data",
            dsl::Value::List(vec![data("text", Some("exact-match"))]),
        ),
    ];
    let inputs = [
        ("model[0]", "tiny", f.model.as_path()),
        ("data[0].name", "text", f.text.as_path()),
    ];
    match run(&Eval, &f.root, &params, &inputs) {
        Err(StageError::User { message, hint }) => {
            assert!(message.contains("dataset text"), "{message}");
            assert!(message.contains("exact-match"), "{message}");
            assert!(hint.unwrap().contains("metric=loss"));
        }
        other => panic!("expected a user error, got {other:?}"),
    }
}

#[test]
fn records_over_the_model_limit_fail_or_are_skipped_and_counted() {
    let f = fixture();
    let root = tmp();
    let mut p = pairs()[..4].to_vec();
    p.push(("long:".into(), " x".repeat(80)));
    let d = dataset(&root, "long.jsonl", "prompt-completion", &pc_lines(&p));
    let inputs = [
        ("model[0]", "tiny", f.model.as_path()),
        ("data[0].name", "long", d.as_path()),
    ];
    let base = [
        ("model", dsl::Value::List(vec![r("tiny")])),
        ("data", dsl::Value::List(vec![data("long", None)])),
    ];
    match run(&Eval, &root, &base, &inputs) {
        Err(StageError::User { message, hint }) => {
            assert!(message.contains("model tiny on dataset long"), "{message}");
            assert!(message.contains("record 5"), "{message}");
            assert!(message.contains("limit of 64"), "{message}");
            assert!(hint.unwrap().contains("skip-long"));
        }
        other => panic!("expected a user error, got {other:?}"),
    }
    let mut params = base.to_vec();
    params.push(("skip-long", b(true)));
    let (summary, _) = run(&Eval, &root, &params, &inputs).unwrap();
    assert_eq!(summary["results"][0]["n"], 4);
    assert_eq!(summary["results"][0]["skipped"], 1);
}

#[test]
fn schema_rejects_a_model_listed_twice() {
    let root = tmp();
    std::fs::write(root.join("d.jsonl"), "{\"text\": \"a\"}\n").unwrap();
    let text = r#"
dataset d path="d.jsonl" format=text
tokenizer tok vocab-size=300 { data d; }
model m tokenizer=tok
eval e { model m; model m; data d; }
"#;
    let Err(err) = dsl::load_str("r.kdl", text, &root, &kinds::registry(), &[]) else {
        panic!("a model listed twice must be an error");
    };
    let msgs = err.messages().join("\n");
    assert!(msgs.contains("model `m` is listed twice"), "{msgs}");
    let ok = text.replace("model m; model m;", "model m;");
    assert!(dsl::load_str("r.kdl", &ok, &root, &kinds::registry(), &[]).is_ok());
}
