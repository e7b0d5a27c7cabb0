//! Node records, runs and lineage: the index's content, and the one-call conveniences on
//! [`Store`] (each opens the index once; use [`Store::with_index`] to batch). Pins and runs
//! are kept in durable files; their conveniences are in `durable.rs`.

use crate::{now_secs, pid_alive, Result, Store};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A node attempt's state as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Done,
    Failed,
    Cancelled,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        })
    }
}

/// What the index knows about one node key (sled tree `nodes`, JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node key (hex blake3 of the key tree's canonical form).
    pub key: String,
    pub kind: String,
    /// Instance id (`aligned[beta=0.1]`).
    pub node: String,
    /// Recipe file stem.
    #[serde(default)]
    pub recipe: String,
    /// Everything the key was computed from, so `why` can diff field by field.
    #[serde(default)]
    pub key_tree: serde_json::Value,
    pub status: Status,
    #[serde(default)]
    pub run_id: Option<u64>,
    /// Unix seconds.
    #[serde(default)]
    pub started_at: Option<f64>,
    #[serde(default)]
    pub finished_at: Option<f64>,
    #[serde(default)]
    pub duration_s: Option<f64>,
    #[serde(default)]
    pub error: Option<String>,
    /// What the stage returned.
    #[serde(default)]
    pub summary: serde_json::Value,
    /// The process that made this attempt (checked for `Running` records).
    #[serde(default)]
    pub pid: Option<u32>,
    /// The host of that process, when it ran under a cluster scheduler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The cluster job that made this attempt (`slurm 1234`); `None` for a local run. Its
    /// `pid` means nothing on other hosts: whether it still runs is the scheduler's to say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_job: Option<String>,
    /// `Done` records: each artifact file's stamp as published, the manifest's included, so
    /// `plan` checks an artifact with `stat`s alone (see `damage.rs`). Empty for records
    /// written before stamps (the manifest is read instead).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<crate::Stamp>,
}

impl NodeRecord {
    /// A `Running` record for an attempt starting now in this process.
    pub fn running(
        key: &str,
        kind: &str,
        node: &str,
        recipe: &str,
        key_tree: serde_json::Value,
        run_id: Option<u64>,
    ) -> NodeRecord {
        NodeRecord {
            key: key.to_string(),
            kind: kind.to_string(),
            node: node.to_string(),
            recipe: recipe.to_string(),
            key_tree,
            status: Status::Running,
            run_id,
            started_at: Some(now_secs()),
            finished_at: None,
            duration_s: None,
            error: None,
            summary: serde_json::Value::Null,
            pid: Some(std::process::id()),
            host: None,
            scheduler_job: None,
            files: Vec::new(),
        }
    }

    /// This record ended now with `status` (sets `finished_at`, `duration_s`, `error`).
    pub fn finished(mut self, status: Status, error: Option<String>) -> NodeRecord {
        let now = now_secs();
        self.status = status;
        self.finished_at = Some(now);
        self.duration_s = self.started_at.map(|s| (now - s).max(0.0));
        self.error = error;
        self
    }

    /// `<recipe>/<instance id>`: the lineage identity of this node.
    pub fn identity(&self) -> String {
        identity(&self.recipe, &self.node)
    }
}

/// The lineage identity `<recipe>/<instance id>`.
pub fn identity(recipe: &str, node: &str) -> String {
    format!("{recipe}/{node}")
}

/// A record's status as the user should see it: a `Running` record whose process is gone is
/// an incomplete attempt, not a running one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EffectiveStatus {
    Running {
        pid: u32,
    },
    Done,
    Failed,
    Cancelled,
    /// `Running` was recorded by a process that is no longer alive.
    Incomplete,
    /// `Running` was recorded by a cluster job (`NodeRecord::scheduler_job`): only the
    /// scheduler can say whether it still runs.
    Scheduled,
}

impl std::fmt::Display for EffectiveStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EffectiveStatus::Running { pid } => write!(f, "running (pid {pid})"),
            EffectiveStatus::Done => f.write_str("done"),
            EffectiveStatus::Failed => f.write_str("failed"),
            EffectiveStatus::Cancelled => f.write_str("cancelled"),
            EffectiveStatus::Incomplete => f.write_str("incomplete (previous attempt died)"),
            EffectiveStatus::Scheduled => f.write_str("running (cluster job)"),
        }
    }
}

/// One `temper run` invocation (`runs/<id>.json`, mirrored in sled tree `runs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Monotonic within a store, from 1.
    pub id: u64,
    pub pid: u32,
    pub command: String,
    pub recipe: String,
    pub started_at: f64,
    #[serde(default)]
    pub finished_at: Option<f64>,
    /// (instance id, key, status) of every node the run touched.
    #[serde(default)]
    pub nodes: Vec<(String, String, Status)>,
    /// `None` while running (or if the process died).
    #[serde(default)]
    pub ok: Option<bool>,
}

