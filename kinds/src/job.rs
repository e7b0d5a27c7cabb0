//! The contract between the front (`temper run`, which plans and schedules) and a worker (the
//! `temper-worker` process that runs one node's stage at a time and publishes its result).
//!
//! - A [`Job`] is everything a worker needs to run one instance against the store, as one JSON
//!   object: the front writes it on the worker's stdin (one job per line; an idle worker takes
//!   the next) and into the node's work dir (`job.json`, for `temper worker JOB`).
//! - An [`Event`] is what the worker says back, one JSON object per line on its stdout: log
//!   lines (its tracing events, already filtered by [`Job::log_filter`]), progress, and exactly
//!   one [`End`] per job. A worker that closes its stdout without an `End` has died.
//! - A [`Launcher`] starts workers: the real one spawns processes, the runner's tests run the
//!   same worker loop on a thread with their own kinds. The front talks to either through a
//!   [`WorkerConn`].
//!
//! On success the worker itself publishes into the store (`Store::complete`); the front records
//! failures and cancellations.

use dsl::Value;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;

/// The tracing target of the trainer's per-step lines (the terminal hides them behind the
/// progress bar; node logs keep them).
pub const STEP_TARGET: &str = "recipes::steps";

/// The tracing target the front re-emits a worker's other log lines under (one of temper's
/// own targets, so the node-log and terminal filters treat them as temper's events).
pub const WORKER_TARGET: &str = "recipes::worker";

/// The tracing target of a worker's lines for the node's log only, never the terminal (which
/// process ran the node, with how many threads: useful afterwards, noise while it runs).
pub const NODE_LOG_TARGET: &str = "recipes::worker::node_log";

/// Set (to anything) in a worker's environment: a repeated SIGTERM/SIGINT does not end the
/// worker at once, it only asks again for a checkpoint and stop (under a cluster scheduler).
pub const SIGNALS_ONCE_ENV: &str = "TEMPER_WORKER_SIGNALS_ONCE";

/// File name of the job in a node's work dir.
pub const JOB_FILE: &str = "job.json";

/// One instance to run, with everything resolved by the front.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The store's root directory.
    pub store: PathBuf,
    /// Instance id (`aligned[beta=0.1]`).
    pub node: String,
    pub kind: String,
    /// The node key (hex blake3).
    pub key: String,
    /// `<recipe stem>/<instance id>`: the name `set_last_key` records the key under.
    pub identity: String,
    /// The run this attempt belongs to.
    pub run_id: u64,
    /// Parameters, defaults filled; paths relative to `root_dir`.
    pub params: BTreeMap<String, Value>,
    /// Directory of the root recipe file.
    pub root_dir: PathBuf,
    /// Inputs by parameter path (`model`, `data`, `sources[1].name`).
    pub inputs: BTreeMap<String, InputArtifact>,
    /// Empty staging directory the artifact is written into.
    pub out_dir: PathBuf,
    /// Persistent per-key directory (checkpoints, `metrics.jsonl`).
    pub work_dir: PathBuf,
    /// Resolved device: `cpu` or `cuda:N`.
    pub device: String,
    /// libtorch CPU threads for this job; 0 leaves libtorch's default.
    pub threads: i64,
    /// `EnvFilter` directives for the worker's log events (the node-log filter of the front).
    pub log_filter: String,
}

impl Job {
    /// The job as one line of JSON (no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a job always encodes")
    }
}

/// An input artifact: the published output of a referenced node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputArtifact {
    /// Instance id of the producing node (`chat`, `aligned[beta=0.1]`).
    pub node: String,
    pub kind: String,
    /// Artifact type (`dataset`, `tokenizer`, `model`, …).
    pub produces: String,
    pub key: String,
    /// The artifact directory (read-only).
    pub dir: PathBuf,
}

/// What a worker reports, one JSON object per line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A tracing event of the stage (level `ERROR`…`TRACE`; the message with its fields).
    Log {
        level: String,
        target: String,
        message: String,
    },
    /// Progress of the running job.
    Progress(Progress),
    /// The job ended; nothing more comes for it.
    End(End),
}

