//! Sweep expansion: shared upstream instances, grids, zips, swept references, speed.
use crate::common;

use dsl::{expand, load_str, Expanded, Value};
use std::fs;
use std::time::Instant;

fn expanded(text: &str) -> Expanded {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("data")).unwrap();
    fs::write(d.path().join("data/t.jsonl"), "{}").unwrap();
    let r = match load_str("main.kdl", text, d.path(), &common::registry(), &[]) {
        Ok(r) => r,
        Err(e) => panic!("{}", e.render()),
    };
    expand(&r).unwrap()
}

const BASE: &str = r#"
dataset corpus path="data/t.jsonl" format=text
dataset prefs path="data/t.jsonl" format=preference
tokenizer tok vocab-size=512 { data corpus }
model base tokenizer=tok
align aligned model=base data=prefs
merge final t=0.5 { model base; model aligned }
"#;

fn ids(e: &Expanded, node: &str) -> Vec<String> {
    e.instances
        .iter()
        .filter(|i| i.node == node)
        .map(|i| i.id.clone())
        .collect()
}

#[test]
fn no_sweep_gives_one_instance_per_node_in_topological_order() {
    let e = expanded("align a model=m data=d\nmodel m tokenizer=t\ndataset d path=\"data/t.jsonl\" format=text\ntokenizer t vocab-size=8 { data d }");
    let order: Vec<&str> = e.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(order, ["d", "t", "m", "a"]);
    assert_eq!(e.variants.len(), 1);
    assert_eq!(e.variants[0].name, "");
    assert_eq!(e.variants[0].instances, ["d", "t", "m", "a"]);
    assert_eq!(
        e.instance("a").unwrap().inputs,
        vec![
            ("data".to_string(), "d".to_string()),
            ("model".to_string(), "m".to_string())
        ]
    );
    assert_eq!(
        e.instance("t").unwrap().inputs,
        vec![("data[0]".to_string(), "d".to_string())]
    );
}

#[test]
fn grid_over_downstream_nodes_shares_upstream() {
    let e = expanded(&format!(
        "{BASE}sweep {{ aligned.beta 0.05 0.1 0.3; final.t 0.3 0.5 }}"
    ));
    for n in ["corpus", "prefs", "tok", "base"] {
        assert_eq!(ids(&e, n), [n]);
    }
    assert_eq!(
        ids(&e, "aligned"),
        [
            "aligned[beta=0.05]",
            "aligned[beta=0.1]",
            "aligned[beta=0.3]"
        ]
    );
    let finals = ids(&e, "final");
    assert_eq!(finals.len(), 6);
    assert_eq!(finals[0], "final[aligned.beta=0.05,t=0.3]");
    assert_eq!(finals[5], "final[aligned.beta=0.3,t=0.5]");
    assert_eq!(e.variants.len(), 6);
    assert_eq!(e.variants[1].name, "beta=0.05,t=0.5");
    assert_eq!(
        e.variants[1].instances,
        [
            "corpus",
            "prefs",
            "tok",
            "base",
            "aligned[beta=0.05]",
            "final[aligned.beta=0.05,t=0.5]"
        ]
    );
    let f = e.instance("final[aligned.beta=0.1,t=0.3]").unwrap();
    assert_eq!(f.params["t"], Value::Float(0.3));
    assert_eq!(
        f.params["model"],
        Value::List(vec![
            Value::Ref("base".into()),
            Value::Ref("aligned[beta=0.1]".into())
        ])
    );
    assert_eq!(
        f.inputs[1],
        ("model[1]".to_string(), "aligned[beta=0.1]".to_string())
    );
    assert_eq!(
        f.assignments,
        vec![
            ("aligned.beta".to_string(), Value::Float(0.1)),
            ("final.t".to_string(), Value::Float(0.3))
        ]
    );
    assert_eq!(
        e.instance("aligned[beta=0.3]").unwrap().params["beta"],
        Value::Float(0.3)
    );
}

