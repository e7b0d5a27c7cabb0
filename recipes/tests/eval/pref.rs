//! `metric=preference-accuracy`: accuracy and mean margin equal a manual computation (one
//! forward per sequence, summed completion log-probs); swapping chosen and rejected gives
//! `1 − accuracy` and the negated margin; the metric is refused on non-preference data and the
//! other metrics on preference data.

use super::common::*;
use super::scores::{data, encode, manual_sum};
use recipes::arch::{HfModel, LoadOptions};
use recipes::kinds::eval::Eval;
use recipes::StageError;
use serde_json::json;
use std::path::{Path, PathBuf};

/// Prompt, chosen, rejected of the test pairs (the sides differ in order and in length).
fn triples() -> Vec<(String, String, String)> {
    (0..10)
        .map(|k| {
            let (a, b) = (k * 3, k * 4);
            let rejected = if k % 3 == 0 {
                format!(" {b} {a} {a}")
            } else {
                format!(" {b} {a}")
            };
            (format!("{k}+{a}="), format!(" {a} {b}"), rejected)
        })
        .collect()
}

fn pref_dataset(root: &Path, name: &str, swap: bool) -> PathBuf {
    let lines: Vec<serde_json::Value> = triples()
        .into_iter()
        .map(|(p, c, r)| {
            let (c, r) = if swap { (r, c) } else { (c, r) };
            json!({"prompt": p, "chosen": c, "rejected": r})
        })
        .collect();
    dataset(root, &format!("{name}.jsonl"), "preference", &lines)
}

/// `(accuracy, mean margin, chosen CE per token)` computed independently: for each side,
/// `logπ(y) = Σ_{t ≥ p} log p(ids[t] | ids[..t])` with `p` the shared prefix of the tokenised
/// prompt and `prompt + completion + EOS`.
fn manual(model_dir: &Path) -> (f64, f64, f64) {
    let m = HfModel::load(model_dir, "m", &LoadOptions::default()).unwrap();
    let tok = recipes::tok::TokenizerDir::load(model_dir, "m").unwrap();
    let eos = tok.eos_id().unwrap() as i64;
    let logp = |p: &str, y: &str| -> (f64, usize) {
        let pi = encode(&tok.tokenizer, p);
        let mut full = encode(&tok.tokenizer, &format!("{p}{y}"));
        full.push(eos);
        let start = pi.iter().zip(&full).take_while(|(a, b)| a == b).count();
        (
            -manual_sum(&m, &full, start..full.len()),
            full.len() - start,
        )
    };
    let (mut correct, mut margin, mut lc, mut nc) = (0usize, 0.0, 0.0, 0usize);
    let n = triples().len();
    for (p, c, r) in triples() {
        let ((c, cn), (r, _)) = (logp(&p, &c), logp(&p, &r));
        correct += usize::from(c > r);
        margin += c - r;
        lc += c;
        nc += cn;
    }
    (
        correct as f64 / n as f64,
        margin / n as f64,
        -lc / nc as f64,
    )
}

fn eval(root: &Path, model: &Path, prefs: &Path, metric: Option<&str>) -> serde_json::Value {
    let params = [
        ("model", dsl::Value::List(vec![r("tiny")])),
        ("data", dsl::Value::List(vec![data("prefs", metric)])),
        ("batch-size", i(3)),
    ];
    let inputs = [
        ("model[0]", "tiny", model),
        ("data[0].name", "prefs", prefs),
    ];
    let (_, out) = run(&Eval, root, &params, &inputs).unwrap();
    read_json(&out.join("results.json"))["results"][0].clone()
}

#[test]
fn preference_accuracy_and_margin_match_a_manual_computation() {
    let f = fixture();
    let root = tmp();
    let prefs = pref_dataset(&root, "prefs", false);
    let (acc, margin, closs) = manual(&f.model);
    let row = eval(&root, &f.model, &prefs, None);
    assert_eq!(
        row["metric"], "preference-accuracy",
        "default for preference data"
    );
    assert_eq!(row["format"], "preference");
    assert_eq!(row["n"], 10);
    assert_eq!(row["skipped"], 0);
    let got = row["preference_accuracy"].as_f64().unwrap();
    assert!((got - acc).abs() < 1e-12, "accuracy {got} vs manual {acc}");
    assert_eq!(row["correct"], json!((acc * 10.0).round() as u64));
    let m = row["margin"].as_f64().unwrap();
    assert!(
        (m - margin).abs() < 1e-4 * margin.abs().max(1.0),
        "margin {m} vs {margin}"
    );
    let l = row["loss"].as_f64().unwrap();
    assert!(
        (l - closs).abs() < 1e-5 * closs,
        "chosen loss {l} vs {closs}"
    );
    assert_eq!(row["examples"].as_array().unwrap().len(), 5);
    assert_eq!(row["examples"][0]["prompt"], "0+0=");

    // Swapped sides: every margin changes sign (no ties on a random model).
    let swapped = pref_dataset(&root, "swapped", true);
    let row2 = eval(&root, &f.model, &swapped, Some("preference-accuracy"));
    let got2 = row2["preference_accuracy"].as_f64().unwrap();
    assert!((got + got2 - 1.0).abs() < 1e-12, "{got} + {got2}");
    let m2 = row2["margin"].as_f64().unwrap();
    assert!((m + m2).abs() < 1e-4 * m.abs().max(1.0), "{m} vs {m2}");
}

#[test]
fn preference_metric_and_data_must_match() {
    let f = fixture();
    let root = tmp();
    let prefs = pref_dataset(&root, "prefs", false);
    let case = |d: &Path, name: &str, metric: &str| {
        let params = [
            ("model", dsl::Value::List(vec![r("tiny")])),
            ("data", dsl::Value::List(vec![data(name, Some(metric))])),
        ];
        let inputs = [
            ("model[0]", "tiny", f.model.as_path()),
            ("data[0].name", name, d),
        ];
        match run(&Eval, &root, &params, &inputs) {
            Err(StageError::User { message, hint }) => (message, hint.unwrap_or_default()),
            other => panic!("expected a user error, got {other:?}"),
        }
    };
    let (m, h) = case(&prefs, "prefs", "exact-match");
    assert!(
        m.contains("dataset prefs") && m.contains("preference format"),
        "{m}"
    );
    assert!(h.contains("metric=preference-accuracy"), "{h}");
    let (m, h) = case(&f.pc, "pc", "preference-accuracy");
    assert!(
        m.contains("dataset pc") && m.contains("prompt-completion"),
        "{m}"
    );
    assert!(h.contains("format=preference"), "{h}");
}
