//! `temper worker JOB`, the seam a cluster executor will use: the job file `temper run` leaves in
//! a node's work dir runs that one instance against the store from any directory and publishes
//! it, from an empty staging dir (nothing an interrupted attempt left there is published).

use temper_e2e::{text, Project};

#[test]
fn a_job_file_runs_its_node_from_elsewhere_and_publishes_it() {
    let p = Project::new();
    p.write("data/a.jsonl", "{\"text\": \"alpha\"}\n");
    p.write(
        "recipe.kdl",
        "dataset a path=\"data/a.jsonl\" format=text\n",
    );
    let out = p
        .cmd(&["run", "recipe.kdl"])
        .env("TEMPER_CRASH_AT", "stage:a")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the crash hook aborts\n{}",
        text(&out)
    );
    let work = std::fs::read_dir(p.store().join("work"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|d| d.join("job.json").is_file())
        .expect("the failed node's work dir holds its job");
    std::fs::write(
        work.join("out/leftover.txt"),
        "from the interrupted attempt",
    )
    .unwrap();
    // From another directory, with no --store: everything is in the job.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(temper_e2e::temper_bin())
        .current_dir(elsewhere.path())
        .args(["worker".as_ref(), work.join("job.json").as_os_str()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.contains("\"end\":\"done\"")),
        "the last event says done:\n{stdout}"
    );
    let plan = p.ok(&["plan", "recipe.kdl"]);
    assert!(plan.contains("cached"), "{plan}");
    let art = std::fs::read_dir(p.store().join("artifacts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .expect("an artifact");
    assert!(art.join("data.jsonl").is_file(), "{}", art.display());
    assert!(
        !art.join("leftover.txt").exists(),
        "a leftover was published"
    );
    let shown = p.ok(&["show", "recipe.kdl", "a"]);
    assert!(shown.contains("status     done"), "{shown}");
}
