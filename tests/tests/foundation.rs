//! End-to-end tests of the foundation with the real binary and the real `dataset`, `tokenizer`
//! and `model` kinds: sweep sharing, crash safety at every publish point and under `kill -9`,
//! concurrent runs on one store, read-only commands during a run, and explanations.

use serde_json::Value as J;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};
use temper_e2e::{assert_no_panic, text, Project};

const RECIPE: &str = r#"
dataset corpus path="data/corpus.jsonl" format=text
dataset train  path="data/train.jsonl"  format=prompt-completion
tokenizer tok vocab-size=320 { data corpus; data train; }
model tiny tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 seed=0
"#;

fn project(recipe: &str) -> Project {
    let p = Project::new();
    p.copy_from_repo("examples/data/corpus.jsonl", "data/corpus.jsonl");
    p.copy_from_repo("examples/data/train.jsonl", "data/train.jsonl");
    p.write("recipe.kdl", recipe);
    p
}

/// Every run recorded in the store, newest first, from `temper status --json`.
fn runs(p: &Project) -> Vec<J> {
    let out = p.ok(&["status", "--json"]);
    let v: J = serde_json::from_str(&out).expect("status --json is JSON");
    v["runs"].as_array().cloned().unwrap_or_default()
}

/// How many times each key was executed to completion, over all runs of the store.
fn executions(p: &Project) -> BTreeMap<String, (String, usize)> {
    let mut n: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for run in runs(p) {
        for node in run["nodes"].as_array().into_iter().flatten() {
            if node[2] == "done" {
                let e = n
                    .entry(node[1].as_str().unwrap().to_string())
                    .or_insert((node[0].as_str().unwrap().to_string(), 0));
                e.1 += 1;
            }
        }
    }
    n
}

/// key -> the files of its manifest (path, size, blake3), for every published artifact.
fn artifacts(store: &Path) -> BTreeMap<String, J> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(store.join("artifacts")) else {
        return out;
    };
    for e in rd.flatten() {
        let m = e.path().join("MANIFEST.json");
        let text = std::fs::read_to_string(&m)
            .unwrap_or_else(|_| panic!("artifact {} has no manifest", e.path().display()));
        let v: J = serde_json::from_str(&text).expect("manifest JSON");
        // What each file holds; when it was written (`mtime_ns`, the damage check's stamp)
        // differs between runs.
        let mut files = v["files"].clone();
        for f in files.as_array_mut().into_iter().flatten() {
            f.as_object_mut().map(|o| o.remove("mtime_ns"));
        }
        out.insert(e.file_name().to_string_lossy().into_owned(), files);
    }
    out
}

fn reference_artifacts(recipe: &str) -> BTreeMap<String, J> {
    let r = project(recipe);
    r.ok(&["run", "recipe.kdl"]);
    let a = artifacts(&r.store());
    assert_eq!(a.len(), 4, "reference run publishes 4 artifacts");
    a
}

#[test]
fn sweep_grid_runs_shared_upstream_once() {
    let p = project(&format!(
        "{RECIPE}\nsweep {{ tiny.seed 0 1 2; tiny.hidden-size 32 64; }}\n"
    ));
    let plan = p.ok(&["plan", "recipe.kdl"]);
    assert!(
        plan.contains("tiny[seed=1,hidden-size=64]"),
        "readable variant ids:\n{plan}"
    );
    p.ok(&["run", "recipe.kdl", "--jobs", "2"]);
    let ex = executions(&p);
    let count = |prefix: &str| -> Vec<usize> {
        ex.values()
            .filter(|(id, _)| id == prefix || id.starts_with(&format!("{prefix}[")))
            .map(|(_, n)| *n)
            .collect()
    };
    assert_eq!(count("corpus"), vec![1], "{ex:?}");
    assert_eq!(count("train"), vec![1], "{ex:?}");
    assert_eq!(count("tok"), vec![1], "{ex:?}");
    assert_eq!(
        count("tiny"),
        vec![1; 6],
        "six model variants, each built once: {ex:?}"
    );
    // Distinct seeds/sizes give distinct weights.
    let keys: BTreeSet<_> = ex.keys().collect();
    assert_eq!(keys.len(), 9);
    // A rerun executes nothing.
    p.ok(&["run", "recipe.kdl"]);
    assert_eq!(executions(&p).values().map(|(_, n)| n).sum::<usize>(), 9);
    let plan = p.ok(&["plan", "recipe.kdl"]);
    assert!(plan.contains("9 cached, 0 to run"), "{plan}");
}

