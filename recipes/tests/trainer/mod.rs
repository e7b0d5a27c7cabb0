//! Tests of the training loop (`recipes::trainer`) and the `cpt` / `sft` kinds on a tiny Llama
//! built by the test.

use crate::common::lm::*;
use dsl::Value;
use recipes::arch::{HfModel, LoadOptions};
use recipes::batching::examples::{Encoded, Encoder, LossOn, IGNORE};
use recipes::kinds::cpt::Cpt;
use recipes::kinds::sft::{Sft, SftData};
use recipes::tok::TokenizerDir;
use recipes::trainer::lm;
use recipes::{Stage, StageError};
use std::path::Path;

mod precision;

fn summary(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("train_summary.json")).unwrap()).unwrap()
}

#[test]
fn cpt_learns_and_writes_an_hf_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model(tmp.path());
    let data = text_dataset(tmp.path(), 16);
    let params = [
        ("model", r("model")),
        ("data", r("data")),
        ("seq-len", i(16)),
        ("batch-size", i(4)),
        ("steps", i(40)),
        ("lr", f(3e-3)),
        ("schedule", sched("cosine", Some(0.1))),
        ("log-every", i(5)),
    ];
    let t = std::time::Instant::now();
    let (_, out) = run(
        &Cpt,
        &params,
        &[("model", &model), ("data", &data)],
        &tmp.path().join("cpt"),
    )
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let s = summary(&out);
    let (first, last) = (
        s["first_loss"].as_f64().unwrap(),
        s["final_loss"].as_f64().unwrap(),
    );
    eprintln!(
        "cpt: loss {first:.3} -> {last:.3} in 40 steps, {:.1} ms/step",
        secs * 25.0
    );
    assert!(last < first * 0.5, "loss {first} -> {last}");
    assert_eq!(s["steps"], 40);
    for f in [
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "metrics.jsonl",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        cfg["chat_template"].as_str(),
        Some(recipes::tok::CHATML_TEMPLATE)
    );
    let m = metrics(&out.join("metrics.jsonl"));
    assert_eq!(m.len(), 8, "a line every 5 steps");
    assert_eq!(m[7]["step"], 40);
    for k in ["loss", "lr", "grad_norm", "tokens_seen", "epoch"] {
        assert!(m[0].get(k).is_some(), "metric {k}");
    }
    // The saved model loads and reproduces the logged final loss's ballpark.
    HfModel::load(&out, "out", &LoadOptions::default()).unwrap();
}

/// `grad-accum 2 × batch 2` updates like `batch 4` when the examples have different numbers
/// of targets. Adam's eps is made large so the update is ≈ proportional to the gradient
/// (a wrong normalisation would then show).
#[test]
fn accumulation_normalises_over_the_whole_step() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model(tmp.path());
    let lines: Vec<_> = ["1", "22 22 22 22", "3", "44 44 44 44 44 44 44"]
        .iter()
        .enumerate()
        .map(|(k, c)| serde_json::json!({"prompt": format!("add {k} ="), "completion": format!(" {c}")}))
        .collect();
    let data = dataset(tmp.path(), "pc", "prompt-completion", &lines);
    let run_with = |batch: i64, accum: i64, name: &str| {
        let params = [
            ("model", r("model")),
            ("data", r("data")),
            ("batch-size", i(batch)),
            ("grad-accum", i(accum)),
            ("steps", i(1)),
            ("lr", f(10.0)),
            ("adam-eps", f(100.0)),
            ("max-grad-norm", f(0.0)),
            ("packing", b(false)),
            ("schedule", sched("constant", None)),
        ];
        let (_, out) = run(
            &Sft,
            &params,
            &[("model", &model), ("data", &data)],
            &tmp.path().join(name),
        )
        .unwrap();
        weights(&out.join("model.safetensors"))
    };
    let w0 = weights(&model.join("model.safetensors"));
    let a = run_with(4, 1, "a");
    let bb = run_with(2, 2, "b");
    let (mut diff, mut moved) = (0f32, 0f32);
    for (k, va) in &a {
        for ((x, y), z) in va.iter().zip(&bb[k]).zip(&w0[k]) {
            diff = diff.max((x - y).abs());
            moved = moved.max((x - z).abs());
        }
    }
    eprintln!("accumulation: max |Δ| between runs {diff:e}, max update {moved:e}");
    assert!(moved > 1e-3, "the step changed the weights ({moved})");
    assert!(diff < 1e-6, "batch 4 vs 2×2 differ by {diff}");
}

