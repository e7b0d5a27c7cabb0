//! Plan reasons and the executor, on tiny fake kinds registered by the test.

use crate::common;

use common::{kinds, load, Project};
use runner::exec::{self, Control, Outcome, RunOptions};
use runner::plan::{self, Reason, State};
use std::path::Path;

fn store_in(p: &Project) -> store::Store {
    store::Store::open(p.path().join(".temper")).expect("store")
}

fn run_with(p: &Project, recipe: &Path, set: &[&str], opts: &RunOptions) -> exec::RunReport {
    let k = kinds();
    let loaded = load(&k, recipe, set);
    exec::run(&store_in(p), &k, loaded, opts, &Control::new()).expect("run")
}

fn run(p: &Project, recipe: &Path, set: &[&str]) -> exec::RunReport {
    run_with(p, recipe, set, &RunOptions::default())
}

fn plan_of(p: &Project, recipe: &Path, set: &[&str]) -> plan::Plan {
    let k = kinds();
    plan::plan(&store_in(p), &k.registry, load(&k, recipe, set)).expect("plan")
}

const CHAIN: &str = r#"
src s text="hi" n=1 file="data/a.txt"
join j a=s x=1.0
src other text="independent"
"#;

#[test]
fn second_run_executes_nothing_and_artifacts_are_published() {
    let p = Project::new();
    p.write("data/a.txt", "A");
    let r = p.write("r.kdl", CHAIN);
    let first = run(&p, &r, &[]);
    assert!(first.success(), "{first:?}");
    assert_eq!(p.executions().len(), 3);
    let store = store_in(&p);
    let pl = plan_of(&p, &r, &[]);
    assert!(
        pl.entries.iter().all(|e| e.state == State::Cached),
        "{}",
        pl.render()
    );
    assert!(
        pl.summary().starts_with("3 cached, 0 to run"),
        "{}",
        pl.summary()
    );
    // The artifact of j is its inputs' text; metrics were copied in; the log exists.
    let j = pl.entry("j").unwrap();
    let text = std::fs::read_to_string(store.artifact_dir(&j.key).join("out.txt")).unwrap();
    assert_eq!(text, "hiA");
    let s = pl.entry("s").unwrap();
    assert!(store.artifact_dir(&s.key).join("metrics.jsonl").is_file());
    let log = std::fs::read_to_string(store.log_path(&s.key)).unwrap();
    assert!(log.contains("start s"), "{log}");
    let rec = store.record(&s.key).unwrap().unwrap();
    assert_eq!(rec.status, store::Status::Done);
    assert_eq!(rec.summary["len"], 3);
    assert_eq!(rec.key_tree, s.tree);

    let second = run(&p, &r, &[]);
    assert!(second.success());
    assert_eq!(second.count(|o| *o == Outcome::Cached), 3);
    assert_eq!(p.executions().len(), 3, "a cached rerun executes nothing");
}

