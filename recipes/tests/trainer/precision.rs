//! `precision`: `bf16-mixed` keeps what `f32` learns where pure `bf16` loses updates, its
//! checkpoints hold the f32 masters (resume stays bit-identical), and the artifact is written
//! in the model's dtype.

use super::{same_run, sft_params};
use crate::common::lm::*;
use crate::common::s;
use recipes::kinds::cpt::Cpt;
use recipes::kinds::sft::Sft;
use recipes::{Stage, StageError};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// The dtype of every tensor of a safetensors file (one name, or a mix).
fn stored_dtypes(path: &Path) -> Vec<Kind> {
    let mut kinds: Vec<Kind> = Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .map(|(_, t)| t.kind())
        .collect();
    kinds.dedup();
    kinds
}

/// `‖a − b‖₂` over every tensor of two weight maps.
fn dist(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> f64 {
    a.iter()
        .flat_map(|(k, v)| v.iter().zip(&b[k]))
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// `w` rounded to bf16 (what a pure-bf16 run starts from).
fn rounded(w: &BTreeMap<String, Vec<f32>>) -> BTreeMap<String, Vec<f32>> {
    w.iter()
        .map(|(k, v)| {
            let t = Tensor::from_slice(v)
                .to_kind(Kind::BFloat16)
                .to_kind(Kind::Float);
            (k.clone(), Vec::<f32>::try_from(&t).unwrap())
        })
        .collect()
}

/// 200 CPT steps at lr 1e-5 from the same f32 model: each run's update `Δ = w_end − w_start`
/// against f32's. bf16-mixed's f32 masters accumulate every small update (its Δ differs from
/// f32's only by the bf16 rounding of the forward and backward); pure bf16 rounds most updates
/// of `lr · ~1` away on weights of magnitude ~0.02–1, so its Δ is far from f32's.
#[test]
fn bf16_mixed_tracks_f32_where_pure_bf16_loses_updates() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model(tmp.path());
    let data = text_dataset(tmp.path(), 16);
    let w0 = weights(&model.join("model.safetensors"));
    let train = |precision: &str| {
        let params = [
            ("model", r("model")),
            ("data", r("data")),
            ("seq-len", i(16)),
            ("batch-size", i(4)),
            ("steps", i(200)),
            ("lr", f(1e-5)),
            ("schedule", sched("constant", None)),
            ("checkpoint-every", i(0)),
            ("precision", s(precision)),
        ];
        let (sum, out) = run(
            &Cpt,
            &params,
            &[("model", &model), ("data", &data)],
            &tmp.path().join(precision),
        )
        .unwrap();
        (sum, out.join("model.safetensors"))
    };
    let (s32, p32) = train("f32");
    let (smix, pmix) = train("bf16-mixed");
    let (s16, p16) = train("bf16");
    for k in ["precision", "dtype", "save_dtype"] {
        assert_eq!(s32[k], "f32", "{k}");
    }
    assert_eq!(smix["precision"], "bf16-mixed");
    assert_eq!(smix["dtype"], "bf16");
    // The tiny model's config.json says float32: the artifact holds the f32 masters.
    assert_eq!(smix["save_dtype"], "f32");
    assert_eq!(stored_dtypes(&pmix), vec![Kind::Float]);
    assert_eq!(s16["precision"], "bf16");
    assert_eq!(s16["save_dtype"], "bf16");
    assert_eq!(stored_dtypes(&p16), vec![Kind::BFloat16]);

    let (w32, wmix, w16) = (weights(&p32), weights(&pmix), weights(&p16));
    let delta = |w: &BTreeMap<String, Vec<f32>>, start: &BTreeMap<String, Vec<f32>>| {
        w.iter()
            .map(|(k, v)| {
                let d = v.iter().zip(&start[k]).map(|(x, y)| x - y).collect();
                (k.clone(), d)
            })
            .collect::<BTreeMap<String, Vec<f32>>>()
    };
    let d32 = delta(&w32, &w0);
    let dmix = delta(&wmix, &w0);
    let d16 = delta(&w16, &rounded(&w0));
    let zero: BTreeMap<String, Vec<f32>> = d32
        .iter()
        .map(|(k, v)| (k.clone(), vec![0.0; v.len()]))
        .collect();
    let norm32 = dist(&d32, &zero);
    let err_mix = dist(&dmix, &d32) / norm32;
    let err_16 = dist(&d16, &d32) / norm32;
    let kept_mix = dist(&dmix, &zero) / norm32;
    let kept_16 = dist(&d16, &zero) / norm32;
    eprintln!(
        "precision, 200 steps at lr 1e-5: ‖Δf32‖ = {norm32:.4e}; bf16-mixed: ‖Δ−Δf32‖/‖Δf32‖ = \
         {err_mix:.4}, ‖Δ‖/‖Δf32‖ = {kept_mix:.4}; bf16: ‖Δ−Δf32‖/‖Δf32‖ = {err_16:.4}, \
         ‖Δ‖/‖Δf32‖ = {kept_16:.4}; final loss f32 {} bf16-mixed {} bf16 {}",
        s32["final_loss"], smix["final_loss"], s16["final_loss"]
    );
    assert!(norm32 > 0.0, "f32 moved the weights");
    assert!(err_mix < 0.05, "bf16-mixed strays from f32: {err_mix}");
    assert!(
        err_16 > 10.0 * err_mix && err_16 > 0.5,
        "pure bf16 should lose updates: {err_16} vs bf16-mixed {err_mix}"
    );
}

/// `bf16-mixed` checkpoints hold f32 masters and f32 moments; cancel + resume is bit-identical
/// to an uninterrupted run.
#[test]
fn bf16_mixed_cancel_and_resume_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model(tmp.path());
    let data = pc_dataset(tmp.path(), 10);
    let inputs = [("model", model.as_path()), ("data", data.as_path())];
    let mut p = sft_params(5);
    p.push(("precision", s("bf16-mixed")));
    let (_, full) = run(&Sft, &p, &inputs, &tmp.path().join("full")).unwrap();

    let base = tmp.path().join("resumed");
    let c = ctx(&Sft, &p, &inputs, &base, Some(hook(3, false)));
    assert!(matches!(Sft.run(&c), Err(StageError::Cancelled)));
    let (step, dir) = c.checkpoints().latest().expect("a checkpoint on cancel");
    assert_eq!(step, 3);
    assert_eq!(
        stored_dtypes(&dir.join("model.safetensors")),
        vec![Kind::Float]
    );
    assert_eq!(
        stored_dtypes(&dir.join("optimizer.safetensors")),
        vec![Kind::Float]
    );
    let (s2, resumed) = run(&Sft, &p, &inputs, &base).unwrap();
    assert_eq!(s2["resumed_from"], 3);
    same_run(&full, &resumed, "cancel");
}

