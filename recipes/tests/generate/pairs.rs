//! The `pairs` kind: the scores and the pair rule as functions (Levenshtein values, ties,
//! order tie-breaks, identical and blank completions), then the stage end to end on
//! hand-written `generate` artifacts — text and chat prompts, each user error — and the
//! `judge-logp` score on a tiny Llama against an independent computation of the log-probs.

use crate::common::lm::{run, tiny_model};
use crate::common::{r, s};
use recipes::arch::{AttnMask, HfModel, LoadOptions};
use recipes::batching::chat::ChatTemplate;
use recipes::data::validate::{validate, FieldMap};
use recipes::data::{read_normalized, read_stats, Format, Message, Record, Role, Turns};
use recipes::generate::rank::{
    choose, length_score, levenshtein, rank, reference_match, PairRow, Sample, Skip, Verdict,
};
use recipes::kinds::pairs::{pair_record, Pairs};
use recipes::StageError;
use serde_json::{json, Value as J};
use std::path::{Path, PathBuf};

fn texts(v: &[&str]) -> Vec<String> {
    v.iter().map(|t| t.to_string()).collect()
}

fn sample(index: u64, prompt: J, reference: Option<&str>, completions: &[&str]) -> J {
    json!({
        "index": index,
        "prompt": prompt,
        "reference": reference,
        "completions": completions,
        "finish_reasons": vec!["stop"; completions.len()],
        "tokens": completions.iter().map(|c| c.len()).collect::<Vec<_>>(),
    })
}

fn parse(v: &J) -> Sample {
    serde_json::from_value(v.clone()).unwrap()
}

/// A `generate` artifact holding `lines` as its samples.jsonl.
fn generated(root: &Path, name: &str, lines: &[J]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let body: String = lines.iter().map(|l| l.to_string() + "\n").collect();
    std::fs::write(dir.join("samples.jsonl"), body).unwrap();
    std::fs::write(
        dir.join("stats.json"),
        json!({"format": "prompt-completion", "records": 0}).to_string(),
    )
    .unwrap();
    dir
}

fn run_pairs(
    root: &Path,
    data: &Path,
    score: &str,
    judge: Option<&Path>,
) -> Result<(J, PathBuf), StageError> {
    let mut params = vec![("data", r("data")), ("score", s(score))];
    let mut inputs = vec![("data", data)];
    if let Some(m) = judge {
        params.push(("model", r("model")));
        inputs.push(("model", m));
    }
    run(
        &Pairs,
        &params,
        &inputs,
        &root.join(format!("node-{score}")),
    )
}

fn user_error(e: StageError) -> (String, String) {
    match e {
        StageError::User { message, hint } => (message, hint.unwrap_or_default()),
        other => panic!("not a user error: {other:?}"),
    }
}

