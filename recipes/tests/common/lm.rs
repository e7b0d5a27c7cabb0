//! Fixtures: a tiny tokenizer and Llama model built by the test, datasets, and stage contexts
//! whose work directory can be reused across runs (resume) and whose progress reporter can
//! inject a cancel or a crash at a given step.

use dsl::Value;
use recipes::kinds::model::Model;
use recipes::{CancelToken, Progress, Stage, StageCtx, StageError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use super::{b, f, i, r};

pub const SPECIALS: &[&str] = &["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"];

/// Arithmetic prompt/completion pairs `add A B =` → ` C`.
pub fn sums(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let (a, b) = (i % 7, (i * 3) % 5);
            (format!("add {a} {b} ="), format!(" {}", a + b))
        })
        .collect()
}

/// Texts for CPT: a learnable repeating pattern.
pub fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let k = i % 4;
            (0..6 + k)
                .map(|j| ["red", "green", "blue", "cyan"][(j + k) % 4])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// A directory holding a tokenizer (BPE over the fixtures' texts) with a ChatML template.
pub fn tokenizer_dir(root: &Path) -> PathBuf {
    let dir = root.join("tok");
    std::fs::create_dir_all(&dir).unwrap();
    let mut corpus: Vec<String> = texts(8);
    for (p, c) in sums(35) {
        corpus.push(format!("{p}{c}"));
    }
    corpus.push("user assistant system".into());
    let specials: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    let tok =
        recipes::tok::train_bpe(corpus.into_iter().cycle().take(400), 300, 0, &specials).unwrap();
    tok.save(dir.join("tokenizer.json"), false).unwrap();
    let cfg = serde_json::json!({
        "eos_token": "<|endoftext|>", "pad_token": "<|pad|>", "bos_token": null,
        "chat_template": recipes::tok::CHATML_TEMPLATE,
    });
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    dir
}

/// A dataset artifact directory.
pub fn dataset(root: &Path, name: &str, format: &str, lines: &[serde_json::Value]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let body: String = lines.iter().map(|l| l.to_string() + "\n").collect();
    std::fs::write(dir.join("data.jsonl"), body).unwrap();
    let stats = serde_json::json!({"format": format, "records": lines.len()});
    std::fs::write(dir.join("stats.json"), stats.to_string()).unwrap();
    dir
}

pub fn pc_dataset(root: &Path, n: usize) -> PathBuf {
    let lines: Vec<_> = sums(n)
        .into_iter()
        .map(|(p, c)| serde_json::json!({"prompt": p, "completion": c}))
        .collect();
    dataset(root, "pc", "prompt-completion", &lines)
}

pub fn text_dataset(root: &Path, n: usize) -> PathBuf {
    let lines: Vec<_> = texts(n)
        .into_iter()
        .map(|t| serde_json::json!({"text": t}))
        .collect();
    dataset(root, "web", "text", &lines)
}

/// Progress that cancels, or panics (a simulated crash), when the position reaches a step.
pub struct Hook {
    pub at: u64,
    pub crash: bool,
    pub cancel: CancelToken,
}
impl Progress for Hook {
    fn set_length(&self, _: u64) {}
    fn set_position(&self, pos: u64) {
        if pos == self.at {
            if self.crash {
                panic!("simulated crash at step {pos}");
            }
            self.cancel.cancel();
        }
    }
    fn inc(&self, _: u64) {}
    fn set_message(&self, _: &str) {}
}

pub fn hook(at: u64, crash: bool) -> Arc<Hook> {
    Arc::new(Hook {
        at,
        crash,
        cancel: CancelToken::new(),
    })
}

/// A context for `stage` with `params` (others defaulted), `inputs` (param → dir) and a
/// work/out directory pair under `base`.
pub fn ctx(
    stage: &dyn Stage,
    params: &[(&str, Value)],
    inputs: &[(&str, &Path)],
    base: &Path,
    hook: Option<Arc<Hook>>,
) -> StageCtx {
    let inputs: Vec<(&str, &str, &Path)> = inputs.iter().map(|(k, d)| (*k, *k, *d)).collect();
    let mut ctx = super::stage_ctx(stage, "t", params, &inputs, base, base);
    // Per process: the kill tests run a child process on the same base directory.
    let out = base.join(format!("out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    ctx.job.out_dir = out;
    if let Some(h) = hook {
        ctx.cancel = h.cancel.clone();
        ctx.progress = h;
    }
    ctx
}

pub fn run(
    stage: &dyn Stage,
    params: &[(&str, Value)],
    inputs: &[(&str, &Path)],
    base: &Path,
) -> Result<(serde_json::Value, PathBuf), StageError> {
    let c = ctx(stage, params, inputs, base, None);
    stage.run(&c).map(|s| (s, c.out_dir.clone()))
}

/// A tiny initialised Llama (hidden 32, 2 layers) with the test tokenizer: (model dir, tok dir).
pub fn tiny_model(root: &Path) -> (PathBuf, PathBuf) {
    let tok = tokenizer_dir(root);
    let params = [
        ("tokenizer", Value::Ref("tok".into())),
        ("hidden-size", Value::Int(32)),
        ("layers", Value::Int(2)),
        ("heads", Value::Int(4)),
        ("intermediate-size", Value::Int(64)),
        ("max-position", Value::Int(128)),
        ("seed", Value::Int(3)),
    ];
    let (_, out) = run(
        &Model,
        &params,
        &[("tokenizer", &tok)],
        &root.join("model-node"),
    )
    .unwrap();
    (out, tok)
}

pub fn sched(kind: &str, warmup: Option<f64>) -> Value {
    let mut m = BTreeMap::new();
    m.insert("kind".to_string(), Value::Str(kind.into()));
    m.insert(
        "warmup".to_string(),
        warmup.map(Value::Float).unwrap_or(Value::Null),
    );
    Value::Record(m)
}

/// The named f32 tensors of a safetensors file.
pub fn weights(path: &Path) -> BTreeMap<String, Vec<f32>> {
    tch::Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let t = t.to_kind(tch::Kind::Float).flatten(0, -1);
            (k, Vec::<f32>::try_from(&t).unwrap())
        })
        .collect()
}

/// Metrics lines without wall-clock fields.
pub fn metrics(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("tokens_per_s");
            v
        })
        .collect()
}
