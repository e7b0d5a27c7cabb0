//! End to end: a β sweep of `dpo` over one `ref-logps` node computes the reference log-probs
//! once (counted from `temper status --json`), a later learning-rate sweep reuses them, and
//! `temper results` prints one row per variant (table, CSV, JSON, sorted); an `eval` node with
//! `metric=preference-accuracy` shows DPO raising held-out preference accuracy from about 50% to
//! ≥ 90%, and its scores appear in `results` next to the swept β. Bad preference records fail
//! with the record's line.

use serde_json::Value as J;
use std::collections::BTreeMap;
use temper_e2e::{assert_no_panic, text, Project};

const RECIPE: &str = r#"
dataset prefs path="data/prefs.jsonl" format=preference
tokenizer tok vocab-size=300 { data prefs; }
model tiny tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 max-position=64 seed=0
ref-logps ref model=tiny data=prefs { max-len 32; }
dpo aligned model=tiny ref=ref { beta 0.1; steps 4; batch-size 8; lr 1e-3; log-every 2; }
sweep { aligned.beta 0.05 0.1 0.3; }
"#;

fn project() -> Project {
    let p = Project::new();
    p.copy_from_repo("examples/data/prefs.jsonl", "data/prefs.jsonl");
    p.write("recipe.kdl", RECIPE);
    p
}

/// Completed executions per instance id over every run of the store.
fn executions(p: &Project) -> BTreeMap<String, usize> {
    let v: J = serde_json::from_str(&p.ok(&["status", "--json"])).expect("status --json");
    let mut n = BTreeMap::new();
    for run in v["runs"].as_array().into_iter().flatten() {
        for node in run["nodes"].as_array().into_iter().flatten() {
            if node[2] == "done" {
                *n.entry(node[0].as_str().unwrap_or("?").to_string())
                    .or_insert(0) += 1;
            }
        }
    }
    n
}

