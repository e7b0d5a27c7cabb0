//! The Slurm executor on a real one-node Slurm (`scripts/slurm-up.sh`, started by `make test`):
//! `sbatch`, `squeue`, `scontrol` and `scancel` as users run them, no mock. Without a cluster
//! (no `SLURM_CONF`, or `sinfo` does not answer) each test says so and passes without checking.

use serde_json::Value as J;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use temper_e2e::{copy_all, repo_root, text, Project};

/// Whether the test cluster answers; prints why not.
pub(crate) fn cluster() -> bool {
    let up = std::env::var_os("SLURM_CONF").is_some()
        && Command::new("sinfo")
            .arg("--noheader")
            .output()
            .is_ok_and(|o| o.status.success());
    if !up {
        eprintln!(
            "SKIPPED: no Slurm cluster answers (run `bash scripts/slurm-up.sh` and export \
             SLURM_CONF; `make test` does both)"
        );
    }
    up
}

fn slurm(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect(program);
    assert!(out.status.success(), "{program} {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `scontrol show job -o ID` as pairs.
fn show_job(id: &str) -> BTreeMap<String, String> {
    slurm("scontrol", &["show", "job", "-o", id])
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Job ids of this store's submissions, by instance id (every one has its id).
fn jobs(store: &Path) -> BTreeMap<String, (String, Vec<String>)> {
    crate::slurm_submit::ledger(store)
        .into_iter()
        .map(|(node, (id, after))| (node, (id.expect("a recorded job id"), after)))
        .collect()
}

/// Jobs Slurm still has queued or running, of `ids`.
fn active(ids: &[String]) -> Vec<String> {
    let out = slurm("squeue", &["--noheader", "--states=all", "--format=%i %T"]);
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(id, st)| {
            ids.iter().any(|i| i == id)
                && !matches!(*st, "COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT")
        })
        .map(|(id, _)| id.to_string())
        .collect()
}

/// Every file of every artifact, with the wall-clock and memory measurements of JSON files
/// dropped.
fn artifacts(store: &Path) -> BTreeMap<String, Vec<u8>> {
    fn strip(v: &mut J) {
        match v {
            J::Object(m) => {
                m.retain(|k, _| {
                    !k.contains("seconds")
                        && !k.ends_with("per_s")
                        && k != "created_at"
                        && k != "peak_rss_mib"
                });
                m.values_mut().for_each(strip);
            }
            J::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(store.join("artifacts")) {
        let e = e.unwrap();
        if !e.file_type().is_file() {
            continue;
        }
        let rel = e
            .path()
            .strip_prefix(store)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let name = e.file_name().to_string_lossy();
        let bytes = std::fs::read(e.path()).unwrap();
        let bytes = if name == "MANIFEST.json" {
            continue; // holds the other files' hashes and times: compared through them
        } else if name.ends_with(".jsonl") {
            let lines: Vec<String> = String::from_utf8(bytes)
                .unwrap()
                .lines()
                .map(|l| match serde_json::from_str::<J>(l) {
                    Ok(mut v) => {
                        strip(&mut v);
                        v.to_string()
                    }
                    Err(_) => l.to_string(),
                })
                .collect();
            lines.join("\n").into_bytes()
        } else if name.ends_with(".json") {
            let mut v: J = serde_json::from_slice(&bytes).unwrap();
            strip(&mut v);
            v.to_string().into_bytes()
        } else {
            bytes
        };
        out.insert(rel, bytes);
    }
    out
}

fn quickstart() -> Project {
    let p = Project::new();
    // Not a developer's local store or prepared models, if the checkout has them.
    for e in std::fs::read_dir(repo_root().join("examples")).unwrap() {
        let e = e.unwrap();
        if e.file_name() != ".temper" && e.file_name() != "models" {
            copy_all(&e.path(), &p.path().join(e.file_name()));
        }
    }
    p
}

#[test]
fn quickstart_on_slurm_matches_a_local_run_and_is_cached_after() {
    if !cluster() {
        return;
    }
    let local = quickstart();
    local.ok(&["run", "quickstart.kdl"]);
    let p = quickstart();
    let out = p.ok(&["run", "quickstart.kdl", "--executor", "slurm", "--wait"]);
    assert!(out.contains("10 submitted"), "{out}");
    assert!(out.contains("all done"), "{out}");
    let (a, b) = (artifacts(&local.store()), artifacts(&p.store()));
    assert_eq!(a.len(), b.len());
    assert!(a.keys().any(|k| k.ends_with("model.safetensors")));
    for (k, v) in &a {
        assert!(
            b.get(k) == Some(v),
            "{k} differs between the local and the Slurm run"
        );
    }
    // Every node ran as a job on this host, recorded with its job id.
    let show = p.ok(&["show", "quickstart.kdl", "tuned"]);
    assert!(show.contains("job        slurm "), "{show}");
    let again = p.ok(&["run", "quickstart.kdl"]);
    assert!(again.contains("0 done, 10 cached"), "{again}");
    let again = p.ok(&["run", "quickstart.kdl", "--executor", "slurm"]);
    assert!(
        again.contains("0 submitted, 0 already queued, 10 cached"),
        "{again}"
    );
    let status = p.ok(&["status"]);
    assert!(status.contains("10/10 done"), "{status}");
}

const SWEEP: &str = r#"
dataset corpus path="data/corpus.jsonl" format=text
tokenizer tok vocab-size=320 { data corpus; }
model tiny tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 seed=0
cpt domain model=tiny data=corpus {
    seq-len 16; batch-size 2; steps 4; lr 1e-3; device cpu; threads 1
}
sweep { domain.lr 1e-3 2e-3 3e-3; }
executor slurm { time "00:10:00"; }
"#;

#[test]
fn a_held_sweep_shares_its_prefix_reattaches_and_cancels() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    p.copy_from_repo("examples/data/corpus.jsonl", "data/corpus.jsonl");
    p.write("sweep.kdl", SWEEP);
    let out = p.ok(&["run", "sweep.kdl", "--executor", "slurm", "--hold"]);
    assert!(out.contains("6 submitted"), "{out}");
    let jobs = jobs(&p.store());
    assert_eq!(jobs.len(), 6, "{jobs:?}");
    let (tiny, _) = &jobs["tiny"];
    let (corpus, _) = &jobs["corpus"];
    let variants: Vec<&String> = jobs.keys().filter(|k| k.starts_with("domain[")).collect();
    assert_eq!(variants.len(), 3);
    for v in &variants {
        let (id, after) = &jobs[*v];
        assert!(
            after.contains(tiny) && after.contains(corpus),
            "{v}: {after:?}"
        );
        let dep = &show_job(id)["Dependency"];
        assert!(dep.contains(&format!("afterok:{tiny}")), "{v}: {dep}");
        assert!(dep.contains(&format!("afterok:{corpus}")), "{v}: {dep}");
    }
    assert!(show_job(tiny)["TimeLimit"].starts_with("00:10:00"));
    // Re-attach from new processes: status and plan show the queued jobs; a resubmission
    // submits nothing.
    let status = p.ok(&["status"]);
    assert!(
        status.contains(&format!("queued (slurm job {tiny}")),
        "{status}"
    );
    let plan = p.ok(&["plan", "sweep.kdl"]);
    assert!(
        plan.contains("on slurm") && plan.contains(&format!("slurm job {tiny}")),
        "{plan}"
    );
    let again = p.ok(&["run", "sweep.kdl", "--executor", "slurm", "--hold"]);
    assert!(again.contains("0 submitted, 6 already queued"), "{again}");
    assert_eq!(
        super::slurm::jobs(&p.store()),
        jobs,
        "nothing submitted twice"
    );
    // A local run leaves what Slurm builds alone.
    let local = p.run(&["run", "sweep.kdl"]);
    assert!(text(&local).contains("on Slurm") || text(&local).contains("queued (slurm job"));
    // Cancel one variant, then the rest.
    let one = variants[0].as_str();
    p.ok(&["cancel", "sweep.kdl", one]);
    let ids: Vec<String> = jobs.values().map(|(id, _)| id.clone()).collect();
    let left = active(&ids);
    assert!(!left.contains(&jobs[one].0) && left.len() == 5, "{left:?}");
    p.ok(&["cancel", "sweep.kdl"]);
    assert!(active(&ids).is_empty(), "jobs left: {:?}", active(&ids));
    let v = p.run(&["verify"]);
    assert!(v.status.success(), "{}", text(&v));
    let status = p.ok(&["status"]);
    assert!(status.contains("cancelled (slurm job"), "{status}");
}

const FAILING: &str = r#"
dataset good path="good.jsonl" format=text
dataset notes path="notes.jsonl" format=text
tokenizer tok vocab-size=300 { data good; }
model tiny tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 seed=0
cpt x model=tiny data=notes {
    seq-len 16; batch-size 2; steps 4; lr 1e-3; device cpu; threads 1
}
"#;

#[test]
fn a_failed_job_cancels_its_dependents_and_a_fixed_rerun_submits_only_what_is_needed() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    let corpus = std::fs::read_to_string(repo_root().join("examples/data/corpus.jsonl")).unwrap();
    let lines: Vec<&str> = corpus.lines().collect();
    p.write("good.jsonl", &(lines[..30].join("\n") + "\n"));
    let bad = format!(
        "{}\n{{\"text\": broken\n{}\n",
        lines[30..35].join("\n"),
        lines[35..40].join("\n")
    );
    p.write("notes.jsonl", &bad);
    p.write("r.kdl", FAILING);
    let out = p.run(&["run", "r.kdl", "--executor", "slurm", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let jobs = jobs(&p.store());
    let failed = show_job(&jobs["notes"].0);
    assert_eq!(failed["JobState"], "FAILED", "{failed:?}");
    let x = show_job(&jobs["x"].0);
    assert_eq!(
        x["JobState"], "CANCELLED",
        "the dependent of a failed job: {x:?}"
    );
    let status = p.ok(&["status"]);
    assert!(status.contains("notes failed (slurm job"), "{status}");
    assert!(
        status.contains("notes.jsonl:6: invalid JSON"),
        "the log tail: {status}"
    );
    assert!(status.contains("slurm log: "), "{status}");
    assert!(
        status.contains("x cancelled (slurm job") && status.contains("its input notes failed"),
        "{status}"
    );
    let show = p.ok(&["show", "r.kdl", "notes"]);
    assert!(show.contains("invalid JSON"), "{show}");
    // Fixed: only the node whose data changed and its dependent go out again.
    p.write("notes.jsonl", &(lines[30..40].join("\n") + "\n"));
    let out = p.ok(&["run", "r.kdl", "--executor", "slurm", "--wait"]);
    assert!(
        out.contains("2 submitted, 0 already queued, 3 cached"),
        "{out}"
    );
    assert!(out.contains("all done"), "{out}");
}

/// The resume tests' recipe, with a cpt node long enough to be signalled mid-training.
fn long_recipe() -> String {
    let r = super::resume::RECIPE.replace("steps 120", "steps 400");
    assert!(r.contains("steps 400") && r.contains("checkpoint-every 10"));
    r
}

#[test]
fn the_warning_signal_checkpoints_requeues_and_resumes_bit_identical() {
    if !cluster() {
        return;
    }
    let reference = Project::new();
    reference.copy_from_repo("examples/data/corpus.jsonl", "data/corpus.jsonl");
    reference.write("r.kdl", &long_recipe());
    reference.ok(&["run", "r.kdl"]);
    let want = std::fs::read(
        super::resume::cpt_artifact(&reference.store())
            .unwrap()
            .join("model.safetensors"),
    )
    .unwrap();

    let p = Project::new();
    p.copy_from_repo("examples/data/corpus.jsonl", "data/corpus.jsonl");
    p.write("r.kdl", &long_recipe());
    let child = p
        .cmd(&["run", "r.kdl", "--executor", "slurm", "--wait"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while super::resume::checkpoints(&p.store()).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let id = jobs(&p.store())["domain"].0.clone();
    // What Slurm does before a time limit (`--signal=B:USR2@…`), on demand.
    slurm("scancel", &["--signal=USR2", "--batch", &id]);
    let out = child.wait_with_output().unwrap();
    let all: Output = out;
    assert!(all.status.success(), "{}", text(&all));
    assert!(
        text(&all).contains("requeued after a checkpoint"),
        "{}",
        text(&all)
    );
    let dir = super::resume::cpt_artifact(&p.store()).expect("published after the requeue");
    let s: J =
        serde_json::from_slice(&std::fs::read(dir.join("train_summary.json")).unwrap()).unwrap();
    assert!(
        s["resumed_from"].as_u64().unwrap() > 0,
        "resumed mid-stage: {s}"
    );
    let got = std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(
        got == want,
        "weights after requeue + resume differ from the uninterrupted run"
    );
    assert_eq!(show_job(&id)["Restarts"], "1");
    let log = std::fs::read_to_string(
        p.store()
            .join("slurm/logs")
            .join(format!("domain-{id}.out")),
    )
    .unwrap();
    assert!(
        log.contains("restart 1") && log.contains("resuming from"),
        "{log}"
    );
}

#[test]
fn bad_cluster_inputs_fail_before_anything_is_submitted() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    p.copy_from_repo("examples/data/corpus.jsonl", "data/corpus.jsonl");
    p.write(
        "a.kdl",
        "dataset corpus path=\"data/corpus.jsonl\" format=text\n",
    );
    // No Slurm on PATH.
    let out = p
        .cmd(&["run", "a.kdl", "--executor", "slurm"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("`sbatch`") && text(&out).contains("not found on PATH"),
        "{}",
        text(&out)
    );
    // An unknown partition.
    p.write(
        "b.kdl",
        "dataset corpus path=\"data/corpus.jsonl\" format=text\nexecutor slurm { partition \"debgu\"; }\n",
    );
    let out = p.run(&["run", "b.kdl", "--executor", "slurm"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no partition `debgu`") && text(&out).contains("did you mean `debug`"),
        "{}",
        text(&out)
    );
    // A store on this host's disk, for a partition with another node.
    p.write(
        "c.kdl",
        "dataset corpus path=\"data/corpus.jsonl\" format=text\nexecutor slurm { partition \"wide\"; }\n",
    );
    let out = p.run(&["run", "c.kdl", "--executor", "slurm"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("file system of this host only") && text(&out).contains("temper-ghost"),
        "{}",
        text(&out)
    );
    // A setting that does not exist: a located recipe error.
    p.write(
        "d.kdl",
        "dataset corpus path=\"data/corpus.jsonl\" format=text\nexecutor slurm { partiton \"debug\"; }\n",
    );
    let out = p.run(&["run", "d.kdl", "--executor", "slurm"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("d.kdl:2:") && text(&out).contains("did you mean `partition`"),
        "{}",
        text(&out)
    );
    assert!(
        !p.store().join("slurm/jobs").exists() || jobs(&p.store()).is_empty(),
        "nothing was submitted"
    );
}