fn pairs_file(out: &Path) -> Vec<PairRow> {
    std::fs::read_to_string(out.join("pairs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn levenshtein_distances() {
    let cases = [
        ("kitten", "sitting", 3),
        ("flaw", "lawn", 2),
        ("", "abc", 3),
        ("abc", "", 3),
        ("", "", 0),
        ("abc", "abc", 0),
        ("ab", "ba", 2),
        ("intention", "execution", 5),
        ("café", "cafe", 1),
        ("日本語", "日本", 1),
        ("xabcx", "yabcy", 2),
    ];
    for (a, b, d) in cases {
        assert_eq!(levenshtein(a, b), d, "{a:?} → {b:?}");
        assert_eq!(levenshtein(b, a), d, "{b:?} → {a:?}");
    }
}

#[test]
fn reference_match_and_length_scores() {
    assert_eq!(reference_match("  42 \n", "42"), 1.0);
    assert_eq!(reference_match(" ", ""), 1.0);
    assert_eq!(reference_match("", "abc"), 0.0);
    assert_eq!(reference_match("abc", "xyz"), 0.0);
    assert!((reference_match("kitten", "sitting") - (1.0 - 3.0 / 7.0)).abs() < 1e-15);
    // Characters, not bytes: one of four differs.
    assert!((reference_match("café", "cafe") - 0.75).abs() < 1e-15);
    assert_eq!(length_score(" ab c \n"), -4.0);
    assert_eq!(length_score("日本"), -2.0);
    assert_eq!(length_score("   "), -0.0);
}

#[test]
fn choose_takes_the_first_of_equals_at_both_ends() {
    let c = texts(&["a", "b", "c", "d", "e"]);
    assert_eq!(
        choose(&c, &[1.0, 3.0, 3.0, 0.0, 0.0]),
        Verdict::Pair {
            chosen: 1,
            rejected: 3
        }
    );
    assert_eq!(
        choose(&c, &[0.0, 0.5, 2.0, 0.5, 0.0]),
        Verdict::Pair {
            chosen: 2,
            rejected: 0
        }
    );
    assert_eq!(
        choose(&c[..2], &[-1.0, -2.0]),
        Verdict::Pair {
            chosen: 0,
            rejected: 1
        }
    );
}

#[test]
fn choose_skips_ties_identical_and_blank() {
    let c = texts(&["a", "b", "c"]);
    assert_eq!(choose(&c, &[0.5; 3]), Verdict::Skipped(Skip::Tied));
    // Same text, different scores (a score that is not a function of the text alone).
    let same = texts(&["x", "x"]);
    assert_eq!(
        choose(&same, &[1.0, 0.0]),
        Verdict::Skipped(Skip::Identical)
    );
    // Blank completions are left out: their scores never win or lose.
    let blank = texts(&["", "a", " \n", "bb"]);
    assert_eq!(
        choose(&blank, &[9.0, 1.0, -9.0, 0.0]),
        Verdict::Pair {
            chosen: 1,
            rejected: 3
        }
    );
    assert_eq!(
        choose(&texts(&["", "a", "  "]), &[0.0, 1.0, 2.0]),
        Verdict::Skipped(Skip::Blank)
    );
    // Ties among the non-blank ones only.
    assert_eq!(
        choose(&texts(&["a", "", "b"]), &[1.0, 5.0, 1.0]),
        Verdict::Skipped(Skip::Tied)
    );
}

#[test]
fn rank_counts_skips_and_means() {
    let p = json!("q");
    let samples: Vec<Sample> = [
        sample(3, p.clone(), None, &["a", "bb", "ccc"]),
        sample(5, p.clone(), None, &["a", "b"]),
        sample(8, p.clone(), None, &["x", "x"]),
        sample(9, p.clone(), None, &["", "yy", "z"]),
    ]
    .iter()
    .map(parse)
    .collect();
    let scores = vec![
        vec![0.2, 0.9, 0.1],
        vec![1.0, 1.0],
        vec![0.3, 0.1],
        vec![5.0, 0.4, 0.6],
    ];
    let rk = rank(&samples, &scores);
    assert_eq!(rk.pairs.len(), 2);
    assert_eq!(
        rk.pairs[0],
        (
            0,
            PairRow {
                index: 3,
                chosen_index: 1,
                rejected_index: 2,
                chosen_score: 0.9,
                rejected_score: 0.1
            }
        )
    );
    assert_eq!(rk.pairs[1].0, 3);
    assert_eq!(
        (rk.pairs[1].1.chosen_index, rk.pairs[1].1.rejected_index),
        (2, 1)
    );
    assert_eq!(rk.skips, vec![(1, Skip::Tied), (2, Skip::Identical)]);
    assert_eq!(rk.count(Skip::Tied), 1);
    assert_eq!(rk.count(Skip::Blank), 0);
    let skipped: Vec<(&str, usize)> = rk.skipped().into_iter().collect();
    assert_eq!(skipped, vec![("identical", 1), ("tied", 1)]);
    let (mc, mr) = rk.mean_scores().unwrap();
    assert!((mc - 0.75).abs() < 1e-12 && (mr - 0.25).abs() < 1e-12);
}

#[test]
fn chat_prompts_get_assistant_sides() {
    let msgs =
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]);
    let sm = parse(&sample(0, msgs, Some("hello"), &["hey", "good day to you"]));
    let rec = pair_record(&sm, 0, 1);
    let line: J = serde_json::from_str(&rec.to_json_line()).unwrap();
    assert_eq!(
        line["chosen"],
        json!([{"role": "assistant", "content": "hey"}])
    );
    assert_eq!(line["prompt"][1]["content"], "hi");
    assert!(validate(Format::Preference, &line, &FieldMap::default()).is_ok());
    let st = parse(&sample(0, json!("say hi"), None, &["hey", "hello"]));
    let rec = pair_record(&st, 1, 0);
    assert_eq!(
        rec,
        Record::Preference {
            prompt: Turns::Text("say hi".into()),
            chosen: Turns::Text("hello".into()),
            rejected: Turns::Text("hey".into()),
        }
    );
}

