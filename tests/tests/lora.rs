//! LoRA end to end through the real binary:
//! - the quickstart-sized model learns its held-out task with a LoRA SFT (margins stated below),
//!   the base artifact stays byte-identical and is not copied, checkpoints and optimizer state
//!   hold the adapter only;
//! - the stored adapter loads in PEFT on the transformers base with no missing key and the
//!   logits of `export --merged` (loaded in transformers), within 1e-5;
//! - a DPO with LoRA on top of the SFT adapter (stacking), a `merge` of it, and an eval of both;
//! - `gc` keeps the base and lower adapters of a pinned adapter;
//! - `kill -9` mid-training of a LoRA run with dropout, then a rerun: bit-identical adapter.

use serde_json::Value as J;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use temper_e2e::{repo_root, text, Project};

const RECIPE: &str = r#"
dataset corpus  path="data/corpus.jsonl"  format=text
dataset filler  path="data/filler.jsonl"  format=text
dataset train   path="data/train.jsonl"   format=prompt-completion
dataset heldout path="data/heldout.jsonl" format=prompt-completion
dataset prefs   path="data/prefs.jsonl"   format=preference
dataset prefs-heldout path="data/prefs_heldout.jsonl" format=preference
tokenizer tok vocab-size=384 { data corpus; data filler; data train; }
model tiny tokenizer=tok arch=llama hidden-size=64 layers=2 heads=4 kv-heads=2 \
    intermediate-size=176 max-position=256 tie-embeddings=#true seed=0
mixture cpt-mix { source corpus weight=0.8; source filler weight=0.2; tokens 150_000; seed 1; }
cpt pretrained model=tiny data=cpt-mix {
    seq-len 128; batch-size 16; lr 3e-3; schedule cosine warmup=0.05
}
sft tuned model=pretrained data=train {
    lora rank=16 alpha=32 dropout=0.05 {
        target "all-linear"
    }
    epochs 4; batch-size 16; seq-len 128; lr 3e-3; schedule cosine warmup=0.05
    checkpoint-every 200
}
eval scores {
    model pretrained
    model tuned
    data heldout metric=exact-match
    max-new-tokens 12
}
ref-logps tuned-ref model=tuned data=prefs { max-len 64; }
dpo aligned model=tuned ref=tuned-ref {
    lora rank=8 alpha=16 { target "q_proj" "v_proj" "o_proj"; }
    beta 0.1; steps 40; batch-size 16; lr 2e-3; schedule constant
}
merge final method=linear { model aligned weight=1.0; }
eval pref-scores {
    model tuned
    model aligned
    model final
    data prefs-heldout metric=preference-accuracy
}
"#;

fn project() -> Project {
    let p = Project::new();
    for f in [
        "corpus",
        "filler",
        "train",
        "heldout",
        "prefs",
        "prefs_heldout",
    ] {
        p.copy_from_repo(
            &format!("examples/data/{f}.jsonl"),
            &format!("data/{f}.jsonl"),
        );
    }
    p.write("recipe.kdl", RECIPE);
    p
}

fn json(path: &Path) -> J {
    let t = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&t).unwrap()
}

/// The artifact directory of node `node` (the `key` line of `temper show`).
fn artifact(p: &Project, node: &str) -> PathBuf {
    let out = p.ok(&["show", "recipe.kdl", node]);
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("key "))
        .unwrap_or_else(|| panic!("no key in `temper show`:\n{out}"))
        .trim();
    p.store().join("artifacts").join(key)
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            (rel, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// The tensor names and element counts of a safetensors file (from its JSON header).
fn tensors(path: &Path) -> BTreeMap<String, u64> {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: J = serde_json::from_slice(&b[8..8 + n]).unwrap();
    h.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let numel = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .product();
            (k.clone(), numel)
        })
        .collect()
}

