//! LoRA adapters (`recipes::lora`): a fresh adapter is a no-op with only its own tensors
//! trained, the stored adapter loads in PEFT with the same logits, folding (`merge_and_unload`)
//! keeps them, target patterns resolve as PEFT's list does, and stacked adapters fold in order.

use super::common::*;
use ::kinds::lora::Lora;
use recipes::arch::{AttnMask, HfModel, LoadOptions};
use recipes::lora::{self, attach::linears, load, peft, Lineage, NodeRef};
use recipes::stage::StageError;
use serde_json::Value as J;
use std::path::{Path, PathBuf};
use tch::Tensor;

fn spec(rank: usize, alpha: f64, rslora: bool, target: &[&str]) -> Lora {
    Lora {
        rank,
        alpha,
        dropout: 0.0,
        rslora,
        target: target.iter().map(|t| t.to_string()).collect(),
    }
}

fn load_fx(name: &str) -> HfModel {
    let dir = fixtures().join(name);
    HfModel::load(&dir, name, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

fn node(node: &str, key: &str) -> NodeRef {
    NodeRef {
        node: node.into(),
        key: key.into(),
    }
}

/// Sorted variables of a var store.
fn sorted(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<_> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Fills every `lora_B` of `m`'s adapter with seeded values, so the adapter changes the output.
fn randomize_b(m: &HfModel, seed: i64) {
    let _rng = crate::common::torch_rng();
    tch::manual_seed(seed);
    let _g = tch::no_grad_guard();
    for (name, mut v) in sorted(&m.adapter.as_ref().expect("adapter").vs) {
        if name.contains("lora_B") {
            v.copy_(&(Tensor::randn(v.size(), (v.kind(), v.device())) * 0.05));
        }
    }
}

/// temper's logits for both fixture batches.
fn logits(m: &HfModel) -> Vec<Tensor> {
    let inputs = read_st(&fixtures().join("inputs.safetensors"));
    batches(&inputs)
        .iter()
        .map(|(_, ids, mask, pos)| temper_logits(m, ids, mask, pos))
        .collect()
}

/// The logits a tests/python script wrote, per batch.
fn py_logits(path: &Path) -> Vec<Tensor> {
    let t = read_st(path);
    ["b0", "b1"]
        .map(|b| t[&format!("{b}.logits")].shallow_clone())
        .into()
}

/// max over both batches of the difference at valid positions.
fn diff_valid(a: &[Tensor], b: &[Tensor]) -> f64 {
    let inputs = read_st(&fixtures().join("inputs.safetensors"));
    batches(&inputs)
        .iter()
        .zip(a.iter().zip(b))
        .map(|((_, _, mask, _), (x, y))| max_diff_valid(x, y, mask))
        .fold(0.0, f64::max)
}

/// A store-like `arts/` directory holding fixture `name` as `arts/BASEKEY`.
fn store(name: &str) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let arts = t.path().join("arts");
    recipes::hf::link_or_copy_dir(&fixtures().join(name), &arts.join("BASEKEY")).unwrap();
    (t, arts)
}

/// Writes `m`'s adapter as `arts/key` on top of `lineage`.
fn write_adapter(m: &HfModel, arts: &Path, key: &str, lineage: &Lineage) -> PathBuf {
    let dir = arts.join(key);
    std::fs::create_dir_all(&dir).unwrap();
    let files = peft::write(
        &dir,
        m.adapter.as_ref().unwrap(),
        lineage,
        &arts.join("BASEKEY"),
    )
    .unwrap();
    assert_eq!(files.len(), 3, "{files:?}");
    dir
}

fn base_lineage() -> Lineage {
    Lineage {
        base: node("base", "BASEKEY"),
        stack: vec![],
    }
}

fn user_error(e: StageError) -> String {
    match e {
        StageError::User { message, hint } => format!("{message} | {}", hint.unwrap_or_default()),
        other => panic!("expected a user error, got {other:?}"),
    }
}

fn load_error(dir: &Path, key: &str) -> String {
    match lora::load_model_dir(dir, "a", key, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => user_error(e),
    }
}

#[test]
fn fresh_adapter_is_a_no_op_and_trains_alone() {
    let mut m = load_fx("llama");
    let before = logits(&m);
    let s = spec(4, 8.0, false, &["all-linear"]);
    lora::attach(&mut m, &s, 7, "test").unwrap();
    for (b, a) in before.iter().zip(logits(&m)) {
        assert_eq!(max_diff(b, &a), 0.0, "a fresh adapter changed the logits");
    }
    for (n, v) in m.vs.variables() {
        assert!(!v.requires_grad(), "base variable {n} is not frozen");
    }
    let base = m.vs.variables();
    let trained = sorted(&m.adapter.as_ref().unwrap().vs);
    assert_eq!(m.trained_vars().len(), 2 * 2 * 7);
    assert_eq!(trained.len(), 2 * 2 * 7);
    assert_eq!(m.adapter.as_ref().unwrap().modules.len(), 14);
    for (n, v) in &trained {
        let module = n
            .strip_suffix(".lora_A.weight")
            .or_else(|| n.strip_suffix(".lora_B.weight"))
            .unwrap_or_else(|| panic!("unexpected adapter tensor {n}"));
        let w = base[&format!("{module}.weight")].size();
        assert!(v.requires_grad(), "{n} is not trainable");
        let max = v.abs().max().double_value(&[]);
        if n.ends_with("lora_A.weight") {
            assert_eq!(v.size(), [4, w[1]], "{n}");
            let bound = 1.0 / (w[1] as f64).sqrt();
            assert!(
                max <= bound && max > 0.5 * bound,
                "{n}: |A| max {max}, bound {bound}"
            );
        } else {
            assert_eq!(v.size(), [w[0], 4], "{n}");
            assert_eq!(max, 0.0, "{n}: B is not zero");
        }
    }
    // Gradients reach the adapter only.
    let inputs = read_st(&fixtures().join("inputs.safetensors"));
    let (_, ids, mask, pos) = &batches(&inputs)[1];
    let out = m.forward(ids, pos, AttnMask::Padding(mask)).unwrap();
    out.sum(tch::Kind::Float).backward();
    for (n, v) in m.vs.variables() {
        assert!(!v.grad().defined(), "base variable {n} got a gradient");
    }
    for (n, v) in &trained {
        assert!(v.grad().defined(), "{n} has no gradient");
        let g = v.grad().abs().max().double_value(&[]);
        // With B = 0 only B's gradient is non-zero (dA ∝ B).
        if n.ends_with("lora_B.weight") {
            assert!(g > 0.0, "{n}: zero gradient");
        } else {
            assert_eq!(g, 0.0, "{n}: gradient {g} with B = 0");
        }
    }
    // A depends on the seed (and the module) only.
    let a_of = |seed: u64| {
        let mut m = load_fx("llama");
        lora::attach(&mut m, &s, seed, "test").unwrap();
        sorted(&m.adapter.as_ref().unwrap().vs)
    };
    let (same, other) = (a_of(7), a_of(8));
    for (((n, a), (_, b)), (_, c)) in trained.iter().zip(&same).zip(&other) {
        if n.ends_with("lora_A.weight") {
            assert_eq!(max_diff(a, b), 0.0, "{n}: same seed, other A");
            assert!(max_diff(a, c) > 1e-3, "{n}: other seed, same A");
        }
    }
    // … and differs between modules of the same shape.
    let a = |l: usize, p: &str| {
        let n = format!("model.layers.{l}.self_attn.{p}.lora_A.weight");
        &same.iter().find(|(k, _)| *k == n).unwrap().1
    };
    assert!(max_diff(a(0, "q_proj"), a(0, "k_proj")) > 1e-3);
    assert!(max_diff(a(0, "q_proj"), a(1, "q_proj")) > 1e-3);
}

#[test]
fn stored_adapter_matches_peft_and_folds() {
    let targets = ["q_proj", "v_proj", "o_proj", "down_proj"];
    for (name, rslora) in [("llama", false), ("llama_tied", true), ("qwen2", false)] {
        let (_t, arts) = store(name);
        let base_dir = arts.join("BASEKEY");
        let mut m = load_fx(name);
        let base = logits(&m);
        lora::attach(&mut m, &spec(4, 16.0, rslora, &targets), 3, "test").unwrap();
        randomize_b(&m, 11);
        let ours = logits(&m);
        let moved = diff_valid(&base, &ours);
        assert!(
            moved > 1e-3,
            "{name}: the adapter moved the logits by {moved}"
        );
        let ad = write_adapter(&m, &arts, "ADKEY", &base_lineage());

        // The files, as PEFT expects them.
        let h = recipes::hf::read_safetensors_header(&ad.join(peft::WEIGHTS_FILE), "ad").unwrap();
        assert_eq!(h.metadata.get("format").map(String::as_str), Some("pt"));
        assert_eq!(h.tensors.len(), 2 * 2 * targets.len());
        for n in h.tensors.keys() {
            assert!(n.starts_with("base_model.model.model.layers."), "{n}");
            let ab = n.ends_with(".lora_A.weight") || n.ends_with(".lora_B.weight");
            assert!(ab, "{n}");
        }
        let cfg: J =
            serde_json::from_str(&std::fs::read_to_string(ad.join(peft::CONFIG_FILE)).unwrap())
                .unwrap();
        assert_eq!(cfg["peft_type"], "LORA");
        assert_eq!(cfg["task_type"], "CAUSAL_LM");
        let want = serde_json::json!(["down_proj", "o_proj", "q_proj", "v_proj"]);
        assert_eq!(cfg["target_modules"], want);
        assert_eq!(cfg["r"], 4);
        assert_eq!(cfg["lora_alpha"], 16);
        assert_eq!(cfg["use_rslora"], rslora);

        // PEFT on transformers: the unmerged adapter.
        let inputs = fixtures().join("inputs.safetensors");
        let out = arts.join("peft.safetensors");
        run_python("peft_logits.py", &[&inputs, &base_dir, &ad, &out]);
        let d = diff_valid(&ours, &py_logits(&out));
        eprintln!("lora {name} (rslora {rslora}): max |temper - peft| = {d:.3e}, adapter moved {moved:.3e}");
        assert!(d < 1e-5, "{name}: temper and PEFT differ by {d}");

        // Folded into a full model, read by transformers.
        let merged = arts.join("merged");
        let lin = load::fold_to_dir(&ad, "ad", "ADKEY", &merged).unwrap();
        assert_eq!(lin.stack, vec![node("ad", "ADKEY")]);
        let out2 = arts.join("merged.safetensors");
        run_python("logits.py", &[&inputs, &merged, &out2]);
        let d = diff_valid(&ours, &py_logits(&out2));
        // Folding rounds `W + s·BA` to f32: a few ulps of the logits (up to ~40 with rsLoRA's
        // larger scale), so 1e-5 per 10 of logit magnitude.
        let big = ours
            .iter()
            .map(|t| t.abs().max().double_value(&[]))
            .fold(0.0, f64::max);
        let tol = 1e-6 * big.max(10.0);
        eprintln!(
            "lora {name}: max |temper unmerged - transformers merged| = {d:.3e} \
             (max |logit| {big:.1}, tolerance {tol:.1e})"
        );
        assert!(d < tol, "{name}: merged model differs by {d}");

        // Loaded by temper as a model input: base with the adapter folded in.
        let (folded, lin) =
            lora::load_model_dir(&ad, "ad", "ADKEY", &LoadOptions::default()).unwrap();
        assert!(folded.adapter.is_none());
        assert_eq!(lin.base, node("base", "BASEKEY"));
        assert_eq!(lin.stack, vec![node("ad", "ADKEY")]);
        let d = diff_valid(&ours, &logits(&folded));
        eprintln!("lora {name}: max |temper unmerged - temper folded| = {d:.3e}");
        assert!(d < tol, "{name}: folded model differs by {d}");
    }
}

#[test]
fn targets_resolve_like_peft() {
    let mut m = load_fx("llama");
    let names: Vec<String> = linears(&mut m.model).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 14);
    let resolve = |t: &[&str]| {
        let t: Vec<String> = t.iter().map(|s| s.to_string()).collect();
        lora::attach::resolve(&names, &t, "model m")
    };
    // Not a linear layer: the modules there are are listed.
    let e = user_error(resolve(&["q_proj", "zz_proj"]).unwrap_err());
    assert!(e.contains("`zz_proj`"), "{e}");
    for module in ["q_proj", "gate_proj", "down_proj", "all-linear"] {
        assert!(e.contains(module), "{module} not listed: {e}");
    }
    // A linear layer the model does not have (layer 9 of 2).
    let e = user_error(resolve(&["layers.9.mlp.down_proj"]).unwrap_err());
    for part in [
        "`layers.9.mlp.down_proj`",
        "model m",
        "2 layer(s)",
        "q_proj, k_proj, v_proj",
    ] {
        assert!(e.contains(part), "{part} missing: {e}");
    }
    for t in ["lm_head", "embed_tokens", "model.embed_tokens"] {
        let e = user_error(resolve(&[t]).unwrap_err());
        assert!(e.contains(&format!("`{t}`")), "{e}");
        assert!(e.contains("tied embeddings"), "{e}");
    }
    let (mods, written) = resolve(&["layers.1.mlp.down_proj"]).unwrap();
    assert_eq!(mods, ["model.layers.1.mlp.down_proj"]);
    assert_eq!(written, ["layers.1.mlp.down_proj"]);
    let (mods, _) = resolve(&["self_attn.q_proj"]).unwrap();
    let q = |l| format!("model.layers.{l}.self_attn.q_proj");
    assert_eq!(mods, [q(0), q(1)]);
    let (mods, written) = resolve(&["v_proj", "all-linear", "q_proj"]).unwrap();
    assert_eq!(mods.len(), 14);
    assert_eq!(written.len(), 7);
    // A suffix matches at a `.` only.
    let e = resolve(&["yers.1.mlp.down_proj"]).unwrap_err().to_string();
    assert!(e.contains("matches no module"), "{e}");

    // attach: a refused target leaves the model as it was; a second adapter is refused.
    let e =
        user_error(lora::attach(&mut m, &spec(4, 8.0, false, &["zz_proj"]), 1, "m").unwrap_err());
    assert!(e.contains("zz_proj"), "{e}");
    assert!(m.adapter.is_none());
    assert!(m.vs.variables().values().all(|v| v.requires_grad()));
    let e =
        user_error(lora::attach(&mut m, &spec(0, 8.0, false, &["q_proj"]), 1, "m").unwrap_err());
    assert!(e.contains("rank 0"), "{e}");
    let one = spec(2, 4.0, false, &["layers.1.mlp.down_proj"]);
    lora::attach(&mut m, &one, 1, "m").unwrap();
    let a = m.adapter.as_ref().unwrap();
    assert_eq!(a.modules, ["model.layers.1.mlp.down_proj"]);
    assert_eq!(a.vs.variables().len(), 2);
    let set: Vec<_> = linears(&mut m.model)
        .into_iter()
        .filter(|(_, l)| l.lora.is_some())
        .map(|(n, _)| n)
        .collect();
    assert_eq!(set, ["model.layers.1.mlp.down_proj"]);
    let e = lora::attach(&mut m, &one, 1, "m").unwrap_err().to_string();
    assert!(e.contains("attached already"), "{e}");
}

#[test]
fn stacked_adapters_fold_in_order() {
    let (_t, arts) = store("llama");
    let targets = ["q_proj", "v_proj", "down_proj"];
    let mut m = load_fx("llama");
    lora::attach(&mut m, &spec(4, 8.0, false, &targets), 1, "a1").unwrap();
    randomize_b(&m, 21);
    let k1 = write_adapter(&m, &arts, "K1", &base_lineage());

    let (mut m1, lin1) = lora::load_model_dir(&k1, "a1", "K1", &LoadOptions::default()).unwrap();
    assert_eq!(lin1.base, node("base", "BASEKEY"));
    assert_eq!(lin1.stack, vec![node("a1", "K1")]);
    let only1 = logits(&m1);
    lora::attach(&mut m1, &spec(2, 4.0, true, &["o_proj", "q_proj"]), 2, "a2").unwrap();
    randomize_b(&m1, 22);
    let trained = logits(&m1);
    let k2 = write_adapter(&m1, &arts, "K2", &lin1);

    let (m2, lin2) = lora::load_model_dir(&k2, "a2", "K2", &LoadOptions::default()).unwrap();
    assert!(m2.adapter.is_none());
    assert_eq!(lin2.base, node("base", "BASEKEY"));
    assert_eq!(lin2.stack, vec![node("a1", "K1"), node("a2", "K2")]);
    assert_eq!(peft::read_lineage(&k2, "k2").unwrap(), lin1);
    let got = logits(&m2);

    let mut manual = load_fx("llama");
    load::fold(&mut manual, &k1, "k1").unwrap();
    load::fold(&mut manual, &k2, "k2").unwrap();
    let want = logits(&manual);
    let d_manual = diff_valid(&got, &want);
    let d_trained = diff_valid(&got, &trained);
    let moved = diff_valid(&got, &only1);
    eprintln!(
        "lora stack: |load - manual fold| = {d_manual:.3e}, |load - trained (unmerged)| = \
         {d_trained:.3e}, A2 moved {moved:.3e}"
    );
    assert!(d_manual < 1e-6, "load vs manual folding: {d_manual}");
    assert!(d_trained < 1e-5, "load vs the trained model: {d_trained}");
    assert!(
        moved > 1e-3,
        "the second adapter moved the logits by {moved}"
    );

    // Missing pieces of the store are user errors naming them.
    let gone = tempfile::tempdir().unwrap();
    let alone = gone.path().join("K1");
    recipes::hf::link_or_copy_dir(&k1, &alone).unwrap();
    let e = load_error(&alone, "K1");
    assert!(e.contains("base model `base`"), "{e}");
    assert!(e.contains("no longer in the store"), "{e}");
    let no_k1 = gone.path().join("s2");
    recipes::hf::link_or_copy_dir(&arts.join("BASEKEY"), &no_k1.join("BASEKEY")).unwrap();
    recipes::hf::link_or_copy_dir(&k2, &no_k1.join("K2")).unwrap();
    let e = load_error(&no_k1.join("K2"), "K2");
    assert!(e.contains("lower adapter `a1`"), "{e}");
    assert!(e.contains("no longer in the store"), "{e}");
}
