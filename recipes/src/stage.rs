//! The stage interface: what the runner hands every node kind, and what a kind gives back.
//!
//! Invariants the runner relies on:
//! - a stage writes its result only into `StageCtx::out_dir` (an empty directory its worker
//!   publishes atomically after `run` returns `Ok`); it never writes into the store elsewhere;
//! - long stages checkpoint into `StageCtx::work_dir` through [`Checkpoints`], which is named by
//!   the node key and survives crashes, so a rerun resumes from the latest *complete* checkpoint;
//! - a stage polls [`CancelToken::is_cancelled`] between steps; when set it checkpoints and
//!   returns [`StageError::Cancelled`].

use dsl::{KindSchema, Value};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A node kind's implementation.
pub trait Stage: Send + Sync {
    /// The kind's declaration (name, version, parameters). The DSL validates recipes against it.
    fn schema(&self) -> KindSchema;

    /// Runs the node. Errors are reported with the node's name by the runner.
    fn run(&self, ctx: &StageCtx) -> Result<serde_json::Value, StageError>;
}

/// A node kind whose `run` starts from its typed parameters (`kinds::<kind>::Params`, decoded
/// from the validated values with the defaults its schema declares). Every built-in kind is
/// one; [`Stage`] is implemented for it.
pub trait Kind: Send + Sync {
    /// The kind's typed parameters, declared with `kinds::params!`.
    type Params: kinds::ParamSet;
    /// The kind's declaration (`kinds::<kind>::schema()`).
    fn schema(&self) -> KindSchema;
    /// Runs the node: parse (done: `p`) → prepare → execute → write into `ctx.out_dir`.
    fn run(&self, ctx: &StageCtx, p: Self::Params) -> Result<serde_json::Value, StageError>;
}

impl<K: Kind> Stage for K {
    fn schema(&self) -> KindSchema {
        Kind::schema(self)
    }
    fn run(&self, ctx: &StageCtx) -> Result<serde_json::Value, StageError> {
        let p = <K::Params as kinds::ParamSet>::decode(&ctx.params).map_err(|e| {
            StageError::Other(anyhow::anyhow!(
                "node {}: {e} (the kind's declaration and its implementation disagree)",
                ctx.node
            ))
        })?;
        Kind::run(self, ctx, p)
    }
}

/// Why a stage did not finish.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Asked to stop (Ctrl-C); a checkpoint was written where the stage supports one.
    #[error("cancelled")]
    Cancelled,
    /// A mistake in the recipe or its inputs (bad record, missing file…): message and hint.
    #[error("{message}")]
    User {
        message: String,
        hint: Option<String>,
    },
    /// Anything else, with context.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<tch::TchError> for StageError {
    fn from(e: tch::TchError) -> Self {
        StageError::Other(e.into())
    }
}

impl StageError {
    pub fn user(message: impl Into<String>, hint: impl Into<Option<String>>) -> Self {
        StageError::User {
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// An input artifact: the published output of a referenced node (part of the job contract).
pub use kinds::job::{InputArtifact, Job};
pub use store::Checkpoints;

/// Everything a stage gets: its [`Job`] (node, kind, key, params, root dir, inputs, out and work
/// dirs, device — read through `Deref`, `ctx.node`) and the worker's handles.
pub struct StageCtx {
    pub job: Job,
    pub progress: Arc<dyn Progress>,
    /// `work_dir/metrics.jsonl`, copied into the artifact on publish.
    pub metrics: MetricsSink,
    pub cancel: CancelToken,
    /// The ranks of a data-parallel node (`ranks R`); [`crate::dist::Solo`] otherwise. Rank 0
    /// alone writes checkpoints, metrics and the artifact.
    pub collective: Arc<dyn crate::dist::Collective>,
}

impl std::ops::Deref for StageCtx {
    type Target = Job;
    fn deref(&self) -> &Job {
        &self.job
    }
}

impl StageCtx {
    /// The context of `job` with the worker's progress reporter and cancel token.
    pub fn new(job: Job, progress: Arc<dyn Progress>, cancel: CancelToken) -> StageCtx {
        StageCtx {
            metrics: MetricsSink::new(job.work_dir.join("metrics.jsonl")),
            job,
            progress,
            cancel,
            collective: Arc::new(crate::dist::Solo),
        }
    }

    /// Whether this process writes the node's outputs (rank 0, or the only rank).
    pub fn lead(&self) -> bool {
        self.collective.rank() == 0
    }

    /// Resolves a path parameter against the recipe directory.
    pub fn resolve_path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root_dir.join(p)
        }
    }
    pub fn param(&self, name: &str) -> &Value {
        self.params.get(name).unwrap_or(&Value::Null)
    }
    pub fn input(&self, param_path: &str) -> Result<&InputArtifact, StageError> {
        self.inputs.get(param_path).ok_or_else(|| {
            StageError::Other(anyhow::anyhow!(
                "node {}: input `{param_path}` was not provided by the runner",
                self.node
            ))
        })
    }
    pub fn checkpoints(&self) -> Checkpoints {
        Checkpoints::new(self.work_dir.join("checkpoints"))
    }
    pub fn check_cancel(&self) -> Result<(), StageError> {
        if self.cancel.is_cancelled() {
            Err(StageError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// Progress of a running node (a bar in the terminal).
pub trait Progress: Send + Sync {
    fn set_length(&self, total: u64);
    fn set_position(&self, pos: u64);
    fn inc(&self, delta: u64);
    fn set_message(&self, msg: &str);
}

/// A progress reporter that reports nowhere (tests, `--quiet`).
pub struct NoProgress;
impl Progress for NoProgress {
    fn set_length(&self, _: u64) {}
    fn set_position(&self, _: u64) {}
    fn inc(&self, _: u64) {}
    fn set_message(&self, _: &str) {}
}

/// Cooperative cancellation shared by the runner and its stages.
#[derive(Clone, Default, Debug)]
pub struct CancelToken(Arc<AtomicBool>);
impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Appends one JSON object per line to `metrics.jsonl` in the work directory; the runner copies
/// it into the artifact on publish.
#[derive(Clone)]
pub struct MetricsSink {
    path: PathBuf,
    file: Arc<Mutex<Option<fs::File>>>,
}

impl MetricsSink {
    pub fn new(path: PathBuf) -> Self {
        MetricsSink {
            path,
            file: Arc::new(Mutex::new(None)),
        }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Writes one record (a JSON object) and flushes it.
    pub fn log(&self, record: &serde_json::Value) -> std::io::Result<()> {
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            if let Some(parent) = self.path.parent() {
                fs::create_dir_all(parent)?;
            }
            *guard = Some(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        let f = guard.as_mut().expect("opened above");
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        f.write_all(line.as_bytes())?;
        f.flush()
    }
}
