//! Parsing and validation: every language rule, on recipes in temp directories.
use crate::common;

use dsl::{load, load_str, Diagnostics, Recipe, Value};
use std::fs;
use std::path::Path;
use tempfile::TempDir;

/// A project dir with small data files and a model dir.
fn project() -> TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("data/qa")).unwrap();
    fs::create_dir_all(d.path().join("models/smol")).unwrap();
    fs::write(d.path().join("data/text.jsonl"), "{\"text\": \"hi\"}\n").unwrap();
    fs::write(d.path().join("data/chat.jsonl"), "{\"messages\": []}\n").unwrap();
    d
}

fn ok(dir: &Path, text: &str) -> Recipe {
    match load_str("main.kdl", text, dir, &common::registry(), &[]) {
        Ok(r) => r,
        Err(e) => panic!("unexpected errors:\n{}", e.render()),
    }
}

fn errs(dir: &Path, text: &str, sets: &[&str]) -> Diagnostics {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    match load_str("main.kdl", text, dir, &common::registry(), &sets) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e,
    }
}

const BASE: &str = r#"
dataset corpus path="data/text.jsonl" format=text
dataset chat path="data/chat.jsonl" format=messages
tokenizer tok vocab-size=512 { data corpus; data chat }
model tiny tokenizer=tok hidden-size=64 layers=2 heads=4 kv-heads=2 intermediate-size=128 seed=0
"#;

fn has(e: &Diagnostics, phrase: &str) -> bool {
    e.messages().iter().any(|m| m.contains(phrase))
}

#[track_caller]
fn assert_one(e: &Diagnostics, phrase: &str) {
    assert_eq!(e.len(), 1, "expected one error, got:\n{}", e.render());
    assert!(
        has(e, phrase),
        "no error containing {phrase:?}:\n{}",
        e.render()
    );
}

#[test]
fn valid_recipe_fills_defaults_and_types() {
    let p = project();
    let r = ok(p.path(), BASE);
    assert_eq!(r.nodes.len(), 4);
    let tok = r.node("tok").unwrap();
    assert_eq!(
        tok.params["data"],
        Value::List(vec![Value::Ref("corpus".into()), Value::Ref("chat".into())])
    );
    assert_eq!(tok.params["min-frequency"], Value::Int(2));
    assert_eq!(tok.params["path"], Value::Null);
    assert_eq!(tok.params["special-tokens"].as_list().unwrap().len(), 4);
    assert_eq!(tok.params["device"], Value::Str("auto".into()));
    let m = r.node("tiny").unwrap();
    assert_eq!(m.params["tokenizer"], Value::Ref("tok".into()));
    assert_eq!(m.params["rope-theta"], Value::Float(10000.0));
    assert_eq!(m.params["kv-heads"], Value::Int(2));
    assert!(m.param_locs.contains_key("seed") && !m.param_locs.contains_key("arch"));
    let ds = r.node("corpus").unwrap();
    assert_eq!(ds.params["path"], Value::Path("data/text.jsonl".into()));
    assert_eq!(ds.params["fields"], Value::Null);
}

#[test]
fn property_and_child_forms_are_equal() {
    let p = project();
    let a = ok(
        p.path(),
        "dataset d path=\"data/text.jsonl\" format=text skip-invalid=#true",
    );
    let b = ok(
        p.path(),
        "dataset d {\n  format text\n  skip-invalid #true\n  path \"data/text.jsonl\"\n}",
    );
    assert_eq!(a.nodes[0].params, b.nodes[0].params);
}

#[test]
fn float_accepts_int_and_int_rejects_float() {
    let p = project();
    let r = ok(
        p.path(),
        &format!("{BASE}\nmodel m2 tokenizer=tok rope-theta=500 init-std=1"),
    );
    assert_eq!(
        r.node("m2").unwrap().params["rope-theta"],
        Value::Float(500.0)
    );
    let e = errs(
        p.path(),
        &format!("{BASE}\nmodel m2 tokenizer=tok layers=2.0"),
        &[],
    );
    assert_one(&e, "`m2.layers` expects an integer, found number 2.0");
    assert!(e.render().contains("write it without a decimal point: `2`"));
}