#[test]
fn the_stage_writes_a_preference_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let chat = json!([{"role": "user", "content": "capital of France?"}]);
    let data = generated(
        root,
        "gen",
        &[
            sample(
                0,
                json!("add 1 2 ="),
                Some(" 3"),
                &[" 4", " 3", "3 ", " 33"],
            ),
            sample(1, json!("add 2 2 ="), Some(" 4"), &[" 4", "4", " 4 "]),
            sample(2, chat.clone(), Some("Paris"), &["Lyon", "paris", "Paris."]),
            sample(4, json!("add 0 0 ="), Some("0"), &["", "1", "  "]),
        ],
    );
    let (sum, out) = run_pairs(root, &data, "reference-match", None).unwrap();
    assert_eq!(sum["prompts"], 4);
    assert_eq!(sum["pairs"], 2);
    assert_eq!(sum["skipped_ties"], 1);
    assert_eq!(sum["skipped_identical"], 0);
    assert_eq!(sum["skipped_blank"], 1);
    assert_eq!(sum["score"], "reference-match");
    // Record 0: " 3" (first of the exact matches) over " 4" (first of the 0.0 scores).
    // Record 2: "Paris." (1 − 1/6) over "Lyon" (no character in common: 1 − 5/5), "paris"
    // (1 − 1/5) in between.
    let (format, records) = read_normalized(&out).unwrap();
    assert_eq!(format, Format::Preference);
    assert_eq!(
        records[0],
        Record::Preference {
            prompt: Turns::Text("add 1 2 =".into()),
            chosen: Turns::Text(" 3".into()),
            rejected: Turns::Text(" 4".into()),
        }
    );
    let asst = |t: &str| {
        Turns::Messages(vec![Message {
            role: Role::Assistant,
            content: t.into(),
        }])
    };
    assert_eq!(
        records[1],
        Record::Preference {
            prompt: serde_json::from_value(chat).unwrap(),
            chosen: asst("Paris."),
            rejected: asst("Lyon"),
        }
    );
    let data_text = std::fs::read_to_string(out.join("data.jsonl")).unwrap();
    for line in data_text.lines() {
        let v: J = serde_json::from_str(line).unwrap();
        validate(Format::Preference, &v, &FieldMap::default()).unwrap();
    }
    let rows = pairs_file(&out);
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].index, rows[0].chosen_index, rows[0].rejected_index),
        (0, 1, 0)
    );
    assert_eq!((rows[0].chosen_score, rows[0].rejected_score), (1.0, 0.0));
    assert_eq!(
        (rows[1].index, rows[1].chosen_index, rows[1].rejected_index),
        (2, 2, 0)
    );
    assert!((rows[1].chosen_score - 5.0 / 6.0).abs() < 1e-12);
    assert_eq!(rows[1].rejected_score, 0.0);
    let mc = sum["mean_chosen_score"].as_f64().unwrap();
    assert!((mc - (1.0 + 5.0 / 6.0) / 2.0).abs() < 1e-12);
    let stats = read_stats(&out).unwrap();
    assert_eq!(stats["format"], "preference");
    assert_eq!(stats["records"], 2);
    assert_eq!(
        stats["content_hash"],
        blake3::hash(data_text.as_bytes()).to_hex().as_str()
    );
    assert_eq!(stats["skipped"], json!({"blank": 1, "tied": 1}));
    assert_eq!(stats["skipped_examples"][0]["reason"], "tied");
    assert_eq!(
        stats["skipped_examples"][1]["location"],
        "samples.jsonl: record 4"
    );
}

