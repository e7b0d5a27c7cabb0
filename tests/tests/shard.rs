//! `shard optimizer | gradients | full` on 2 CPU ranks (Open MPI): the weights of the unsharded
//! run, byte for byte, for SFT, DPO and LoRA (each rank runs one micro-batch per step, so every
//! gradient sum is the same single addition); a rank killed mid-run resumes from the sharded
//! checkpoint on 2 ranks and on 1 rank to the same weights; `shard` without ranks is a located
//! recipe error; a Slurm job of 2 tasks matches the local run; `plan` shows the memory per rank.
//! Without MPI (or Slurm) the tests say so and pass without checking (as `ranks` does).

use crate::ranks::{
    kill_a_rank_after_a_checkpoint, mpi, project, slurm_cluster, trained, uninterrupted, weights,
    DPO, LORA, SFT,
};
use temper_e2e::text;

/// `recipe` (with `ranks RANKS`) sharded `mode`.
fn sharded(recipe: &str, mode: &str) -> String {
    recipe.replace("ranks RANKS", &format!("ranks RANKS; shard {mode}"))
}

/// The node log of a store's trained artifact.
fn node_log(store: &std::path::Path) -> String {
    let dir = trained(store);
    std::fs::read_to_string(store.join("logs").join(format!(
        "{}.log",
        dir.file_name().unwrap().to_string_lossy()
    )))
    .unwrap()
}

#[test]
fn sharded_ranks_write_the_unsharded_weights() {
    if !mpi() {
        return;
    }
    for (what, recipe) in [("sft", SFT), ("dpo", DPO), ("lora", LORA)] {
        let plain = project(recipe, 2);
        plain.ok(&["run", "r.kdl"]);
        let want = trained(&plain.store());
        for mode in ["optimizer", "gradients", "full"] {
            let p = project(&sharded(recipe, mode), 2);
            p.ok(&["run", "r.kdl"]);
            let got = trained(&p.store());
            // `shard` is not a key input.
            assert_eq!(got.file_name(), want.file_name(), "{what} {mode}");
            assert!(
                weights(&got) == weights(&want),
                "{what}: shard {mode} weights differ from the unsharded 2-rank run"
            );
            let log = node_log(&p.store());
            assert!(
                log.contains(&format!(
                    "shard {mode}: rank 0 keeps the optimizer state of"
                )),
                "{what} {mode}: {log}"
            );
        }
    }
}

/// The largest relative difference `‖a − b‖ / ‖b‖` of a tensor between two f32 safetensors
/// files of the same tensors.
fn max_relative_difference(a: &[u8], b: &[u8]) -> f64 {
    let (a, b) = (
        safetensors::SafeTensors::deserialize(a).unwrap(),
        safetensors::SafeTensors::deserialize(b).unwrap(),
    );
    let floats = |v: &safetensors::tensor::TensorView| -> Vec<f32> {
        v.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let mut worst = 0f64;
    for (name, ta) in a.tensors() {
        let tb = b.tensor(&name).unwrap();
        let (mut diff, mut norm) = (0f64, 0f64);
        for (x, y) in floats(&ta).into_iter().zip(floats(&tb)) {
            diff += (x as f64 - y as f64).powi(2);
            norm += (y as f64).powi(2);
        }
        worst = worst.max((diff / norm.max(f64::MIN_POSITIVE)).sqrt());
    }
    worst
}

/// With two micro-batches per rank, `gradients` and `full` reduce each micro-batch's gradients
/// as its backward ends, so the sums add in another order than the all-reduce of the
/// accumulated gradients: the same weights to float rounding (≤ 1e-6 relative), and every mode
/// still learns the same run.
#[test]
fn several_micro_batches_per_rank_give_the_weights_to_float_rounding() {
    if !mpi() {
        return;
    }
    let recipe = SFT
        .replace("grad-accum 2", "grad-accum 4")
        .replace("steps 30", "steps 10");
    let plain = project(&recipe, 2);
    plain.ok(&["run", "r.kdl"]);
    let want = weights(&trained(&plain.store()));
    for mode in ["gradients", "full"] {
        let p = project(&sharded(&recipe, mode), 2);
        p.ok(&["run", "r.kdl"]);
        let got = weights(&trained(&p.store()));
        let d = max_relative_difference(&got, &want);
        assert!(
            d <= 1e-6,
            "shard {mode}: weights differ by {d:e} (relative)"
        );
    }
}

#[test]
fn a_sharded_checkpoint_resumes_on_two_ranks_and_on_one() {
    if !mpi() {
        return;
    }
    let recipe = SFT.replace("steps 30", "steps 300");
    let want = uninterrupted(&recipe);
    for mode in ["gradients", "full"] {
        resumes_to(&recipe, mode, &want);
    }
}

/// `recipe` sharded `mode`, a rank killed after a checkpoint, then resumed on 2 sharded ranks
/// and (a copy of the store) on 1 unsharded rank: both end at `want`.
fn resumes_to(recipe: &str, mode: &str, want: &[u8]) {
    let p = project(&sharded(recipe, mode), 2);
    let (status, _) = kill_a_rank_after_a_checkpoint(&p);
    assert_eq!(status.code(), Some(1), "{mode}: the node failed");
    let ckpt = || {
        walkdir::WalkDir::new(p.store().join("work"))
            .into_iter()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("step-"))
            .map(|e| e.into_path())
    };
    // Each rank's moments and weights are in the (latest, kept) checkpoint, none unsharded.
    let dir = ckpt().expect("the checkpoint is kept");
    for f in [
        "optimizer.rank-0.safetensors",
        "optimizer.rank-1.safetensors",
        "model.rank-0.safetensors",
        "model.rank-1.safetensors",
    ] {
        assert!(dir.join(f).is_file(), "{mode}: {f} in {}", dir.display());
    }
    assert!(!dir.join("optimizer.safetensors").exists());
    assert!(!dir.join("model.safetensors").exists());

    // The same store resumed on one rank, unsharded (a copy), and on two, sharded.
    let one = temper_e2e::Project::new();
    temper_e2e::copy_all(p.path(), one.path());
    one.write("r.kdl", &recipe.replace("RANKS", "1"));
    p.ok(&["run", "r.kdl"]);
    one.ok(&["run", "r.kdl"]);
    for (what, q) in [("2 ranks", &p), ("1 rank", &one)] {
        let dir = trained(&q.store());
        let s: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("train_summary.json")).unwrap())
                .unwrap();
        assert!(
            s["resumed_from"].as_u64().unwrap() > 0,
            "{mode}, {what}: resumed mid-stage: {s}"
        );
        assert!(
            weights(&dir) == want,
            "{mode}, {what}: resumed from the sharded checkpoint, the weights differ from an \
             uninterrupted run"
        );
    }
}