#[test]
fn bool_enum_and_range_errors_have_hints() {
    let p = project();
    let e = errs(
        p.path(),
        "dataset d path=\"data/text.jsonl\" format=text skip-invalid=\"yes\"",
        &[],
    );
    assert_one(&e, "expects a boolean");
    assert!(e.render().contains("write `#true`"));
    // Bare `true` is a KDL 2.0 syntax error; the hint says how to write it.
    let e = errs(
        p.path(),
        "dataset d path=\"data/text.jsonl\" format=text skip-invalid=true",
        &[],
    );
    assert!(has(&e, "KDL syntax error"), "{}", e.render());
    assert!(e.render().contains("write `#true`"), "{}", e.render());
    let e = errs(
        p.path(),
        "dataset d path=\"data/text.jsonl\" format=mesages",
        &[],
    );
    assert_one(&e, "unknown value `mesages`");
    assert!(e.render().contains("did you mean `messages`?"));
    let e = errs(
        p.path(),
        &format!("{BASE}\nmodel m2 tokenizer=tok layers=0"),
        &[],
    );
    assert_one(&e, "`m2.layers` must be at least 1, found 0");
}

#[test]
fn paths_are_checked_and_rebased_on_the_root_directory() {
    let p = project();
    fs::create_dir_all(p.path().join("sub/data")).unwrap();
    fs::write(p.path().join("sub/data/x.jsonl"), "{}").unwrap();
    fs::write(
        p.path().join("sub/part.kdl"),
        "dataset x path=\"data/x.jsonl\" format=text\ndataset g path=\"../data/qa/*.parquet\" format=text\ndataset a path=\"/etc\" format=text",
    )
    .unwrap();
    let r = ok(p.path(), "include \"sub/part.kdl\"");
    assert_eq!(
        r.node("x").unwrap().params["path"],
        Value::Path("sub/data/x.jsonl".into())
    );
    assert_eq!(
        r.node("g").unwrap().params["path"],
        Value::Path("data/qa/*.parquet".into())
    );
    assert_eq!(
        r.node("a").unwrap().params["path"],
        Value::Path("/etc".into())
    );
    assert_eq!(r.sources.len(), 2);
    assert_eq!(r.sources[1].name, "sub/part.kdl");
    let e = errs(
        p.path(),
        "dataset d path=\"data/missing.jsonl\" format=text",
        &[],
    );
    assert_one(&e, "`d.path`: file not found: data/missing.jsonl");
}

#[test]
fn references_unknown_and_wrong_kind() {
    let p = project();
    let e = errs(
        p.path(),
        &BASE.replace("tokenizer=tok", "tokenizer=tokk"),
        &[],
    );
    assert_one(&e, "refers to unknown node `tokk`");
    assert!(e.render().contains("did you mean `tok`?"));
    let e = errs(
        p.path(),
        &BASE.replace("tokenizer=tok", "tokenizer=chat"),
        &[],
    );
    assert_one(
        &e,
        "`tokenizer` of `tiny` expects a tokenizer node, but `chat` is a `dataset` node",
    );
}