#[test]
fn beta_and_lr_sweeps_compute_reference_logps_once_and_results_compare_variants() {
    let p = project();
    let plan = p.ok(&["plan", "recipe.kdl"]);
    let shared = |id: &str| {
        plan.lines()
            .filter(|l| l.split_whitespace().any(|w| w == id))
            .count()
    };
    assert_eq!(
        (shared("ref"), shared("tiny"), shared("tok")),
        (1, 1, 1),
        "{plan}"
    );
    assert!(
        plan.contains("aligned[beta=0.3]") && plan.contains("7 instances shared by 3 variants"),
        "{plan}"
    );
    p.ok(&["run", "recipe.kdl"]);
    let ex = executions(&p);
    assert_eq!(ex.get("ref"), Some(&1), "{ex:?}");
    assert_eq!(
        ex.iter().filter(|(k, _)| k.starts_with("aligned[")).count(),
        3,
        "{ex:?}"
    );
    // A learning-rate change of every variant reuses the stored reference log-probs.
    p.ok(&["run", "recipe.kdl", "--set", "aligned.lr=2e-3"]);
    let ex = executions(&p);
    assert_eq!(
        ex.get("ref"),
        Some(&1),
        "reference log-probs computed once: {ex:?}"
    );
    assert_eq!(ex.get("tiny"), Some(&1), "{ex:?}");
    assert_eq!(
        ex.iter()
            .filter(|(k, _)| k.starts_with("aligned["))
            .map(|(_, n)| n)
            .sum::<usize>(),
        6,
        "{ex:?}"
    );

    // results: one row per variant, swept value and last training metrics.
    let json = p.ok(&[
        "results",
        "recipe.kdl",
        "--format",
        "json",
        "--sort",
        "aligned.beta",
        "--desc",
    ]);
    let rows: Vec<J> = serde_json::from_str(&json).expect("results --format json");
    assert_eq!(rows.len(), 3, "{json}");
    let betas: Vec<f64> = rows
        .iter()
        .map(|r| r["aligned.beta"].as_f64().unwrap())
        .collect();
    assert_eq!(betas, vec![0.3, 0.1, 0.05]);
    for r in &rows {
        for k in [
            "aligned.loss",
            "aligned.rewards/accuracies",
            "aligned.rewards/margins",
            "aligned.logps/chosen",
            "aligned.step",
        ] {
            assert!(r[k].is_number(), "{k} in {r}");
        }
        assert_eq!(r["aligned.step"], 4);
    }
    let csv = p.ok(&[
        "results",
        "recipe.kdl",
        "--format",
        "csv",
        "--sort",
        "rewards/margins",
    ]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[0].starts_with("variant,aligned.beta,"), "{csv}");
    let col = lines[0]
        .split(',')
        .position(|c| c == "aligned.rewards/margins")
        .unwrap();
    let m: Vec<f64> = lines[1..]
        .iter()
        .map(|l| l.split(',').nth(col).unwrap().parse().unwrap())
        .collect();
    assert!(
        m.windows(2).all(|w| w[0] <= w[1]),
        "sorted ascending: {m:?}"
    );
    let table = p.ok(&["results", "recipe.kdl"]);
    assert!(
        table.lines().count() == 4 && table.contains("beta=0.05"),
        "{table}"
    );
    let bad = p.run(&["results", "recipe.kdl", "--sort", "nope"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
}

/// DPO → eval on held-out pairs: the untrained model and the DPO model scored side by side.
const EVAL_RECIPE: &str = r#"
dataset prefs path="data/prefs.jsonl" format=preference
dataset held path="data/prefs_heldout.jsonl" format=preference
tokenizer tok vocab-size=300 { data prefs; }
model tiny tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 max-position=64 seed=0
ref-logps ref model=tiny data=prefs { max-len 32; batch-size 32; }
dpo aligned model=tiny ref=ref { beta 0.1; steps 40; batch-size 16; lr 3e-3; schedule constant; log-every 20; }
eval scores { model tiny; model aligned; data held; batch-size 32; }
sweep { aligned.beta 0.1 0.3; }
"#;

#[test]
fn eval_after_dpo_shows_heldout_preference_accuracy_rise_in_results() {
    let p = Project::new();
    p.copy_from_repo("examples/data/prefs.jsonl", "data/prefs.jsonl");
    p.copy_from_repo(
        "examples/data/prefs_heldout.jsonl",
        "data/prefs_heldout.jsonl",
    );
    p.write("recipe.kdl", EVAL_RECIPE);
    p.ok(&["run", "recipe.kdl"]);
    let json = p.ok(&["results", "recipe.kdl", "--format", "json"]);
    let rows: Vec<J> = serde_json::from_str(&json).expect("results --format json");
    assert_eq!(rows.len(), 2, "one row per β: {json}");
    let num = |r: &J, k: &str| {
        r[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing in {r}"))
    };
    for (r, beta) in rows.iter().zip([0.1, 0.3]) {
        assert_eq!(num(r, "aligned.beta"), beta);
        let before = num(r, "scores.tiny.held.preference_accuracy");
        let after = num(r, "scores.aligned.held.preference_accuracy");
        eprintln!("beta {beta}: held-out preference accuracy {before:.3} -> {after:.3}");
        assert!(
            (0.25..=0.75).contains(&before),
            "untrained accuracy {before} should be near 50%"
        );
        assert!(after >= 0.9, "held-out accuracy after DPO {after}");
        assert!(
            num(r, "scores.aligned.held.margin") > num(r, "scores.tiny.held.margin"),
            "{r}"
        );
        // Last training metrics sit in the same row.
        assert_eq!(r["aligned.step"], 40, "{r}");
        assert!(r["aligned.rewards/accuracies"].is_number(), "{r}");
    }
    // The untrained model's score does not depend on β; sortable by the eval column.
    assert_eq!(
        rows[0]["scores.tiny.held.preference_accuracy"],
        rows[1]["scores.tiny.held.preference_accuracy"]
    );
    let csv = p.ok(&[
        "results",
        "recipe.kdl",
        "--format",
        "csv",
        "--sort",
        "aligned.held.preference_accuracy",
        "--desc",
    ]);
    assert!(
        csv.lines()
            .next()
            .unwrap_or("")
            .contains("scores.aligned.held.margin"),
        "{csv}"
    );
    // The eval log holds the side-by-side table that `temper show` prints.
    let show = p.ok(&[
        "show",
        "recipe.kdl",
        "scores[aligned.beta=0.1]",
        "--log-lines",
        "4",
    ]);
    assert!(
        show.contains("pref-acc") && show.contains("aligned[beta=0.1]"),
        "{show}"
    );
}

#[test]
fn identical_chosen_and_rejected_is_a_clear_error() {
    let p = Project::new();
    p.write(
        "data/prefs.jsonl",
        "{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" c\"}\n{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" b\"}\n",
    );
    p.write(
        "recipe.kdl",
        "dataset prefs path=\"data/prefs.jsonl\" format=preference\n",
    );
    let out = p.run(&["run", "recipe.kdl"]);
    assert_no_panic(&out, "identical pair");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("identical") && err.contains("prefs.jsonl:2"),
        "{}",
        text(&out)
    );
}
