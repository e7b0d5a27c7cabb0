//! `executor NAME { … }` blocks and a node's `resources { … }`: cluster settings read into
//! `Recipe::executors` / `NodeDecl::resources`, never into parameters (so never into keys),
//! and located errors for malformed blocks.
use crate::common;

use dsl::{
    expand, load, load_str, Diagnostics, KindSchema, Loc, ParamSpec, ParamType, Recipe, Registry,
    Value,
};
use std::fs;
use std::path::Path;
use tempfile::TempDir;

const HEAD: &str = r#"
dataset d path="data/t.jsonl" format=text
tokenizer tok vocab-size=8 { data d }
model base tokenizer=tok
"#;

const SLURM: &str = r#"
executor slurm {
    partition "gpu"
    account "proj42"
    time "04:00:00"
    qos "normal"
    gpus-per-node 8
    cpus-per-task 16
    mem "64G"
    signal "USR2"
    extra "--constraint=h100" "--exclusive"
    kind sft {            // a rule by kind: overrides for every node of kind `sft`
        time "12:00:00"
        gpus-per-node 8
    }
}
"#;

/// The test registry plus a small `sft` kind.
fn registry() -> Registry {
    let mut reg = common::registry();
    reg.register(
        KindSchema::new("sft", 1, "model")
            .param(ParamSpec::new("model", ParamType::Ref(&["model"])))
            .param(ParamSpec::new("data", ParamType::Ref(&["dataset"])))
            .param(
                ParamSpec::new(
                    "steps",
                    ParamType::Int {
                        min: Some(1),
                        max: None,
                    },
                )
                .default(Value::Int(10)),
            ),
    );
    reg
}

fn project() -> TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("data")).unwrap();
    fs::write(d.path().join("data/t.jsonl"), "{}").unwrap();
    d
}

fn try_load(body: &str) -> Result<Recipe, Diagnostics> {
    let d = project();
    load_str(
        "main.kdl",
        &format!("{HEAD}{body}"),
        d.path(),
        &registry(),
        &[],
    )
}

fn ok(body: &str) -> Recipe {
    try_load(body).unwrap_or_else(|e| panic!("{}", e.render()))
}

fn errs(body: &str) -> Diagnostics {
    match try_load(body) {
        Ok(_) => panic!("expected errors for:\n{body}"),
        Err(e) => e,
    }
}

/// 1-based line of the `nth` (0-based) occurrence of `marker` in the loaded text.
fn line_of(body: &str, marker: &str, nth: usize) -> usize {
    let text = format!("{HEAD}{body}");
    let at = text
        .match_indices(marker)
        .nth(nth)
        .unwrap_or_else(|| panic!("{marker:?} #{nth} not in the recipe"))
        .0;
    text[..at].matches('\n').count() + 1
}

/// Exactly one error, containing `phrase`, at the line of the `nth` `marker`.
#[track_caller]
fn assert_error_at(body: &str, phrase: &str, marker: &str, nth: usize) -> Diagnostics {
    let e = errs(body);
    assert_eq!(e.len(), 1, "expected one error:\n{}", e.render());
    let d = &e.errors()[0];
    assert!(
        d.message().contains(phrase),
        "{phrase:?} not in:\n{}",
        e.render()
    );
    let want = format!("main.kdl:{}:", line_of(body, marker, nth));
    let loc = d.location().unwrap_or_default();
    assert!(
        loc.starts_with(&want),
        "at {loc}, want {want}:\n{}",
        e.render()
    );
    e
}

fn text_at(r: &Recipe, loc: Loc) -> &str {
    let s = loc.span;
    &r.sources[loc.file].text[s.offset()..s.offset() + s.len()]
}