/// The row of `model` in an eval artifact's results.json.
fn row(results: &J, model: &str) -> J {
    results["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == model)
        .unwrap_or_else(|| panic!("no row for {model}: {results}"))
        .clone()
}

fn python(args: &[&str]) -> String {
    let py = repo_root().join(".venv/bin/python");
    let out = std::process::Command::new(py)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .output()
        .expect("run python");
    assert!(out.status.success(), "python {args:?}\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn lora_sft_dpo_merge_export_and_peft_parity() {
    let p = project();
    p.ok(&["run", "recipe.kdl", "--only", "pretrained"]);
    let base = artifact(&p, "pretrained");
    let base_before = files(&base);
    p.ok(&["run", "recipe.kdl"]);

    // The base is untouched and not copied: the adapter holds A/B tensors only.
    assert_eq!(files(&base), base_before, "the base artifact changed");
    let tuned = artifact(&p, "tuned");
    assert!(!tuned.join("model.safetensors").exists());
    let st = tensors(&tuned.join("adapter_model.safetensors"));
    assert_eq!(
        st.len(),
        2 * 2 * 7,
        "A and B for 7 linear layers × 2 layers"
    );
    assert!(st
        .keys()
        .all(|k| k.starts_with("base_model.model.model.layers.")
            && (k.ends_with(".lora_A.weight") || k.ends_with(".lora_B.weight"))));
    let lineage = json(&tuned.join("temper_adapter.json"));
    assert_eq!(lineage["base"]["node"], "pretrained");
    assert_eq!(
        base.file_name().unwrap().to_string_lossy(),
        lineage["base"]["key"].as_str().unwrap()
    );
    let summary = json(&tuned.join("train_summary.json"));
    let lora = &summary["lora"];
    assert_eq!(
        lora["trainable_params"].as_u64().unwrap(),
        st.values().sum::<u64>()
    );
    let base_params: u64 = tensors(&base.join("model.safetensors")).values().sum();
    assert_eq!(lora["base_params"].as_u64().unwrap(), base_params);
    // The checkpoint's weights and optimizer state are the adapter's.
    let work = p.store().join("work").join(tuned.file_name().unwrap());
    let ckpt = std::fs::read_dir(work.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|d| d.join("optimizer.safetensors").is_file())
        .expect("a checkpoint of the LoRA run");
    assert!(tensors(&ckpt.join("model.safetensors"))
        .keys()
        .all(|k| k.contains(".lora_")));
    let opt: u64 = tensors(&ckpt.join("optimizer.safetensors")).values().sum();
    assert_eq!(
        opt,
        2 * st.values().sum::<u64>(),
        "two AdamW moments per adapter weight"
    );

    // It learned: held-out exact match from 0 to over 30 %, loss down by more than 0.5.
    let scores = json(&artifact(&p, "scores").join("results.json"));
    let (before, after) = (row(&scores, "pretrained"), row(&scores, "tuned"));
    let (em0, em1) = (
        before["exact_match"].as_f64().unwrap(),
        after["exact_match"].as_f64().unwrap(),
    );
    let (l0, l1) = (
        before["loss"].as_f64().unwrap(),
        after["loss"].as_f64().unwrap(),
    );
    eprintln!("held-out exact match {em0} -> {em1}, loss {l0:.3} -> {l1:.3}");
    assert!(em1 >= em0 + 0.3, "exact match {em0} -> {em1}");
    assert!(l1 < l0 - 0.5, "loss {l0} -> {l1}");

    // Stacking: the DPO adapter sits on pretrained with tuned folded in.
    let aligned = artifact(&p, "aligned");
    let l = json(&aligned.join("temper_adapter.json"));
    assert_eq!(l["base"]["node"], "pretrained");
    assert_eq!(l["stack"][0]["node"], "tuned");
    let cfg = json(&aligned.join("adapter_config.json"));
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["o_proj", "q_proj", "v_proj"])
    );
    let prefs = json(&artifact(&p, "pref-scores").join("results.json"));
    let get = |m: &str, k: &str| row(&prefs, m)[k].as_f64().unwrap();
    let margin = |m: &str| get(m, "margin");
    eprintln!(
        "held-out preference accuracy / mean margin: tuned {} / {:.3}, aligned {} / {:.3}, \
         final {} / {:.3}",
        get("tuned", "preference_accuracy"),
        margin("tuned"),
        get("aligned", "preference_accuracy"),
        margin("aligned"),
        get("final", "preference_accuracy"),
        margin("final"),
    );
    // The DPO adapter starts as the identity (B = 0), so any widening is learnt. How much
    // depends on float rounding, which 4 SFT epochs and 40 DPO steps of a tiny model amplify:
    // more than +1.0 where this test was written, +0.55 with the same code on another machine;
    // on one machine, +1.87 with the per-tensor AdamW and +0.29 with the fused one (whose
    // per-step losses and norms agree with it to 1e-8), +1.69 with the fused one and the chunked
    // head. Hence a bar well above zero but below all of them; and on 60 held-out pairs the
    // accuracy may move by one pair either way (seen: +1 and −1 in the runs above).
    assert!(
        margin("aligned") > margin("tuned") + 0.15,
        "DPO with LoRA did not widen the held-out margin"
    );
    assert!(
        get("aligned", "preference_accuracy") >= get("tuned", "preference_accuracy") - 1.5 / 60.0,
        "DPO with LoRA lowered the held-out preference accuracy by more than one pair"
    );
    assert!(
        (margin("aligned") - margin("final")).abs() < 1e-4,
        "a linear merge of one adapter is base + that adapter"
    );

    // PEFT reads the exported adapter; `export --merged` loads in transformers; same logits.
    let out = tempfile::tempdir().unwrap();
    let (ad, merged) = (out.path().join("adapter"), out.path().join("merged"));
    p.ok(&["export", "recipe.kdl", "tuned", ad.to_str().unwrap()]);
    assert!(ad.join("adapter_config.json").is_file() && ad.join("tokenizer.json").is_file());
    p.ok(&[
        "export",
        "recipe.kdl",
        "tuned",
        merged.to_str().unwrap(),
        "--merged",
    ]);
    assert!(
        merged.join("model.safetensors").is_file() && !merged.join("adapter_config.json").exists()
    );
    let inputs = out.path().join("inputs.safetensors");
    let dir = |d: &Path| d.to_str().unwrap().to_string();
    python(&["-c", MAKE_INPUTS, &dir(&inputs)]);
    let (peft, hf) = (out.path().join("peft.st"), out.path().join("hf.st"));
    let tests_py = repo_root().join("tests/python");
    let said = python(&[
        &dir(&tests_py.join("peft_logits.py")),
        &dir(&inputs),
        &dir(&base),
        &dir(&ad),
        &dir(&peft),
    ]);
    assert!(said.contains("\"adapted\": 14"), "{said}");
    python(&[
        &dir(&tests_py.join("logits.py")),
        &dir(&inputs),
        &dir(&merged),
        &dir(&hf),
    ]);
    let diff: f64 = python(&["-c", MAX_DIFF, &dir(&peft), &dir(&hf)])
        .trim()
        .parse()
        .unwrap();
    eprintln!("PEFT(base + adapter) vs transformers(export --merged): max |Δlogit| = {diff:.3e}");
    assert!(diff < 1e-5, "{diff}");

    // gc keeps what a pinned adapter is applied on: its base and the adapter below it.
    p.ok(&["pin", "keep", "recipe.kdl", "aligned"]);
    p.ok(&["gc", "--yes"]);
    let left = std::fs::read_dir(p.store().join("artifacts"))
        .unwrap()
        .count();
    assert_eq!(
        left, 3,
        "aligned, tuned (below it) and pretrained (the base)"
    );
    let again = out.path().join("merged-after-gc");
    p.ok(&[
        "export",
        "recipe.kdl",
        "aligned",
        again.to_str().unwrap(),
        "--merged",
    ]);
}