#[test]
fn unknown_param_missing_required_and_duplicates() {
    let p = project();
    let e = errs(
        p.path(),
        "dataset d path=\"data/text.jsonl\" format=text skip-invalids=#true",
        &[],
    );
    assert_one(&e, "unknown parameter `skip-invalids` for `d`");
    let r = e.render();
    assert!(
        r.contains("did you mean `skip-invalid`?") && r.contains("`dataset` parameters:"),
        "{r}"
    );
    let e = errs(p.path(), "dataset d path=\"data/text.jsonl\"", &[]);
    assert_one(&e, "`d` is missing required parameter `format`");
    let e = errs(
        p.path(),
        "dataset d path=\"data/text.jsonl\" format=text { format text }",
        &[],
    );
    assert_one(&e, "`format` is set twice on `d`");
    assert!(e.render().contains("first set here"));
    let e = errs(p.path(), "dataset d path=\"data/text.jsonl\" format=text\ndataset d path=\"data/text.jsonl\" format=text", &[]);
    assert_one(&e, "duplicate node name `d`");
}

#[test]
fn unknown_kind_does_not_cascade() {
    let p = project();
    let e = errs(
        p.path(),
        "datset d path=\"data/text.jsonl\" format=text\ntokenizer t vocab-size=8 { data d }",
        &[],
    );
    assert_one(&e, "unknown node kind `datset`");
    let r = e.render();
    assert!(
        r.contains("did you mean `dataset`?") && r.contains("known kinds:"),
        "{r}"
    );
}

#[test]
fn cycles_report_the_whole_path() {
    let p = project();
    let e = errs(p.path(), "tokenizer t from=m\nmodel m tokenizer=t", &[]);
    assert_one(&e, "reference cycle: t → m → t");
    let three = "dataset d path=\"data/text.jsonl\" format=text\nalign a model=c data=d\nalign b model=a data=d\nalign c model=b data=d";
    let e = errs(p.path(), three, &[]);
    assert_one(&e, "reference cycle: a → c → b → a");
}

#[test]
fn includes_merge_detect_duplicates_cycles_and_missing_files() {
    let p = project();
    fs::write(
        p.path().join("base.kdl"),
        "dataset corpus path=\"data/text.jsonl\" format=text",
    )
    .unwrap();
    let r = ok(
        p.path(),
        "include \"base.kdl\"\ntokenizer t vocab-size=8 { data corpus }",
    );
    assert_eq!(r.nodes.len(), 2);
    let e = errs(
        p.path(),
        "include \"base.kdl\"\ndataset corpus path=\"data/text.jsonl\" format=text",
        &[],
    );
    assert_one(&e, "duplicate node name `corpus`");
    let r = e.render();
    assert!(
        r.contains("[main.kdl:2:9]") && r.contains("[base.kdl:1:9]"),
        "{r}"
    );
    fs::write(p.path().join("a.kdl"), "include \"b.kdl\"").unwrap();
    fs::write(p.path().join("b.kdl"), "include \"a.kdl\"").unwrap();
    let e = errs(p.path(), "include \"a.kdl\"", &[]);
    assert_one(&e, "include cycle: a.kdl → b.kdl → a.kdl");
    let e = errs(p.path(), "include \"nope.kdl\"", &[]);
    assert_one(&e, "cannot read included file `nope.kdl`");
}

#[test]
fn sweep_axes_validate() {
    let p = project();
    let r = ok(p.path(), &format!("{BASE}\nsweep {{ tiny.layers 1 2 3; zip {{ tiny.seed 0 1; tok.vocab-size 300 400 }} }}"));
    assert_eq!(r.axes.len(), 2);
    assert_eq!(r.axes[1].members.len(), 2);
    assert_eq!(
        r.axes[0].members[0].values,
        vec![Value::Int(1), Value::Int(2), Value::Int(3)]
    );
    let cases = [
        ("sweep { tny.layers 1 2 }", "names unknown node `tny`"),
        ("sweep { tiny.layer 1 2 }", "has no parameter `layer`"),
        (
            "sweep { tiny.device \"cpu\" \"cuda\" }",
            "cannot sweep `tiny.device`",
        ),
        (
            "sweep { zip { tiny.layers 1 2; tiny.seed 1 2 3 } }",
            "same number of values",
        ),
        (
            "sweep { tiny.layers 1 2.5 }",
            "`tiny.layers` expects an integer",
        ),
        (
            "sweep { tiny.layers 1 2; tiny.layers 3 }",
            "`tiny.layers` is swept twice",
        ),
        ("sweep { tiny.layers 1 1 }", "lists `1` twice"),
        (
            "sweep { tiny.tokenizer tok corpus }",
            "expects a tokenizer node",
        ),
        ("sweep { layers 1 2 }", "must be written `node.param`"),
    ];
    for (sweep, phrase) in cases {
        let e = errs(p.path(), &format!("{BASE}\n{sweep}"), &[]);
        assert_one(&e, phrase);
    }
}

