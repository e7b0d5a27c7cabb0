//! A hostile but realistic user, through the real binary: node logs that stay small and
//! readable, non-finite or dead training that is never published as a silent success, closed
//! pipes, dataset files the key and the reader must agree on, files a recipe must not leak, and
//! instances that share one key. Each test reproduces a failure found by a fault campaign.

use serde_json::Value as J;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use temper_e2e::{assert_no_panic, text, Project};

const BASE: &str = r#"
dataset corpus path="data/corpus.jsonl" format=text
tokenizer tok vocab-size=320 { data corpus; }
model tiny tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 seed=0
"#;

fn project(extra: &str) -> Project {
    let p = Project::new();
    p.copy_from_repo("examples/data/corpus.jsonl", "data/corpus.jsonl");
    p.write("recipe.kdl", &format!("{BASE}{extra}"));
    p
}

/// Every node log of the store: (file, text).
fn logs(store: &Path) -> Vec<(PathBuf, String)> {
    let mut v: Vec<(PathBuf, String)> = std::fs::read_dir(store.join("logs"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .map(|p| {
                    let t = std::fs::read_to_string(&p).unwrap_or_default();
                    (p, t)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The artifact directories holding `file`.
fn artifacts_with(store: &Path, file: &str) -> Vec<PathBuf> {
    std::fs::read_dir(store.join("artifacts"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.join(file).is_file())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn node_logs_hold_temper_lines_at_info_one_block_per_attempt() {
    let p = project(
        "cpt domain model=tiny data=corpus { seq-len 32; batch-size 4; steps 12; lr 2e-3; \
         log-every 4; device cpu; threads 1; }\n",
    );
    let mut crash = p.cmd(&["run", "recipe.kdl"]);
    crash.env("TEMPER_CRASH_AT", "stage:domain");
    let out = crash.output().unwrap();
    assert!(
        !out.status.success(),
        "the crash hook aborts\n{}",
        text(&out)
    );
    p.ok(&["run", "recipe.kdl"]);
    let all = logs(&p.store());
    assert_eq!(all.len(), 4, "one log per node: {all:?}");
    let total: usize = all.iter().map(|(_, t)| t.len()).sum();
    // Before: the tokenizer node alone wrote megabytes of TRACE lines from `tokenizers`.
    assert!(total < 64 << 10, "node logs are {total} bytes");
    for (path, t) in &all {
        assert!(
            t.starts_with("==== attempt · run "),
            "{}:\n{t}",
            path.display()
        );
        for l in t.lines() {
            assert!(
                !l.contains(" TRACE ") && !l.contains(" DEBUG "),
                "{}: a line below INFO: {l}",
                path.display()
            );
        }
    }
    let cpt = all
        .iter()
        .find(|(_, t)| t.contains("(kind cpt"))
        .expect("the cpt node's log");
    assert_eq!(
        cpt.1.matches("==== attempt").count(),
        2,
        "the crashed attempt and the rerun are two blocks:\n{}",
        cpt.1
    );
    let shown = p.ok(&["show", "recipe.kdl", "domain", "--log-lines", "100"]);
    assert!(shown.contains("(last attempt, last "), "{shown}");
    assert_eq!(
        shown.matches("==== attempt").count(),
        1,
        "show prints the last attempt only:\n{shown}"
    );
    assert!(shown.contains(" done"), "{shown}");
}

#[test]
fn non_finite_weights_fail_the_node_and_publish_nothing() {
    // lr 1e39 overflows f32: the only step's update makes the weights infinite. Before, the
    // node ended "done" with NaN in embed_tokens.
    let p = project(
        "cpt boom model=tiny data=corpus { seq-len 32; batch-size 4; steps 1; lr 1e39; \
         device cpu; threads 1; }\n",
    );
    let out = p.run(&["run", "recipe.kdl"]);
    assert_no_panic(&out, "run");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("non-finite weights in "), "{}", text(&out));
    assert!(err.contains("nothing is published"), "{}", text(&out));
    assert!(
        !err.contains("node boom: node boom:"),
        "the node is named once\n{}",
        text(&out)
    );
    assert!(artifacts_with(&p.store(), "train_summary.json").is_empty());
    let shown = p.ok(&["show", "recipe.kdl", "boom"]);
    assert!(shown.contains("status     failed"), "{shown}");
    assert!(
        shown.contains("\nfailed     "),
        "a failed node says so, not `finished`:\n{shown}"
    );
}

#[test]
fn a_dead_model_finishes_with_a_warning_in_its_summary_and_show() {
    // The quickstart's model with lr 1e6 and no clipping: the first step saturates it, every
    // later gradient is exactly 0 and the loss sits at ln V. Before, this ended "done" silently.
    let p = Project::new();
    p.copy_from_repo("examples/data/corpus.jsonl", "data/corpus.jsonl");
    p.copy_from_repo("examples/data/train.jsonl", "data/train.jsonl");
    p.write(
        "recipe.kdl",
        r#"
dataset corpus path="data/corpus.jsonl" format=text
dataset train  path="data/train.jsonl"  format=prompt-completion
tokenizer tok vocab-size=384 { data corpus; data train; }
model tiny tokenizer=tok hidden-size=64 layers=2 heads=4 kv-heads=2 intermediate-size=176 \
    max-position=256 tie-embeddings=#true seed=0
sft dead model=tiny data=train {
    seq-len 128; batch-size 16; steps 20; lr 1e6; max-grad-norm 0; device cpu; threads 1
}
"#,
    );
    p.ok(&["run", "recipe.kdl"]);
    let dir = artifacts_with(&p.store(), "train_summary.json");
    assert_eq!(dir.len(), 1);
    let s: J =
        serde_json::from_str(&std::fs::read_to_string(dir[0].join("train_summary.json")).unwrap())
            .unwrap();
    let w = s["warnings"].as_array().cloned().unwrap_or_default();
    assert!(
        w.iter()
            .any(|x| x.as_str().unwrap().starts_with("training stalled")),
        "{s}"
    );
    let shown = p.ok(&["show", "recipe.kdl", "dead"]);
    assert!(shown.contains("warning    training stalled"), "{shown}");
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let p = project("");
    p.ok(&["run", "recipe.kdl"]);
    for args in [
        &["kinds"][..],
        &["plan", "recipe.kdl"],
        &["show", "recipe.kdl"],
        &["status"],
    ] {
        let mut child = p
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the read end before temper writes anything (it loads libtorch first).
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_no_panic(&out, &format!("temper {args:?} | (closed)"));
        use std::os::unix::process::ExitStatusExt;
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "temper {args:?}: {}",
            text(&out)
        );
    }
}

#[test]
fn dataset_files_are_read_exactly_as_they_are_hashed() {
    let p = Project::new();
    let corpus =
        std::fs::read_to_string(temper_e2e::repo_root().join("examples/data/corpus.jsonl"))
            .unwrap();
    let lines: Vec<&str> = corpus.lines().collect();
    p.write("data/dir/a.jsonl", &(lines[..10].join("\n") + "\n"));
    p.write("elsewhere/b.jsonl", &(lines[10..40].join("\n") + "\n"));
    std::os::unix::fs::symlink(
        p.path().join("elsewhere/b.jsonl"),
        p.path().join("data/dir/b.jsonl"),
    )
    .unwrap();
    p.write("data/train[1].jsonl", &(lines[..5].join("\n") + "\n"));
    p.write(
        "recipe.kdl",
        "dataset d path=\"data/dir\" format=text\ndataset lit path=\"data/train[1].jsonl\" format=text\n",
    );
    let out = p.ok(&["run", "recipe.kdl"]);
    assert!(out.contains("2 done"), "{out}");
    // Before: the symlinked file was hashed into the key but skipped by the reader (10 of 40).
    let d = p.ok(&["show", "recipe.kdl", "d"]);
    assert!(d.contains("\"records\": 40"), "{d}");
    // Before: "no file matches" — the literal file name was taken as a glob.
    let lit = p.ok(&["show", "recipe.kdl", "lit"]);
    assert!(lit.contains("\"records\": 5"), "{lit}");

    std::os::unix::fs::symlink(
        p.path().join("elsewhere/gone.jsonl"),
        p.path().join("data/dir/c.jsonl"),
    )
    .unwrap();
    let out = p.run(&["plan", "recipe.kdl"]);
    assert_no_panic(&out, "plan with a dangling symlink");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("data/dir/c.jsonl` is a dangling symlink (to `"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_chat_template_param_never_copies_an_arbitrary_file() {
    let p = project("");
    let secret = p.write("secret.txt", "root:SECRET-MARKER-42:19000:0:99999:7:::\n");
    p.write(
        "recipe.kdl",
        &format!(
            "{BASE}tokenizer tok2 vocab-size=320 chat-template=\"{}\" {{ data corpus; }}\n",
            secret.display()
        ),
    );
    let out = p.run(&["run", "recipe.kdl"]);
    assert_no_panic(&out, "run");
    assert!(!out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("not a chat template"), "{all}");
    assert!(!all.contains("SECRET-MARKER"), "{all}");
    for (path, t) in logs(&p.store()) {
        assert!(!t.contains("SECRET-MARKER"), "{}", path.display());
    }
    for e in walk(&p.store().join("artifacts")) {
        let t = std::fs::read(&e).unwrap();
        assert!(
            !String::from_utf8_lossy(&t).contains("SECRET-MARKER"),
            "{}",
            e.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in walkdir::WalkDir::new(dir).into_iter().flatten() {
        if e.file_type().is_file() {
            v.push(e.path().to_path_buf());
        }
    }
    v
}

#[test]
fn instances_with_one_key_are_built_once_and_shown_as_shared() {
    let p = project("");
    p.write(
        "recipe.kdl",
        "dataset a path=\"data/corpus.jsonl\" format=text\n\
         dataset b path=\"data/corpus.jsonl\" format=text\n",
    );
    let out = p.ok(&["run", "recipe.kdl", "--jobs", "2"]);
    assert!(out.contains("1 done"), "{out}");
    assert!(out.contains(" b same key as a (built once)"), "{out}");
    assert!(out.contains("1 shared"), "{out}");
    let shown = p.ok(&["show", "recipe.kdl", "b"]);
    assert!(
        shown.contains("node       b (kind dataset; same key as a of recipe recipe"),
        "show b names b and says who built the key:\n{shown}"
    );
}

#[test]
fn untrusted_plan_refuses_paths_outside_the_repository_before_reading_them() {
    let p = Project::new();
    std::fs::create_dir_all(p.path().join("repo/.git")).unwrap();
    let secret = p.write("outside/secret.jsonl", "{\"text\": \"SECRET-MARKER-7\"}\n");
    p.write(
        "repo/recipe.kdl",
        &format!(
            "dataset d path=\"{}\" format=text\ninclude \"../outside/x.kdl\"\n",
            secret.display()
        ),
    );
    p.write(
        "outside/x.kdl",
        "dataset e path=\"secret.jsonl\" format=text\n",
    );
    let out = p.run(&["plan", "repo/recipe.kdl", "--untrusted"]);
    assert_no_panic(&out, "plan --untrusted");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("is outside the recipe's repository"), "{all}");
    assert!(!all.contains("SECRET-MARKER"), "{all}");
    // The same recipe is valid when trusted: the refusal is the untrusted mode's.
    let trusted = p.run(&["plan", "repo/recipe.kdl"]);
    assert!(trusted.status.success(), "{}", text(&trusted));
}

/// Two independent datasets, one line of text each (distinct content, so distinct keys).
fn two_datasets(a_extra: &str, b_extra: &str) -> Project {
    let p = Project::new();
    p.write("data/a.jsonl", "{\"text\": \"alpha\"}\n");
    p.write("data/b.jsonl", "{\"text\": \"beta\"}\n");
    p.write(
        "recipe.kdl",
        &format!(
            "dataset a path=\"data/a.jsonl\" format=text {a_extra}\n\
             dataset b path=\"data/b.jsonl\" format=text {b_extra}\n"
        ),
    );
    p
}

/// The log of node `id` (the one whose start line names it).
fn node_log(store: &Path, id: &str) -> String {
    logs(store)
        .into_iter()
        .map(|(_, t)| t)
        .find(|t| t.contains(&format!(" start {id} (kind ")))
        .unwrap_or_else(|| panic!("no log of node {id}"))
}

/// The timestamp (`2026-11-28 21:14:03.123`, sortable as text) of the first line containing
/// `what` in a node log.
fn stamp<'a>(log: &'a str, what: &str) -> &'a str {
    let l = log
        .lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no `{what}` in:\n{log}"));
    &l[..23]
}

#[test]
fn nodes_run_in_worker_processes_of_their_own_each_with_its_own_threads() {
    // `threads` used to be process-wide: with --jobs 2 the last node to start set it for both.
    let p = two_datasets("threads=1", "threads=2");
    // Hold `a` so `b` runs while it does.
    let out = p
        .cmd(&["run", "recipe.kdl", "--jobs", "2"])
        .env("TEMPER_PAUSE_AT", "stage:a:1500")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let (a, b) = (node_log(&p.store(), "a"), node_log(&p.store(), "b"));
    let pid_threads = |log: &str| -> (u32, u32) {
        let l = log
            .lines()
            .find(|l| l.contains("worker pid ") && l.contains(" CPU threads"))
            .unwrap_or_else(|| panic!("the worker logs its threads:\n{log}"));
        let rest = &l[l.find("worker pid ").unwrap() + "worker pid ".len()..];
        let (pid, rest) = rest.split_once(": ").unwrap();
        let threads = rest.split_whitespace().next().unwrap();
        (pid.parse().unwrap(), threads.parse().unwrap())
    };
    let (pa, ta) = pid_threads(&a);
    let (pb, tb) = pid_threads(&b);
    assert_eq!((ta, tb), (1, 2), "each node's own thread count:\n{a}\n{b}");
    assert_ne!(pa, pb, "two worker processes:\n{a}\n{b}");
    // At the same time: each started before the other ended.
    let (a0, a1) = (stamp(&a, " start a "), stamp(&a, " done"));
    let (b0, b1) = (stamp(&b, " start b "), stamp(&b, " done"));
    assert!(a0 < b1 && b0 < a1, "a {a0}..{a1}, b {b0}..{b1}");
}

#[test]
fn a_worker_that_aborts_fails_its_node_and_an_independent_node_beside_it_completes() {
    let p = two_datasets("", "");
    let out = p
        .cmd(&["run", "recipe.kdl", "--jobs", "2", "--keep-going"])
        .env("TEMPER_CRASH_AT", "stage:a")
        .env("TEMPER_PAUSE_AT", "stage:b:1000")
        .output()
        .unwrap();
    assert_no_panic(&out, "run");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stderr.contains("node a: the worker process died (signal 6 (SIGABRT)); see its log"),
        "{}",
        text(&out)
    );
    assert!(stdout.contains(" b done"), "{}", text(&out));
    assert!(
        stdout.contains("1 done, 0 cached, 1 failed"),
        "{}",
        text(&out)
    );
    let shown = p.ok(&["show", "recipe.kdl", "a"]);
    assert!(shown.contains("status     failed"), "{shown}");
    // The death is in the node's log too, and a rerun builds `a` alone.
    assert!(node_log(&p.store(), "a").contains("the worker process died"));
    let again = p.ok(&["run", "recipe.kdl"]);
    assert!(again.contains("1 done, 1 cached, 0 failed"), "{again}");
}
