//! End to end: a `select` node picks the best of three DPO variants (β, each on its own copy
//! of the preference data) by held-out preference accuracy, and a merge downstream uses the
//! winner. `plan` first shows the select and the merge waiting for the scores; one `run` builds
//! the variants, resolves the select and builds the merge from the winner's weights. Changing a
//! losing variant's data rebuilds that variant, its scores and the select, but not the merge
//! (same winner, same key); changing the winner's data rebuilds the merge.

use temper_e2e::{assert_no_panic, text, Project};

const RECIPE: &str = r#"
dataset prefs-a path="data/prefs-a.jsonl" format=preference
dataset prefs-b path="data/prefs-b.jsonl" format=preference
dataset prefs-c path="data/prefs-c.jsonl" format=preference
dataset heldout path="data/heldout.jsonl" format=preference
dataset corpus path="data/corpus.jsonl" format=preference
tokenizer tok vocab-size=300 { data corpus; }
model tiny tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 max-position=64 seed=0
ref-logps ref-a model=tiny data=prefs-a { max-len 32; }
ref-logps ref-b model=tiny data=prefs-b { max-len 32; }
ref-logps ref-c model=tiny data=prefs-c { max-len 32; }
dpo aligned model=tiny ref=ref-a { beta 0.1; steps 6; batch-size 8; lr 1e-2; log-every 2; }
eval scores { model aligned; data heldout; max-records 40; }
select best from=aligned by="scores:heldout.preference_accuracy" max
merge final method=slerp t=0.5 { model tiny; model best; }
sweep { zip { aligned.beta 0.05 0.1 0.3; aligned.ref ref-a ref-b ref-c; } }
"#;

const FILES: [&str; 3] = ["prefs-a", "prefs-b", "prefs-c"];

fn project() -> Project {
    let p = Project::new();
    for f in FILES {
        p.copy_from_repo("examples/data/prefs.jsonl", &format!("data/{f}.jsonl"));
    }
    p.copy_from_repo("examples/data/prefs_heldout.jsonl", "data/heldout.jsonl");
    p.copy_from_repo("examples/data/prefs.jsonl", "data/corpus.jsonl");
    p.write("recipe.kdl", RECIPE);
    p
}

/// Swaps chosen and rejected in `data/FILE.jsonl`: training on it teaches the opposite order.
fn reverse_preferences(p: &Project, file: &str) {
    let path = p.path().join(format!("data/{file}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = String::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
        let c = v["chosen"].take();
        v["chosen"] = v["rejected"].take();
        v["rejected"] = c;
        out += &(v.to_string() + "\n");
    }
    std::fs::write(path, out).unwrap();
}

/// The outcome word `temper run` printed for instance `id` (`done`, `cached`, …), if listed.
fn outcome(run: &str, id: &str) -> Option<String> {
    run.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.len() >= 3 && w[1] == id)
        .map(|w| w[2].to_string())
}

/// The instance whose artifact the merge `final` of `run` read as its second model (from the
/// job file beside its work).
fn merged_from(p: &Project, run: &str) -> String {
    // The last line about `final` (a Slurm run first lists it as waiting, with its provisional
    // key).
    let short = run
        .lines()
        .rev()
        .find(|l| l.split_whitespace().nth(1) == Some("final"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{run}"))
        .to_string();
    let work = p.store().join("work");
    let dir = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|d| d.file_name().unwrap().to_string_lossy().starts_with(&short))
        .unwrap_or_else(|| panic!("no work dir {short}"));
    let job: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("job.json")).unwrap()).unwrap();
    job["inputs"]["model[1].model"]["node"]
        .as_str()
        .unwrap_or_else(|| panic!("{job}"))
        .to_string()
}

/// (winner instance id, candidate lines) from `temper show recipe.kdl best`.
fn choice(p: &Project) -> (String, String) {
    let show = p.ok(&["show", "recipe.kdl", "best"]);
    let line = show
        .lines()
        .find(|l| l.starts_with("choice"))
        .unwrap_or_else(|| panic!("no choice line:\n{show}"));
    let winner = line
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    (winner, show)
}

