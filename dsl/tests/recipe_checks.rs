//! Recipe-wide checks (`KindSchema::check_in_recipe`): they see the other nodes, the recipe's
//! directory and the machine the load was told of; their errors fail the load and their
//! warnings, located like errors (a record's field at its value), are kept in
//! `Recipe::warnings`.
use crate::common;

use dsl::{
    load_str_with, CheckContext, Diagnostics, Findings, KindSchema, LoadOptions, NodeDecl,
    ParamIssue, ParamSpec, ParamType, Value,
};

/// `train`: `model=` a `model` node, `workers N`, an `adapter` record with a `size` field and a
/// `config` JSON file. Its recipe-wide check warns when `adapter.size` exceeds the model's
/// `hidden-size`, refuses more `workers` than the machine's cores (when known), and warns with
/// what `config` holds (or that it could not be read).
fn check(n: &NodeDecl, cx: &CheckContext<'_>, f: &mut Findings) {
    if let Some(Value::Path(p)) = n.params.get("config") {
        let said = match cx.json_file(std::path::Path::new(p)) {
            Some(j) => format!("config {j}"),
            None => "config unreadable".into(),
        };
        f.warnings.push(ParamIssue::new(Some("config"), said, None));
    }
    let hidden = match n.params.get("model") {
        Some(Value::Ref(m)) => cx
            .node(m)
            .and_then(|m| m.params.get("hidden-size"))
            .and_then(Value::as_i64),
        _ => None,
    };
    let size = n
        .params
        .get("adapter")
        .and_then(Value::as_record)
        .and_then(|r| r.get("size"))
        .and_then(Value::as_i64);
    if let (Some(h), Some(s)) = (hidden, size) {
        if s > h {
            f.warnings.push(ParamIssue::new(
                Some("adapter.size"),
                format!("size {s} is above hidden-size {h}"),
                Some("lower it"),
            ));
        }
    }
    let workers = n.params.get("workers").and_then(Value::as_i64).unwrap_or(1);
    if let Some(cores) = cx.machine.cpu_cores {
        if workers as usize > cores {
            f.errors.push(ParamIssue::new(
                Some("workers"),
                format!("{workers} workers on {cores} core(s)"),
                None,
            ));
        }
    }
}

fn registry() -> dsl::Registry {
    let mut r = common::registry();
    let int = || ParamType::Int {
        min: Some(1),
        max: None,
    };
    r.register(
        KindSchema::new("train", 1, "model")
            .param(ParamSpec::new("model", ParamType::Ref(&["model"])))
            .param(ParamSpec::new("workers", int()).default(Value::Int(1)))
            .param(ParamSpec::new("config", ParamType::Path).optional())
            .param(
                ParamSpec::new(
                    "adapter",
                    ParamType::Record {
                        positional: &[],
                        fields: vec![ParamSpec::new("size", int()).default(Value::Int(8))],
                    },
                )
                .optional(),
            )
            .check_in_recipe(check),
    );
    r
}

const BASE: &str = "dataset corpus path=\"t.jsonl\" format=text\n\
                    tokenizer tok vocab-size=512 { data corpus; }\n\
                    model tiny tokenizer=tok hidden-size=64\n";

fn load(text: &str, opts: &LoadOptions) -> Result<dsl::Recipe, Diagnostics> {
    load_in(&tempfile::tempdir().unwrap(), text, opts)
}

fn load_in(
    d: &tempfile::TempDir,
    text: &str,
    opts: &LoadOptions,
) -> Result<dsl::Recipe, Diagnostics> {
    std::fs::write(d.path().join("t.jsonl"), "{}\n").unwrap();
    load_str_with("main.kdl", text, d.path(), &registry(), &[], opts)
}

