//! Test helpers: a `StageCtx` built the way the runner builds one (defaults filled from the
//! kind's schema), temporary directories, and data-file writers.

use dsl::Value;
use recipes::{Stage, StageCtx, StageError};
use std::path::{Path, PathBuf};

/// A project directory plus output directories for the stages run in it.
pub struct Env {
    pub root: tempfile::TempDir,
    outs: std::cell::RefCell<Vec<tempfile::TempDir>>,
}

impl Env {
    pub fn new() -> Env {
        Env {
            root: tempfile::tempdir().unwrap(),
            outs: Default::default(),
        }
    }
    pub fn root(&self) -> &Path {
        self.root.path()
    }
    /// Writes `text` to `rel` under the project, creating directories.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.root().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Builds the context for `stage` with `params` (the rest defaulted from the schema) and
    /// `inputs` (parameter path → artifact directory of a node named after the path).
    pub fn ctx(
        &self,
        stage: &dyn Stage,
        params: &[(&str, Value)],
        inputs: &[(&str, &Path)],
    ) -> StageCtx {
        let out = tempfile::tempdir().unwrap();
        let inputs: Vec<(&str, &str, &Path)> = inputs.iter().map(|(k, d)| (*k, *k, *d)).collect();
        let ctx = crate::common::stage_ctx(stage, "test", params, &inputs, self.root(), out.path());
        self.outs.borrow_mut().push(out);
        ctx
    }

    /// Runs `stage`; returns (summary, out_dir).
    pub fn run(
        &self,
        stage: &dyn Stage,
        params: &[(&str, Value)],
        inputs: &[(&str, &Path)],
    ) -> Result<(serde_json::Value, PathBuf), StageError> {
        let ctx = self.ctx(stage, params, inputs);
        stage.run(&ctx).map(|s| (s, ctx.out_dir.clone()))
    }

    /// Runs `stage` expecting a user error; returns "message\nhint".
    pub fn user_err(
        &self,
        stage: &dyn Stage,
        params: &[(&str, Value)],
        inputs: &[(&str, &Path)],
    ) -> (String, String) {
        match self.run(stage, params, inputs) {
            Err(StageError::User { message, hint }) => (message, hint.unwrap_or_default()),
            Err(e) => panic!("expected a user error, got {e:?}"),
            Ok((s, _)) => panic!("expected a user error, got success: {s}"),
        }
    }
}

pub use crate::common::{b, i, p, r, s};

pub fn fields(pairs: &[(&str, &str)]) -> Value {
    Value::Record(pairs.iter().map(|(k, v)| (k.to_string(), s(v))).collect())
}

/// Loads `text` as a recipe with temper's registry; returns the diagnostics' messages (empty when valid).
pub fn check_messages(root: &Path, text: &str) -> Vec<String> {
    match dsl::load_str("recipe.kdl", text, root, &kinds::registry(), &[]) {
        Ok(_) => Vec::new(),
        Err(d) => d.messages(),
    }
}