/// EOS is a target, prompt tokens are not; packing and padding give the same loss.
#[test]
fn sft_masking_eos_and_packing_equals_padding() {
    let tmp = tempfile::tempdir().unwrap();
    let (model_dir, tok_dir) = tiny_model(tmp.path());
    let td = TokenizerDir::load(&tok_dir, "tok").unwrap();
    let eos = td.eos_id().unwrap();
    let enc = Encoder {
        tokenizer: &td.tokenizer,
        template: None,
        eos_id: eos,
        loss_on: LossOn::Assistant,
        use_chat_template: false,
        max_len: Some(64),
    };
    let exs: Vec<_> = sums(6)
        .iter()
        .map(|(p, c)| {
            let rec = recipes::data::Record::PromptCompletion {
                prompt: p.clone(),
                completion: c.clone(),
            };
            match enc.example(&rec).unwrap() {
                Encoded::Ok(e) => e,
                o => panic!("{o:?}"),
            }
        })
        .collect();
    let p_len = td
        .tokenizer
        .encode(sums(1)[0].0.as_str(), true)
        .unwrap()
        .get_ids()
        .len();
    assert!(
        exs[0].labels[..p_len].iter().all(|&l| l == IGNORE),
        "prompt masked: {:?}",
        exs[0].labels
    );
    assert_eq!(*exs[0].labels.last().unwrap(), eos as i64, "EOS trained");
    let pad = td.pad_id().unwrap() as i64;
    let packed = SftData::new(exs.clone(), 0, 6, (6, 1), true, 64, pad)
        .batch_of(&exs)
        .unwrap();
    let padded = SftData::new(exs.clone(), 0, 6, (6, 1), false, 64, pad)
        .batch_of(&exs)
        .unwrap();
    assert!(
        packed.packed && packed.rows < padded.rows,
        "{} rows vs {}",
        packed.rows,
        padded.rows
    );
    assert_eq!(packed.n_target_tokens, padded.n_target_tokens);
    // EOS is among the targets in the batch too.
    let last = exs[0].len() - 1;
    assert_eq!(padded.labels[last], eos as i64);
    let m = HfModel::load(&model_dir, "m", &LoadOptions::default()).unwrap();
    let n = packed.n_target_tokens as f64;
    let lp = tch::no_grad(|| lm::sum_loss(&m, &packed).unwrap().double_value(&[])) / n;
    let ld = tch::no_grad(|| lm::sum_loss(&m, &padded).unwrap().double_value(&[])) / n;
    eprintln!("packed loss {lp} padded {ld}");
    assert!((lp - ld).abs() < 1e-5, "packed {lp} vs padded {ld}");
}

/// The artifact of a resumed run equals the uninterrupted one's: weights byte for byte, metrics
/// line for line (wall-clock fields aside).
fn same_run(full: &Path, resumed: &Path, what: &str) {
    let a = std::fs::read(full.join("model.safetensors")).unwrap();
    let bb = std::fs::read(resumed.join("model.safetensors")).unwrap();
    assert!(a == bb, "final weights differ after {what} + resume");
    assert_eq!(
        metrics(&full.join("metrics.jsonl")),
        metrics(&resumed.join("metrics.jsonl"))
    );
}

fn sft_params(steps: i64) -> Vec<(&'static str, Value)> {
    vec![
        ("model", r("model")),
        ("data", r("data")),
        ("batch-size", i(4)),
        ("grad-accum", i(2)),
        ("steps", i(steps)),
        ("lr", f(2e-3)),
        ("weight-decay", f(0.1)),
        ("schedule", sched("linear", Some(2.0))),
        ("checkpoint-every", i(2)),
        ("log-every", i(1)),
        ("max-len", i(32)),
    ]
}