#[test]
fn json_files_are_read_within_bounds() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(p.join("ok.json"), r#"{"hidden": 64}"#).unwrap();
    std::fs::write(p.join("bad.json"), "{ not json").unwrap();
    let big = format!("[{}0]", "0,".repeat(600_000));
    std::fs::write(p.join("big.json"), big).unwrap();
    std::fs::create_dir(p.join("dir.json")).unwrap();
    // A FIFO nobody writes to: reading it would block the load forever.
    let fifo = std::process::Command::new("mkfifo")
        .arg(p.join("fifo.json"))
        .status()
        .is_ok_and(|s| s.success());
    let mut files = vec!["ok.json", "bad.json", "big.json", "dir.json"];
    if fifo {
        files.push("fifo.json");
    }
    let text: String = files
        .iter()
        .enumerate()
        .map(|(i, f)| format!("train t{i} model=tiny config=\"{f}\"\n"))
        .collect();
    let r = load_in(&d, &format!("{BASE}{text}"), &LoadOptions::default()).unwrap();
    let said: Vec<&str> = r.warnings.iter().map(|w| w.message()).collect();
    let mut want = vec!["`t0`: config {\"hidden\":64}".to_string()];
    for i in 1..files.len() {
        want.push(format!("`t{i}`: config unreadable"));
    }
    assert_eq!(said, want);
}

#[test]
fn warnings_are_located_at_a_record_field_and_do_not_fail_the_load() {
    // Property form, then block form: each warning points at the value of `size`.
    for (text, col) in [
        (
            format!("{BASE}train t model=tiny {{ adapter size=100; }}\n"),
            35,
        ),
        (
            format!("{BASE}train t model=tiny {{\n    adapter {{\n        size 100\n    }}\n}}\n"),
            14,
        ),
    ] {
        let r = load(&text, &LoadOptions::default()).expect("a warning never fails a load");
        assert_eq!(r.warnings.len(), 1);
        let w = &r.warnings[0];
        assert_eq!(w.message(), "`t`: size 100 is above hidden-size 64");
        let line = text[..text.find("100").unwrap()].lines().count();
        assert_eq!(w.location().unwrap(), format!("main.kdl:{line}:{col}"));
        let shown = Diagnostics::render_warnings(&r.warnings);
        assert!(
            shown.contains("⚠ `t`: size 100 is above hidden-size 64"),
            "{shown}"
        );
        assert!(
            shown.contains(&format!("[main.kdl:{line}:{col}]")),
            "{shown}"
        );
        assert!(shown.ends_with("1 warning\n"), "{shown}");
    }
    // Without the record nothing is said.
    let r = load(
        &format!("{BASE}train t model=tiny\n"),
        &LoadOptions::default(),
    )
    .unwrap();
    assert!(r.warnings.is_empty());
    assert_eq!(Diagnostics::render_warnings(&r.warnings), "");
}

#[test]
fn only_the_first_warnings_are_drawn() {
    let text: String = (0..60)
        .map(|i| format!("train t{i} model=tiny {{ adapter size=100; }}\n"))
        .collect();
    let r = load(&format!("{BASE}{text}"), &LoadOptions::default()).unwrap();
    assert_eq!(r.warnings.len(), 60);
    let shown = Diagnostics::render_warnings(&r.warnings);
    assert_eq!(shown.matches('⚠').count(), 50, "{shown}");
    assert!(
        shown.ends_with("… and 10 more warnings (only the first 50 are shown)\n60 warnings\n"),
        "{shown}"
    );
}

#[test]
fn the_machine_is_what_the_load_was_told() {
    let text = format!("{BASE}train t model=tiny workers=64\n");
    // Unknown machine (inspecting, or a cluster run): nothing to check against.
    assert!(load(&text, &LoadOptions::default()).is_ok());
    let two = LoadOptions {
        cpu_cores: Some(2),
        ..LoadOptions::default()
    };
    let e = load(&text, &two).unwrap_err();
    assert_eq!(e.len(), 1, "{}", e.render());
    assert_eq!(e.errors()[0].message(), "`t`: 64 workers on 2 core(s)");
    assert_eq!(e.errors()[0].location().unwrap(), "main.kdl:4:20");
    assert!(load(&text.replace("workers=64", "workers=2"), &two).is_ok());
}

#[test]
fn nodes_with_errors_are_not_checked_in_the_recipe() {
    // `t`'s model reference is wrong: its own error only, no cascade from the check.
    let text = format!("{BASE}train t model=corpus workers=64\n");
    let two = LoadOptions {
        cpu_cores: Some(2),
        ..LoadOptions::default()
    };
    let e = load(&text, &two).unwrap_err();
    assert_eq!(e.len(), 1, "{}", e.render());
    assert!(
        e.messages()[0].contains("expects a model node"),
        "{}",
        e.render()
    );
}
