//! Influence-based reweighting through the real binary: a two-phase `repeat` chain of
//! `reweight` + `cpt` moves weight to the target's domain and writes a usable mixture and
//! diagnostics; `plan` after changing phase 2 reruns only phases ≥ 2; bad inputs are clear
//! errors.

use serde_json::Value as J;
use temper_e2e::{assert_no_panic, text, Project};

const RECIPE: &str = r#"
dataset med     path="data/dom_med.jsonl"   format=text
dataset web     path="data/dom_web.jsonl"   format=text
dataset noise   path="data/dom_noise.jsonl" format=text
dataset med-val path="data/med_val.jsonl"   format=text
tokenizer tok vocab-size=300 { data med; data web; data noise; }
model tiny tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 max-position=128 seed=0
mixture start tokenizer=tok { source med; source web; source noise; tokens 1_000_000; seed 1; }
repeat 2 phase-0=tiny mix-0=start {
    reweight "mix-{i}" model="phase-{prev}" mixture="mix-{prev}" {
        target med-val; samples 16; target-samples 16; seq-len 48; check #true; check-lr 1e-2; device cpu
    }
    cpt "phase-{i}" model="phase-{prev}" data="mix-{i}" { seq-len 48; batch-size 4; steps 4; lr 3e-3; device cpu; }
}
"#;

fn project() -> Project {
    let p = Project::new();
    for f in [
        "dom_med.jsonl",
        "dom_web.jsonl",
        "dom_noise.jsonl",
        "med_val.jsonl",
    ] {
        p.copy_from_repo(&format!("examples/data/{f}"), &format!("data/{f}"));
    }
    p.write("recipe.kdl", RECIPE);
    p
}

fn artifact_with(store: &std::path::Path, file: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(store.join("artifacts"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(file).is_file())
        .collect()
}

#[test]
fn phases_reweight_toward_the_target_and_rerun_only_later_phases() {
    let p = project();
    p.ok(&["run", "recipe.kdl"]);
    let diags = artifact_with(&p.store(), "diagnostics.json");
    assert_eq!(diags.len(), 2, "two reweight nodes");
    for d in &diags {
        let r: J =
            serde_json::from_str(&std::fs::read_to_string(d.join("diagnostics.json")).unwrap())
                .unwrap();
        let w: Vec<f64> = r["w"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let spec: J =
            serde_json::from_str(&std::fs::read_to_string(d.join("mixture.json")).unwrap())
                .unwrap();
        assert_eq!(spec["domains"][0]["weight"].as_f64().unwrap(), w[0]);
        assert!(d.join("sources/med/data.jsonl").is_file());
        if r["w0"][0].as_f64().unwrap() == 1.0 / 3.0 {
            assert!(w[0] > 1.0 / 3.0, "med gains weight in phase 1: {w:?}");
            assert!(
                r["check"]["rank_correlation"].as_f64().unwrap() >= 0.5,
                "{}",
                r["check"]
            );
        }
    }
    let shown = p.ok(&["show", "recipe.kdl", "mix-1"]);
    assert!(
        shown.contains("\"w0\"") && shown.contains("effective_domains"),
        "{shown}"
    );

    let plan = p.ok(&["plan", "recipe.kdl", "--set", "phase-2.lr=1e-3"]);
    let state = |node: &str| {
        plan.lines()
            .find(|l| l.split_whitespace().any(|w| w == node))
            .unwrap_or_else(|| panic!("{node} in {plan}"))
            .to_string()
    };
    for n in ["mix-1", "phase-1", "mix-2"] {
        assert!(state(n).starts_with("cached"), "{}", state(n));
    }
    assert!(
        state("phase-2").starts_with("to run"),
        "{}",
        state("phase-2")
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let p = project();
    let bad = RECIPE.replace("target med-val;", "target med-val weight=0;");
    p.write("zero.kdl", &bad);
    let out = p.run(&["check", "zero.kdl"]);
    assert_no_panic(&out, "zero target weights");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("must sum to a positive number"),
        "{}",
        text(&out)
    );

    // A checkpoint whose tokenizer is not the one the mixture counted with.
    let other = RECIPE
        .replace(
            "model tiny tokenizer=tok",
            "tokenizer tok2 vocab-size=280 { data web; }\nmodel tiny tokenizer=tok2",
        )
        .replace("repeat 2", "repeat 1");
    p.write("mismatch.kdl", &other);
    let out = p.run(&["run", "mismatch.kdl"]);
    assert_no_panic(&out, "tokenizer mismatch");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("tokenizer of model tiny")
            || text(&out).contains("differs from the mixture's"),
        "{}",
        text(&out)
    );
}
