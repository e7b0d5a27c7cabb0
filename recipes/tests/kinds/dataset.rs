//! The `dataset` kind: every format from JSON lines and Parquet, field mapping, the error for
//! each kind of bad record (file, line/row, field), skip-invalid counts, and the normalised copy.

use super::common::*;
use super::pq;
use recipes::data::{read_normalized, read_stats, Format, Message, Record, Role, Turns};
use recipes::kinds::dataset::Dataset;

fn msg(role: Role, content: &str) -> Message {
    Message {
        role,
        content: content.into(),
    }
}

#[test]
fn text_jsonl_normalised_with_stats_and_hash() {
    let env = Env::new();
    env.write(
        "data/t.jsonl",
        "{\"text\": \"hello\", \"id\": 1}\n\n{\"text\": \"world\"}\n",
    );
    let (sum, out) = env
        .run(
            &Dataset,
            &[("path", p("data/t.jsonl")), ("format", s("text"))],
            &[],
        )
        .unwrap();
    assert_eq!(sum["records"], 2);
    let data = std::fs::read_to_string(out.join("data.jsonl")).unwrap();
    assert_eq!(data, "{\"text\":\"hello\"}\n{\"text\":\"world\"}\n");
    let stats = read_stats(&out).unwrap();
    assert_eq!(stats["format"], "text");
    assert_eq!(stats["records"], 2);
    assert_eq!(stats["files"][0]["name"], "data/t.jsonl");
    assert_eq!(
        stats["content_hash"],
        blake3::hash(data.as_bytes()).to_hex().as_str()
    );
    let (f, recs) = read_normalized(&out).unwrap();
    assert_eq!(f, Format::Text);
    assert_eq!(
        recs,
        vec![
            Record::Text {
                text: "hello".into()
            },
            Record::Text {
                text: "world".into()
            }
        ]
    );
}