#[test]
fn plan_explains_why_nodes_run() {
    let p = Project::new();
    p.write("data/a.txt", "A");
    let r = p.write("r.kdl", CHAIN);
    let fresh = plan_of(&p, &r, &[]);
    assert!(fresh.entries.iter().all(|e| e.reasons == vec![Reason::New]));
    assert!(fresh.render().contains("to run"), "{}", fresh.render());
    run(&p, &r, &[]);

    // A parameter: named, with old and new values; downstream: input changed.
    let pl = plan_of(&p, &r, &["s.n=2"]);
    let s = pl.entry("s").unwrap();
    assert_eq!(s.state, State::ToRun);
    assert_eq!(s.reason_text(), "parameter n changed from 1 to 2");
    assert_eq!(pl.entry("j").unwrap().reason_text(), "input s changed");
    assert_eq!(pl.entry("other").unwrap().state, State::Cached);
    let line = pl
        .render()
        .lines()
        .find(|l| l.contains(" j "))
        .unwrap()
        .to_string();
    assert!(line.starts_with("to run"), "{line}");
    assert!(line.contains(&pl.entry("j").unwrap().key[..12]), "{line}");

    // A float parameter shows its value plainly.
    let pl = plan_of(&p, &r, &["j.x=0.5"]);
    assert_eq!(
        pl.entry("j").unwrap().reason_text(),
        "parameter x changed from 1.0 to 0.5"
    );

    // A file.
    p.write("data/a.txt", "B");
    let pl = plan_of(&p, &r, &[]);
    assert_eq!(
        pl.entry("s").unwrap().reason_text(),
        "file of param file changed"
    );
    assert_eq!(pl.entry("j").unwrap().reason_text(), "input s changed");

    // why: field-level diff.
    let store = store_in(&p);
    let text = plan::why_text(&store, &pl, "s").unwrap();
    assert!(text.contains("params.file.content"), "{text}");
    let pl0 = plan_of(&p, &r, &["s.n=5"]);
    let text = plan::why_text(&store, &pl0, "s").unwrap();
    assert!(text.contains("params.n: 1 → 5"), "{text}");
    let text = plan::why_text(&store, &pl0, "other").unwrap();
    assert!(text.contains("up to date"), "{text}");
    let q = Project::new();
    q.write("data/a.txt", "A");
    let r2 = q.write("r.kdl", CHAIN);
    let text = plan::why_text(&store_in(&q), &plan_of(&q, &r2, &[]), "s").unwrap();
    assert!(text.contains("never built"), "{text}");
}

const FAILING: &str = r#"
fail f msg="bad record"
join j a=f
src z text="z"
"#;

#[test]
fn failure_is_recorded_and_dependents_are_skipped() {
    let p = Project::new();
    let r = p.write("r.kdl", FAILING);
    let rep = run(&p, &r, &[]);
    assert!(!rep.success());
    match rep.outcome("f") {
        Some(Outcome::Failed(m)) => {
            assert!(m.contains("node f: bad record"), "{m}");
            assert!(m.contains("hint: fix the input"), "{m}");
        }
        o => panic!("f: {o:?}"),
    }
    assert_eq!(
        rep.outcome("j"),
        Some(&Outcome::Skipped("input f failed".into()))
    );
    // Without --keep-going nothing new starts after the failure (z comes after f).
    assert_eq!(rep.outcome("z"), Some(&Outcome::NotStarted));
    let pl = plan_of(&p, &r, &[]);
    match &pl.entry("f").unwrap().state {
        State::FailedBefore { error } => assert!(error.contains("bad record")),
        s => panic!("{s:?}"),
    }
    assert!(pl
        .entry("f")
        .unwrap()
        .reason_text()
        .starts_with("previous attempt failed"));

    let rep = run_with(
        &p,
        &r,
        &[],
        &RunOptions {
            keep_going: true,
            ..RunOptions::default()
        },
    );
    assert_eq!(rep.outcome("z"), Some(&Outcome::Done));
    assert!(matches!(rep.outcome("f"), Some(Outcome::Failed(_))));
    assert!(!rep.success());
}

#[test]
fn panics_become_failures() {
    let p = Project::new();
    let r = p.write("r.kdl", "crash c\njoin j a=c\n");
    let rep = run(&p, &r, &[]);
    match rep.outcome("c") {
        Some(Outcome::Failed(m)) => assert!(m.contains("panicked: stage exploded"), "{m}"),
        o => panic!("{o:?}"),
    }
    let rec = store_in(&p)
        .record(&plan_of(&p, &r, &[]).entry("c").unwrap().key)
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, store::Status::Failed);
}

#[test]
fn only_runs_the_named_nodes_and_their_uncached_inputs() {
    let p = Project::new();
    p.write("data/a.txt", "A");
    let r = p.write("r.kdl", CHAIN);
    let rep = run_with(
        &p,
        &r,
        &[],
        &RunOptions {
            only: vec!["j".into()],
            ..RunOptions::default()
        },
    );
    assert!(rep.success());
    let mut ran = p.executions();
    ran.sort();
    assert_eq!(ran, ["j", "s"]);
    assert_eq!(rep.outcomes.len(), 2);
    let k = kinds();
    let err = exec::run(
        &store_in(&p),
        &k,
        load(&k, &r, &[]),
        &RunOptions {
            only: vec!["nope".into()],
            ..RunOptions::default()
        },
        &Control::new(),
    )
    .unwrap_err();
    assert!(
        err.downcast_ref::<runner::text::UsageError>().is_some(),
        "{err:#}"
    );
}