#[test]
fn required_parameter_may_come_from_a_sweep() {
    let p = project();
    let r = ok(
        p.path(),
        &format!("{BASE}\nalign a model=tiny {{ data chat }}\nsweep {{ a.data corpus chat }}"),
    );
    assert_eq!(
        r.node("a").unwrap().params["data"],
        Value::Ref("chat".into())
    );
    let r = ok(
        p.path(),
        &format!("{BASE}\nalign a model=tiny\nsweep {{ a.data corpus chat }}"),
    );
    assert_eq!(
        r.node("a").unwrap().params["data"],
        Value::Ref("corpus".into())
    );
}

#[test]
fn overrides_replace_values_and_sweep_members() {
    let p = project();
    let text = format!("{BASE}\nsweep {{ tiny.layers 1 2; tiny.seed 1 2 }}");
    let reg = common::registry();
    let sets = vec![
        "tiny.layers=7".to_string(),
        "corpus.skip-invalid=#true".to_string(),
    ];
    let r = load_str("main.kdl", &text, p.path(), &reg, &sets).unwrap();
    assert_eq!(r.node("tiny").unwrap().params["layers"], Value::Int(7));
    assert_eq!(
        r.node("corpus").unwrap().params["skip-invalid"],
        Value::Bool(true)
    );
    assert_eq!(r.axes.len(), 1);
    assert_eq!(r.axes[0].members[0].param, "seed");
    let r = load_str(
        "main.kdl",
        BASE,
        p.path(),
        &reg,
        &["tok.special-tokens=a \"b c\"".into()],
    )
    .unwrap();
    assert_eq!(
        r.node("tok").unwrap().params["special-tokens"],
        Value::List(vec![Value::Str("a".into()), Value::Str("b c".into())])
    );
    let e = errs(p.path(), BASE, &["tiny.layers=2.5"]);
    assert_one(&e, "`tiny.layers` expects an integer");
    assert!(e.render().contains("[--set:1:13]"), "{}", e.render());
    let e = errs(p.path(), BASE, &["tinny.layers=2"]);
    assert_one(&e, "--set names unknown node `tinny`");
    assert!(e.render().contains("did you mean `tiny`?"));
    let e = errs(p.path(), BASE, &["tiny.layer=2"]);
    assert_one(&e, "unknown parameter `layer`");
    let e = errs(p.path(), BASE, &["tiny.layers"]);
    assert_one(&e, "bad override");
    let e = errs(p.path(), BASE, &["corpus.skip-invalid=true"]);
    assert!(e.render().contains("write `#true`"), "{}", e.render());
}

#[test]
fn check_fn_issues_point_at_the_parameter() {
    let p = project();
    let e = errs(
        p.path(),
        &format!("{BASE}\nmodel m2 tokenizer=tok hidden-size=64 heads=5"),
        &[],
    );
    assert_one(&e, "`m2`: hidden-size 64 is not divisible by heads 5");
    assert!(e.render().contains("main.kdl:7:39"), "{}", e.render());
    let e = errs(p.path(), "model m path=\"models/smol\" layers=4", &[]);
    assert_one(&e, "size parameters apply only when initialising");
    let e = errs(p.path(), "tokenizer t min-frequency=3", &[]);
    assert_one(&e, "exactly one source");
}