#[test]
fn select_picks_the_best_beta_and_the_merge_follows_only_the_winner() {
    let p = project();
    let plan = p.ok(&["plan", "recipe.kdl"]);
    for id in ["best", "final"] {
        let line = plan
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(id))
            .unwrap_or_else(|| panic!("{id} not planned:\n{plan}"));
        assert!(
            line.starts_with("waiting") && line.contains("waiting for the scores of best"),
            "{line}\n{plan}"
        );
    }
    assert!(plan.contains("(2 waiting for scores)"), "{plan}");

    let run = p.ok(&["run", "recipe.kdl"]);
    assert_eq!(outcome(&run, "best").as_deref(), Some("done"), "{run}");
    assert_eq!(outcome(&run, "final").as_deref(), Some("done"), "{run}");
    let (winner, show) = choice(&p);
    assert!(show.contains("candidates"), "{show}");
    for f in ["ref-a", "ref-b", "ref-c"] {
        assert!(show.contains(&format!("aligned.ref={f}")), "{show}");
    }
    // The winner has the best score of the three rows.
    let scores: Vec<(String, f64)> = show
        .lines()
        .skip_while(|l| !l.starts_with("candidates"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            let w: Vec<&str> = l
                .trim_start_matches(['*', ' '])
                .split_whitespace()
                .collect();
            (w[2].to_string(), w[1].parse::<f64>().unwrap())
        })
        .collect();
    assert_eq!(scores.len(), 3, "{show}");
    let best = scores.iter().map(|s| s.1).fold(f64::MIN, f64::max);
    let first_best = scores.iter().find(|s| s.1 == best).unwrap();
    assert_eq!(first_best.0, winner, "ties go to the first: {show}");
    // `results` marks the chosen variant's row.
    let rows: serde_json::Value =
        serde_json::from_str(&p.ok(&["results", "recipe.kdl", "--format", "json"])).unwrap();
    let selected: Vec<bool> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["best.selected"] == true)
        .collect();
    assert_eq!(selected.iter().filter(|s| **s).count(), 1, "{rows}");
    let w = scores.iter().position(|s| s.0 == winner).unwrap();
    assert!(selected[w], "{rows}");
    // The merge read the winner's artifact: its job's second model is the winning instance.
    assert_eq!(merged_from(&p, &run), winner);

    // Nothing changed: everything cached.
    let again = p.ok(&["run", "recipe.kdl"]);
    assert!(
        again
            .lines()
            .all(|l| l.split_whitespace().nth(2) != Some("done")),
        "{again}"
    );

    // A losing variant's data changes: that variant, its scores and the select rebuild; the
    // winner stays, so the merge is cached.
    let loser = scores
        .iter()
        .position(|s| s.0 != winner)
        .expect("a losing variant");
    reverse_preferences(&p, FILES[loser]);
    let run = p.ok(&["run", "recipe.kdl"]);
    let loser_id = &scores[loser].0;
    assert_eq!(outcome(&run, loser_id).as_deref(), Some("done"), "{run}");
    assert_eq!(outcome(&run, "best").as_deref(), Some("done"), "{run}");
    let (winner2, show2) = choice(&p);
    assert_eq!(winner2, winner, "a worse loser keeps the winner:\n{show2}");
    assert_eq!(outcome(&run, "final").as_deref(), Some("cached"), "{run}");

    // The winner's data changes: the merge rebuilds (new winner or new weights).
    reverse_preferences(&p, FILES[w]);
    let run = p.ok(&["run", "recipe.kdl"]);
    assert_eq!(outcome(&run, "best").as_deref(), Some("done"), "{run}");
    assert_eq!(outcome(&run, "final").as_deref(), Some("done"), "{run}");
    let (winner3, show3) = choice(&p);
    assert_ne!(winner3, winner, "the reversed winner loses:\n{show3}");
    assert_eq!(merged_from(&p, &run), winner3);
}

