//! `repeat N ALIAS=NAME… { … }`: expansion into ordinary chained nodes, aliases for the first
//! iteration, overrides and sweeps on expanded nodes, and diagnostics for bad blocks.
use crate::common;

use dsl::{expand, load_str, Expanded, Recipe, Value};
use std::fs;

const HEAD: &str = r#"
dataset d path="data/t.jsonl" format=text
tokenizer tok vocab-size=8 { data d }
model base tokenizer=tok
"#;

fn load(body: &str, sets: &[&str]) -> Result<Recipe, dsl::Diagnostics> {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("data")).unwrap();
    fs::write(d.path().join("data/t.jsonl"), "{}").unwrap();
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    load_str(
        "main.kdl",
        &format!("{HEAD}{body}"),
        d.path(),
        &common::registry(),
        &sets,
    )
}

fn expanded(body: &str, sets: &[&str]) -> Expanded {
    let r = load(body, sets).unwrap_or_else(|e| panic!("{}", e.render()));
    expand(&r).unwrap()
}

fn model_of(e: &Expanded, id: &str) -> Value {
    e.instance(id).unwrap().params["model"].clone()
}

const CHAIN: &str = r#"
repeat 3 phase-0=base {
    align "phase-{i}" model="phase-{prev}" data=d beta=0.1
}
"#;

#[test]
fn expands_to_a_chain_with_the_alias_starting_it() {
    let e = expanded(CHAIN, &[]);
    let ids: Vec<&str> = e.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["d", "tok", "base", "phase-1", "phase-2", "phase-3"]);
    assert_eq!(model_of(&e, "phase-1"), Value::Ref("base".into()));
    assert_eq!(model_of(&e, "phase-2"), Value::Ref("phase-1".into()));
    assert_eq!(model_of(&e, "phase-3"), Value::Ref("phase-2".into()));
}

#[test]
fn an_override_on_phase_k_changes_only_phase_k() {
    let base = expanded(CHAIN, &[]);
    let set = expanded(CHAIN, &["phase-2.beta=0.3"]);
    for id in ["phase-1", "phase-3"] {
        assert_eq!(
            base.instance(id).unwrap().params,
            set.instance(id).unwrap().params
        );
    }
    assert_eq!(
        set.instance("phase-2").unwrap().params["beta"],
        Value::Float(0.3)
    );
}

#[test]
fn a_sweep_on_a_middle_phase_shares_the_earlier_ones() {
    let e = expanded(&format!("{CHAIN}\nsweep {{ phase-2.beta 0.1 0.2; }}"), &[]);
    let count = |n: &str| e.instances.iter().filter(|i| i.node == n).count();
    assert_eq!(
        (count("phase-1"), count("phase-2"), count("phase-3")),
        (1, 2, 2)
    );
}

#[test]
fn placeholders_reach_children_and_n() {
    let e = expanded(
        r#"repeat 2 { merge "m-{i}-of-{n}" { model base; model "x-{prev}"; } }
           align x-0 model=base data=d
           align x-1 model=base data=d"#,
        &[],
    );
    let m2 = e.instance("m-2-of-2").unwrap();
    assert_eq!(
        m2.params["model"],
        Value::List(vec![Value::Ref("base".into()), Value::Ref("x-1".into())])
    );
}

fn errors(body: &str) -> String {
    match load(body, &[]) {
        Ok(_) => panic!("expected errors for {body}"),
        Err(e) => e.render(),
    }
}

#[test]
fn bad_blocks_are_reported_at_the_template() {
    let e = errors("repeat 0 { align \"a-{i}\" model=base data=d }");
    assert!(
        e.contains("repeat count must be an integer from 1 to 1000"),
        "{e}"
    );
    assert!(e.contains("main.kdl:5:8"), "{e}");
    let e = errors("repeat 2 { align \"a-{j}\" model=base data=d }");
    assert!(e.contains("unknown placeholder `{j}`"), "{e}");
    let e = errors("repeat 2 { sweep { a.beta 1 2; } }");
    assert!(e.contains("`sweep` is not allowed inside `repeat`"), "{e}");
    let e = errors("repeat 2 { align a model=base data=d }");
    assert!(e.contains("a"), "{e}");
    assert!(
        e.to_lowercase().contains("twice") || e.contains("duplicate") || e.contains("already"),
        "{e}"
    );
    let e = errors("repeat 2");
    assert!(e.contains("needs a block of nodes"), "{e}");
    let e = errors("repeat 2 first=1 { align \"a-{i}\" model=base data=d }");
    assert!(e.contains("alias `first` must name a node"), "{e}");
}
