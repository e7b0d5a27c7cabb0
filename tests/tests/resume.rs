//! Mid-stage resume through the real binary: `kill -9` a `temper run` while its `cpt` node is
//! training (after a checkpoint exists in `<store>/work/<key>/checkpoints/step-*`), rerun, and
//! the final artifact's weights are byte-identical to an uninterrupted run's in another store;
//! its metrics lines match too (wall-clock fields aside).

use serde_json::Value as J;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use temper_e2e::{text, Project};

pub(crate) const RECIPE: &str = r#"
dataset corpus path="data/corpus.jsonl" format=text
tokenizer tok vocab-size=320 { data corpus; }
model tiny tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 seed=0
cpt domain model=tiny data=corpus {
    seq-len 32; batch-size 4; steps 120; lr 2e-3; weight-decay 0.1
    schedule cosine warmup=0.1
    checkpoint-every 10; log-every 5; device cpu; threads 1
}
"#;

fn project() -> Project {
    project_with(RECIPE)
}

/// A project with the corpus and `recipe` as `recipe.kdl`.
pub(crate) fn project_with(recipe: &str) -> Project {
    let p = Project::new();
    p.copy_from_repo("examples/data/corpus.jsonl", "data/corpus.jsonl");
    p.write("recipe.kdl", recipe);
    p
}

/// The artifact directory of the `cpt` node (the one with a `train_summary.json`).
pub(crate) fn cpt_artifact(store: &Path) -> Option<PathBuf> {
    std::fs::read_dir(store.join("artifacts"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("train_summary.json").is_file() && p.join("MANIFEST.json").is_file())
}

/// Complete checkpoints of any node of the store.
pub(crate) fn checkpoints(store: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(store.join("work")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| std::fs::read_dir(e.path().join("checkpoints")).ok())
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .collect()
}

fn metrics(dir: &Path) -> Vec<J> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: J = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("tokens_per_s");
            v
        })
        .collect()
}

/// Reruns the recipe and checks the cpt node resumed mid-stage and ended byte-identical (weights)
/// and line-identical (metrics, wall-clock aside) to the uninterrupted reference run.
fn rerun_matches_reference(p: &Project, ref_dir: &Path, what: &str) {
    p.ok(&["run", "recipe.kdl"]);
    let dir = cpt_artifact(&p.store()).expect("the rerun published the cpt node");
    let s: J =
        serde_json::from_str(&std::fs::read_to_string(dir.join("train_summary.json")).unwrap())
            .unwrap();
    assert!(
        s["resumed_from"].as_u64().unwrap() > 0,
        "{what}: the rerun resumed mid-stage: {s}"
    );
    // The full model, or the adapter of a LoRA run.
    let weights = ["model.safetensors", "adapter_model.safetensors"]
        .into_iter()
        .find(|f| ref_dir.join(f).is_file())
        .expect("the reference artifact holds weights");
    let a = std::fs::read(ref_dir.join(weights)).unwrap();
    let b = std::fs::read(dir.join(weights)).unwrap();
    assert!(
        a == b,
        "{weights} after {what} + resume differs from the uninterrupted run"
    );
    assert_eq!(metrics(ref_dir), metrics(&dir));
}

/// Pids of the live children of process `pid` (from `/proc/*/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|c| {
            let stat = std::fs::read_to_string(format!("/proc/{c}/stat")).unwrap_or_default();
            // `pid (comm) state ppid …`: comm may hold spaces, so read after the last `)`.
            let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            after.split_whitespace().nth(1) == Some(&pid.to_string())
        })
        .collect()
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .map(|(_, r)| r.trim_start())
        .unwrap_or("");
    !state.is_empty() && !state.starts_with('Z') && !state.starts_with('X')
}

#[test]
fn kill_9_mid_training_then_rerun_is_bit_identical() {
    kill_9_then_rerun_is_bit_identical(project);
}

/// `kill -9` the front of a run of `make()`'s `recipe.kdl` once its training node has a
/// checkpoint; the workers die with it, `verify` passes, and the rerun resumes mid-stage to
/// weights byte-identical to an uninterrupted run's (in another project).
pub(crate) fn kill_9_then_rerun_is_bit_identical(make: fn() -> Project) {
    let reference = make();
    reference.ok(&["run", "recipe.kdl"]);
    let ref_dir =
        cpt_artifact(&reference.store()).expect("the reference run published the cpt node");

    let p = make();
    let mut child = p.cmd(&["run", "recipe.kdl"]).spawn().unwrap();
    let t0 = Instant::now();
    while checkpoints(&p.store()).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before a checkpoint"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let workers = children_of(child.id());
    assert!(!workers.is_empty(), "the cpt node runs in a worker process");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();
    // The workers die with their front: none is left training into the same work dir.
    let t0 = Instant::now();
    while workers.iter().any(|&w| alive(w)) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "worker processes {workers:?} outlived their killed front"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        cpt_artifact(&p.store()).is_none(),
        "killed before the cpt node finished"
    );
    let v = p.run(&["verify"]);
    assert!(v.status.success(), "verify after kill\n{}", text(&v));

    rerun_matches_reference(&p, &ref_dir, "kill -9");
}

#[test]
fn ctrl_c_checkpoints_and_stops_then_rerun_resumes_bit_identical() {
    let reference = project();
    reference.ok(&["run", "recipe.kdl"]);
    let ref_dir =
        cpt_artifact(&reference.store()).expect("the reference run published the cpt node");

    let p = project();
    let child = p
        .cmd(&["run", "recipe.kdl"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while checkpoints(&p.store()).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // One Ctrl-C: the running stage checkpoints and stops; nothing is recorded done that is not.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "an interrupted run is not a success\n{}",
        text(&out)
    );
    assert!(
        cpt_artifact(&p.store()).is_none(),
        "an interrupted node is never published"
    );
    // The front forwarded the Ctrl-C to the node's worker, which checkpointed and stopped.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines().any(|l| l.ends_with(" domain cancelled")),
        "{}",
        text(&out)
    );
    let shown = p.ok(&["show", "recipe.kdl", "domain"]);
    assert!(shown.contains("status     cancelled"), "{shown}");
    let plan = p.ok(&["plan", "recipe.kdl"]);
    let line = plan.lines().find(|l| l.contains("domain")).unwrap();
    assert!(line.contains("incomplete"), "{plan}");
    let v = p.run(&["verify"]);
    assert!(v.status.success(), "verify after Ctrl-C\n{}", text(&v));

    rerun_matches_reference(&p, &ref_dir, "Ctrl-C");
}
