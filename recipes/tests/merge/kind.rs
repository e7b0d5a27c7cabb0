//! The `merge` kind: recipe-time checks (through the DSL with the real registry) and runs on tiny
//! HF directories — output layout, dtype, sharding, identities through the streaming driver, and
//! run-time errors that name the tensor or parameter.

use super::common::*;
use dsl::Value;
use safetensors::tensor::Dtype;
use std::path::Path;

fn check_errors(body: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    for n in ["a", "b", "c"] {
        tiny_model(&dir.path().join(n), &Tiny::default());
    }
    let text = format!("model a path=\"a\"\nmodel b path=\"b\"\nmodel c path=\"c\"\n{body}\n");
    match dsl::load_str("r.kdl", &text, dir.path(), &kinds::registry(), &[]) {
        Ok(_) => vec![],
        Err(d) => d
            .errors()
            .iter()
            .map(|e| format!("{} | {}", e.message(), e.hint().unwrap_or("")))
            .collect(),
    }
}

fn assert_err(body: &str, want: &str) {
    let errs = check_errors(body);
    assert!(
        errs.iter().any(|e| e.contains(want)),
        "{body}\nwanted {want:?}, got {errs:#?}"
    );
}

#[test]
fn valid_recipes_pass_the_check() {
    for body in [
        "merge m method=slerp t=0.5 { model a; model b; }",
        "merge m method=slerp base=a { model b; t 0 0.5 1; }",
        "merge m method=linear { model a weight=0.3; model b weight=0.7; }",
        "merge m method=ties base=a density=0.5 { model b weight=0.5; model c density=1; filter \"mlp\" weight=0.2 model=b; }",
        "merge m method=dare_ties base=a seed=3 { model b density=0.3; model c; }",
        "merge m method=model_stock base=a { model b; model c; }",
        "merge m method=slerp { model a; model b; filter \"self_attn\" t=0.2; filter \"*\" t=0.6; }",
    ] {
        assert_eq!(check_errors(body), Vec::<String>::new(), "{body}");
    }
}

#[test]
fn bad_recipes_fail_the_check_naming_the_parameter() {
    assert_err(
        "merge m method=slerp t=0.5 { model a; model b; model c; }",
        "slerp merges exactly two models, found 3",
    );
    assert_err(
        "merge m method=slerp t=0.5 { model a; }",
        "slerp merges exactly two models, found 1",
    );
    assert_err(
        "merge m method=ties base=a { model b density=1.5; }",
        "`density` must lie in (0, 1], found 1.5",
    );
    assert_err(
        "merge m method=ties base=a density=0 { model b; }",
        "`density` must lie in (0, 1], found 0",
    );
    assert_err(
        "merge m method=dare_linear base=a { model b; filter \"mlp\" density=-0.1; }",
        "found -0.1",
    );
    assert_err(
        "merge m method=slep { model a; model b; }",
        "did you mean `slerp`",
    );
    assert_err(
        "merge m method=ties { model a; model b; }",
        "method ties needs a base model",
    );
    assert_err(
        "merge m method=linear base=a { model b; }",
        "method linear takes no base model",
    );
    assert_err(
        "merge m method=linear t=0.3 { model a; model b; }",
        "`t` is not a parameter of method linear",
    );
    assert_err(
        "merge m method=ties base=a seed=1 { model b; }",
        "`seed` is not a parameter of method ties",
    );
    assert_err(
        "merge m method=model_stock base=a { model b; }",
        "at least 2 models besides the base",
    );
    assert_err(
        "merge m method=slerp { model a; model b; }",
        "method slerp needs `t`",
    );
    assert_err(
        "merge m method=slerp t=1.5 { model a; model b; }",
        "`t` must lie in [0, 1]",
    );
    assert_err(
        "merge m method=ties base=a { model b; filter \"mlp\" weight=1 model=c; }",
        "filter names model `c`",
    );
    assert_err("merge m method=linear { model nope; }", "nope");
}

fn two(seed_b: u64) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let a = tiny_model(&d.path().join("a"), &Tiny::default());
    let b = tiny_model(
        &d.path().join("b"),
        &Tiny {
            seed: seed_b,
            ..Tiny::default()
        },
    );
    (d, a, b)
}

#[test]
fn linear_of_one_model_reproduces_it_bit_for_bit_as_an_hf_directory() {
    let d = tempfile::tempdir().unwrap();
    let a = tiny_model(
        &d.path().join("a"),
        &Tiny {
            dtype: Dtype::BF16,
            ..Tiny::default()
        },
    );
    let (res, tmp) = run_merge(
        &[
            ("method", s("linear")),
            ("model", Value::List(vec![model("a", Some(1.0), None)])),
        ],
        &[("a", &a)],
    );
    let sum = res.unwrap();
    assert_eq!(sum["dtype"], "BF16");
    let o = out(&tmp);
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "model.safetensors",
    ] {
        assert!(o.join(f).is_file(), "{f} missing");
    }
    let w = recipes::hf::read_weights(&a, "a").unwrap();
    for name in w.tensors.keys() {
        assert_eq!(raw(&a, name), raw(&o, name), "{name}");
    }
    // The output is a valid HF model directory of the same architecture.
    recipes::hf::validate_model_dir(&o, "out").unwrap();
}

