//! A front killed while it submits to Slurm, on the real one-node Slurm (see `slurm.rs`): the
//! rerun adopts the jobs whose ids were never recorded and submits nothing twice; `plan`,
//! `status` and `cancel` see those jobs. A stand-in `sbatch` first on the front's `PATH` logs
//! every job the real `sbatch` creates and stops at a chosen call, so the front is killed at an
//! exact point: while `sbatch` is still on its way to the controller (`late`), or after the
//! controller queued the job but before its id reached the front (`answered`). Jobs are held
//! (`--hold`), so nothing runs and the queue stays as the kills left it.

use serde_json::Value as J;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use temper_e2e::{text, Project};

/// The stand-in `sbatch` (see the module docs). `$FAKE_SBATCH_DIR/calls` counts this front's
/// calls, `created` gets `<job id> <call>` per job the real `sbatch` made, `stopped` the pid
/// of the call that stopped (`FAKE_SBATCH_STOP=N:late|N:answered`).
const FAKE_SBATCH: &str = r#"#!/bin/bash
set -u
dir="$FAKE_SBATCH_DIR"
n=$(( $(cat "$dir/calls" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$dir/calls"
stop="${FAKE_SBATCH_STOP:-}"
at="${stop%%:*}"
mode="${stop#*:}"
script="$(cat)"
if [ "$n" = "$at" ] && [ "$mode" = late ]; then
  echo $$ > "$dir/stopped"
  sleep 3
fi
out="$(printf '%s\n' "$script" | "$REAL_SBATCH" "$@")"
rc=$?
if [ $rc -eq 0 ]; then echo "${out%%;*} $n" >> "$dir/created"; fi
if [ "$n" = "$at" ] && [ "$mode" = answered ]; then
  echo $$ > "$dir/stopped"
  exec sleep 30
fi
printf '%s\n' "$out"
exit $rc
"#;

/// A project whose `temper` runs find the stand-in `sbatch` first; every job it created is
/// cancelled when the test ends, passed or not.
struct Rig {
    p: Project,
    dir: PathBuf,
    path: String,
    real: PathBuf,
}

impl Rig {
    fn new() -> Rig {
        let p = Project::new();
        let real = std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|d| d.join("sbatch"))
            .find(|f| f.is_file())
            .expect("sbatch on PATH");
        let dir = p.path().join("fake-sbatch");
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("sbatch");
        std::fs::write(&bin, FAKE_SBATCH).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        p.copy_from_repo("examples/data/corpus.jsonl", "data/corpus.jsonl");
        Rig { p, dir, path, real }
    }

    fn cmd(&self, args: &[&str], stop: &str) -> Command {
        let _ = std::fs::remove_file(self.dir.join("calls"));
        let mut c = self.p.cmd(args);
        c.env("PATH", &self.path)
            .env("REAL_SBATCH", &self.real)
            .env("FAKE_SBATCH_DIR", &self.dir)
            .env("FAKE_SBATCH_STOP", stop);
        c
    }

    /// Runs a held submission that stops at `stop`; kills the front there (`kill -9`) and
    /// waits until the stopped `sbatch` is gone, which it is at once when it dies with the
    /// front (an `sbatch` that outlived it would create its job seconds later).
    fn killed_at(&self, recipe: &str, stop: &str) {
        let stopped = self.dir.join("stopped");
        let _ = std::fs::remove_file(&stopped);
        let log = self.dir.join("front.log");
        let mut child = self
            .cmd(&["run", recipe, "--executor", "slurm", "--hold"], stop)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(self.dir.join("front.err")).unwrap())
            .spawn()
            .unwrap();
        let said = || {
            std::fs::read_to_string(&log).unwrap_or_default()
                + &std::fs::read_to_string(self.dir.join("front.err")).unwrap_or_default()
        };
        let t0 = Instant::now();
        let pid = loop {
            if let Some(pid) = std::fs::read_to_string(&stopped)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            {
                break pid;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the front ended before sbatch call {stop}:\n{}",
                said()
            );
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "sbatch {stop} never came"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        let t0 = Instant::now();
        while alive(pid) && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd(args, "").output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every job the real `sbatch` created for this project, in order.
    fn created(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("created"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let ids = self.created();
        if !ids.is_empty() {
            let _ = Command::new("scancel").args(&ids).output();
        }
    }
}

/// Whether process `pid` still runs (a zombie does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

/// Slurm's name for each of `ids` (one `squeue`).
fn names(ids: &[String]) -> BTreeMap<String, String> {
    let out = Command::new("squeue")
        .args(["--noheader", "--states=all", "--format=%i|%j"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('|'))
        .filter(|(id, _)| ids.iter().any(|i| i == id.trim()))
        .map(|(id, name)| (id.trim().to_string(), name.trim().to_string()))
        .collect()
}

/// The ledger: instance id → (job id, the jobs it waits on).
pub(crate) fn ledger(store: &Path) -> BTreeMap<String, (Option<String>, Vec<String>)> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(store.join("slurm/jobs"))
        .unwrap()
        .flatten()
    {
        let s: J = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        let after = s["after"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        m.insert(
            s["node"].as_str().unwrap().to_string(),
            (s["job_id"].as_str().map(String::from), after),
        );
    }
    m
}

/// A 40-value sweep of a tokenizer over one dataset: 41 jobs.
fn sweep() -> String {
    let sizes: Vec<String> = (300..340).map(|v| v.to_string()).collect();
    format!(
        "dataset corpus path=\"data/corpus.jsonl\" format=text\n\
         tokenizer tok vocab-size=300 {{ data corpus; }}\n\
         sweep {{ tok.vocab-size {}; }}\n",
        sizes.join(" ")
    )
}

#[test]
fn a_front_killed_while_it_submits_leaves_one_job_per_instance_after_the_rerun() {
    if !super::slurm::cluster() {
        return;
    }
    let r = Rig::new();
    r.p.write("sel.kdl", &sweep());
    // 1. Killed after the controller queued `corpus` (the first job), before its id came back.
    r.killed_at("sel.kdl", "1:answered");
    let created = r.created();
    assert_eq!(created.len(), 1, "{created:?}");
    let corpus = created[0].clone();
    assert_eq!(
        ledger(&r.p.store())["corpus"].0,
        None,
        "the id was never recorded"
    );
    let plan = r.run(&["plan", "sel.kdl"]);
    let line = plan.lines().find(|l| l.contains("corpus")).unwrap_or("");
    assert!(
        line.contains("on slurm") && line.contains(&format!("slurm job {corpus}")),
        "{plan}"
    );
    let show = r.run(&["show", "sel.kdl", "corpus"]);
    assert!(
        show.contains(&format!("slurm      queued (slurm job {corpus}")),
        "{show}"
    );
    let status = r.run(&["status"]);
    assert!(
        status.contains("stopped while it submitted")
            && status.contains(&format!("corpus queued (slurm job {corpus}")),
        "{status}"
    );
    // 2. `corpus` is adopted; killed while the fifth tokenizer's `sbatch` is on its way.
    r.killed_at("sel.kdl", "5:late");
    assert_eq!(r.created().len(), 5, "{:?}", r.created());
    assert_eq!(
        ledger(&r.p.store())["corpus"].0.as_deref(),
        Some(corpus.as_str())
    );
    // 3. Killed after the controller queued the twentieth tokenizer of this run.
    r.killed_at("sel.kdl", "20:answered");
    assert_eq!(r.created().len(), 25, "{:?}", r.created());
    let unrecorded: Vec<String> = ledger(&r.p.store())
        .into_iter()
        .filter(|(_, (job, _))| job.is_none())
        .map(|(node, _)| node)
        .collect();
    assert_eq!(unrecorded.len(), 1, "{unrecorded:?}");
    // 4. The rerun submits the rest.
    let out = r.run(&["run", "sel.kdl", "--executor", "slurm", "--hold"]);
    assert!(out.contains("16 submitted, 25 already queued"), "{out}");
    assert_eq!(
        out.matches("recorded now").count(),
        1,
        "the unrecorded tokenizer is adopted: {out}"
    );
    // Exactly one job per instance ever existed, and it is the one the ledger holds.
    let created = r.created();
    let unique: BTreeSet<&String> = created.iter().collect();
    assert_eq!((created.len(), unique.len()), (41, 41), "{created:?}");
    let names = names(&created);
    let by_name: BTreeSet<&String> = names.values().collect();
    assert_eq!(by_name.len(), 41, "one job per instance: {names:?}");
    let ledger = ledger(&r.p.store());
    let recorded: BTreeSet<String> = ledger.values().filter_map(|(j, _)| j.clone()).collect();
    assert_eq!(
        recorded,
        created.iter().cloned().collect::<BTreeSet<_>>(),
        "{ledger:?}"
    );
    // Every tokenizer waits on the one `corpus` job, submitted by the first, killed run.
    for (node, (job, after)) in &ledger {
        if node != "corpus" {
            assert_eq!(after, &vec![corpus.clone()], "{node} (job {job:?})");
        }
    }
    let out = r.run(&["run", "sel.kdl", "--executor", "slurm", "--hold"]);
    assert!(out.contains("0 submitted, 41 already queued"), "{out}");
    let out = r.run(&["cancel", "sel.kdl"]);
    assert_eq!(out.matches("cancelled ").count(), 41, "{out}");
    assert_eq!(r.created().len(), 41, "nothing submitted twice");
}

#[test]
fn cancel_finds_a_job_whose_id_was_never_recorded() {
    if !super::slurm::cluster() {
        return;
    }
    let r = Rig::new();
    r.p.write(
        "one.kdl",
        "dataset corpus path=\"data/corpus.jsonl\" format=text\n",
    );
    r.killed_at("one.kdl", "1:answered");
    let created = r.created();
    assert_eq!(created.len(), 1, "{created:?}");
    let out = r.run(&["cancel", "one.kdl"]);
    assert!(
        out.contains(&format!("cancelled corpus (slurm job {})", created[0])),
        "{out}"
    );
    let out = Command::new("squeue")
        .args([
            "--noheader",
            "--states=all",
            "--format=%T",
            "--jobs",
            &created[0],
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "CANCELLED");
    assert_eq!(
        ledger(&r.p.store())["corpus"].0.as_deref(),
        Some(created[0].as_str()),
        "its id is recorded with the cancellation"
    );
    let status = r.run(&["status"]);
    assert!(status.contains("cancelled (slurm job"), "{status}");
}

#[test]
fn a_queued_job_waiting_on_a_job_that_ended_is_submitted_again_behind_the_new_one() {
    if !super::slurm::cluster() {
        return;
    }
    let r = Rig::new();
    r.p.write(
        "two.kdl",
        "dataset corpus path=\"data/corpus.jsonl\" format=text\n\
         tokenizer tok vocab-size=300 { data corpus; }\n",
    );
    // `tok`'s job is queued behind `corpus`'s, unrecorded; then `corpus`'s job goes away.
    r.killed_at("two.kdl", "2:answered");
    let created = r.created();
    assert_eq!(created.len(), 2, "{created:?}");
    let out = Command::new("scancel").arg(&created[0]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = r.run(&["run", "two.kdl", "--executor", "slurm", "--hold"]);
    assert!(out.contains("2 submitted, 0 already queued"), "{out}");
    let ledger = ledger(&r.p.store());
    let (corpus, tok) = (
        ledger["corpus"].0.clone().unwrap(),
        ledger["tok"].0.clone().unwrap(),
    );
    assert_eq!(ledger["tok"].1, vec![corpus.clone()]);
    let out = Command::new("squeue")
        .args(["--noheader", "--states=all", "--format=%i|%T|%E"])
        .output()
        .unwrap();
    let queue = String::from_utf8_lossy(&out.stdout).into_owned();
    let state = |id: &str| {
        queue
            .lines()
            .find(|l| l.split('|').next() == Some(id))
            .unwrap_or("")
            .to_string()
    };
    assert!(
        state(&tok).contains("PENDING") && state(&tok).contains(&format!("afterok:{corpus}")),
        "{}",
        state(&tok)
    );
    assert!(
        state(&created[1]).contains("CANCELLED"),
        "{}",
        state(&created[1])
    );
}