fn intervals(p: &Project) -> Vec<(f64, f64)> {
    std::fs::read_to_string(p.path().join("intervals.log"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Vec<&str> = l.split(' ').collect();
            (v[1].parse().unwrap(), v[2].parse().unwrap())
        })
        .collect()
}

#[test]
fn independent_nodes_run_in_parallel_with_jobs() {
    let p = Project::new();
    let r = p.write("r.kdl", "slow a ms=300\nslow b ms=310\n");
    let rep = run_with(
        &p,
        &r,
        &[],
        &RunOptions {
            jobs: 2,
            ..RunOptions::default()
        },
    );
    assert!(rep.success());
    let iv = intervals(&p);
    assert_eq!(iv.len(), 2);
    let overlap = iv[0].1.min(iv[1].1) - iv[0].0.max(iv[1].0);
    assert!(overlap > 0.1, "with --jobs 2 the two nodes overlap: {iv:?}");

    let q = Project::new();
    let r = q.write("r.kdl", "slow a ms=100\nslow b ms=110\n");
    run(&q, &r, &[]);
    let iv = intervals(&q);
    let overlap = iv[0].1.min(iv[1].1) - iv[0].0.max(iv[1].0);
    assert!(
        overlap <= 0.0,
        "with --jobs 1 nodes run one at a time: {iv:?}"
    );
}

#[test]
fn sweep_runs_the_shared_upstream_once() {
    let p = Project::new();
    let r = p.write(
        "r.kdl",
        "src s text=\"up\"\njoin j a=s x=1.0 y=0\nsweep { j.x 1.0 2.0 3.0; j.y 1 2 }\n",
    );
    let pl = plan_of(&p, &r, &[]);
    assert_eq!(pl.entries.len(), 7);
    assert_eq!(pl.variants, 6);
    let rep = run_with(
        &p,
        &r,
        &[],
        &RunOptions {
            jobs: 3,
            ..RunOptions::default()
        },
    );
    assert!(rep.success(), "{rep:?}");
    let store = store_in(&p);
    let recs = store.all_records().unwrap();
    let count = |kind: &str| {
        recs.iter()
            .filter(|r| r.kind == kind && r.status == store::Status::Done)
            .count()
    };
    assert_eq!(count("src"), 1, "the shared upstream ran once");
    assert_eq!(count("join"), 6);
    let run = store.last_run().unwrap().unwrap();
    assert_eq!(run.nodes.iter().filter(|(id, _, _)| id == "s").count(), 1);
    assert_eq!(p.executions().iter().filter(|e| *e == "s").count(), 1);
    assert_eq!(run.ok, Some(true));
}

#[test]
fn interrupt_cancels_running_stages_and_never_records_done() {
    let p = Project::new();
    let r = p.write("r.kdl", "slow a ms=5000\njoin j a=a\n");
    let k = kinds();
    let control = Control::new();
    let c = control.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        c.interrupt();
    });
    let rep = exec::run(
        &store_in(&p),
        &k,
        load(&k, &r, &[]),
        &RunOptions::default(),
        &control,
    )
    .unwrap();
    t.join().unwrap();
    assert!(rep.interrupted);
    assert_eq!(rep.outcome("a"), Some(&Outcome::Cancelled));
    assert!(!matches!(rep.outcome("j"), Some(Outcome::Done)));
    let pl = plan_of(&p, &r, &[]);
    assert_eq!(
        pl.entry("a").unwrap().state,
        State::Incomplete {
            why: "cancelled".into()
        }
    );
    let rec = store_in(&p)
        .record(&pl.entry("a").unwrap().key)
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, store::Status::Cancelled);
}

