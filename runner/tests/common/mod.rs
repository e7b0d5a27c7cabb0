//! Tiny fake node kinds for the runner's tests, registered by the tests themselves (not by
//! `recipes`), and helpers to write recipes into temporary directories.
#![allow(dead_code)]

use dsl::{KindSchema, ParamSpec, ParamType, Value};
use recipes::{Stage, StageCtx, StageError};
use runner::Kinds;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Appends `what` to `<root_dir>/executions.log` (one line per execution).
fn log_execution(ctx: &StageCtx, what: &str) {
    let p = ctx.root_dir.join("executions.log");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .expect("executions log");
    writeln!(f, "{what}").expect("write executions log");
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn write_out(ctx: &StageCtx, text: &str) -> Result<(), StageError> {
    std::fs::write(ctx.out_dir.join("out.txt"), text).map_err(|e| StageError::Other(e.into()))
}

/// `src NAME text=… [n=1] [file=PATH] [ratio=0.5] [mode=a|b] [flag=#false]`: writes `out.txt`.
pub struct Src;
impl Stage for Src {
    fn schema(&self) -> KindSchema {
        KindSchema::new("src", 1, "data")
            .param(ParamSpec::new("text", ParamType::Str))
            .param(
                ParamSpec::new(
                    "n",
                    ParamType::Int {
                        min: Some(0),
                        max: None,
                    },
                )
                .default(Value::Int(1)),
            )
            .param(ParamSpec::new("file", ParamType::Path).optional())
            .param(
                ParamSpec::new(
                    "ratio",
                    ParamType::Float {
                        min: None,
                        max: None,
                    },
                )
                .default(Value::Float(0.5)),
            )
            .param(
                ParamSpec::new("mode", ParamType::Enum(&["a", "b"]))
                    .default(Value::Str("a".into())),
            )
            .param(ParamSpec::new("flag", ParamType::Bool).default(Value::Bool(false)))
    }
    fn run(&self, ctx: &StageCtx) -> Result<serde_json::Value, StageError> {
        log_execution(ctx, &ctx.node);
        // Node logs keep INFO events of temper's crates (dependencies' only from WARN): a test
        // kind logs under a `recipes` target like the built-in kinds.
        tracing::info!(target: "recipes::test_src", "src {} says {}", ctx.node, ctx.param("text").display());
        let mut text = ctx.param("text").as_str().unwrap_or("").to_string();
        if let Some(f) = ctx.param("file").as_str() {
            text += &std::fs::read_to_string(ctx.resolve_path(f))
                .map_err(|e| StageError::Other(e.into()))?;
        }
        ctx.metrics
            .log(&serde_json::json!({"step": 1, "len": text.len()}))
            .map_err(|e| StageError::Other(e.into()))?;
        write_out(ctx, &text)?;
        Ok(serde_json::json!({ "len": text.len() }))
    }
}

/// `join NAME a=REF [b=REF] [x=1.0] [y=0]`: concatenates its inputs' `out.txt`.
pub struct Join;
impl Stage for Join {
    fn schema(&self) -> KindSchema {
        KindSchema::new("join", 1, "data")
            .param(ParamSpec::new("a", ParamType::Ref(&["data"])))
            .param(ParamSpec::new("b", ParamType::Ref(&["data"])).optional())
            .param(
                ParamSpec::new(
                    "x",
                    ParamType::Float {
                        min: None,
                        max: None,
                    },
                )
                .default(Value::Float(1.0)),
            )
            .param(
                ParamSpec::new(
                    "y",
                    ParamType::Int {
                        min: None,
                        max: None,
                    },
                )
                .default(Value::Int(0)),
            )
    }
    fn run(&self, ctx: &StageCtx) -> Result<serde_json::Value, StageError> {
        log_execution(ctx, &ctx.node);
        let mut text = String::new();
        for p in ["a", "b"] {
            if let Ok(inp) = ctx.input(p) {
                text += &std::fs::read_to_string(inp.dir.join("out.txt"))
                    .map_err(|e| StageError::Other(e.into()))?;
            }
        }
        write_out(ctx, &text)?;
        Ok(serde_json::json!({ "x": ctx.param("x").as_f64() }))
    }
}

/// `fail NAME [msg=…]`: a user error with a hint.
pub struct Fail;
impl Stage for Fail {
    fn schema(&self) -> KindSchema {
        KindSchema::new("fail", 1, "data")
            .param(ParamSpec::new("msg", ParamType::Str).default(Value::Str("boom".into())))
    }
    fn run(&self, ctx: &StageCtx) -> Result<serde_json::Value, StageError> {
        log_execution(ctx, &ctx.node);
        Err(StageError::user(
            ctx.param("msg").as_str().unwrap_or("boom").to_string(),
            Some("fix the input".to_string()),
        ))
    }
}

/// `crash NAME`: panics.
pub struct Crash;
impl Stage for Crash {
    fn schema(&self) -> KindSchema {
        KindSchema::new("crash", 1, "data")
    }
    fn run(&self, ctx: &StageCtx) -> Result<serde_json::Value, StageError> {
        log_execution(ctx, &ctx.node);
        panic!("stage exploded");
    }
}

/// `slow NAME ms=…`: sleeps in 10 ms steps (polling cancellation), records its start and end
/// time in `<root>/intervals.log`.
pub struct Slow;
impl Stage for Slow {
    fn schema(&self) -> KindSchema {
        KindSchema::new("slow", 1, "data").param(
            ParamSpec::new(
                "ms",
                ParamType::Int {
                    min: Some(0),
                    max: None,
                },
            )
            .default(Value::Int(200)),
        )
    }
    fn run(&self, ctx: &StageCtx) -> Result<serde_json::Value, StageError> {
        log_execution(ctx, &ctx.node);
        let start = now();
        let ms = ctx.param("ms").as_i64().unwrap_or(200) as u64;
        ctx.progress.set_length(ms / 10);
        for _ in 0..ms / 10 {
            ctx.check_cancel()?;
            std::thread::sleep(Duration::from_millis(10));
            ctx.progress.inc(1);
        }
        let end = now();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(ctx.root_dir.join("intervals.log"))
            .map_err(|e| StageError::Other(e.into()))?;
        writeln!(f, "{} {start} {end}", ctx.node).map_err(|e| StageError::Other(e.into()))?;
        write_out(ctx, "slow")?;
        Ok(serde_json::Value::Null)
    }
}

/// Kinds from stage implementations, run on in-process workers (threads running the same
/// worker loop as `temper-worker`).
pub fn kinds_of(stages: Vec<Box<dyn Stage>>) -> Kinds {
    let workers = recipes::worker::InProcess::new(stages);
    Kinds::new(workers.registry(), std::sync::Arc::new(workers))
}

/// The test kinds.
pub fn kinds() -> Kinds {
    kinds_of(vec![
        Box::new(Src),
        Box::new(Join),
        Box::new(Fail),
        Box::new(Crash),
        Box::new(Slow),
    ])
}

/// A temporary project: a directory with a recipe and data files.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        Project {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path().join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write");
        p
    }
    /// Lines of `executions.log` (node ids, in execution order).
    pub fn executions(&self) -> Vec<String> {
        std::fs::read_to_string(self.path().join("executions.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Loads `recipe` (a path) with the test kinds, panicking with the rendered diagnostics.
pub fn load(kinds: &Kinds, recipe: &Path, set: &[&str]) -> runner::plan::Loaded {
    let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    match runner::plan::load(recipe, &kinds.registry, &set) {
        Ok(l) => l,
        Err(e) => panic!("recipe did not load:\n{e:#}"),
    }
}