/// Cancel at step 3 (checkpoint + Cancelled), rerun → bit-identical to an uninterrupted run;
/// crosses epoch boundaries (10 examples, 8 per step).
#[test]
fn sft_cancel_and_resume_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model(tmp.path());
    let data = pc_dataset(tmp.path(), 10);
    let inputs = [("model", model.as_path()), ("data", data.as_path())];
    let p = sft_params(7);
    let (_, full) = run(&Sft, &p, &inputs, &tmp.path().join("full")).unwrap();

    let base = tmp.path().join("resumed");
    let c = ctx(&Sft, &p, &inputs, &base, Some(hook(3, false)));
    assert!(matches!(Sft.run(&c), Err(StageError::Cancelled)));
    let latest = c.checkpoints().latest().expect("a checkpoint on cancel");
    assert_eq!(latest.0, 3);
    let (s, resumed) = run(&Sft, &p, &inputs, &base).unwrap();
    assert_eq!(s["resumed_from"], 3);
    same_run(&full, &resumed, "cancel");
}

/// `activation-checkpointing #true` is non-semantic: a run with it, cancelled at step 3 and
/// resumed, writes the bytes (and metrics) of a plain uninterrupted run.
#[test]
fn sft_with_activation_checkpointing_writes_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model(tmp.path());
    let data = pc_dataset(tmp.path(), 10);
    let inputs = [("model", model.as_path()), ("data", data.as_path())];
    let plain = sft_params(6);
    let (_, full) = run(&Sft, &plain, &inputs, &tmp.path().join("plain")).unwrap();
    let mut p = sft_params(6);
    p.push(("activation-checkpointing", Value::Bool(true)));
    let base = tmp.path().join("ckpt");
    let c = ctx(&Sft, &p, &inputs, &base, Some(hook(3, false)));
    assert!(matches!(Sft.run(&c), Err(StageError::Cancelled)));
    let (_, resumed) = run(&Sft, &p, &inputs, &base).unwrap();
    same_run(&full, &resumed, "activation checkpointing, cancel");
}

/// A crash (panic) after the step-4 checkpoint, during step 5; the rerun continues from step 4
/// (stream and packer state) and ends bit-identical; metrics lines of steps 5.. are not
/// duplicated.
#[test]
fn cpt_crash_and_resume_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model(tmp.path());
    let data = text_dataset(tmp.path(), 13);
    let inputs = [("model", model.as_path()), ("data", data.as_path())];
    let p = [
        ("model", r("model")),
        ("data", r("data")),
        ("seq-len", i(12)),
        ("batch-size", i(3)),
        ("epochs", f(2.0)),
        ("lr", f(2e-3)),
        ("weight-decay", f(0.1)),
        ("schedule", sched("cosine", Some(0.2))),
        ("checkpoint-every", i(2)),
        ("log-every", i(1)),
    ];
    let (s, full) = run(&Cpt, &p, &inputs, &tmp.path().join("full")).unwrap();
    let steps = s["steps"].as_u64().unwrap();
    assert!(steps >= 7, "{steps} steps");
    let base = tmp.path().join("crashed");
    let c = ctx(&Cpt, &p, &inputs, &base, Some(hook(5, true)));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Cpt.run(&c)));
    assert!(r.is_err(), "the hook crashed the run");
    assert_eq!(c.checkpoints().latest().unwrap().0, 4);
    let (s2, resumed) = run(&Cpt, &p, &inputs, &base).unwrap();
    assert_eq!(s2["resumed_from"], 4);
    assert_eq!(s2["tokens_seen"], s["tokens_seen"]);
    same_run(&full, &resumed, "crash");
}

