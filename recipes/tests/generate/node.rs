//! The `generate` node kind on the eval fixture (a tiny random llama with its tokenizer):
//! its artifact is a dataset, sampling does not depend on `batch-size`, stop strings cut the
//! text, and the bad inputs it can only see at run time (prompts past the position limit,
//! text data, a model without EOS) fail clearly.

use crate::eval::common::{dataset, fixture, i, pairs, pc_lines, r, read_json, run, s, tmp};
use dsl::Value;
use recipes::data::{read_normalized, Format, Record};
use recipes::kinds::generate::Generate;
use std::path::Path;

fn sampled(batch: i64, extra: &[(&str, Value)]) -> (serde_json::Value, std::path::PathBuf) {
    let f = fixture();
    let mut params = vec![
        ("model", r("m")),
        ("data", r("pc")),
        ("n", i(3)),
        ("max-new-tokens", i(6)),
        ("temperature", Value::Float(0.9)),
        ("top-k", i(40)),
        ("batch-size", i(batch)),
    ];
    params.extend(extra.iter().cloned());
    run(
        &Generate,
        &f.root,
        &params,
        &[("model", "m", &f.model), ("data", "pc", &f.pc)],
    )
    .unwrap()
}

fn samples(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_artifact_is_a_dataset_and_batch_size_changes_nothing() {
    let (sum1, one) = sampled(1, &[]);
    let (sum8, eight) = sampled(8, &[]);
    assert_eq!(
        std::fs::read(one.join("samples.jsonl")).unwrap(),
        std::fs::read(eight.join("samples.jsonl")).unwrap()
    );
    assert_eq!(sum1["new_tokens"], sum8["new_tokens"]);
    let n = pairs().len();
    assert_eq!(sum1["prompts"], n);
    assert_eq!(sum1["completions"], 3 * n);
    let (format, records) = read_normalized(&one).unwrap();
    assert_eq!(format, Format::PromptCompletion);
    assert_eq!(records.len(), 3 * n);
    let ss = samples(&one);
    assert_eq!(ss.len(), n);
    for (k, (smp, (prompt, reference))) in ss.iter().zip(pairs()).enumerate() {
        assert_eq!(smp["index"], k);
        assert_eq!(smp["prompt"], prompt.as_str());
        assert_eq!(smp["reference"], reference.as_str());
        let comps = smp["completions"].as_array().unwrap();
        assert_eq!(comps.len(), 3);
        for (j, c) in comps.iter().enumerate() {
            let want = Record::PromptCompletion {
                prompt: prompt.clone(),
                completion: c.as_str().unwrap().to_string(),
            };
            assert_eq!(records[3 * k + j], want);
            let toks = smp["token_ids"][j].as_array().unwrap().len();
            assert_eq!(smp["tokens"][j], toks);
            assert!(toks <= 6);
        }
    }
    // A random model samples varied text: the streams differ between completions.
    let distinct: std::collections::BTreeSet<String> =
        records.iter().map(|r| format!("{r:?}")).collect();
    assert!(distinct.len() > n, "{distinct:?}");
    // Another seed, other samples.
    let (_, other) = sampled(8, &[("seed", i(1))]);
    assert_ne!(
        std::fs::read(one.join("samples.jsonl")).unwrap(),
        std::fs::read(other.join("samples.jsonl")).unwrap()
    );
}

#[test]
fn stop_strings_cut_the_text_and_logprobs_are_recorded() {
    let greedy = [
        ("temperature", Value::Float(0.0)),
        ("n", i(1)),
        ("max-new-tokens", i(12)),
    ];
    let (_, free) = sampled(4, &greedy);
    let free = samples(&free);
    // A two-character piece in the middle of a completion as the stop string.
    let (k, text) = free
        .iter()
        .enumerate()
        .map(|(k, s)| (k, s["completions"][0].as_str().unwrap().to_string()))
        .find(|(_, t)| t.chars().count() >= 6)
        .expect("a completion of 6 characters");
    let stop: String = text.chars().skip(3).take(2).collect();
    let mut with_stop = greedy.to_vec();
    with_stop.push(("stop", Value::List(vec![s(&stop)])));
    with_stop.push(("logprobs", Value::Bool(true)));
    let (sum, cut) = sampled(4, &with_stop);
    let cut = samples(&cut);
    let got = cut[k]["completions"][0].as_str().unwrap();
    assert!(!got.contains(&stop), "{got:?} still holds {stop:?}");
    assert!(text.starts_with(got), "{got:?} is not a prefix of {text:?}");
    assert!(got.chars().count() <= 3);
    assert_eq!(cut[k]["finish_reasons"][0], "stop");
    assert!(sum["finish_reasons"]["stop"].as_u64().unwrap() >= 1);
    let lp = cut[k]["logprobs"][0].as_array().unwrap();
    assert_eq!(lp.len(), cut[k]["tokens"][0].as_u64().unwrap() as usize);
    assert!(lp.iter().all(|x| x.as_f64().unwrap() <= 0.0));
}

#[test]
fn long_prompts_fail_or_are_skipped_text_data_and_no_eos_fail_clearly() {
    let f = fixture();
    let root = tmp();
    let mut lines = pc_lines(&pairs()[..3]);
    lines.push(serde_json::json!({"prompt": "abc ".repeat(80), "completion": " x"}));
    let long = dataset(&root, "long.jsonl", "prompt-completion", &lines);
    let go = |data: &Path, extra: &[(&str, Value)]| {
        let mut params = vec![
            ("model", r("m")),
            ("data", r("d")),
            ("max-new-tokens", i(4)),
        ];
        params.extend(extra.iter().cloned());
        run(
            &Generate,
            &f.root,
            &params,
            &[("model", "m", &f.model), ("data", "d", data)],
        )
    };
    let e = go(&long, &[]).unwrap_err().to_string();
    assert!(
        e.contains("record 4 of d") && e.contains("position limit (64)"),
        "{e}"
    );
    let (sum, out) = go(&long, &[("skip-long", Value::Bool(true))]).unwrap();
    assert_eq!(sum["skipped_long"], 1);
    assert_eq!(sum["prompts"], 3);
    assert_eq!(read_json(&out.join("stats.json"))["skipped"], 1);
    // Text data has no prompts.
    let e = go(&f.text, &[]).unwrap_err().to_string();
    assert!(e.contains("is text: generate needs prompts"), "{e}");
    // A model whose tokenizer has no EOS.
    let no_eos = tmp();
    for entry in std::fs::read_dir(&f.model).unwrap().flatten() {
        std::fs::copy(entry.path(), no_eos.join(entry.file_name())).unwrap();
    }
    let cfg = no_eos.join("tokenizer_config.json");
    let mut c = read_json(&cfg);
    c.as_object_mut().unwrap().remove("eos_token");
    std::fs::write(&cfg, c.to_string()).unwrap();
    let e = run(
        &Generate,
        &f.root,
        &[("model", r("m")), ("data", r("pc"))],
        &[("model", "m", &no_eos), ("data", "pc", &f.pc)],
    )
    .unwrap_err();
    let e = format!("{e}");
    assert!(e.contains("EOS"), "{e}");
}
