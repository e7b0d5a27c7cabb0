//! End to end: the `merge` kind through the real `temper` binary — two tiny models initialised
//! with different seeds merged with slerp (a sweep over `t`) and linear; upstream nodes run once
//! and a rerun is fully cached; slerp t=0 / t=1 reproduce the inputs' tensors; bad recipes fail
//! at `check` with a message naming the parameter.

use serde_json::Value as J;
use std::collections::BTreeMap;
use std::path::Path;
use temper_e2e::{assert_no_panic, text, Project};

const RECIPE: &str = r#"
dataset corpus path="data/corpus.jsonl" format=text
tokenizer tok vocab-size=320 { data corpus; }
model a tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 seed=0
model b tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 seed=1
merge mid method=slerp t=0.5 { model a; model b; }
merge avg method=linear { model a weight=0.3; model b weight=0.7; }
sweep { mid.t 0.0 0.5 1.0; }
"#;

fn project(recipe: &str) -> Project {
    let p = Project::new();
    p.copy_from_repo("examples/data/corpus.jsonl", "data/corpus.jsonl");
    p.write("recipe.kdl", recipe);
    p
}

/// Tensor name → raw bytes of a model directory's single safetensors file.
fn tensors(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(dir.join("model.safetensors")).expect("model.safetensors");
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: BTreeMap<String, J> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let o = &v["data_offsets"];
            let (a, b) = (
                o[0].as_u64().unwrap() as usize,
                o[1].as_u64().unwrap() as usize,
            );
            (k, bytes[8 + n + a..8 + n + b].to_vec())
        })
        .collect()
}

/// Exports `node` to `dir` and returns its tensors.
fn export(p: &Project, node: &str) -> BTreeMap<String, Vec<u8>> {
    let dir = p
        .path()
        .join("exp")
        .join(node.replace(['[', ']', '='], "_"));
    p.ok(&["export", "recipe.kdl", node, dir.to_str().unwrap()]);
    assert!(dir.join("config.json").is_file() && dir.join("tokenizer.json").is_file());
    tensors(&dir)
}

#[test]
fn slerp_sweep_and_linear_merge_reuse_upstream_and_reproduce_endpoints() {
    let p = project(RECIPE);
    let out = p.ok(&["run", "recipe.kdl"]);
    assert!(out.contains("8 done, 0 cached"), "{out}");
    // The sweep over t adds merges only: the rerun and a plan are fully cached.
    let again = p.ok(&["run", "recipe.kdl"]);
    assert!(again.contains("0 done, 8 cached"), "{again}");

    let (a, b) = (export(&p, "a"), export(&p, "b"));
    let (t0, t1, mid) = (
        export(&p, "mid[t=0.0]"),
        export(&p, "mid[t=1.0]"),
        export(&p, "mid[t=0.5]"),
    );
    assert_eq!(t0, a, "slerp t=0 must return the base bit for bit");
    assert_eq!(t1, b, "slerp t=1 must return the other model bit for bit");
    assert_ne!(mid, a);
    assert_ne!(mid, b);
    let avg = export(&p, "avg");
    let e = "model.embed_tokens.weight";
    let f = |v: &[u8], i: usize| f32::from_le_bytes(v[4 * i..4 * i + 4].try_into().unwrap());
    for i in 0..50 {
        let want = (0.3 * f(&a[e], i) + 0.7 * f(&b[e], i)) / 1.0;
        assert!((f(&avg[e], i) - want).abs() < 1e-6, "avg element {i}");
    }

    // Another t only runs the new merge.
    let more = p.ok(&["run", "recipe.kdl", "--set", "mid.t=0.25"]);
    assert!(more.contains("1 done"), "{more}");
    let show = p.ok(&["show", "recipe.kdl", "avg"]);
    assert!(
        show.contains("\"method\": \"linear\"") && show.contains("model.safetensors"),
        "{show}"
    );
}

#[test]
fn bad_merges_fail_at_check_naming_the_parameter() {
    for (body, want) in [
        (
            "merge m method=slerp t=0.5 { model a; model b; model a2; }",
            "slerp merges exactly two models, found 3",
        ),
        (
            "merge m method=ties base=a { model b density=1.5; }",
            "`density` must lie in (0, 1]",
        ),
        (
            "merge m method=slerpp t=0.5 { model a; model b; }",
            "did you mean `slerp`",
        ),
    ] {
        let recipe = format!("{}\nmodel a2 tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 seed=2\n{body}\n", RECIPE.replace("sweep { mid.t 0.0 0.5 1.0; }", ""));
        let p = project(&recipe);
        let out = p.run(&["check", "recipe.kdl"]);
        assert_no_panic(&out, body);
        assert!(!out.status.success(), "{body}: {}", text(&out));
        assert!(
            text(&out).contains(want),
            "{body}: wanted {want:?}\n{}",
            text(&out)
        );
    }
}

#[test]
fn a_vocabulary_mismatch_fails_the_run_and_publishes_nothing() {
    let p = project(
        r#"
dataset corpus path="data/corpus.jsonl" format=text
tokenizer tok vocab-size=320 { data corpus; }
tokenizer tok2 vocab-size=300 { data corpus; }
model a tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 seed=0
model b tokenizer=tok2 hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 seed=1
merge m method=linear { model a; model b; }
"#,
    );
    let out = p.run(&["run", "recipe.kdl"]);
    assert_no_panic(&out, "vocab mismatch");
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains("different vocabulary sizes") && t.contains("tokenizer-from"),
        "{t}"
    );
    let ok = p.run(&["verify"]);
    assert!(ok.status.success(), "{}", text(&ok));
}
