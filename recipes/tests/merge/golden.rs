//! f64 golden tests: every method against `golden.json` (see `gen_golden.py`), including the
//! edge cases of merging.md (colinear slerp, t = 0 and 1, density = 1, zero divisor, sign ties).

use recipes::merge::{self, task_vector, TensorParams, Tensors};
use serde_json::Value as J;

fn nums(v: &J) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().map(|x| x.as_f64().unwrap()).collect())
        .unwrap_or_default()
}

#[test]
fn every_method_matches_the_golden_values() {
    let g: J = serde_json::from_str(include_str!("golden.json")).unwrap();
    let cases = g["cases"].as_array().unwrap();
    let mut methods = std::collections::BTreeSet::new();
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let m = merge::method(c["method"].as_str().unwrap()).unwrap();
        methods.insert(m.decl.name);
        let p = &c["params"];
        let models: Vec<Vec<f64>> = c["models"].as_array().unwrap().iter().map(nums).collect();
        let n = models.len();
        let params = TensorParams {
            weight: if p["weight"].is_null() {
                vec![1.0; n]
            } else {
                nums(&p["weight"])
            },
            density: if p["density"].is_null() {
                vec![1.0; n]
            } else {
                nums(&p["density"])
            },
            t: p["t"].as_f64().unwrap_or(0.5),
            lambda: p["lam"].as_f64().unwrap_or(1.0),
            normalize: p["normalize"].as_bool().unwrap_or(m.decl.normalize_default),
            seed: p["seed"].as_u64().unwrap_or(0),
        };
        let base = if c["base"].is_null() {
            None
        } else {
            Some(nums(&c["base"]))
        };
        let got = (m.merge_f64)(Tensors { base, models }, &params).unwrap();
        let want = nums(&c["expected"]);
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                "{name}: element {i}: got {a}, golden {b}"
            );
        }
    }
    assert_eq!(
        methods.len(),
        merge::METHODS.len(),
        "a method has no golden case"
    );
}

#[test]
fn dare_mask_matches_the_reference_stream() {
    let g: J = serde_json::from_str(include_str!("golden.json")).unwrap();
    let d = &g["dare_mask"];
    let mask = task_vector::dare_mask(
        d["n"].as_u64().unwrap() as usize,
        d["density"].as_f64().unwrap(),
        d["seed"].as_u64().unwrap(),
        d["model"].as_u64().unwrap() as usize,
    );
    let want: Vec<bool> = d["mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_bool().unwrap())
        .collect();
    assert_eq!(mask, want);
}

#[test]
fn ties_top_k_keeps_floor_of_density_times_n_and_breaks_ties_by_index() {
    let mut t = vec![0.5, -3.0, 1.0, 3.0, -1.0, 0.1];
    task_vector::top_k(&mut t, 0.5); // k = 3: |−3|, |3|, then the first |1|
    assert_eq!(t, vec![0.0, -3.0, 1.0, 3.0, 0.0, 0.0]);
    let mut t = vec![1.0, 2.0, 3.0];
    task_vector::top_k(&mut t, 0.3); // k = ⌊0.9⌋ = 0
    assert_eq!(t, vec![0.0; 3]);
}

#[test]
fn dare_rescale_keeps_the_l1_norm() {
    let mut t = vec![1.0, -2.0, 3.0, -4.0];
    task_vector::apply_mask(&mut t, &[true, false, true, false], true);
    // ‖τ‖₁ = 10, kept ‖·‖₁ = 4 → factor 2.5 (not 1/density = 2).
    assert_eq!(t, vec![2.5, 0.0, 7.5, 0.0]);
    let l1: f64 = t.iter().map(|x: &f64| x.abs()).sum();
    assert_eq!(l1, 10.0);
}