#[test]
fn records_fill_positional_and_named_fields() {
    let p = project();
    let r = ok(
        p.path(),
        "dataset a path=\"data/text.jsonl\" format=text\ndataset b path=\"data/text.jsonl\" format=prompt-completion { fields prompt=\"q\" completion=\"a\" }\nmix m { source a weight=2; source b }",
    );
    let src = r.node("m").unwrap().params["source"]
        .as_list()
        .unwrap()
        .to_vec();
    assert_eq!(src.len(), 2);
    assert_eq!(src[0].as_record().unwrap()["weight"], Value::Float(2.0));
    assert_eq!(src[1].as_record().unwrap()["name"], Value::Ref("b".into()));
    let f = r.node("b").unwrap().params["fields"]
        .as_record()
        .unwrap()
        .clone();
    assert_eq!(f["prompt"], Value::Str("q".into()));
    assert_eq!(f["text"], Value::Null);
    let e = errs(
        p.path(),
        "dataset a path=\"data/text.jsonl\" format=text { fields promt=\"q\" }",
        &[],
    );
    assert_one(&e, "unknown field `promt` in `fields`");
    let e = errs(
        p.path(),
        "dataset a path=\"data/text.jsonl\" format=text fields=\"q\"",
        &[],
    );
    assert_one(&e, "cannot be written as a property");
}

#[test]
fn all_errors_are_reported_at_once_in_source_order() {
    let p = project();
    let text =
        "dataset a path=\"data/nope.jsonl\" format=txt\nmodel m tokenizer=t layers=1.5\nmodle x\n";
    let e = errs(p.path(), text, &[]);
    assert_eq!(e.len(), 5, "{}", e.render());
    let locs: Vec<String> = e.errors().iter().filter_map(|d| d.location()).collect();
    assert_eq!(
        locs,
        [
            "main.kdl:1:16",
            "main.kdl:1:41",
            "main.kdl:2:19",
            "main.kdl:2:28",
            "main.kdl:3:1"
        ]
    );
    assert_eq!(e.render(), errs(p.path(), text, &[]).render());
    assert!(e.render().ends_with("5 errors found\n"));
}

#[test]
fn load_shows_the_path_as_given() {
    let p = project();
    fs::create_dir_all(p.path().join("r")).unwrap();
    fs::write(
        p.path().join("r/inc.kdl"),
        "dataset a path=\"../data/none.jsonl\" format=text",
    )
    .unwrap();
    fs::write(p.path().join("r/main.kdl"), "include \"inc.kdl\"").unwrap();
    let e = match load(&p.path().join("r/main.kdl"), &common::registry(), &[]) {
        Err(e) => e,
        Ok(_) => panic!("expected an error"),
    };
    let shown = format!("{}/r/inc.kdl:1:16", p.path().display());
    assert_eq!(e.errors()[0].location().as_deref(), Some(shown.as_str()));
    let e = match load(Path::new("no/such/recipe.kdl"), &common::registry(), &[]) {
        Err(e) => e,
        Ok(_) => panic!("expected an error"),
    };
    assert_one(&e, "cannot read recipe `no/such/recipe.kdl`");
}