/// Two batches of token ids (one with left padding) as logits.py reads them.
const MAKE_INPUTS: &str = r#"
import sys, torch
from safetensors.torch import save_file
g = torch.Generator().manual_seed(0)
ids = torch.randint(0, 384, (2, 24), generator=g)
mask = torch.ones_like(ids); mask[1, :5] = 0
pos = (mask.cumsum(-1) - 1).clamp(min=0)
out = {"b0.input_ids": ids, "b0.attention_mask": torch.ones_like(ids),
       "b0.position_ids": torch.arange(24).expand(2, 24).contiguous(),
       "b1.input_ids": ids.clone(), "b1.attention_mask": mask, "b1.position_ids": pos}
save_file(out, sys.argv[1])
"#;

/// max |a − b| over the logits of both files, on the unpadded positions.
const MAX_DIFF: &str = r#"
import sys
from safetensors.torch import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
d = (a["b0.logits"] - b["b0.logits"]).abs().max().item()
d = max(d, (a["b1.logits"][:, 5:] - b["b1.logits"][:, 5:]).abs().max().item())
print(d)
"#;

/// The resume test's recipe with a LoRA adapter (dropout on, rsLoRA) on its `cpt` node.
fn resume_project() -> Project {
    let recipe = crate::resume::RECIPE.replace(
        "cpt domain model=tiny data=corpus {",
        "cpt domain model=tiny data=corpus {\n    lora rank=8 alpha=16 dropout=0.1 rslora=#true { target \"all-linear\"; }",
    );
    assert!(recipe.contains("lora rank=8"));
    crate::resume::project_with(&recipe)
}

/// Dropout draws from torch's generator, seeded per micro-batch from the run's position, so a
/// run killed mid-stage resumes to the same adapter bit for bit.
#[test]
fn kill_9_mid_lora_training_then_rerun_is_bit_identical() {
    crate::resume::kill_9_then_rerun_is_bit_identical(resume_project);
}
