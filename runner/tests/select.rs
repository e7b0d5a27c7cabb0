//! `select` nodes without training: how a nested sweep expands with `over=` (one select per
//! value of the other axis, each with its candidates in sweep order), provisional keys while the
//! scores are not built (and which inputs they follow), and select parameters that cannot be
//! swept. The end-to-end behaviour (scores, winner, merge) is in the `temper-e2e` tests.

use crate::common::{self, Project};
use dsl::Value;
use runner::keys::PlainHasher;
use runner::Kinds;

const RECIPE: &str = r#"
dataset prefs path="data/prefs.jsonl" format=preference
tokenizer tok vocab-size=300 { data prefs; }
model tiny tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 seed=0
ref-logps ref model=tiny data=prefs
dpo aligned model=tiny ref=ref { steps 4; }
eval scores { model tiny; model aligned; data prefs; }
select best from=aligned by="scores:prefs.margin" max over="aligned.beta"
merge final method=linear { model tiny weight=0.5; model best weight=0.5; }
sweep {
    aligned.lr 1e-3 2e-3
    aligned.beta 0.05 0.1 0.3
}
"#;

fn project(recipe: &str) -> Project {
    let p = Project::new();
    p.write(
        "data/prefs.jsonl",
        "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n",
    );
    p.write("recipe.kdl", recipe);
    p
}

fn refs(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_list)
        .unwrap_or(&[])
        .iter()
        .map(|x| match x {
            Value::Ref(r) => r.clone(),
            other => other.display(),
        })
        .collect()
}

#[test]
fn over_collapses_one_axis_and_keeps_the_other() {
    let p = project(RECIPE);
    let k = Kinds::builtin();
    let loaded = common::load(&k, &p.path().join("recipe.kdl"), &[]);
    let ex = &loaded.expanded;
    let best: Vec<_> = ex.instances.iter().filter(|i| i.node == "best").collect();
    let ids: Vec<&str> = best.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["best[aligned.lr=0.001]", "best[aligned.lr=0.002]"]);
    let second = best[1];
    assert_eq!(
        refs(second.params.get("from")),
        [
            "aligned[lr=0.002,beta=0.05]",
            "aligned[lr=0.002,beta=0.1]",
            "aligned[lr=0.002,beta=0.3]"
        ]
    );
    assert_eq!(
        refs(second.params.get("scores")),
        [
            "scores[aligned.lr=0.002,aligned.beta=0.05]",
            "scores[aligned.lr=0.002,aligned.beta=0.1]",
            "scores[aligned.lr=0.002,aligned.beta=0.3]"
        ]
    );
    assert_eq!(
        refs(second.params.get("candidates")),
        ["aligned.beta=0.05", "aligned.beta=0.1", "aligned.beta=0.3"]
    );
    // The select waits for all six of its inputs; the merge follows the select of its lr.
    assert_eq!(second.inputs.len(), 6);
    let finals: Vec<_> = ex.instances.iter().filter(|i| i.node == "final").collect();
    assert_eq!(finals.len(), 2);
    assert!(finals[1]
        .inputs
        .iter()
        .any(|(_, id)| id == "best[aligned.lr=0.002]"));

    // Without scores the select and everything after it wait, with provisional keys that
    // follow the candidates.
    let keyed = |set: &[&str]| {
        let l = common::load(&k, &p.path().join("recipe.kdl"), set);
        runner::plan::keys_of(&l, &k.registry, &PlainHasher, None)
            .expect("keys")
            .keyed
    };
    let a = keyed(&[]);
    let get = |ks: &[runner::keys::Keyed], id: &str| {
        ks.iter()
            .find(|x| x.id == id)
            .unwrap_or_else(|| panic!("{id}"))
            .clone()
    };
    let w = get(&a, "final[aligned.lr=0.002]");
    assert_eq!(
        w.waiting.as_deref(),
        Some("waiting for the scores of best[aligned.lr=0.002]")
    );
    assert!(get(&a, "aligned[lr=0.002,beta=0.1]").waiting.is_none());
    let b = keyed(&["aligned.steps=5"]);
    assert_ne!(
        get(&a, "best[aligned.lr=0.001]").key,
        get(&b, "best[aligned.lr=0.001]").key
    );
    let c = keyed(&["tiny.seed=1"]);
    assert_ne!(
        get(&a, "final[aligned.lr=0.001]").key,
        get(&c, "final[aligned.lr=0.001]").key
    );
}

#[test]
fn select_parameters_cannot_be_swept_and_selects_need_a_swept_node() {
    let k = Kinds::builtin();
    let swept = RECIPE.replace(
        "aligned.beta 0.05 0.1 0.3",
        "aligned.beta 0.05 0.1 0.3\n    best.goal max min",
    );
    let p = project(&swept);
    let err = runner::plan::load(&p.path().join("recipe.kdl"), &k.registry, &[])
        .expect_err("an error")
        .to_string();
    assert!(
        err.contains("cannot sweep `best.goal`: `best` is a select node"),
        "{err}"
    );
    // No sweep at all: nothing to choose from.
    let p = project(&RECIPE.replace("aligned.lr 1e-3 2e-3\n    aligned.beta 0.05 0.1 0.3", ""));
    let err = runner::plan::load(&p.path().join("recipe.kdl"), &k.registry, &[])
        .expect_err("an error")
        .to_string();
    assert!(
        err.contains("`best` selects from `aligned`, which no sweep reaches"),
        "{err}"
    );
}