#[test]
fn crash_at_each_publish_point_then_rerun_matches_uninterrupted() {
    let reference = reference_artifacts(RECIPE);
    for point in [
        "stage:tok",
        "stage:tiny",
        "publish:before-manifest",
        "publish:after-manifest",
        "publish:after-rename",
        "publish:after-record",
    ] {
        let p = project(RECIPE);
        let out = p
            .cmd(&["run", "recipe.kdl"])
            .env("TEMPER_CRASH_AT", point)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{point}: the crash hook must abort\n{}",
            text(&out)
        );
        let v = p.run(&["verify"]);
        assert!(
            v.status.success(),
            "{point}: verify after crash\n{}",
            text(&v)
        );
        let again = p.ok(&["run", "recipe.kdl"]);
        assert!(again.contains("0 failed"), "{point}: {again}");
        assert_eq!(
            artifacts(&p.store()),
            reference,
            "{point}: artifacts differ from an uninterrupted run"
        );
        let v = p.run(&["verify"]);
        assert!(
            v.status.success(),
            "{point}: verify after rerun\n{}",
            text(&v)
        );
    }
}

#[test]
fn kill_9_at_random_instants_then_rerun_matches_uninterrupted() {
    let reference = reference_artifacts(RECIPE);
    for delay_ms in [150u64, 400, 550, 650, 800, 1000] {
        let p = project(RECIPE);
        let mut child = p.cmd(&["run", "recipe.kdl"]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let _ = child.wait();
        let v = p.run(&["verify"]);
        assert!(
            v.status.success(),
            "kill after {delay_ms} ms: verify\n{}",
            text(&v)
        );
        // Whatever was recorded done must be a complete artifact equal to the reference one.
        for (k, files) in artifacts(&p.store()) {
            assert_eq!(
                Some(&files),
                reference.get(&k),
                "kill after {delay_ms} ms: artifact {k}"
            );
        }
        p.ok(&["run", "recipe.kdl"]);
        assert_eq!(
            artifacts(&p.store()),
            reference,
            "kill after {delay_ms} ms: rerun"
        );
    }
}

#[test]
fn concurrent_runs_on_one_store_build_each_node_once() {
    let p = project(RECIPE);
    let a = p.cmd(&["run", "recipe.kdl"]).spawn().unwrap();
    let b = p.cmd(&["run", "recipe.kdl"]).spawn().unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    let ex = executions(&p);
    assert_eq!(ex.len(), 4, "{ex:?}");
    assert!(
        ex.values().all(|(_, n)| *n == 1),
        "a node was built twice: {ex:?}"
    );
    assert_eq!(runs(&p).len(), 2);
    let v = p.run(&["verify"]);
    assert!(v.status.success(), "{}", text(&v));
}

#[test]
fn no_wait_fails_at_once_naming_the_holder_and_read_only_commands_work_during_a_run() {
    // The test hook holds the stage for 3 s so the run is observably in progress.
    let p = project(RECIPE);
    p.write(
        "slow.kdl",
        "dataset big path=\"data/corpus.jsonl\" format=text\n",
    );
    let mut child = p
        .cmd(&["run", "slow.kdl"])
        .env("TEMPER_PAUSE_AT", "stage:big:3000")
        .spawn()
        .unwrap();
    // Wait until the run holds the lock.
    let t0 = Instant::now();
    loop {
        let s = p.ok(&["status"]);
        if s.contains("running: pid") {
            assert!(s.contains(&child.id().to_string()), "{s}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "run never showed up in status"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let busy = p.run(&["run", "recipe.kdl", "--no-wait"]);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the paused run is still going"
    );
    assert_no_panic(&busy, "run --no-wait");
    {
        assert!(!busy.status.success(), "{}", text(&busy));
        let err = String::from_utf8_lossy(&busy.stderr);
        assert!(
            err.contains(&child.id().to_string()),
            "names the holder's pid: {err}"
        );
        // Read-only commands answer while the run goes on.
        let plan = p.run(&["plan", "slow.kdl"]);
        assert!(plan.status.success(), "{}", text(&plan));
        let out = String::from_utf8_lossy(&plan.stdout);
        assert!(out.contains("big"), "{out}");
    }
    assert!(child.wait().unwrap().success());
    let plan = p.ok(&["plan", "slow.kdl"]);
    assert!(plan.contains("cached"), "{plan}");
}

#[test]
fn plan_and_why_explain_what_changed() {
    let p = project(RECIPE);
    let plan = p.ok(&["plan", "recipe.kdl"]);
    assert!(plan.contains("new"), "{plan}");
    p.ok(&["run", "recipe.kdl"]);
    let plan = p.ok(&["plan", "recipe.kdl", "--set", "tiny.seed=3"]);
    let line = plan.lines().find(|l| l.contains("tiny")).unwrap();
    assert!(
        line.contains("seed") && line.contains('0') && line.contains('3'),
        "{plan}"
    );
    assert!(
        plan.lines()
            .find(|l| l.contains(" tok "))
            .is_none_or(|l| l.contains("cached")),
        "{plan}"
    );
    // Change a data file: the dataset's content changed, downstream inputs changed.
    let mut corpus = std::fs::read_to_string(p.path().join("data/corpus.jsonl")).unwrap();
    corpus.push_str("{\"text\": \"one more document\"}\n");
    p.write("data/corpus.jsonl", &corpus);
    let plan = p.ok(&["plan", "recipe.kdl"]);
    let corpus_line = plan.lines().find(|l| l.contains("corpus")).unwrap();
    assert!(
        corpus_line.contains("path"),
        "names the changed file parameter: {plan}"
    );
    let tok_line = plan.lines().find(|l| l.contains(" tok")).unwrap();
    assert!(tok_line.contains("input"), "tok's input changed: {plan}");
    let why = p.ok(&["why", "recipe.kdl", "tok"]);
    assert!(why.contains("data"), "{why}");
    // Unchanged train dataset stays cached; moving the whole project keeps keys.
    assert!(
        plan.lines()
            .find(|l| l.contains(" train"))
            .unwrap()
            .contains("cached"),
        "{plan}"
    );
}

#[test]
fn moving_the_project_keeps_every_node_cached() {
    let p = project(RECIPE);
    p.ok(&["run", "recipe.kdl"]);
    let moved = Project::new();
    temper_e2e::copy_all(&p.path().join("data"), &moved.path().join("elsewhere/data"));
    temper_e2e::copy_all(
        &p.path().join("recipe.kdl"),
        &moved.path().join("elsewhere/recipe.kdl"),
    );
    let out = moved
        .cmd(&["plan", "elsewhere/recipe.kdl"])
        .arg("--store")
        .arg(p.store())
        .output()
        .unwrap();
    // the second --store overrides the first
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("4 cached, 0 to run"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn gc_without_a_recipe_deletes_everything_only_when_confirmed() {
    let p = project(RECIPE);
    p.ok(&["run", "recipe.kdl"]);
    let n = artifacts(&p.store()).len();
    assert_eq!(n, 4);
    // Not a terminal (stdin is null here) and no --yes: refused, nothing deleted.
    let out = p.run(&["gc"]);
    assert_no_panic(&out, "gc");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--yes") && err.contains("4 artifact(s)"),
        "{}",
        text(&out)
    );
    assert_eq!(artifacts(&p.store()).len(), 4, "nothing deleted");
    // A dry run and a gc that names the recipe need no confirmation.
    assert!(p.ok(&["gc", "--dry-run"]).contains("would free"));
    assert!(p.ok(&["gc", "recipe.kdl"]).contains("in 0 artifact(s)"));
    assert_eq!(artifacts(&p.store()).len(), 4);
    // Pinned artifacts survive `gc --yes`; the rest go.
    p.ok(&["pin", "keepme", "recipe.kdl", "tok"]);
    let out = p.ok(&["gc", "-y"]);
    assert!(out.contains("in 3 artifact(s)"), "{out}");
    assert_eq!(artifacts(&p.store()).len(), 1);
    assert!(p.ok(&["unpin", "keepme"]).contains("removed pin keepme"));
}