impl RunInfo {
    /// Run `id` of this process, started now.
    pub fn started(id: u64, command: &str, recipe: &str) -> RunInfo {
        RunInfo {
            id,
            pid: std::process::id(),
            command: command.to_string(),
            recipe: recipe.to_string(),
            started_at: crate::now_secs(),
            finished_at: None,
            nodes: Vec::new(),
            ok: None,
        }
    }
}

impl Store {
    /// Status of `record` as shown to users (see [`EffectiveStatus`]). A `Running` record is
    /// running only if its pid is alive and (unless it is this process) some process holds the
    /// run lock — so a recycled pid does not keep a dead attempt "running".
    pub fn effective_status(&self, record: &NodeRecord) -> EffectiveStatus {
        match record.status {
            Status::Running if record.scheduler_job.is_some() => EffectiveStatus::Scheduled,
            Status::Running => match record.pid {
                Some(pid)
                    if pid_alive(pid)
                        && (pid == std::process::id() || self.run_lock_holder().is_some()) =>
                {
                    EffectiveStatus::Running { pid }
                }
                _ => EffectiveStatus::Incomplete,
            },
            Status::Done => EffectiveStatus::Done,
            Status::Failed => EffectiveStatus::Failed,
            Status::Cancelled => EffectiveStatus::Cancelled,
        }
    }

    /// The record of `key`, whatever its status.
    pub fn record(&self, key: &str) -> Result<Option<NodeRecord>> {
        self.with_index(|ix| ix.record(key))
    }
    /// The records of many keys in one index open (absent keys are left out).
    pub fn records_many(&self, keys: &[String]) -> Result<HashMap<String, NodeRecord>> {
        self.with_index(|ix| {
            let mut out = HashMap::new();
            for k in keys {
                if let Some(r) = ix.record(k)? {
                    out.insert(k.clone(), r);
                }
            }
            Ok(out)
        })
    }
    /// Inserts or replaces a record (e.g. `Running` at start, `Failed` on error).
    pub fn put_record(&self, record: &NodeRecord) -> Result<()> {
        self.with_index(|ix| ix.put_record(record))
    }
    /// Every record with status `Done`, sorted by node then key.
    pub fn list_done(&self) -> Result<Vec<NodeRecord>> {
        let mut v: Vec<_> = self
            .with_index(|ix| ix.all_records())?
            .into_iter()
            .filter(|r| r.status == Status::Done)
            .collect();
        v.sort_by(|a, b| (&a.node, &a.key).cmp(&(&b.node, &b.key)));
        Ok(v)
    }
    /// Every record.
    pub fn all_records(&self) -> Result<Vec<NodeRecord>> {
        self.with_index(|ix| ix.all_records())
    }

    /// The records of run `run_id`, without their key trees, summaries and file stamps (what a
    /// listing of the run reads: `temper status`), decoded without building those values.
    pub fn run_records(&self, run_id: u64) -> Result<Vec<NodeRecord>> {
        self.with_index(|ix| ix.run_records(run_id))
    }

    /// The key last built (or attempted) for `identity` (`<recipe>/<instance id>`).
    pub fn last_key(&self, identity: &str) -> Result<Option<String>> {
        self.with_index(|ix| ix.last_key(identity))
    }
    /// Sets the last key of `identity`.
    pub fn set_last_key(&self, identity: &str, key: &str) -> Result<()> {
        self.with_index(|ix| ix.set_last_key(identity, key))
    }
}

/// The fields of a [`NodeRecord`] a run listing reads; the others (key tree, summary, stamps)
/// are skipped by the decoder without being built.
#[derive(Deserialize)]
pub(crate) struct RecordHead {
    key: String,
    #[serde(default)]
    kind: String,
    node: String,
    #[serde(default)]
    recipe: String,
    status: Status,
    #[serde(default)]
    run_id: Option<u64>,
    #[serde(default)]
    started_at: Option<f64>,
    #[serde(default)]
    finished_at: Option<f64>,
    #[serde(default)]
    duration_s: Option<f64>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    scheduler_job: Option<String>,
}

impl RecordHead {
    pub(crate) fn run_id(&self) -> Option<u64> {
        self.run_id
    }

    /// The record with an empty key tree, summary and stamps.
    pub(crate) fn into_record(self) -> NodeRecord {
        NodeRecord {
            key: self.key,
            kind: self.kind,
            node: self.node,
            recipe: self.recipe,
            key_tree: serde_json::Value::Null,
            status: self.status,
            run_id: self.run_id,
            started_at: self.started_at,
            finished_at: self.finished_at,
            duration_s: self.duration_s,
            error: self.error,
            summary: serde_json::Value::Null,
            pid: self.pid,
            host: self.host,
            scheduler_job: self.scheduler_job,
            files: Vec::new(),
        }
    }
}