#[test]
fn messages_prompt_completion_preference_jsonl() {
    let env = Env::new();
    env.write("m.jsonl", r#"{"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#);
    let (_, out) = env
        .run(
            &Dataset,
            &[("path", p("m.jsonl")), ("format", s("messages"))],
            &[],
        )
        .unwrap();
    let (_, recs) = read_normalized(&out).unwrap();
    assert_eq!(
        recs,
        vec![Record::Messages {
            messages: vec![
                msg(Role::System, ""),
                msg(Role::User, "hi"),
                msg(Role::Assistant, "hello")
            ]
        }]
    );

    env.write("pc.jsonl", r#"{"question": "2+2?", "answer": "4"}"#);
    let (_, out) = env
        .run(
            &Dataset,
            &[
                ("path", p("pc.jsonl")),
                ("format", s("prompt-completion")),
                (
                    "fields",
                    fields(&[("prompt", "question"), ("completion", "answer")]),
                ),
            ],
            &[],
        )
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("data.jsonl")).unwrap(),
        "{\"prompt\":\"2+2?\",\"completion\":\"4\"}\n"
    );

    env.write("pref.jsonl", r#"{"prompt": [{"role": "user", "content": "q"}], "chosen": "good", "rejected": [{"role": "assistant", "content": "bad"}]}"#);
    let (_, out) = env
        .run(
            &Dataset,
            &[("path", p("pref.jsonl")), ("format", s("preference"))],
            &[],
        )
        .unwrap();
    let (f, recs) = read_normalized(&out).unwrap();
    assert_eq!(f, Format::Preference);
    assert_eq!(
        recs,
        vec![Record::Preference {
            prompt: Turns::Messages(vec![msg(Role::User, "q")]),
            chosen: Turns::Text("good".into()),
            rejected: Turns::Messages(vec![msg(Role::Assistant, "bad")]),
        }]
    );
}

#[test]
fn parquet_strings_messages_json_column_and_mapping() {
    let env = Env::new();
    pq::write(
        &env.root().join("d/a.parquet"),
        vec![
            ("q", pq::strings(&[Some("p1"), Some("p2")])),
            ("a", pq::strings(&[Some("c1"), Some("c2")])),
            ("n", pq::ints(&[1, 2])),
        ],
    );
    let (sum, out) = env
        .run(
            &Dataset,
            &[
                ("path", p("d/a.parquet")),
                ("format", s("prompt-completion")),
                ("fields", fields(&[("prompt", "q"), ("completion", "a")])),
            ],
            &[],
        )
        .unwrap();
    assert_eq!(sum["records"], 2);
    let (_, recs) = read_normalized(&out).unwrap();
    assert_eq!(
        recs[1],
        Record::PromptCompletion {
            prompt: "p2".into(),
            completion: "c2".into()
        }
    );

    pq::write(
        &env.root().join("m/chat.parquet"),
        vec![(
            "messages",
            pq::messages(&[&[("user", "hi"), ("assistant", "yo")]]),
        )],
    );
    let (_, out) = env
        .run(
            &Dataset,
            &[("path", p("m/chat.parquet")), ("format", s("messages"))],
            &[],
        )
        .unwrap();
    let (_, recs) = read_normalized(&out).unwrap();
    assert_eq!(
        recs,
        vec![Record::Messages {
            messages: vec![msg(Role::User, "hi"), msg(Role::Assistant, "yo")]
        }]
    );

    let js = r#"[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]"#;
    pq::write(
        &env.root().join("j/chat.parquet"),
        vec![("conv", pq::strings(&[Some(js)]))],
    );
    let (_, out) = env
        .run(
            &Dataset,
            &[
                ("path", p("j/chat.parquet")),
                ("format", s("messages")),
                ("fields", fields(&[("messages", "conv")])),
            ],
            &[],
        )
        .unwrap();
    assert_eq!(read_normalized(&out).unwrap().1.len(), 1);
}

#[test]
fn directory_and_glob_read_sorted_files() {
    let env = Env::new();
    env.write("dir/b.jsonl", "{\"text\": \"b\"}\n");
    env.write("dir/a.jsonl", "{\"text\": \"a\"}\n");
    env.write("dir/notes.txt", "ignored");
    pq::write(
        &env.root().join("dir/c.parquet"),
        vec![("text", pq::strings(&[Some("c")]))],
    );
    let (sum, out) = env
        .run(&Dataset, &[("path", p("dir")), ("format", s("text"))], &[])
        .unwrap();
    assert_eq!(sum["files"], 3);
    assert_eq!(
        std::fs::read_to_string(out.join("data.jsonl")).unwrap(),
        "{\"text\":\"a\"}\n{\"text\":\"b\"}\n{\"text\":\"c\"}\n"
    );
    let (_, out) = env
        .run(
            &Dataset,
            &[("path", p("dir/*.jsonl")), ("format", s("text"))],
            &[],
        )
        .unwrap();
    let stats = read_stats(&out).unwrap();
    assert_eq!(
        stats["files"],
        serde_json::json!([{"name": "dir/a.jsonl", "records": 1}, {"name": "dir/b.jsonl", "records": 1}])
    );
}

/// Each bad record gives `file:line: field "…": …` (or `file: row N: …`) and a hint.
#[test]
fn error_messages_name_file_line_and_field() {
    let env = Env::new();
    let cases: &[(&str, &str, &str, &str)] = &[
        ("prompt-completion", "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\", \"completion\": 3}\n", "e.jsonl:2: field \"completion\": expected a string, found a number", ""),
        ("prompt-completion", "{\"prompt\": \"a\"}\n", "e.jsonl:1: field \"completion\": missing (the record has \"prompt\")", "fields completion="),
        ("prompt-completion", "{\"prompt\": \"a\", \"completion\": \"  \"}\n", "e.jsonl:1: field \"completion\": empty string", ""),
        ("text", "{\"text\": \"a\"}\n{\"text\": \"b\",}\n", "e.jsonl:2: invalid JSON: trailing comma (column 14)", "one complete JSON object"),
        ("text", "[{\"text\": \"a\"}]\n", "e.jsonl:1: expected a JSON object, found a list", ""),
        ("messages", "{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}\n", "e.jsonl:1: field \"messages[0].role\": unknown role \"bot\"", "roles are system, user, assistant, tool"),
        ("messages", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n", "e.jsonl:1: field \"messages\": no assistant turn", "assistant"),
        ("messages", "{\"messages\": \"hi\"}\n", "e.jsonl:1: field \"messages\": expected a list of messages, found a string", ""),
        ("preference", "{\"prompt\": \"p\", \"chosen\": \"x\", \"rejected\": \"x\"}\n", "e.jsonl:1: fields \"chosen\" and \"rejected\" are identical", ""),
        ("preference", "{\"prompt\": \"p\", \"chosen\": \"x\", \"rejected\": 1}\n", "e.jsonl:1: field \"rejected\": expected a string or a list of messages, found a number", ""),
    ];
    for (format, text, msg, hint) in cases {
        env.write("e.jsonl", text);
        let (m, h) = env.user_err(
            &Dataset,
            &[("path", p("e.jsonl")), ("format", s(format))],
            &[],
        );
        assert_eq!(&m, msg, "format {format}, data {text}");
        assert!(h.contains(hint), "hint {h:?} lacks {hint:?}");
    }
}

#[test]
fn parquet_column_errors() {
    let env = Env::new();
    pq::write(
        &env.root().join("x.parquet"),
        vec![
            ("question", pq::strings(&[Some("a")])),
            ("answer", pq::strings(&[Some("b")])),
        ],
    );
    let (m, h) = env.user_err(
        &Dataset,
        &[("path", p("x.parquet")), ("format", s("prompt-completion"))],
        &[],
    );
    assert_eq!(
        m,
        "x.parquet: column \"prompt\" not found (columns: \"question\", \"answer\")"
    );
    assert!(h.contains("fields prompt="), "{h}");
    pq::write(
        &env.root().join("y.parquet"),
        vec![
            ("prompt", pq::strings(&[Some("a")])),
            ("completion", pq::ints(&[5])),
        ],
    );
    let (m, _) = env.user_err(
        &Dataset,
        &[("path", p("y.parquet")), ("format", s("prompt-completion"))],
        &[],
    );
    assert_eq!(m, "y.parquet: column \"completion\" has type Int64; format prompt-completion needs a string column");
    pq::write(
        &env.root().join("z.parquet"),
        vec![
            ("prompt", pq::strings(&[Some("a"), Some("b")])),
            ("completion", pq::strings(&[Some("c"), None])),
        ],
    );
    let (m, _) = env.user_err(
        &Dataset,
        &[("path", p("z.parquet")), ("format", s("prompt-completion"))],
        &[],
    );
    assert!(
        m.starts_with("z.parquet: row 1: field \"completion\": missing"),
        "{m}"
    );
}

#[test]
fn missing_inputs_are_user_errors() {
    let env = Env::new();
    let (m, _) = env.user_err(
        &Dataset,
        &[("path", p("data/*.jsonl")), ("format", s("text"))],
        &[],
    );
    assert_eq!(m, "no file matches `data/*.jsonl`");
    let (m, _) = env.user_err(
        &Dataset,
        &[("path", p("nope.jsonl")), ("format", s("text"))],
        &[],
    );
    assert_eq!(m, "`nope.jsonl` does not exist");
    env.write("empty.jsonl", "\n\n");
    let (m, _) = env.user_err(
        &Dataset,
        &[("path", p("empty.jsonl")), ("format", s("text"))],
        &[],
    );
    assert_eq!(m, "empty.jsonl: no records (the file is empty)");
}

#[test]
fn skip_invalid_counts_reasons_and_keeps_the_rest() {
    let env = Env::new();
    env.write(
        "s.jsonl",
        "{\"prompt\": \"a\", \"completion\": \"b\"}\nnot json\n{\"prompt\": \"a\"}\n{\"prompt\": \"a\", \"completion\": 1}\n{\"prompt\": \"c\", \"completion\": \"d\"}\n{\"prompt\": \"a\"}\n",
    );
    let (m, h) = env.user_err(
        &Dataset,
        &[("path", p("s.jsonl")), ("format", s("prompt-completion"))],
        &[],
    );
    assert!(m.starts_with("s.jsonl:2: invalid JSON"), "{m}");
    assert!(
        h.contains("3 more invalid records (e.g. s.jsonl:3, s.jsonl:4, s.jsonl:6)"),
        "{h}"
    );
    let (sum, out) = env
        .run(
            &Dataset,
            &[
                ("path", p("s.jsonl")),
                ("format", s("prompt-completion")),
                ("skip-invalid", b(true)),
            ],
            &[],
        )
        .unwrap();
    assert_eq!(sum["records"], 2);
    assert_eq!(sum["skipped"], 4);
    let stats = read_stats(&out).unwrap();
    assert_eq!(
        stats["skipped"],
        serde_json::json!({"invalid-json": 1, "missing-field": 2, "wrong-type": 1})
    );
    assert_eq!(stats["skipped_examples"][0]["location"], "s.jsonl:2");
    assert_eq!(stats["skipped_examples"].as_array().unwrap().len(), 4);
    // every record invalid: an error even with skip-invalid
    env.write("all.jsonl", "{\"x\": 1}\n{\"x\": 2}\n");
    let (m, h) = env.user_err(
        &Dataset,
        &[
            ("path", p("all.jsonl")),
            ("format", s("text")),
            ("skip-invalid", b(true)),
        ],
        &[],
    );
    assert!(m.starts_with("all.jsonl:1: field \"text\": missing"), "{m}");
    assert!(h.contains("all 2 records are invalid"), "{h}");
}

#[test]
fn schema_is_accepted_by_the_dsl() {
    let env = Env::new();
    env.write("data/qa.parquet", "");
    env.write("x.jsonl", "");
    let ok = "dataset qa path=\"data/qa.parquet\" format=prompt-completion skip-invalid=#true {\n    fields prompt=\"question\" completion=\"answer\"\n}\n";
    assert_eq!(check_messages(env.root(), ok), Vec::<String>::new());
    let bad = check_messages(env.root(), "dataset d path=\"x.jsonl\" format=csv\n");
    assert_eq!(bad.len(), 1, "{bad:?}");
}

/// Regenerates the Parquet files of the bad-input corpus (`tests/bad/data/`):
/// `cargo test --release -p temper-recipes --test all -- --ignored regenerate`.
#[test]
#[ignore]
fn regenerate_bad_parquet_fixtures() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/bad/data");
    pq::write(
        &dir.join("qa-missing-column.parquet"),
        vec![
            ("question", pq::strings(&[Some("What is 2+2?")])),
            ("answer", pq::strings(&[Some("4")])),
        ],
    );
    pq::write(
        &dir.join("qa-int-completion.parquet"),
        vec![
            ("prompt", pq::strings(&[Some("What is 2+2?")])),
            ("completion", pq::ints(&[4])),
        ],
    );
}