#[test]
fn parses_the_executor_block() {
    let r = ok(SLURM);
    assert_eq!(r.executors.len(), 1);
    let ex = r.executor("slurm").unwrap();
    assert_eq!(ex.name, "slurm");
    assert_eq!(text_at(&r, ex.loc), "slurm");
    let names: Vec<&str> = ex.settings.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "partition",
            "account",
            "time",
            "qos",
            "gpus-per-node",
            "cpus-per-task",
            "mem",
            "signal",
            "extra"
        ]
    );
    let get = |n: &str| ex.settings.iter().find(|s| s.name == n).unwrap();
    assert_eq!(get("gpus-per-node").values, [Value::Int(8)]);
    assert_eq!(get("cpus-per-task").values, [Value::Int(16)]);
    assert_eq!(get("time").values, [Value::Str("04:00:00".into())]);
    let extra = get("extra");
    assert_eq!(
        extra.values,
        [
            Value::Str("--constraint=h100".into()),
            Value::Str("--exclusive".into())
        ]
    );
    assert_eq!(
        text_at(&r, extra.loc),
        r#"extra "--constraint=h100" "--exclusive""#
    );
    assert_eq!(text_at(&r, extra.value_loc), r#""--constraint=h100""#);
    assert_eq!(ex.rules.len(), 1);
    let rule = &ex.rules[0];
    assert_eq!(rule.kind, "sft");
    assert_eq!(text_at(&r, rule.loc), "sft");
    let rs: Vec<(&str, &[Value])> = rule
        .settings
        .iter()
        .map(|s| (s.name.as_str(), s.values.as_slice()))
        .collect();
    assert_eq!(
        rs,
        [
            ("time", &[Value::Str("12:00:00".into())][..]),
            ("gpus-per-node", &[Value::Int(8)][..])
        ]
    );
    // Nothing of the block reaches a node.
    assert!(r.nodes.iter().all(|n| n.resources.is_empty()));
}

