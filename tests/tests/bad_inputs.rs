//! The bad-input corpus: every malformed recipe (`tests/bad/recipes/*.kdl`, checked with
//! `temper check`) and every malformed data file (`tests/bad/data-recipes/*.kdl`, run with
//! `temper run`) must produce a clear diagnostic — compared with its snapshot in
//! `tests/bad/snapshots/` — and never a panic; every recipe that is valid but dubious
//! (`tests/bad/warn-recipes/*.kdl`) passes `temper check` with located warnings, snapshotted
//! too. `UPDATE_SNAPSHOTS=1 make test` rewrites the snapshots; review the diff like any other
//! change.

use std::path::{Path, PathBuf};
use std::process::Command;
use temper_e2e::{assert_no_panic, repo_root, temper_bin, text, Project};

fn corpus(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("tests/bad").join(dir))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "kdl"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Extra command-line arguments from a first-line comment `// args: --set a.b=1`.
fn extra_args(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .next()
        .and_then(|l| l.trim().strip_prefix("// args:"))
        .map(|rest| rest.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Makes output independent of the machine: temp paths, timings, ANSI codes, log prefixes.
fn normalize(s: &str, store: &Path) -> String {
    let s = s.replace(&store.display().to_string(), "<store>");
    let mut out = String::new();
    for line in s.lines() {
        let mut l = String::new();
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // skip an ANSI escape sequence
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                l.push(c);
            }
        }
        let l = l.trim_end();
        // per-step training lines carry losses and throughput, which vary between machines
        if l.contains(" tok/s") {
            continue;
        }
        // timings such as `1.23s` or `in 12ms` vary between runs
        let l = mask_durations(l);
        out.push_str(&l);
        out.push('\n');
    }
    out
}

