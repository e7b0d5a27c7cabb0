//! End to end: what a long stage prints. On a terminal (a pseudo-terminal from `script`), the node's
//! progress bar shows step/total, steps/s, the ETA, the last loss and tokens/s; through a pipe, no
//! bar, and one metrics line every `log-every` steps.

use std::process::Command;
use temper_e2e::{temper_bin, Project};

const RECIPE: &str = r#"
dataset corpus path="data/corpus.jsonl" format=text
tokenizer tok vocab-size=300 { data corpus; }
model tiny tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 max-position=64 seed=0
cpt pre model=tiny data=corpus { seq-len 64; batch-size 4; steps 120; lr 1e-3; log-every 40; }
"#;

fn project() -> Project {
    let p = Project::new();
    p.copy_from_repo("examples/data/corpus.jsonl", "data/corpus.jsonl");
    p.write("r.kdl", RECIPE);
    p
}

#[test]
fn a_tty_gets_a_progress_bar_with_loss_and_tokens_per_second_a_pipe_gets_log_lines() {
    let script = Command::new("sh")
        .args(["-c", "command -v script"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !script {
        eprintln!("SKIPPED: no `script` (util-linux) to give temper a terminal");
        return;
    }
    let p = project();
    let log = p.path().join("tty.log");
    let cmd = format!(
        "{} --store {} run r.kdl",
        temper_bin().display(),
        p.store().display()
    );
    let out = Command::new("script")
        .args(["-qfec", &cmd])
        .arg(&log)
        .current_dir(p.path())
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("TEMPER_STORE")
        .env("TERM", "xterm")
        .output()
        .expect("run script");
    assert!(out.status.success(), "{out:?}");
    let tty = String::from_utf8_lossy(&std::fs::read(&log).expect("tty log")).replace('\r', "\n");
    let last = tty
        .lines()
        .rfind(|l| l.contains("id=pre") && l.contains("/120 "))
        .unwrap_or_else(|| panic!("no bar of `pre` in:\n{tty}"));
    for want in ["/s", "eta", "loss ", " tok/s"] {
        assert!(last.contains(want), "the bar `{last}` lacks `{want}`");
    }

    // Through a pipe: the metrics lines, every 40 steps, and no bar.
    let q = project();
    let out = q.cmd(&["run", "r.kdl"]).output().expect("run");
    assert!(out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let steps: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("step ") && l.contains(" loss "))
        .collect();
    assert_eq!(steps.len(), 3, "{text}");
    for (l, s) in steps
        .iter()
        .zip(["step 40/120", "step 80/120", "step 120/120"])
    {
        assert!(l.contains(s) && l.contains("tok/s"), "{l}");
    }
    assert!(!text.contains("eta"), "a bar on a pipe:\n{text}");
}