#[test]
fn values_keep_their_types_and_blocks_may_be_empty() {
    let r = ok(r#"
executor slurm { ratio 0.5; requeue #true; big -3; name "x" 1 #false }
executor local {}
"#);
    let names: Vec<&str> = r.executors.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["slurm", "local"]);
    let s = &r.executors[0].settings;
    assert_eq!(s[0].values, [Value::Float(0.5)]);
    assert_eq!(s[1].values, [Value::Bool(true)]);
    assert_eq!(s[2].values, [Value::Int(-3)]);
    assert_eq!(
        s[3].values,
        [Value::Str("x".into()), Value::Int(1), Value::Bool(false)]
    );
    assert!(r.executors[1].settings.is_empty() && r.executors[1].rules.is_empty());
}

const TUNED: &str = r#"
sft tuned model=base data=d {
    steps 5
    resources { gpus-per-node 8; time "12:00:00" }
}
"#;

const TUNED_PLAIN: &str = r#"
sft tuned model=base data=d {
    steps 5
}
"#;

#[test]
fn resources_are_not_parameters_and_keys_cannot_change() {
    let with = ok(TUNED);
    let without = ok(TUNED_PLAIN);
    let n = with.node("tuned").unwrap();
    assert!(!n.params.contains_key("resources"));
    assert!(!n.param_locs.contains_key("resources"));
    assert_eq!(n.params["steps"], Value::Int(5));
    let rs: Vec<(&str, &[Value])> = n
        .resources
        .iter()
        .map(|s| (s.name.as_str(), s.values.as_slice()))
        .collect();
    assert_eq!(
        rs,
        [
            ("gpus-per-node", &[Value::Int(8)][..]),
            ("time", &[Value::Str("12:00:00".into())][..])
        ]
    );
    assert_eq!(text_at(&with, n.resources[1].loc), r#"time "12:00:00""#);
    assert_eq!(text_at(&with, n.resources[1].value_loc), r#""12:00:00""#);
    assert_eq!(n.params, without.node("tuned").unwrap().params);
    assert!(without.node("tuned").unwrap().resources.is_empty());
    let (a, b) = (expand(&with).unwrap(), expand(&without).unwrap());
    assert_eq!(a.instances.len(), b.instances.len());
    for (x, y) in a.instances.iter().zip(&b.instances) {
        assert_eq!((&x.id, &x.params, &x.inputs), (&y.id, &y.params, &y.inputs));
    }
}

#[test]
fn resources_work_in_repeat_generated_nodes() {
    let r = ok(r#"
repeat 2 phase-0=base {
    sft "phase-{i}" model="phase-{prev}" data=d {
        resources { time "{i}:00:00"; gpus-per-node 4 }
    }
}
"#);
    for (name, time) in [("phase-1", "1:00:00"), ("phase-2", "2:00:00")] {
        let n = r.node(name).unwrap();
        assert!(!n.params.contains_key("resources"));
        assert_eq!(n.resources[0].name, "time");
        assert_eq!(n.resources[0].values, [Value::Str(time.into())]);
        assert_eq!(n.resources[1].values, [Value::Int(4)]);
    }
    let e = assert_error_at(
        "repeat 2 { executor slurm {} }",
        "`executor` is not allowed inside `repeat`",
        "executor",
        0,
    );
    assert!(e.render().contains("move the `executor` to the top level"));
}

#[test]
fn executor_errors_are_located() {
    assert_error_at(
        "\nexecutor {\n    partition \"gpu\"\n}",
        "`executor` needs a name",
        "executor",
        0,
    );
    assert_error_at(
        "\nexecutor slurm {\n    partition \"gpu\" part=1\n}",
        "setting `partition` takes no property `part`",
        "part=1",
        0,
    );
    assert_error_at(
        "\nexecutor slurm {\n    kind sft {\n        kind sft { time \"1\" }\n    }\n}",
        "a `kind` rule cannot hold another `kind` rule",
        "kind",
        1,
    );
    assert_error_at(
        "\nexecutor slurm {\n    time \"1\"\n    partition\n}",
        "setting `partition` in `executor slurm` needs a value",
        "partition",
        0,
    );
    let e = assert_error_at(
        "\nexecutor slurm { time \"1\" }\nexecutor slurm {\n    qos \"x\"\n}",
        "`executor slurm` is declared twice",
        "slurm",
        1,
    );
    let shown = e.render();
    assert!(shown.contains("second `executor slurm` block"), "{shown}");
    assert!(shown.contains("merge them"), "{shown}");
    assert_error_at(
        "\nexecutor slurm {\n    time \"1\"\n    mem \"2G\"\n    time \"2\"\n}",
        "`time` is set twice in `executor slurm`",
        "time",
        1,
    );
    assert_error_at(
        "\nexecutor slurm {\n    kind sft {\n        time \"1\"\n        time \"2\"\n    }\n}",
        "`time` is set twice in `kind sft` of `executor slurm`",
        "time",
        1,
    );
    assert_error_at(
        "\nexecutor slurm {\n    kind sftt { time \"1\" }\n}",
        "unknown node kind `sftt` in `executor slurm`",
        "sftt",
        0,
    );
    assert_error_at(
        "\nexecutor slurm {\n    kind sft { time \"1\" }\n    kind sft { qos \"x\" }\n}",
        "`executor slurm` has two rules for kind `sft`",
        "sft",
        1,
    );
    assert_error_at(
        "\nexecutor slurm {\n    mem #null\n}",
        "`#null` is not a setting value",
        "#null",
        0,
    );
    assert_error_at(
        "\nexecutor slurm {\n    mem \"2G\" { x 1 }\n}",
        "setting `mem` in `executor slurm` takes no block",
        "mem",
        0,
    );
    assert_error_at("\nexecutor slurm", "needs a block of settings", "slurm", 0);
    assert_error_at(
        "\nexecutor slurm \"x\" {}",
        "`executor` takes one name",
        "\"x\"",
        0,
    );
    assert_error_at(
        "\nexecutor slurm when=1 {}",
        "`executor` takes no property `when`",
        "when",
        0,
    );
    assert_error_at(
        "\nexecutor 3 {}",
        "the name of `executor` must be a non-empty string",
        "3",
        0,
    );
}

#[test]
fn resources_errors_are_located() {
    assert_error_at(
        "\nsft tuned model=base data=d {\n    resources { time \"1\" }\n    steps 5\n    resources { qos \"x\" }\n}",
        "`resources` is given twice on `tuned`",
        "resources",
        1,
    );
    assert_error_at(
        "\nsft tuned model=base data=d {\n    resources {\n        kind sft { time \"1\" }\n    }\n}",
        "`kind` rules belong in an `executor` block",
        "kind",
        0,
    );
    assert_error_at(
        "\nsft tuned model=base data=d {\n    resources {\n        time \"1\"\n        time \"2\"\n    }\n}",
        "`time` is set twice in the `resources` of `tuned`",
        "time",
        1,
    );
    assert_error_at(
        "\nsft tuned model=base data=d resources=1",
        "`resources` of `tuned` is a block, not a property",
        "resources",
        0,
    );
    assert_error_at(
        "\nsft tuned model=base data=d {\n    resources\n}",
        "`resources` of `tuned` needs a block of settings",
        "resources",
        0,
    );
}

#[test]
fn errors_are_collected_with_the_other_errors_of_the_file() {
    let e = errs("\nexecutor slurm { time }\nsft tuned model=base data=d bogus=1\n");
    assert_eq!(e.len(), 2, "{}", e.render());
    assert!(e.messages()[0].contains("needs a value"), "{}", e.render());
    assert!(
        e.messages()[1].contains("unknown parameter `bogus`"),
        "{}",
        e.render()
    );
}

fn write(dir: &Path, name: &str, text: &str) {
    fs::write(dir.join(name), text).unwrap();
}

#[test]
fn blocks_in_includes_count_and_diag_at_points_into_them() {
    let d = project();
    write(
        d.path(),
        "cluster.kdl",
        "executor slurm {\n    partition \"gpu\"\n}\n",
    );
    write(
        d.path(),
        "main.kdl",
        &format!("{HEAD}include \"cluster.kdl\"\nexecutor local {{}}\n"),
    );
    let r = load(&d.path().join("main.kdl"), &registry(), &[]).unwrap();
    let names: Vec<&str> = r.executors.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["slurm", "local"]);
    let part = &r.executors[0].settings[0];
    let shown = Diagnostics::from(r.diag_at(
        part.value_loc,
        "unknown partition `gpu`",
        "no such partition",
        Some("partitions: `batch`".into()),
    ))
    .render();
    assert!(shown.contains("cluster.kdl:2:15"), "{shown}");
    assert!(shown.contains("partition \"gpu\""), "{shown}");
    assert!(shown.contains("no such partition"), "{shown}");
    assert!(shown.contains("partitions: `batch`"), "{shown}");

    write(
        d.path(),
        "main.kdl",
        &format!("{HEAD}include \"cluster.kdl\"\nexecutor slurm {{}}\n"),
    );
    let e = load(&d.path().join("main.kdl"), &registry(), &[]).unwrap_err();
    assert_eq!(e.len(), 1, "{}", e.render());
    let shown = e.render();
    assert!(
        shown.contains("`executor slurm` is declared twice"),
        "{shown}"
    );
    assert!(shown.contains("first `executor slurm` block"), "{shown}");
    let line = HEAD.matches('\n').count() + 2;
    assert!(
        e.errors()[0]
            .location()
            .unwrap()
            .contains(&format!("main.kdl:{line}:")),
        "{shown}"
    );
}

#[test]
#[should_panic(expected = "reserved")]
fn no_kind_may_declare_a_resources_parameter() {
    let mut reg = Registry::new();
    reg.register(
        KindSchema::new("bad", 1, "model").param(ParamSpec::new("resources", ParamType::Str)),
    );
}
