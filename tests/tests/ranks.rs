//! Data-parallel training nodes (`ranks 2`) on CPU through Open MPI (`mpirun`, `temper-rank`):
//! parity with one rank, determinism, a rank killed mid-run, the Slurm launch and bad inputs.
//! Without MPI (no `mpirun`, or `temper-rank` not built beside `temper`) each test says so and
//! passes without checking; `make test` installs Open MPI (scripts/mpi-setup.sh).

use serde_json::Value as J;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use temper_e2e::{text, Project};

/// Whether MPI and `temper-rank` are here; prints why not.
pub(crate) fn mpi() -> bool {
    let rank = temper_e2e::temper_bin().with_file_name("temper-rank");
    let mpirun = std::process::Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !(mpirun && rank.is_file()) {
        eprintln!(
            "SKIPPED: no MPI (mpirun: {mpirun}, {} built: {}); `make test` installs and builds it",
            rank.display(),
            rank.is_file()
        );
        return false;
    }
    true
}

pub(crate) const SFT: &str = r#"
dataset corpus path="data/corpus.jsonl" format=text
dataset train path="data/train.jsonl" format=prompt-completion
tokenizer tok vocab-size=320 { data corpus; data train; }
model tiny tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 seed=0
sft tuned model=tiny data=train {
    steps 30; batch-size 4; grad-accum 2; seq-len 64; lr 2e-3
    checkpoint-every 5; log-every 1; device cpu; threads 1; ranks RANKS
}
"#;

pub(crate) const CPT: &str = r#"
dataset corpus path="data/corpus.jsonl" format=text
tokenizer tok vocab-size=320 { data corpus; }
model tiny tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 seed=0
cpt domain model=tiny data=corpus {
    seq-len 32; batch-size 2; grad-accum 2; steps 10; lr 2e-3; log-every 1; device cpu; threads 1
    ranks RANKS
}
"#;

/// LoRA with dropout: the masks are seeded per micro-batch index of the step, not per rank.
pub(crate) const LORA: &str = r#"
dataset corpus path="data/corpus.jsonl" format=text
tokenizer tok vocab-size=320 { data corpus; }
model tiny tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 seed=0
cpt domain model=tiny data=corpus {
    lora rank=8 alpha=16 dropout=0.1 { target "all-linear"; }
    seq-len 32; batch-size 2; grad-accum 2; steps 10; lr 2e-3; log-every 1; device cpu; threads 1
    ranks RANKS
}
"#;

pub(crate) const DPO: &str = r#"
dataset prefs path="data/prefs.jsonl" format=preference
tokenizer tok vocab-size=300 { data prefs; }
model tiny tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 max-position=64 seed=0
ref-logps ref model=tiny data=prefs { max-len 32; }
dpo aligned model=tiny ref=ref {
    beta 0.1; steps 6; batch-size 4; grad-accum 2; lr 1e-3; log-every 1; threads 1; ranks RANKS
}
"#;

pub(crate) fn project(recipe: &str, ranks: usize) -> Project {
    let p = Project::new();
    for f in ["corpus", "train", "prefs"] {
        p.copy_from_repo(
            &format!("examples/data/{f}.jsonl"),
            &format!("data/{f}.jsonl"),
        );
    }
    p.write("r.kdl", &recipe.replace("RANKS", &ranks.to_string()));
    p
}