/// `save-dtype` overrides the model's dtype; a LoRA adapter under bf16-mixed trains f32
/// variables on a bf16 base and is written in f32.
#[test]
fn save_dtype_and_lora_under_bf16_mixed() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model(tmp.path());
    let data = pc_dataset(tmp.path(), 8);
    let inputs = [("model", model.as_path()), ("data", data.as_path())];
    let mut p = sft_params(2);
    p.push(("precision", s("bf16-mixed")));
    p.push(("save-dtype", s("bf16")));
    let (sum, out) = run(&Sft, &p, &inputs, &tmp.path().join("saved")).unwrap();
    assert_eq!(sum["save_dtype"], "bf16");
    assert_eq!(
        stored_dtypes(&out.join("model.safetensors")),
        vec![Kind::BFloat16]
    );

    let mut p = sft_params(2);
    p.push(("precision", s("bf16-mixed")));
    let lora: BTreeMap<String, dsl::Value> = [
        ("rank", i(4)),
        ("alpha", f(8.0)),
        ("dropout", f(0.0)),
        ("rslora", b(false)),
        ("target", dsl::Value::List(vec![s("q_proj"), s("v_proj")])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    p.push(("lora", dsl::Value::Record(lora)));
    let (sum, out) = run(&Sft, &p, &inputs, &tmp.path().join("lora")).unwrap();
    assert_eq!(sum["precision"], "bf16-mixed");
    assert_eq!(sum["dtype"], "bf16");
    assert_eq!(sum["save_dtype"], "f32");
    assert_eq!(
        stored_dtypes(&out.join("adapter_model.safetensors")),
        vec![Kind::Float]
    );
}
