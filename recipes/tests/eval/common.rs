//! Fixtures: a project directory with data, a trained tokenizer and a tiny initialised model
//! (built once per test binary), and a `StageCtx` built the way the runner builds one.

use dsl::Value;
use recipes::kinds::{dataset::Dataset, model::Model, tokenizer::Tokenizer};
use recipes::Stage;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use crate::common::{b, i, r, s};

/// A fresh directory that lives as long as the test process.
pub fn tmp() -> PathBuf {
    tempfile::tempdir().unwrap().keep()
}

/// Runs `stage` in project `root` with `params` (others defaulted) and `inputs`
/// (param path, node name, artifact dir); returns (summary, out dir) or the error.
pub fn run(
    stage: &dyn Stage,
    root: &Path,
    params: &[(&str, Value)],
    inputs: &[(&str, &str, &Path)],
) -> Result<(serde_json::Value, PathBuf), recipes::StageError> {
    let ctx = crate::common::stage_ctx(stage, "test", params, inputs, root, &tmp());
    stage.run(&ctx).map(|s| (s, ctx.out_dir.clone()))
}

/// Writes `rel` under `root` and runs the `dataset` kind on it.
pub fn dataset(root: &Path, rel: &str, format: &str, lines: &[serde_json::Value]) -> PathBuf {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(root.join(rel), text).unwrap();
    let params = [("path", Value::Path(rel.into())), ("format", s(format))];
    run(&Dataset, root, &params, &[]).unwrap().1
}

/// Prompt-completion pairs of the fixture.
pub fn pairs() -> Vec<(String, String)> {
    (0..12)
        .map(|k| (format!("{k}+{}=", k * 3), format!(" {}", k * 4)))
        .collect()
}

pub fn pc_lines(p: &[(String, String)]) -> Vec<serde_json::Value> {
    p.iter()
        .map(|(a, c)| serde_json::json!({"prompt": a, "completion": c}))
        .collect()
}

/// The shared fixture: project root, a text dataset, a prompt-completion dataset and a tiny
/// random llama (tied embeddings, max-position 64) with its trained tokenizer.
pub struct Fixture {
    pub root: PathBuf,
    pub text: PathBuf,
    pub pc: PathBuf,
    pub model: PathBuf,
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let root = tmp();
        let docs: Vec<serde_json::Value> = (0..40)
            .map(|k| serde_json::json!({"text": format!("doc {k}: the sum of {k} and {} is {}. abc bca cab", k * 3, k * 4)}))
            .collect();
        let text = dataset(&root, "text.jsonl", "text", &docs);
        let pc = dataset(&root, "pc.jsonl", "prompt-completion", &pc_lines(&pairs()));
        let tp = [("vocab-size", i(300)), ("data", Value::List(vec![r("text")]))];
        let (_, tok) = run(&Tokenizer, &root, &tp, &[("data[0]", "text", &text)]).unwrap();
        let mp = [
            ("tokenizer", r("tok")),
            ("hidden-size", i(32)),
            ("layers", i(2)),
            ("heads", i(4)),
            ("kv-heads", i(2)),
            ("intermediate-size", i(64)),
            ("max-position", i(64)),
            ("tie-embeddings", b(true)),
            ("init-std", Value::Float(0.2)),
            ("seed", i(3)),
        ];
        let (_, model) = run(&Model, &root, &mp, &[("tokenizer", "tok", &tok)]).unwrap();
        Fixture {
            root,
            text,
            pc,
            model,
        }
    })
}

pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}