/// The artifact of the training node (the one with `train_summary.json`).
pub(crate) fn trained(store: &Path) -> PathBuf {
    std::fs::read_dir(store.join("artifacts"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("train_summary.json").is_file())
        .expect("a trained artifact")
}

/// Per-step losses of an artifact's metrics.
pub(crate) fn losses(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<J>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// The trained weights: the model, or the adapter of a LoRA node.
pub(crate) fn weights(dir: &Path) -> Vec<u8> {
    let lora = dir.join("adapter_model.safetensors");
    std::fs::read(if lora.is_file() {
        lora
    } else {
        dir.join("model.safetensors")
    })
    .unwrap()
}

#[test]
fn two_ranks_match_one_rank_and_each_other_for_sft_dpo_cpt_and_lora() {
    if !mpi() {
        return;
    }
    for (what, recipe) in [("sft", SFT), ("dpo", DPO), ("cpt", CPT), ("lora", LORA)] {
        let one = project(recipe, 1);
        one.ok(&["run", "r.kdl"]);
        let two = project(recipe, 2);
        let out = two.ok(&["run", "r.kdl"]);
        assert!(out.contains("0 failed"), "{out}");
        let again = project(recipe, 2);
        again.ok(&["run", "r.kdl"]);
        let (a, b, c) = (
            trained(&one.store()),
            trained(&two.store()),
            trained(&again.store()),
        );
        // `ranks` is not a key input: the same artifact key either way.
        assert_eq!(a.file_name(), b.file_name(), "{what}");
        let (la, lb) = (losses(&a), losses(&b));
        assert_eq!(la.len(), lb.len());
        for (x, y) in la.iter().zip(&lb) {
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(1e-12),
                "{what}: loss {x} vs {y}"
            );
        }
        // With two ranks each sum is one addition, as in the one-rank accumulation: the
        // weights come out bit-identical (so max |Δw| = 0 ≤ 1e-5).
        assert!(
            weights(&a) == weights(&b),
            "{what}: 2 ranks vs 1 rank weights"
        );
        assert!(weights(&b) == weights(&c), "{what}: two 2-rank runs differ");
        let log = std::fs::read_to_string(
            two.store()
                .join("logs")
                .join(format!("{}.log", b.file_name().unwrap().to_string_lossy())),
        )
        .unwrap();
        assert!(log.contains("rank 0/2"), "{what}: ran as 2 ranks: {log}");
    }
}

/// Pids of processes whose command line contains `needle`.
pub(crate) fn pids_of(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Runs `p`'s recipe (`r.kdl`, 2 ranks), waits for its first checkpoint, kills the rank with the
/// higher pid with SIGKILL and waits for `temper run`: (its exit status, the time from the kill).
pub(crate) fn kill_a_rank_after_a_checkpoint(p: &Project) -> (std::process::ExitStatus, Duration) {
    let mut child = p.cmd(&["run", "r.kdl"]).spawn().unwrap();
    let t0 = Instant::now();
    let ckpt = || {
        walkdir::WalkDir::new(p.store().join("work"))
            .into_iter()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
    };
    while !ckpt() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // This project's ranks: their command line names its job file.
    let store = p.store().to_string_lossy().into_owned();
    let ranks: Vec<i32> = pids_of("temper-rank")
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<String> = c
                    .split(|&b| b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                // The ranks themselves (argv[0] is the rank binary), not `mpirun`.
                args[0].ends_with("temper-rank") && args.iter().any(|a| a.contains(&store))
            })
        })
        .collect();
    assert_eq!(ranks.len(), 2, "two ranks run: {ranks:?}");
    let victim = *ranks.iter().max().unwrap();
    unsafe {
        libc::kill(victim, libc::SIGKILL);
    }
    let killed = Instant::now();
    let status = child.wait().unwrap();
    (status, killed.elapsed())
}

/// The weights an uninterrupted 2-rank run of `recipe` writes.
pub(crate) fn uninterrupted(recipe: &str) -> Vec<u8> {
    let reference = project(recipe, 2);
    reference.ok(&["run", "r.kdl"]);
    weights(&trained(&reference.store()))
}

#[test]
fn a_rank_killed_mid_run_fails_the_node_and_a_rerun_resumes_to_the_same_weights() {
    if !mpi() {
        return;
    }
    let recipe = SFT.replace("steps 30", "steps 400");
    let want = uninterrupted(&recipe);

    let p = project(&recipe, 2);
    let (status, after_kill) = kill_a_rank_after_a_checkpoint(&p);
    assert!(
        after_kill < Duration::from_secs(60),
        "the run ended {after_kill:?} after a rank died"
    );
    let store = p.store().to_string_lossy().into_owned();
    assert_eq!(status.code(), Some(1), "the node failed");
    assert!(pids_of(&store).is_empty(), "no rank outlived the run");
    let v = p.run(&["verify"]);
    assert!(v.status.success(), "{}", text(&v));
    p.ok(&["run", "r.kdl"]);
    let dir = trained(&p.store());
    let s: J =
        serde_json::from_slice(&std::fs::read(dir.join("train_summary.json")).unwrap()).unwrap();
    assert!(
        s["resumed_from"].as_u64().unwrap() > 0,
        "resumed mid-stage: {s}"
    );
    assert!(
        weights(&dir) == want,
        "resumed 2-rank weights differ from an uninterrupted 2-rank run"
    );
}

/// Whether a Slurm cluster answers (`SLURM_CONF` set, `sinfo` succeeds); prints why not.
pub(crate) fn slurm_cluster() -> bool {
    let slurm = std::env::var_os("SLURM_CONF").is_some()
        && std::process::Command::new("sinfo")
            .output()
            .is_ok_and(|o| o.status.success());
    if !slurm {
        eprintln!("SKIPPED: no Slurm cluster answers (scripts/slurm-up.sh)");
    }
    slurm
}