#[test]
fn the_length_score_prefers_short_completions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(
        tmp.path(),
        "gen",
        &[sample(
            7,
            json!("p"),
            None,
            &["medium", "a", "longest one", "b"],
        )],
    );
    let (sum, out) = run_pairs(tmp.path(), &data, "length", None).unwrap();
    assert_eq!(sum["pairs"], 1);
    let rows = pairs_file(&out);
    assert_eq!((rows[0].chosen_index, rows[0].rejected_index), (1, 2));
    assert_eq!(
        (rows[0].chosen_score, rows[0].rejected_score),
        (-1.0, -11.0)
    );
}

#[test]
fn user_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // A plain dataset, not a generate node's output.
    let plain = root.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::write(plain.join("data.jsonl"), "{\"text\": \"x\"}\n").unwrap();
    std::fs::write(plain.join("stats.json"), "{\"format\": \"text\"}").unwrap();
    let (m, h) = user_error(run_pairs(root, &plain, "length", None).unwrap_err());
    assert!(
        m.contains("completions of a `generate` node") && m.contains("`text` dataset"),
        "{m}"
    );
    assert!(h.contains("generate"), "{h}");
    // One completion per prompt.
    let one = generated(
        root,
        "one",
        &[
            sample(0, json!("p"), Some("r"), &["a", "b"]),
            sample(1, json!("q"), Some("r"), &["a"]),
        ],
    );
    let (m, h) = user_error(run_pairs(root, &one, "length", None).unwrap_err());
    assert!(
        m.contains("record 1 has 1 completion") && m.contains("n = 1"),
        "{m}"
    );
    assert!(h.contains("n 4"), "{h}");
    // reference-match without references.
    let norefs = generated(
        root,
        "norefs",
        &[
            sample(0, json!("p"), None, &["a", "b"]),
            sample(1, json!("q"), Some("r"), &["a", "b"]),
            sample(2, json!("q"), None, &["a", "b"]),
        ],
    );
    let (m, h) = user_error(run_pairs(root, &norefs, "reference-match", None).unwrap_err());
    assert!(
        m.contains("2 of 3 prompts") && m.contains("records 0, 2"),
        "{m}"
    );
    assert!(h.contains("reference completion"), "{h}");
    // Every prompt tied.
    let tied = generated(
        root,
        "tied",
        &[
            sample(0, json!("p"), None, &["ab", "cd"]),
            sample(1, json!("q"), None, &["x", "y", "z"]),
        ],
    );
    let (m, h) = user_error(run_pairs(root, &tied, "length", None).unwrap_err());
    assert!(
        m.contains("every prompt's completions tied under score length"),
        "{m}"
    );
    assert!(h.contains("temperature") && h.contains("`n`"), "{h}");
    // A broken line names its place.
    let bad = root.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("samples.jsonl"), "{\"index\": 0}\n").unwrap();
    let (m, _) = user_error(run_pairs(root, &bad, "length", None).unwrap_err());
    assert!(m.contains("samples.jsonl:1"), "{m}");
}

/// Mean target log-prob of `completion` after `prompt` under the model in `dir`, computed
/// here with a plain forward: per the judge's rules (plain: EOS appended; chat: rendered).
fn independent_mean(m: &HfModel, dir: &Path, prompt: &Turns, completion: &str) -> f64 {
    let tok = recipes::tok::TokenizerDir::load(dir, "judge").unwrap();
    let ids = |t: &str, special: bool| -> Vec<i64> {
        let e = tok.tokenizer.encode(t, special).unwrap();
        e.get_ids().iter().map(|&x| x as i64).collect()
    };
    let (p, mut full) = match prompt {
        Turns::Text(p) => (ids(p, true), ids(&format!("{p}{completion}"), true)),
        Turns::Messages(msgs) => {
            let t = ChatTemplate::load(dir, &tok.tokenizer).unwrap().unwrap();
            let mut all = msgs.clone();
            all.push(Message {
                role: Role::Assistant,
                content: completion.into(),
            });
            (
                ids(&t.render(msgs, true).unwrap(), false),
                ids(&t.render(&all, false).unwrap(), false),
            )
        }
    };
    if matches!(prompt, Turns::Text(_)) {
        let eos = tok.eos_id().unwrap() as i64;
        if full.last() != Some(&eos) {
            full.push(eos);
        }
    }
    let start = p.iter().zip(&full).take_while(|(a, b)| a == b).count();
    let n = full.len() as i64;
    let x = tch::Tensor::from_slice(&full).view([1, n]);
    let pos = tch::Tensor::arange(n, (tch::Kind::Int64, tch::Device::Cpu)).view([1, n]);
    let _g = tch::no_grad_guard();
    let lp = m
        .forward(&x, &pos, AttnMask::Causal)
        .unwrap()
        .to_kind(tch::Kind::Double)
        .log_softmax(-1, tch::Kind::Double);
    let mut total = 0.0;
    for (t, &y) in full.iter().enumerate().skip(start) {
        total += lp.double_value(&[0, t as i64 - 1, y]);
    }
    total / (full.len() - start) as f64
}