/// Nothing in a step waits for the device but one read (the step's loss and gradient norm
/// together, over its two micro-batches), and an SFT metrics line adds none: one device→host
/// read per step, and one per checkpoint (the weights' finiteness).
#[test]
fn a_step_reads_from_the_device_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model(tmp.path());
    let data = pc_dataset(tmp.path(), 10);
    let mut p = sft_params(8);
    p.retain(|(k, _)| !matches!(*k, "log-every" | "checkpoint-every"));
    p.push(("log-every", i(4)));
    p.push(("checkpoint-every", i(4)));
    let (s, out) = run(
        &Sft,
        &p,
        &[("model", &model), ("data", &data)],
        &tmp.path().join("sft"),
    )
    .unwrap();
    eprintln!(
        "host syncs: {} per step, {} at checkpoints",
        s["host_syncs_per_step"], s["host_syncs_at_checkpoints"]
    );
    assert_eq!(s["host_syncs_per_step"].as_f64(), Some(1.0), "{s}");
    assert_eq!(s["host_syncs_at_checkpoints"].as_u64(), Some(2), "{s}");
    assert_eq!(metrics(&out.join("metrics.jsonl")).len(), 2);
}

/// lr = 1e30 blows the weights up: a user error naming the step, the last good checkpoint kept.
#[test]
fn non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model(tmp.path());
    let data = pc_dataset(tmp.path(), 8);
    let mut p = sft_params(6);
    p.retain(|(k, _)| !matches!(*k, "lr" | "checkpoint-every" | "schedule"));
    p.push(("lr", f(1e30)));
    p.push(("checkpoint-every", i(1)));
    p.push(("schedule", sched("constant", None)));
    let base = tmp.path().join("nan");
    let c = ctx(&Sft, &p, &[("model", &model), ("data", &data)], &base, None);
    let err = Sft.run(&c).unwrap_err();
    let StageError::User { message, .. } = &err else {
        panic!("{err:?}")
    };
    eprintln!("{message}");
    let (step, dir) = c.checkpoints().latest().expect("last good checkpoint");
    assert!(
        message.contains("non-finite") && message.contains(&format!("at step {}", step + 1)),
        "{message}"
    );
    assert!(
        message.contains(&format!("last good checkpoint (step {step})")),
        "{message}"
    );
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("trainer.json")).unwrap()).unwrap();
    assert_eq!(st["progress"]["step"], step);
    assert!(st["progress"]["last_loss"].as_f64().unwrap().is_finite());
}

#[test]
fn bad_inputs_are_user_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model(tmp.path());
    let data = pc_dataset(tmp.path(), 4);
    let long = dataset(
        tmp.path(),
        "long",
        "prompt-completion",
        &[
            serde_json::json!({"prompt": "add 1 1 =", "completion": " 2"}),
            serde_json::json!({"prompt": "red green blue cyan ".repeat(20), "completion": " 2"}),
        ],
    );
    let inputs = |d: &Path| vec![("model", model.clone()), ("data", d.to_path_buf())];
    let go = |p: &[(&str, Value)], d: &Path, name: &str| {
        let ins = inputs(d);
        let ins: Vec<(&str, &Path)> = ins.iter().map(|(k, v)| (*k, v.as_path())).collect();
        run(&Sft, p, &ins, &tmp.path().join(name))
    };
    let base = vec![
        ("model", r("model")),
        ("data", r("data")),
        ("steps", i(1)),
        ("max-len", i(32)),
    ];
    // Longer than the model's 128 positions.
    let mut p = base.clone();
    p[3] = ("max-len", i(4096));
    let Err(StageError::User { message, .. }) = go(&p, &data, "e1") else {
        panic!()
    };
    assert!(message.contains("max_position_embeddings 128"), "{message}");
    // A too-long record is named; skip-long counts it instead.
    let Err(StageError::User { message, .. }) = go(&base, &long, "e2") else {
        panic!()
    };
    assert!(
        message.contains("record 2") && message.contains("max-len 32"),
        "{message}"
    );
    let mut p = base.clone();
    p.push(("skip-long", b(true)));
    let (s, _) = go(&p, &long, "e3").unwrap();
    assert_eq!(s["skipped_long"], 1);
    // CPT on prompt-completion data.
    let Err(StageError::User { message, .. }) = run(
        &Cpt,
        &[
            ("model", r("model")),
            ("data", r("data")),
            ("steps", i(1)),
            ("seq-len", i(16)),
        ],
        &[("model", &model), ("data", &data)],
        &tmp.path().join("e4"),
    ) else {
        panic!()
    };
    assert!(message.contains("`text`"), "{message}");
}