#[test]
fn two_ranks_in_one_slurm_job_match_the_local_launcher() {
    if !mpi() {
        return;
    }
    if !slurm_cluster() {
        return;
    }
    let local = project(SFT, 2);
    local.ok(&["run", "r.kdl"]);
    let p = project(SFT, 2);
    let out = p.ok(&["run", "r.kdl", "--executor", "slurm", "--wait"]);
    assert!(out.contains("all done"), "{out}");
    let a = trained(&local.store());
    let b = trained(&p.store());
    assert!(weights(&a) == weights(&b), "Slurm 2-rank vs local 2-rank");
    // One job with two tasks.
    let sub: J = serde_json::from_slice(
        &std::fs::read(
            p.store()
                .join("slurm/jobs")
                .join(format!("{}.json", b.file_name().unwrap().to_string_lossy())),
        )
        .unwrap(),
    )
    .unwrap();
    let id = sub["job_id"].as_str().unwrap();
    let show = String::from_utf8_lossy(
        &std::process::Command::new("scontrol")
            .args(["show", "job", "-o", id])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(show.contains("NumTasks=2"), "{show}");
    // The ranks were a step of that job (`srun --mpi=pmix`), not processes of their own.
    let log = std::fs::read_to_string(
        p.store()
            .join("logs")
            .join(format!("{}.log", b.file_name().unwrap().to_string_lossy())),
    )
    .unwrap();
    assert!(
        log.contains("rank 0/2 pid") && log.contains(&format!("slurm step {id}.")),
        "{log}"
    );
}

#[test]
fn bad_data_parallel_inputs_fail_before_any_rank_starts() {
    // Not divisible: a located recipe error, MPI or not.
    let p = project(&SFT.replace("grad-accum 2", "grad-accum 3"), 2);
    let out = p.run(&["check", "r.kdl"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("r.kdl:") && text(&out).contains("make grad-accum a multiple of ranks"),
        "{}",
        text(&out)
    );
    // More ranks than cores: a located recipe error when the recipe loads, MPI or not.
    let p = project(&SFT.replace("grad-accum 2", "grad-accum 256"), 256);
    let out = p.run(&["run", "r.kdl"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("ranks 256 on the CPU, but this machine has") && t.contains("r.kdl:"),
        "{t}"
    );
    // No MPI: a clear error, nothing started.
    let p = project(SFT, 2);
    let out = p
        .cmd(&["run", "r.kdl"])
        .env("TEMPER_MPIRUN", "/nonexistent/mpirun")
        .env("TEMPER_RANK", "/nonexistent/temper-rank")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("temper-rank") || text(&out).contains("mpirun"),
        "{}",
        text(&out)
    );
    assert!(!p
        .store()
        .join("work")
        .read_dir()
        .unwrap()
        .flatten()
        .any(|e| e.path().join("checkpoints").exists()));
}

/// CUDA ranks go through temper's own launcher and NCCL, no MPI. Where no GPU can run them
/// (pretending to have two devices), every rank fails at start: the node fails promptly with
/// the reason, and no rank is left behind. (The GPU path itself is checked by
/// `bench/gpu_check.sh` on a CUDA machine.)
#[test]
fn cuda_ranks_without_a_usable_gpu_fail_promptly_with_the_reason() {
    if Path::new("/dev/nvidia0").exists() {
        eprintln!("SKIPPED: this machine has a GPU; bench/gpu_check.sh checks the CUDA path");
        return;
    }
    let rank = temper_e2e::temper_bin().with_file_name("temper-rank");
    if !rank.is_file() {
        eprintln!("SKIPPED: {} is not built (`make build`)", rank.display());
        return;
    }
    let p = project(&SFT.replace("device cpu", "device cuda"), 2);
    let start = Instant::now();
    let out = p
        .cmd(&["run", "r.kdl"])
        .env("TEMPER_CUDA_DEVICES", "2")
        .env("TEMPER_MPIRUN", "/nonexistent/mpirun")
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(start.elapsed() < Duration::from_secs(90), "{t}");
    assert!(
        t.contains("node tuned: starting the NCCL rank: rank 0:"),
        "{t}"
    );
    assert!(
        t.contains("no CUDA device") || t.contains("CUDA driver is missing"),
        "{t}"
    );
    assert!(t.contains("temper-rank --launch: rank"), "{t}");
    let job = p.store().join("work");
    assert!(
        pids_of(&job.to_string_lossy()).is_empty(),
        "a rank outlived the launcher"
    );
    let status = p.run(&["show", "r.kdl", "tuned"]);
    assert!(
        text(&status).contains("starting the NCCL rank"),
        "{}",
        text(&status)
    );
}