#[test]
fn defaults_block_sets_common_params_where_nodes_do_not() {
    let d = project();
    let text = format!(
        "defaults {{ device cuda:1; threads 3 }}\n{}\nmodel other tokenizer=tok device=cpu {{ threads 1 }}\n",
        BASE
    );
    let r = ok(d.path(), &text);
    let node = |n: &str| r.node(n).unwrap();
    assert_eq!(node("tiny").params["device"], Value::Str("cuda:1".into()));
    assert_eq!(node("corpus").params["threads"], Value::Int(3));
    assert_eq!(node("other").params["device"], Value::Str("cpu".into()));
    assert_eq!(node("other").params["threads"], Value::Int(1));
    // log-every not defaulted: the kind's default stays.
    assert_eq!(node("tiny").params["log-every"], Value::Int(10));
    // Only non-semantic common parameters may be defaulted; mistakes are reported with a hint.
    let e = errs(
        d.path(),
        &format!("defaults {{ seed 3; thread 2; device }}\n{BASE}"),
        &[],
    );
    let m = e.render();
    assert!(m.contains("`defaults` cannot set `seed`"), "{m}");
    assert!(m.contains("did you mean `threads`?"), "{m}");
    assert!(
        m.contains("`device` in `defaults` takes exactly one value"),
        "{m}"
    );
    // A mistyped default is type-checked like the parameter itself.
    let e = errs(
        d.path(),
        &format!("defaults {{ threads many }}\n{BASE}"),
        &[],
    );
    assert!(e.render().contains("threads"), "{}", e.render());
}

fn lora_of(r: &Recipe) -> (i64, Vec<String>) {
    let rec = r.nodes[r.nodes.len() - 1].params["lora"]
        .as_record()
        .unwrap()
        .clone();
    let rank = rec["rank"].as_i64().unwrap();
    let Value::List(t) = &rec["target"] else {
        panic!("target is a list: {rec:?}")
    };
    (
        rank,
        t.iter().map(|v| v.as_str().unwrap().to_string()).collect(),
    )
}

#[test]
fn record_fields_may_be_children_of_a_block() {
    let d = project();
    let r = ok(
        d.path(),
        r#"adapt a { lora rank=4 { target "q" "k"; target "o"; }; }"#,
    );
    assert_eq!(lora_of(&r), (4, vec!["q".into(), "k".into(), "o".into()]));
    let r = ok(d.path(), "adapt a {\n lora {\n rank 2\n }\n}");
    assert_eq!(
        lora_of(&r),
        (2, vec!["q".into()]),
        "unset fields take their default"
    );
    let r = ok(d.path(), "adapt a { lora; }");
    assert_eq!(lora_of(&r), (8, vec!["q".into()]));

    let e = errs(d.path(), r#"adapt a { lora { tagret "q"; }; }"#, &[]);
    assert_one(&e, "unknown field `tagret` in `lora`");
    assert!(
        e.render().contains("did you mean `target`"),
        "{}",
        e.render()
    );
    let e = errs(d.path(), "adapt a { lora { rank 1 2; }; }", &[]);
    assert_one(&e, "field `rank` of `lora` takes one value, found 2");
    let e = errs(d.path(), "adapt a { lora rank=4 { rank 5; }; }", &[]);
    assert_one(&e, "field `rank` of `lora` is set twice");
    let e = errs(d.path(), r#"adapt a { lora { target "q" x=1; }; }"#, &[]);
    assert_one(&e, "takes no property `x`");
    let e = errs(d.path(), r#"adapt a { lora { rank "four"; }; }"#, &[]);
    assert!(has(&e, "a.lora.rank"), "{}", e.render());
}

#[test]
fn a_swept_record_field_must_exist_on_a_record_the_node_sets() {
    let d = project();
    let e = errs(
        d.path(),
        "adapt a { lora; }\nsweep { a.lora.rnk 1 2; }",
        &[],
    );
    assert_one(&e, "`lora` has no field `rnk`");
    assert!(e.render().contains("did you mean `rank`"), "{}", e.render());
    let e = errs(d.path(), "adapt a\nsweep { a.lora.rank 1 2; }", &[]);
    assert_one(&e, "`a` does not set `lora`");
    let e = errs(
        d.path(),
        "adapt a { lora; }\nsweep { a.lora.rank 1 x; }",
        &[],
    );
    assert_one(&e, "a.lora.rank");
    let e = errs(d.path(), "adapt a { lora; }\nsweep { a.lora 1 2; }", &[]);
    assert_one(&e, "record parameters cannot be swept");
    assert!(e.render().contains("a.lora.FIELD"), "{}", e.render());
}