#[test]
fn no_wait_fails_at_once_naming_the_holder() {
    let p = Project::new();
    let r = p.write("r.kdl", "src s text=\"x\"\n");
    let store = store_in(&p);
    let _held = store.lock_run(true, "temper run other.kdl").unwrap();
    let k = kinds();
    // Another handle in this process: the lock is per open file description (flock).
    let err = exec::run(
        &store_in(&p),
        &k,
        load(&k, &r, &[]),
        &RunOptions {
            wait: false,
            ..RunOptions::default()
        },
        &Control::new(),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&std::process::id().to_string()), "{msg}");
    assert!(msg.contains("temper run other.kdl"), "{msg}");
}

#[test]
fn device_requests_are_checked() {
    let p = Project::new();
    // The syntax is checked when the recipe loads, with the location.
    let r = p.write("r.kdl", "src s text=\"x\" device=\"tpu\"\n");
    let Err(err) = runner::plan::load(&r, &common::kinds().registry, &[]) else {
        panic!("an unknown device is a recipe error");
    };
    let err = err.to_string();
    assert!(
        err.contains("unknown device `tpu`") && err.contains("r.kdl:1:"),
        "{err}"
    );
    // A device this machine lacks: a recipe error when the machine is known (check / plan /
    // run), and a failed node when a run gets it anyway.
    let r = p.write("r2.kdl", "src s text=\"y\" device=\"cuda:9\"\n");
    let opts = dsl::LoadOptions {
        cuda_devices: Some(2),
        ..Default::default()
    };
    let Err(err) = runner::plan::load_with(&r, &common::kinds().registry, &[], &opts) else {
        panic!("cuda:9 on a machine with 2 GPUs");
    };
    let err = err.to_string();
    assert!(err.contains("cuda:9") && err.contains("r2.kdl:1:"), "{err}");
    match run(&p, &r, &[]).outcome("s") {
        Some(Outcome::Failed(m)) => assert!(m.contains("cuda:9") && m.contains("CUDA"), "{m}"),
        o => panic!("{o:?}"),
    }
}

#[test]
fn node_logs_get_their_own_events_with_parallel_jobs() {
    runner::progress::init(0, false);
    let p = Project::new();
    let r = p.write("r.kdl", "src one text=\"first\"\nsrc two text=\"second\"\n");
    let rep = run_with(
        &p,
        &r,
        &[],
        &RunOptions {
            jobs: 2,
            ..RunOptions::default()
        },
    );
    assert!(rep.success());
    let store = store_in(&p);
    let pl = plan_of(&p, &r, &[]);
    let log =
        |id: &str| std::fs::read_to_string(store.log_path(&pl.entry(id).unwrap().key)).unwrap();
    let (one, two) = (log("one"), log("two"));
    assert!(one.contains("src one says first"), "{one}");
    assert!(two.contains("src two says second"), "{two}");
    assert!(
        !one.contains("second") && !two.contains("first"),
        "{one}\n{two}"
    );
}

#[test]
fn status_and_show_describe_the_last_run() {
    let p = Project::new();
    let r = p.write("r.kdl", "fail f msg=\"broken\"\nsrc z text=\"z\"\n");
    run_with(
        &p,
        &r,
        &[],
        &RunOptions {
            keep_going: true,
            ..RunOptions::default()
        },
    );
    let store = store_in(&p);
    let text = runner::cmd::status::status_text(&store).unwrap();
    assert!(text.contains("no run in progress"), "{text}");
    assert!(text.contains("last run 1: failed"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("failed") && l.contains(" f (")),
        "{text}"
    );
    assert!(text.contains("node f: broken"), "{text}");
    let pl = plan_of(&p, &r, &[]);
    let z = pl.entry("z").unwrap();
    let shown = runner::cmd::show::show_key(&store, &z.key, None, 5).unwrap();
    assert!(shown.contains("status     done"), "{shown}");
    assert!(shown.contains("out.txt"), "{shown}");
    assert!(shown.contains("\"len\": 1"), "{shown}");
    let dest = p.path().join("exported");
    assert_eq!(
        runner::cmd::export::export(&store, &z.key, &dest).unwrap(),
        2
    );
    assert_eq!(std::fs::read_to_string(dest.join("out.txt")).unwrap(), "z");
    assert!(!dest.join(store::MANIFEST_FILE).exists());
}