/// A progress update (drives the node's bar).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Progress {
    SetLength(u64),
    SetPosition(u64),
    Inc(u64),
    SetMessage(String),
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "end", rename_all = "snake_case")]
pub enum End {
    /// Ran and published; `summary` is the stage's summary.
    Done { summary: serde_json::Value },
    /// Asked to stop (SIGTERM/SIGINT): checkpointed where the stage supports it; not published.
    Cancelled,
    /// A mistake in the recipe or its inputs.
    UserError {
        message: String,
        hint: Option<String>,
    },
    /// Anything else (including a panic, or a failed publish).
    Error { message: String },
}

impl Event {
    /// The event as one line of JSON (no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("an event always encodes")
    }
    /// Parses one line; `None` for a line that is not an event (stray output).
    pub fn parse(line: &str) -> Option<Event> {
        serde_json::from_str(line.trim_end()).ok()
    }
}

/// Starts workers. A worker serves jobs one at a time, read line by line from its job stream,
/// until that stream closes.
pub trait Launcher: Send + Sync {
    /// Starts one worker.
    fn start(&self) -> std::io::Result<WorkerConn>;
}

/// The front's end of a started worker.
pub struct WorkerConn {
    /// Where jobs are written, one [`Job::to_line`] plus `\n` each. Dropping it tells the
    /// worker to exit once idle.
    pub jobs: Box<dyn Write + Send>,
    /// Where the worker's [`Event`] lines come from; EOF when the worker is gone.
    pub events: Box<dyn BufRead + Send>,
    pub control: std::sync::Arc<dyn WorkerControl>,
}

/// Signals to a worker and what became of it.
pub trait WorkerControl: Send + Sync {
    /// A short name for messages (`pid 1234`, `thread 2`).
    fn name(&self) -> String;
    /// Asks the running job to checkpoint and stop (SIGTERM to a process).
    fn cancel(&self);
    /// Ends the worker at once (SIGKILL to a process).
    fn kill(&self);
    /// Waits for the worker to end (after its event stream closed) and says how:
    /// `signal 6 (SIGABRT)`, `exit code 1`.
    fn wait(&self) -> String;
    /// Whether the worker has already ended (an idle worker that died is not reused).
    fn exited(&self) -> bool;
}

/// The text of a tracing event as node logs and worker events carry it: the message, then
/// ` field=value` for each other field.
pub fn log_message(event: &tracing::Event<'_>) -> String {
    let mut m = MessageText(String::new());
    event.record(&mut m);
    m.0
}

struct MessageText(String);

impl tracing::field::Visit for MessageText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            self.0 += &format!(" {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            self.0 += &format!(" {}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_and_events_round_trip_through_one_json_line() {
        let mut params = BTreeMap::new();
        params.insert("lr".into(), Value::Float(2e-3));
        params.insert("steps".into(), Value::Int(12));
        params.insert("data".into(), Value::Ref("corpus".into()));
        params.insert("path".into(), Value::Path("data/x.jsonl".into()));
        let job = Job {
            store: "/s".into(),
            node: "a[beta=0.1]".into(),
            kind: "cpt".into(),
            key: "ab".into(),
            identity: "r/a[beta=0.1]".into(),
            run_id: 3,
            params,
            root_dir: "/r".into(),
            inputs: BTreeMap::from([(
                "data".into(),
                InputArtifact {
                    node: "corpus".into(),
                    kind: "dataset".into(),
                    produces: "dataset".into(),
                    key: "cd".into(),
                    dir: "/s/artifacts/cd".into(),
                },
            )]),
            out_dir: "/s/work/ab/out".into(),
            work_dir: "/s/work/ab".into(),
            device: "cpu".into(),
            threads: 2,
            log_filter: "warn,recipes=info".into(),
        };
        let line = job.to_line();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Job>(&line).unwrap(), job);
        for e in [
            Event::Log {
                level: "INFO".into(),
                target: "recipes::x".into(),
                message: "a\nb".into(),
            },
            Event::Progress(Progress::Inc(2)),
            Event::Progress(Progress::SetMessage("loss 1.0".into())),
            Event::End(End::Done {
                summary: serde_json::json!({"x": 1}),
            }),
            Event::End(End::Cancelled),
            Event::End(End::UserError {
                message: "m".into(),
                hint: None,
            }),
        ] {
            let line = e.to_line();
            assert!(!line.contains('\n'));
            assert_eq!(Event::parse(&line), Some(e));
        }
        assert_eq!(Event::parse("not json"), None);
    }
}