#[test]
fn slerp_t0_through_the_driver_returns_the_base_and_sharding_keeps_values() {
    let (_d, a, b) = two(2);
    let ms = Value::List(vec![model("a", None, None), model("b", None, None)]);
    let (res, tmp) = run_merge(
        &[
            ("method", s("slerp")),
            ("t", list(&[0.0])),
            ("model", ms.clone()),
            ("shard-size", Value::Int(600)),
        ],
        &[("a", &a), ("b", &b)],
    );
    let sum = res.unwrap();
    assert!(sum["shards"].as_array().unwrap().len() > 2, "{sum}");
    let o = out(&tmp);
    assert!(o.join("model.safetensors.index.json").is_file());
    let (x, y) = (read_all(&a), read_all(&o));
    assert_eq!(x.len(), y.len());
    for (k, (_, shape, v)) in &x {
        assert_eq!(&y[k].1, shape);
        assert_eq!(&y[k].2, v, "{k}");
    }
    // A gradient t over layers: layer 0 gets 0 (= a), layer 1 gets 1 (= b); embeddings t = 0.
    let (res, tmp) = run_merge(
        &[
            ("method", s("slerp")),
            ("t", list(&[0.0, 1.0])),
            ("model", ms),
        ],
        &[("a", &a), ("b", &b)],
    );
    res.unwrap();
    let (z, yb) = (read_all(&out(&tmp)), read_all(&b));
    let q0 = "model.layers.0.self_attn.q_proj.weight";
    let q1 = "model.layers.1.self_attn.q_proj.weight";
    assert_eq!(z[q0].2, x[q0].2);
    assert_eq!(z[q1].2, yb[q1].2);
    assert_eq!(z["lm_head.weight"].2, x["lm_head.weight"].2);
}

#[test]
fn every_method_is_the_identity_on_a_self_merge_through_the_driver() {
    let d = tempfile::tempdir().unwrap();
    let a = tiny_model(&d.path().join("a"), &Tiny::default());
    let want = read_all(&a);
    for m in recipes::merge::METHODS {
        let mut params = vec![("method", s(m.decl.name))];
        let models = match m.decl.base {
            recipes::merge::BaseUse::None => {
                vec![model("a", Some(0.5), None), model("a", Some(0.5), None)]
            }
            recipes::merge::BaseUse::FirstOfTwo => {
                params.push(("t", list(&[0.3])));
                vec![model("a", None, None), model("a", None, None)]
            }
            recipes::merge::BaseUse::Required => {
                params.push(("base", r("a")));
                vec![model("a", None, None), model("a", None, None)]
            }
        };
        params.push(("model", Value::List(models)));
        let (res, tmp) = run_merge(&params, &[("a", &a)]);
        res.unwrap_or_else(|e| panic!("{}: {e:?}", m.decl.name));
        let got = read_all(&out(&tmp));
        for (k, (_, _, v)) in &want {
            for (x, y) in got[k].2.iter().zip(v) {
                assert!(
                    (x - y).abs() <= 1e-6 * (1.0 + y.abs()),
                    "{} {k}: {x} vs {y}",
                    m.decl.name
                );
            }
        }
    }
}

#[test]
fn dare_through_the_kind_depends_on_the_seed_only() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(&d.path().join("base"), &Tiny::default());
    let a = tiny_model(
        &d.path().join("a"),
        &Tiny {
            seed: 2,
            ..Tiny::default()
        },
    );
    let b = tiny_model(
        &d.path().join("b"),
        &Tiny {
            seed: 3,
            ..Tiny::default()
        },
    );
    let run = |seed: i64| {
        let (res, tmp) = run_merge(
            &[
                ("method", s("dare_ties")),
                ("base", r("base")),
                ("seed", Value::Int(seed)),
                ("density", list(&[0.5])),
                (
                    "model",
                    Value::List(vec![model("a", None, None), model("b", None, None)]),
                ),
            ],
            &[("base", &base), ("a", &a), ("b", &b)],
        );
        res.unwrap();
        std::fs::read(out(&tmp).join("model.safetensors")).unwrap()
    };
    let (x, y, z) = (run(1), run(1), run(2));
    assert!(x == y, "same seed, different bytes");
    assert!(x != z, "different seeds, same bytes");
}