/// Diagnostics with their line wrapping undone (words joined by single spaces, no gutters).
fn flat(t: &str) -> String {
    t.split_whitespace()
        .filter(|w| *w != "│")
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn on_slurm_the_nodes_after_a_select_are_submitted_once_the_scores_are_built() {
    if !crate::slurm::cluster() {
        return;
    }
    let p = project();
    let out = p.ok(&["run", "recipe.kdl", "--executor", "slurm", "--wait"]);
    assert!(
        out.contains("2 waiting for scores")
            && out.contains("scores built: submitting the 2 node(s) that waited for them")
            && out.contains("final submitted: slurm job"),
        "{out}"
    );
    let plan = p.ok(&["plan", "recipe.kdl"]);
    assert!(plan.contains("18 cached, 0 to run"), "{plan}");
    let (winner, _) = choice(&p);
    assert_eq!(merged_from(&p, &out), winner);
}

#[test]
fn a_score_missing_for_the_variants_fails_the_select_with_the_reason() {
    let p = project();
    // Every prompt longer than the model's 64 positions: `skip-long` skips them all, so the
    // evals have no preference accuracy on this dataset (check cannot know that).
    let long: String = std::fs::read_to_string(p.path().join("data/heldout.jsonl"))
        .unwrap()
        .lines()
        .take(4)
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["prompt"] = format!("{}{}", v["prompt"].as_str().unwrap(), " 1".repeat(80)).into();
            v.to_string() + "\n"
        })
        .collect();
    p.write("data/long.jsonl", &long);
    let recipe = RECIPE
        .replace(
            "eval scores { model aligned; data heldout; max-records 40; }",
            "dataset long path=\"data/long.jsonl\" format=preference\n\
             eval scores { model aligned; data heldout; data long; skip-long #true; }",
        )
        .replace(
            "scores:heldout.preference_accuracy",
            "scores:long.preference_accuracy",
        );
    p.write("recipe.kdl", &recipe);
    p.ok(&["check", "recipe.kdl"]);
    let out = p.run(&["run", "recipe.kdl"]);
    assert_no_panic(&out, "run");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains(
            "best FAILED: best cannot select: scores[aligned.beta=0.05,aligned.ref=ref-a] \
             scored 0 record(s) of long for model aligned[beta=0.05,ref=ref-a], so its \
             `preference_accuracy` is undefined"
        ),
        "{t}"
    );
    assert!(t.contains("final FAILED: best cannot select"), "{t}");
    // The plan still works and says why.
    let plan = p.ok(&["plan", "recipe.kdl"]);
    assert!(
        plan.lines()
            .any(|l| l.starts_with("cannot select") && l.contains(" best ")),
        "{plan}"
    );
    assert!(
        plan.contains("(2 after a select that cannot choose)"),
        "{plan}"
    );
}

#[test]
fn bad_select_inputs_are_located_errors_at_check_time() {
    let p = project();
    let cases: [(&str, &str, &str); 5] = [
        (
            r#"by="scores:heldout.preference_acuracy""#,
            "unknown metric `preference_acuracy`",
            "did you mean `preference_accuracy`?",
        ),
        (
            r#"by="scors:heldout.preference_accuracy""#,
            "no node `scors`",
            "did you mean `scores`?",
        ),
        (
            r#"by="scores:heldot.preference_accuracy""#,
            "eval `scores` scores no dataset `heldot`",
            "did you mean `heldout`?",
        ),
        (
            r#"by="scores:heldout.exact_match""#,
            "its rows have no `exact_match`",
            "preference_accuracy",
        ),
        (
            r#"by="scores:heldout.margin" over="aligned.lr""#,
            "`over` of `best`: `aligned.lr` is not a sweep axis that reaches `aligned`",
            "aligned.beta",
        ),
    ];
    let original = r#"by="scores:heldout.preference_accuracy""#;
    let line = RECIPE
        .lines()
        .position(|l| l.starts_with("select"))
        .unwrap()
        + 1;
    let at = format!("bad.kdl:{line}:");
    for (by, message, hint) in cases {
        p.write("bad.kdl", &RECIPE.replace(original, by));
        let out = p.run(&["check", "bad.kdl"]);
        assert_no_panic(&out, "check");
        let t = flat(&text(&out));
        assert_eq!(out.status.code(), Some(2), "{by}: {t}");
        assert!(t.contains(message) && t.contains(hint), "{by}: {t}");
        assert!(t.contains(&at), "located at the select line: {t}");
    }
    // An eval that does not score the variants (its only model is upstream of the sweep).
    p.write(
        "bad.kdl",
        &(RECIPE.replace(original, r#"by="base-scores:heldout.loss""#)
            + "eval base-scores { model tiny; data heldout; }\n"),
    );
    let out = p.run(&["check", "bad.kdl"]);
    let t = flat(&text(&out));
    assert!(
        t.contains("eval `base-scores` does not score the variants of `aligned`")
            && t.contains("add `model aligned` to `base-scores`")
            && t.contains(&at),
        "{t}"
    );
    // `from=` a node no sweep reaches.
    p.write(
        "bad.kdl",
        &RECIPE.replace("select best from=aligned", "select best from=tiny"),
    );
    let out = p.run(&["check", "bad.kdl"]);
    let t = flat(&text(&out));
    assert!(
        t.contains("`best` selects from `tiny`, which no sweep reaches") && t.contains(&at),
        "{t}"
    );
}