#[test]
fn shard_without_ranks_is_a_located_recipe_error() {
    let p = project(&sharded(SFT, "optimizer"), 1);
    let out = p.run(&["check", "r.kdl"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("r.kdl:") && t.contains("shard optimizer") && t.contains("add `ranks 2`"),
        "{t}"
    );
}

#[test]
fn a_sharded_slurm_job_of_two_tasks_matches_the_local_run() {
    if !mpi() {
        return;
    }
    if !slurm_cluster() {
        return;
    }
    let recipe = sharded(SFT, "full");
    let local = project(&recipe, 2);
    local.ok(&["run", "r.kdl"]);
    let p = project(&recipe, 2);
    let out = p.ok(&["run", "r.kdl", "--executor", "slurm", "--wait"]);
    assert!(out.contains("all done"), "{out}");
    let (a, b) = (trained(&local.store()), trained(&p.store()));
    assert!(weights(&a) == weights(&b), "Slurm sharded vs local sharded");
    let log = node_log(&p.store());
    assert!(
        log.contains("rank 0/2 pid") && log.contains("shard full: rank 0 keeps"),
        "{log}"
    );
}

/// `plan` shows a training node's memory per rank under it (the optimizer state halved by
/// `shard optimizer` on 2 ranks), and warns when it exceeds the CUDA devices' memory.
#[test]
fn plan_shows_the_memory_per_rank_and_warns_beyond_the_device() {
    // hidden 512, 8 layers, 384 tokens: 25.7M parameters, f32 on CPU: 0.19 GiB of AdamW moments.
    let wide = |extra: &str| {
        format!(
            r#"
dataset corpus path="data/corpus.jsonl" format=text
dataset train path="data/train.jsonl" format=prompt-completion
tokenizer tok vocab-size=384 {{ data corpus; data train; }}
model wide tokenizer=tok hidden-size=512 layers=8 heads=8 intermediate-size=1408 seed=0
sft tuned model=wide data=train {{ steps 2; batch-size 4; grad-accum 2; seq-len 64; {extra} }}
"#
        )
    };
    let p = project(&wide("device cpu; ranks RANKS"), 2);
    let out = p.ok(&["plan", "r.kdl", "--cpu-cores", "2"]);
    // Under the node: the device its `dtype auto` was keyed for, then the memory estimate.
    let under: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.contains("tuned"))
        .skip(1)
        .take(2)
        .map(str::trim_start)
        .collect();
    assert!(
        under.len() == 2
            && under[0].starts_with("dtype auto keyed for cpu (this machine")
            && under[1].starts_with("memory per rank ≈ ")
            && under[1].contains("optimizer state 0.19"),
        "{out}"
    );
    let p = project(&wide("device cpu; ranks RANKS; shard optimizer"), 2);
    let out = p.ok(&["plan", "r.kdl", "--cpu-cores", "2"]);
    assert!(out.contains("optimizer state 0.10"), "{out}");
    // ZeRO-3 halves the weights and the summed gradients too (one block whole at a time), and
    // recomputes the blocks: the checkpointed activations.
    let p = project(&wide("device cpu; ranks RANKS; shard full"), 2);
    let out = p.ok(&["plan", "r.kdl", "--cpu-cores", "2"]);
    assert!(
        out.contains("weights 0.06, gradients 0.06, optimizer state 0.10, activations 0.01"),
        "{out}"
    );
    // On CUDA (bf16-mixed: 6 + 6 + 8 bytes per parameter, about 0.5 GiB) a device of 0.25 GiB
    // is too small: a located warning, and the plan still runs.
    let p = project(&wide("device cuda; ranks RANKS"), 1);
    let o = p.run(&[
        "plan",
        "r.kdl",
        "--cuda-devices",
        "1",
        "--cuda-memory",
        "0.25",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("r.kdl:")
            && t.contains("more than the 0.25 GiB of a CUDA device")
            && t.contains("help: more `ranks` with `shard gradients` or `shard full`"),
        "{t}"
    );
}
