//! Helpers shared by every group of the test binary: `dsl::Value` constructors, the lock
//! around torch's global random generator, and `lm` (a tiny tokenizer and Llama, datasets and
//! stage contexts with a cancel/crash hook) used by the `trainer` and `pref` groups.

#![allow(dead_code)]

pub mod lm;

use dsl::Value;
use std::sync::{Mutex, MutexGuard};

pub fn s(v: &str) -> Value {
    Value::Str(v.into())
}
pub fn p(v: &str) -> Value {
    Value::Path(v.into())
}
pub fn r(v: &str) -> Value {
    Value::Ref(v.into())
}
pub fn i(v: i64) -> Value {
    Value::Int(v)
}
pub fn f(v: f64) -> Value {
    Value::Float(v)
}
pub fn b(v: bool) -> Value {
    Value::Bool(v)
}

/// Held while seeding torch's global generator and drawing from it: the tests of every group
/// run in parallel in one process, so `manual_seed(s)` followed by draws is only reproducible
/// when no other test seeds or draws in between.
pub fn torch_rng() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `stage`'s parameters as the DSL fills them: every declared one (the common ones too) at its
/// default (an optional repeated one as an empty list), then `params`, each of which must be
/// declared.
pub fn full_params(
    stage: &dyn recipes::Stage,
    params: &[(&str, Value)],
) -> std::collections::BTreeMap<String, Value> {
    let schema = stage.schema();
    let mut full = std::collections::BTreeMap::new();
    for p in schema
        .params
        .iter()
        .chain(dsl::schema::common_params().iter())
    {
        let v = match &p.default {
            dsl::Default::Value(v) => v.clone(),
            dsl::Default::Optional if p.repeated => Value::List(vec![]),
            _ => Value::Null,
        };
        full.entry(p.name.to_string()).or_insert(v);
    }
    for (k, v) in params {
        assert!(full.contains_key(*k), "unknown parameter {k}");
        full.insert(k.to_string(), v.clone());
    }
    full
}

/// A context that runs `stage` as node `node` of a recipe in `root`: `params` over the defaults,
/// `inputs` as (parameter path, producing node, artifact dir), an empty `base/out` and the work
/// dir `base/work`; no progress, a fresh cancel token.
pub fn stage_ctx(
    stage: &dyn recipes::Stage,
    node: &str,
    params: &[(&str, Value)],
    inputs: &[(&str, &str, &std::path::Path)],
    root: &std::path::Path,
    base: &std::path::Path,
) -> recipes::StageCtx {
    let out = base.join("out");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let inputs = inputs
        .iter()
        .map(|(param, from, dir)| {
            let a = recipes::InputArtifact {
                node: from.to_string(),
                kind: "?".into(),
                produces: "?".into(),
                key: "1".repeat(64),
                dir: dir.to_path_buf(),
            };
            (param.to_string(), a)
        })
        .collect();
    recipes::StageCtx::new(
        recipes::Job {
            node: node.into(),
            kind: stage.schema().name.into(),
            key: "0".repeat(64),
            params: full_params(stage, params),
            root_dir: root.to_path_buf(),
            inputs,
            out_dir: out,
            work_dir: base.join("work"),
            device: "cpu".into(),
            ..Default::default()
        },
        std::sync::Arc::new(recipes::NoProgress),
        recipes::CancelToken::new(),
    )
}
