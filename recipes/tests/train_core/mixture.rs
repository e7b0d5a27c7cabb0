//! The `mixture` kind: normalised weights, counts, a self-contained artifact, and a stream that
//! the artifact reproduces.

use super::util::{ctx, tokenizer};
use dsl::Value;
use recipes::batching::mixture::{read_domains, read_mixture, temperature_weights};
use recipes::batching::stream::Budget;
use recipes::data::{Record, DATA_FILE, STATS_FILE};
use recipes::kinds::mixture::Mixture;
use recipes::Stage;
use std::collections::BTreeMap;
use std::path::Path;

fn dataset(dir: &Path, texts: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let lines: String = texts
        .iter()
        .map(|t| {
            Record::Text {
                text: t.to_string(),
            }
            .to_json_line()
                + "\n"
        })
        .collect();
    std::fs::write(dir.join(DATA_FILE), lines).unwrap();
    let stats = serde_json::json!({"format": "text", "records": texts.len()});
    std::fs::write(dir.join(STATS_FILE), stats.to_string()).unwrap();
}

fn source(name: &str, weight: Option<f64>, max_epochs: Option<f64>) -> Value {
    let mut r = BTreeMap::new();
    r.insert("name".to_string(), Value::Ref(name.into()));
    r.insert(
        "weight".to_string(),
        weight.map(Value::Float).unwrap_or(Value::Null),
    );
    r.insert(
        "max-epochs".to_string(),
        max_epochs.map(Value::Float).unwrap_or(Value::Null),
    );
    Value::Record(r)
}

#[test]
fn temperature_flattens_weights() {
    let w = temperature_weights(&[0.6, 0.3, 0.1], 1.0);
    assert!((w[0] - 0.6).abs() < 1e-12 && (w[2] - 0.1).abs() < 1e-12);
    let w = temperature_weights(&[4.0, 1.0], 2.0);
    assert!(
        (w[0] - 2.0 / 3.0).abs() < 1e-12 && (w[1] - 1.0 / 3.0).abs() < 1e-12,
        "{w:?}"
    );
    assert_eq!(temperature_weights(&[0.0, 0.0], 1.0), vec![0.0, 0.0]);
}

#[test]
fn mixture_node_writes_weights_counts_and_sources() {
    let tmp = tempfile::tempdir().unwrap();
    let web = tmp.path().join("web");
    let med = tmp.path().join("med");
    dataset(
        &web,
        &[
            "the quick brown fox",
            "jumps over",
            "the lazy dog",
            "hello there",
        ],
    );
    dataset(&med, &["What is 2+2?", "Be brief."]);
    let tokdir = tmp.path().join("tok");
    std::fs::create_dir_all(&tokdir).unwrap();
    tokenizer()
        .save(tokdir.join("tokenizer.json"), false)
        .unwrap();
    std::fs::write(
        tokdir.join("tokenizer_config.json"),
        r#"{"eos_token": "<|endoftext|>"}"#,
    )
    .unwrap();

    let params = [
        (
            "source",
            Value::List(vec![
                source("web", Some(3.0), None),
                source("med", Some(1.0), Some(4.0)),
            ]),
        ),
        ("tokens", Value::Int(500)),
        ("seed", Value::Int(9)),
        ("tokenizer", Value::Ref("tok".into())),
    ];
    let inputs = [
        ("source[0].name", "web", web.as_path()),
        ("source[1].name", "med", med.as_path()),
        ("tokenizer", "tok", tokdir.as_path()),
    ];
    let c = ctx(&Mixture, &params, &inputs, &tmp.path().join("run"));
    Mixture.run(&c).unwrap();
    let spec = read_mixture(&c.out_dir).unwrap();
    assert_eq!(spec.budget, Budget::Tokens(500));
    assert_eq!(spec.seed, 9);
    let names: Vec<&str> = spec.domains.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["web", "med"]);
    assert!(
        (spec.domains[0].weight - 0.75).abs() < 1e-12
            && (spec.domains[1].weight - 0.25).abs() < 1e-12
    );
    assert_eq!((spec.domains[0].records, spec.domains[1].records), (4, 2));
    assert_eq!(spec.domains[1].max_epochs, Some(4.0));
    let tok = tokenizer();
    let want: u64 = ["What is 2+2?", "Be brief."]
        .iter()
        .map(|t| tok.encode(*t, true).unwrap().get_ids().len() as u64 + 1)
        .sum();
    assert_eq!(spec.domains[1].tokens, Some(want));

    // The artifact is self-contained: the sources' records are readable from it.
    let domains = read_domains(&c.out_dir, &spec).unwrap();
    assert_eq!(
        domains[1].1,
        vec![
            Record::Text {
                text: "What is 2+2?".into()
            },
            Record::Text {
                text: "Be brief.".into()
            }
        ]
    );

    // The stream the consumer builds from it is deterministic.
    let lengths: Vec<Vec<u64>> = domains.iter().map(|(_, r)| vec![5; r.len()]).collect();
    let a: Vec<_> = spec.stream(lengths.clone()).unwrap().collect();
    let b: Vec<_> = spec.stream(lengths).unwrap().collect();
    assert_eq!(a.len(), 100);
    assert_eq!(a, b);
    assert_eq!(
        a.iter().filter(|d| d.source == 1).count(),
        8,
        "med capped at 4 epochs of 2"
    );

    // weight-by records with temperature 2: p ∝ sqrt(n).
    let params = [
        (
            "source",
            Value::List(vec![source("web", None, None), source("med", None, None)]),
        ),
        ("weight-by", Value::Str("records".into())),
        ("temperature", Value::Float(2.0)),
    ];
    let c = ctx(&Mixture, &params, &inputs[..2], &tmp.path().join("run2"));
    Mixture.run(&c).unwrap();
    let spec = read_mixture(&c.out_dir).unwrap();
    let r = 2f64.sqrt() / (2.0 + 2f64.sqrt());
    assert!(
        (spec.domains[1].weight - r).abs() < 1e-12,
        "{}",
        spec.domains[1].weight
    );
    assert_eq!(spec.budget, Budget::Exhaust);
    assert_eq!(spec.domains[0].tokens, None);
}

#[test]
fn mixture_recipes_are_validated() {
    let reg = kinds::registry();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("a.jsonl"), "{\"text\": \"x\"}\n").unwrap();
    let check = |text: &str| match dsl::load_str("recipe.kdl", text, tmp.path(), &reg, &[]) {
        Ok(_) => Vec::new(),
        Err(d) => d.messages(),
    };
    let base =
        "dataset web path=\"a.jsonl\" format=text\ndataset med path=\"a.jsonl\" format=text\n";
    assert_eq!(check(&format!("{base}mixture m {{ source web weight=0.6; source med weight=0.4 max-epochs=4; tokens 20_000_000 }}")), Vec::<String>::new());
    let m = check(&format!(
        "{base}mixture m {{ source web; source web; tokens 10; examples 5 }}"
    ))
    .join("\n");
    assert!(m.contains("listed twice") && m.contains("exclusive"), "{m}");
    let m = check(&format!(
        "{base}mixture m weight-by=tokens {{ source web weight=1 }}"
    ))
    .join("\n");
    assert!(
        m.contains("needs a tokenizer") && m.contains("ignored"),
        "{m}"
    );
    let m = check(&format!("{base}mixture m {{ source wbe }}")).join("\n");
    assert!(m.contains("wbe"), "{m}");
}