fn err_of(params: &[(&str, Value)], dirs: &[(&str, &Path)]) -> (String, bool) {
    let (res, tmp) = run_merge(params, dirs);
    let msg = user_msg(res);
    let published = std::fs::read_dir(out(&tmp)).unwrap().count() > 0;
    (msg, published)
}

#[test]
fn run_time_errors_name_the_tensor_and_write_nothing_half_done() {
    let d = tempfile::tempdir().unwrap();
    let a = tiny_model(&d.path().join("a"), &Tiny::default());
    let lin = |x: &str, y: &str| {
        vec![
            ("method", s("linear")),
            (
                "model",
                Value::List(vec![model(x, None, None), model(y, None, None)]),
            ),
        ]
    };
    // Missing tensor.
    let b = tiny_model(
        &d.path().join("b"),
        &Tiny {
            drop: Some("model.layers.1.mlp.up_proj.weight"),
            ..Tiny::default()
        },
    );
    let (m, published) = err_of(&lin("a", "b"), &[("a", &a), ("b", &b)]);
    assert!(
        m.contains("tensor \"model.layers.1.mlp.up_proj.weight\" is missing from model b"),
        "{m}"
    );
    assert!(!published, "files written before the inputs were checked");
    // With a base and missing-from-base the tensor comes from the base.
    let (res, _t) = run_merge(
        &[
            ("method", s("task_arithmetic")),
            ("base", r("a")),
            ("missing-from-base", Value::Bool(true)),
            ("model", Value::List(vec![model("b", None, None)])),
        ],
        &[("a", &a), ("b", &b)],
    );
    res.unwrap();
    // Shape mismatch (other hidden size, same vocabulary).
    let c = tiny_model(
        &d.path().join("c"),
        &Tiny {
            hidden: 4,
            ..Tiny::default()
        },
    );
    let (m, _) = err_of(&lin("a", "c"), &[("a", &a), ("c", &c)]);
    assert!(
        m.contains("shape [4] in model c but [8] in a") || m.contains("shape"),
        "{m}"
    );
    assert!(m.contains("tensor \""), "{m}");
    // Different vocabulary sizes.
    let v = tiny_model(
        &d.path().join("v"),
        &Tiny {
            vocab: 20,
            ..Tiny::default()
        },
    );
    let (m, _) = err_of(&lin("a", "v"), &[("a", &a), ("v", &v)]);
    assert!(
        m.contains("different vocabulary sizes (16 and 20)") && m.contains("tokenizer-from"),
        "{m}"
    );
    // Same size, different tokenizer.
    let t = tiny_model(
        &d.path().join("t"),
        &Tiny {
            tokenizer: "{\"version\":\"2.0\"}",
            ..Tiny::default()
        },
    );
    let (m, _) = err_of(&lin("a", "t"), &[("a", &a), ("t", &t)]);
    assert!(m.contains("different tokenizers"), "{m}");
    // Slerp with three inputs at run time.
    let (m, _) = err_of(
        &[
            ("method", s("slerp")),
            ("t", list(&[0.5])),
            (
                "model",
                Value::List(vec![
                    model("a", None, None),
                    model("b", None, None),
                    model("c", None, None),
                ]),
            ),
        ],
        &[("a", &a), ("b", &b), ("c", &c)],
    );
    assert!(m.contains("exactly two models"), "{m}");
}

#[test]
fn a_tokenizer_source_aligns_vocabularies() {
    let d = tempfile::tempdir().unwrap();
    let a = tiny_model(&d.path().join("a"), &Tiny::default());
    let v = tiny_model(
        &d.path().join("v"),
        &Tiny {
            vocab: 20,
            seed: 5,
            tokenizer: "{\"version\":\"2.0\"}",
            ..Tiny::default()
        },
    );
    let (res, tmp) = run_merge(
        &[
            ("method", s("linear")),
            ("tokenizer-from", r("v")),
            (
                "model",
                Value::List(vec![model("a", None, None), model("v", None, None)]),
            ),
        ],
        &[("a", &a), ("v", &v)],
    );
    let sum = res.unwrap();
    assert_eq!(sum["vocab_size"], 20);
    let o = out(&tmp);
    let (xa, xv, got) = (read_all(&a), read_all(&v), read_all(&o));
    let e = "model.embed_tokens.weight";
    assert_eq!(got[e].1, vec![20, 8]);
    // Rows < 16: the average; rows 16..20: both sides are v's rows, so v's.
    let (ra, rv, rg) = (&xa[e].2, &xv[e].2, &got[e].2);
    assert!((rg[3] - (ra[3] + rv[3]) / 2.0).abs() < 1e-6);
    assert!((rg[17 * 8 + 2] - rv[17 * 8 + 2]).abs() < 1e-6);
    assert_eq!(
        std::fs::read_to_string(o.join("tokenizer.json")).unwrap(),
        "{\"version\":\"2.0\"}"
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(o.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["vocab_size"], 20);
}