fn mask_durations(l: &str) -> String {
    let mut out = String::new();
    let bytes: Vec<char> = l.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_alphanumeric()) {
            let mut j = i;
            while j < bytes.len() && (bytes[j].is_ascii_digit() || bytes[j] == '.') {
                j += 1;
            }
            let unit: String = bytes[j..].iter().take(2).collect();
            let is_dur = unit == "ms"
                || (unit.starts_with('s')
                    && !bytes.get(j + 1).is_some_and(|c| c.is_alphanumeric()));
            if is_dur {
                out.push_str("<t>");
                i = j + if unit == "ms" { 2 } else { 1 };
                continue;
            }
            out.extend(&bytes[i..j]);
            i = j;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn check_snapshot(name: &str, actual: &str) -> Result<(), String> {
    let snap = repo_root()
        .join("tests/bad/snapshots")
        .join(format!("{name}.snap"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(snap.parent().unwrap()).unwrap();
        std::fs::write(&snap, actual).unwrap();
        return Ok(());
    }
    match std::fs::read_to_string(&snap) {
        Ok(expected) if expected == actual => Ok(()),
        Ok(expected) => Err(format!(
            "{name}: diagnostic differs from {}\n--- expected\n{expected}\n--- actual\n{actual}",
            snap.display()
        )),
        Err(_) => Err(format!(
            "{name}: no snapshot at {} (run with UPDATE_SNAPSHOTS=1)\n--- actual\n{actual}",
            snap.display()
        )),
    }
}

/// Runs one corpus entry from `tests/` (so file names print as `bad/...`) and returns the
/// normalized stderr, asserting the expected exit code and no panic.
fn run_case(sub: &str, file: &Path, cmd: &str, codes: &[i32]) -> String {
    run_case_in(&tempfile::tempdir().unwrap(), sub, file, cmd, codes)
}

/// [`run_case`] with the store in `store`.
fn run_case_in(
    store: &tempfile::TempDir,
    sub: &str,
    file: &Path,
    cmd: &str,
    codes: &[i32],
) -> String {
    let rel = format!("bad/{sub}/{}", file.file_name().unwrap().to_string_lossy());
    let out = Command::new(temper_bin())
        .current_dir(repo_root().join("tests"))
        .env_remove("TEMPER_STORE")
        .env("NO_COLOR", "1")
        .arg("--store")
        .arg(store.path())
        .arg(cmd)
        .arg(&rel)
        .args(extra_args(file))
        .output()
        .expect("spawn temper");
    assert_no_panic(&out, &rel);
    assert!(
        out.status.code().is_some_and(|c| codes.contains(&c)),
        "{rel}: expected exit code in {codes:?}\n{}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.trim().is_empty(), "{rel}: no diagnostic printed");
    normalize(&err, store.path())
}

#[test]
fn corpus_is_large_enough() {
    let n = corpus("recipes").len() + corpus("data-recipes").len();
    assert!(
        n >= 40,
        "the bad-input corpus has {n} entries, want at least 40"
    );
}

#[test]
fn malformed_recipes_give_snapshot_diagnostics() {
    let mut failures = Vec::new();
    for file in corpus("recipes") {
        let stem = file.file_stem().unwrap().to_string_lossy().to_string();
        let actual = run_case("recipes", &file, "check", &[2]);
        assert!(
            actual.contains(".kdl:") || actual.contains("--set"),
            "{stem}: diagnostic does not name a file:line:col\n{actual}"
        );
        if let Err(e) = check_snapshot(&format!("recipes/{stem}"), &actual) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn malformed_data_gives_snapshot_diagnostics() {
    let mut failures = Vec::new();
    for file in corpus("data-recipes") {
        let stem = file.file_stem().unwrap().to_string_lossy().to_string();
        // A missing file is found by `check` (exit 2); a bad record when the dataset node runs (exit 1).
        let actual = run_case("data-recipes", &file, "run", &[1, 2]);
        if let Err(e) = check_snapshot(&format!("data/{stem}"), &actual) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn dubious_recipes_pass_check_with_snapshot_warnings() {
    let files = corpus("warn-recipes");
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    for file in files {
        let stem = file.file_stem().unwrap().to_string_lossy().to_string();
        let actual = run_case("warn-recipes", &file, "check", &[0]);
        assert!(
            actual.contains(".kdl:") && actual.contains("warning"),
            "{stem}: no located warning\n{actual}"
        );
        if let Err(e) = check_snapshot(&format!("warnings/{stem}"), &actual) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// More ranks than this machine has cores: `plan` and `run` refuse the recipe as `check` does
/// (`recipes/73-…`), before anything runs.
#[test]
fn ranks_beyond_the_machine_are_refused_by_plan_and_run_before_anything_runs() {
    let file = repo_root().join("tests/bad/recipes/73-ranks-more-than-cores.kdl");
    for cmd in ["plan", "run"] {
        let store = tempfile::tempdir().unwrap();
        let err = run_case_in(&store, "recipes", &file, cmd, &[2]);
        assert!(
            err.contains("ranks 64 on the CPU, but this machine has 2 core(s)")
                && err.contains("[bad/recipes/73-ranks-more-than-cores.kdl:7:58]"),
            "{cmd}: {err}"
        );
        let built = std::fs::read_dir(store.path().join("artifacts"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(built, 0, "{cmd} built something");
    }
}

/// Under `--executor slurm` the machine is the job's: CUDA ranks are checked against the GPUs
/// the job asks for (`gpus-per-node`), located at `ranks`, before any job is submitted.
#[test]
fn slurm_cuda_ranks_beyond_the_jobs_gpus_are_refused_before_submitting() {
    let up = std::env::var_os("SLURM_CONF").is_some()
        && Command::new("sinfo")
            .output()
            .is_ok_and(|o| o.status.success());
    if !up {
        eprintln!("SKIPPED: no Slurm cluster answers (scripts/slurm-up.sh)");
        return;
    }
    let p = Project::new();
    p.copy_from_repo("tests/bad/data/valid/chat.jsonl", "data/chat.jsonl");
    p.write(
        "r.kdl",
        "dataset chat path=\"data/chat.jsonl\" format=messages\n\
         tokenizer tok vocab-size=512 { data chat; }\n\
         model tiny tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2\n\
         sft tuned model=tiny data=chat { steps 1; grad-accum 2; ranks 2; device cuda; }\n",
    );
    for (config, says) in [
        (
            "[slurm]\n",
            "ranks 2 on CUDA, but its Slurm job asks for no GPU",
        ),
        (
            "[slurm]\ngpus-per-node = 1\n",
            "ranks 2 on CUDA, 2 of them on one node, but its Slurm job asks for 1 GPU(s) per node",
        ),
    ] {
        let user = p.write("user.toml", config);
        let out = p
            .cmd(&["run", "r.kdl", "--executor", "slurm"])
            .env("TEMPER_CONFIG", &user)
            .output()
            .unwrap();
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{t}");
        assert!(t.contains(says) && t.contains("[r.kdl:4:57]"), "{t}");
        let jobs = std::fs::read_dir(p.store().join("slurm/jobs"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(jobs, 0, "a job was submitted:\n{t}");
    }
}