#[test]
fn judge_logp_matches_an_independent_computation() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (model_dir, _) = tiny_model(root);
    let chat = json!([{"role": "user", "content": "add 2 3 ="}]);
    let lines = [
        sample(
            0,
            json!("add 1 2 ="),
            None,
            &[" 3", " 4 4", " 3", "red green", "  "],
        ),
        sample(1, chat, None, &[" 5", "blue", " 5 5 5"]),
    ];
    let data = generated(root, "gen", &lines);
    let (sum, out) = run_pairs(root, &data, "judge-logp", Some(&model_dir)).unwrap();
    assert_eq!(sum["score"], "judge-logp");
    let m = HfModel::load(
        &model_dir,
        "judge",
        &LoadOptions {
            device: tch::Device::Cpu,
            dtype: Some(tch::Kind::Float),
        },
    )
    .unwrap();
    let rows = pairs_file(&out);
    let (_, records) = read_normalized(&out).unwrap();
    assert_eq!(
        rows.len() + sum["skipped_ties"].as_u64().unwrap() as usize,
        2
    );
    for (row, rec) in rows.iter().zip(&records) {
        let sm = parse(&lines[row.index as usize]);
        let means: Vec<f64> = sm
            .completions
            .iter()
            .map(|c| {
                if c.trim().is_empty() {
                    f64::NAN
                } else {
                    independent_mean(&m, &model_dir, &sm.prompt, c)
                }
            })
            .collect();
        // The pair is the arg-max and arg-min of the independent means (first among equals).
        let kept: Vec<usize> = (0..means.len()).filter(|&j| means[j].is_finite()).collect();
        let best = kept
            .iter()
            .copied()
            .fold(kept[0], |b, j| if means[j] > means[b] { j } else { b });
        let worst = kept
            .iter()
            .copied()
            .fold(kept[0], |w, j| if means[j] < means[w] { j } else { w });
        assert_eq!(
            (row.chosen_index, row.rejected_index),
            (best, worst),
            "{means:?}"
        );
        assert!(
            (row.chosen_score - means[best]).abs() < 1e-5,
            "{row:?} vs {means:?}"
        );
        assert!(
            (row.rejected_score - means[worst]).abs() < 1e-5,
            "{row:?} vs {means:?}"
        );
        let Record::Preference { chosen, .. } = rec else {
            panic!("{rec:?}")
        };
        let text = match chosen {
            Turns::Text(t) => t.clone(),
            Turns::Messages(m) => m[0].content.clone(),
        };
        assert_eq!(text, sm.completions[best]);
    }
    // Both prompts give a pair: their completions differ in text and length.
    assert_eq!(rows.len(), 2);
}

#[test]
fn judge_logp_scores_identical_texts_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (model_dir, _) = tiny_model(root);
    // Two identical completions of one prompt in different forwards (batch-size 1) tie exactly.
    let data = generated(
        root,
        "gen",
        &[
            sample(0, json!("add 4 4 ="), None, &[" 8", " 8"]),
            sample(1, json!("add 1 1 ="), None, &[" 2", " 2 2"]),
        ],
    );
    let (sum, _) = run(
        &Pairs,
        &[
            ("data", r("data")),
            ("score", s("judge-logp")),
            ("model", r("model")),
            ("batch-size", crate::common::i(1)),
        ],
        &[("data", &data), ("model", &model_dir)],
        &root.join("node"),
    )
    .unwrap();
    assert_eq!(sum["pairs"], 1);
    assert_eq!(sum["skipped_ties"], 1);
}