#[test]
fn zip_members_vary_together() {
    let e = expanded(&format!(
        "{BASE}sweep {{ zip {{ aligned.beta 0.1 0.2; base.seed 1 2 }} }}"
    ));
    assert_eq!(ids(&e, "base"), ["base[seed=1]", "base[seed=2]"]);
    assert_eq!(
        ids(&e, "aligned"),
        [
            "aligned[beta=0.1,base.seed=1]",
            "aligned[beta=0.2,base.seed=2]"
        ]
    );
    assert_eq!(ids(&e, "tok"), ["tok"]);
    assert_eq!(e.variants.len(), 2);
    assert_eq!(e.variants[1].name, "beta=0.2,seed=2");
    let a = e.instance("aligned[beta=0.2,base.seed=2]").unwrap();
    assert_eq!(a.params["model"], Value::Ref("base[seed=2]".into()));
}

#[test]
fn sweeping_a_reference_changes_edges() {
    let e = expanded(&format!(
        "{BASE}model other tokenizer=tok seed=3\nsweep {{ aligned.model base other }}"
    ));
    assert_eq!(
        ids(&e, "aligned"),
        ["aligned[model=base]", "aligned[model=other]"]
    );
    // `final` references both `base` and `aligned`; it follows the axis.
    assert_eq!(
        ids(&e, "final"),
        ["final[aligned.model=base]", "final[aligned.model=other]"]
    );
    let a = e.instance("aligned[model=other]").unwrap();
    assert!(a
        .inputs
        .contains(&("model".to_string(), "other".to_string())));
    // `other` is declared after `aligned` but must come before it.
    let pos = |id: &str| e.instances.iter().position(|i| i.id == id).unwrap();
    assert!(pos("other") < pos("aligned[model=base]"));
}

#[test]
fn ambiguous_params_are_qualified_in_variant_names() {
    let e = expanded(&format!(
        "{BASE}align a2 model=base data=prefs\nsweep {{ aligned.beta 0.1 0.2; a2.beta 0.3 0.4 }}"
    ));
    assert_eq!(e.variants[0].name, "aligned.beta=0.1,a2.beta=0.3");
    assert_eq!(ids(&e, "a2"), ["a2[beta=0.3]", "a2[beta=0.4]"]);
    assert_eq!(
        ids(&e, "final"),
        ["final[aligned.beta=0.1]", "final[aligned.beta=0.2]"]
    );
}

#[test]
fn thousand_variants_over_twenty_nodes_is_fast() {
    let mut text = String::from(BASE);
    for i in 0..14 {
        text.push_str(&format!("align x{i} model=aligned data=prefs\n"));
    }
    let v = |n: usize| {
        (0..n)
            .map(|k| format!("0.{k}1"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    text.push_str(&format!(
        "sweep {{ aligned.beta {}; x3.beta {}; final.t {} }}",
        v(10),
        v(10),
        v(10)
    ));
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("data")).unwrap();
    fs::write(d.path().join("data/t.jsonl"), "{}").unwrap();
    let r = load_str("main.kdl", &text, d.path(), &common::registry(), &[]).unwrap();
    assert_eq!(r.nodes.len(), 20);
    let t = Instant::now();
    let e = expand(&r).unwrap();
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    eprintln!("expand: 1000 variants x 20 nodes in {ms:.1} ms");
    assert_eq!(e.variants.len(), 1000);
    assert_eq!(ids(&e, "x3").len(), 100);
    assert_eq!(ids(&e, "x4").len(), 10);
    assert_eq!(ids(&e, "final").len(), 100);
    assert!(ms < 500.0, "expansion took {ms} ms");
}

/// `node.record.field` sweeps one field of a record the node sets; its other fields keep their
/// values in every variant.
#[test]
fn a_record_field_can_be_swept() {
    let e = expanded(
        r#"adapt a { lora rank=4 { target "k"; }; }
sweep { a.lora.rank 4 16; }"#,
    );
    assert_eq!(ids(&e, "a"), ["a[lora.rank=4]", "a[lora.rank=16]"]);
    for (inst, rank) in e.instances.iter().zip([4, 16]) {
        let rec = inst.params["lora"].as_record().unwrap();
        assert_eq!(rec["rank"], Value::Int(rank));
        assert_eq!(rec["target"], Value::List(vec![Value::Str("k".into())]));
    }
    // A list field takes one list per value.
    let e = expanded(
        r#"adapt a { lora; }
sweep { a.lora.target "q" "v"; }"#,
    );
    assert_eq!(e.instances.len(), 2);
    assert_eq!(
        e.instances[1].params["lora"].as_record().unwrap()["target"],
        Value::List(vec![Value::Str("v".into())])
    );
}
