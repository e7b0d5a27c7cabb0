//! What a run reports: the options it takes, the control a Ctrl-C handler shares with it, and
//! the outcome of every requested instance.

use kinds::job::WorkerControl;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Options of `temper run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Declared node names or instance ids; empty = everything.
    pub only: Vec<String>,
    pub keep_going: bool,
    /// Maximum number of nodes running at once (at least 1).
    pub jobs: usize,
    /// Wait for another run's lock instead of failing at once.
    pub wait: bool,
    /// The command line, recorded with the run lock and the run.
    pub command: String,
    /// Re-hash every built artifact a node reads before the pass starts (`--verify-inputs`).
    pub verify_inputs: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            only: Vec::new(),
            keep_going: false,
            jobs: 1,
            wait: true,
            command: "temper run".into(),
            verify_inputs: false,
        }
    }
}

/// Shared between the executor and a Ctrl-C handler: the workers running a node, by instance id.
#[derive(Default)]
pub struct Control {
    interrupts: AtomicUsize,
    workers: Mutex<HashMap<String, Arc<dyn WorkerControl>>>,
}

impl Control {
    pub fn new() -> Arc<Control> {
        Arc::new(Control::default())
    }
    /// Registers one interrupt: asks every running worker to checkpoint and stop (SIGTERM) and
    /// stops new nodes from starting. Returns how many interrupts there have been (the caller
    /// calls [`Control::kill_all`] and exits at the second).
    pub fn interrupt(&self) -> usize {
        let n = self.interrupts.fetch_add(1, Ordering::SeqCst) + 1;
        for w in self.lock().values() {
            w.cancel();
        }
        n
    }
    /// Ends every running worker at once (SIGKILL): the second Ctrl-C.
    pub fn kill_all(&self) {
        for w in self.lock().values() {
            w.kill();
        }
    }
    pub fn interrupted(&self) -> bool {
        self.interrupts.load(Ordering::SeqCst) > 0
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<dyn WorkerControl>>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Node `id` runs on `w` (cancelled at once when the run was already interrupted).
    pub(crate) fn register(&self, id: &str, w: Arc<dyn WorkerControl>) {
        if self.interrupted() {
            w.cancel();
        }
        self.lock().insert(id.to_string(), w);
    }
    pub(crate) fn unregister(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// What happened to one requested instance.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Cached,
    Done,
    Failed(String),
    /// Not run because an input failed (or was skipped/cancelled): the message names it.
    Skipped(String),
    Cancelled,
    /// Not started: the run stopped first (failure without --keep-going, or Ctrl-C).
    NotStarted,
    /// Its key is the key of the named instance, which built it in this run: one artifact,
    /// built once, serves both.
    Shared(String),
}

impl Outcome {
    pub fn ok(&self) -> bool {
        matches!(self, Outcome::Cached | Outcome::Done | Outcome::Shared(_))
    }
    pub fn word(&self) -> String {
        match self {
            Outcome::Cached => "cached".into(),
            Outcome::Done => "done".into(),
            Outcome::Failed(e) => format!("FAILED: {e}"),
            Outcome::Skipped(why) => format!("skipped: {why}"),
            Outcome::Cancelled => "cancelled".into(),
            Outcome::NotStarted => "not started".into(),
            Outcome::Shared(with) => format!("same key as {with} (built once)"),
        }
    }
}

/// The result of a run: every requested instance (topological order) with its outcome.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub run_id: u64,
    pub outcomes: Vec<(String, String, Outcome)>,
    pub interrupted: bool,
}

impl RunReport {
    /// Whether everything requested succeeded.
    pub fn success(&self) -> bool {
        !self.interrupted && self.outcomes.iter().all(|(_, _, o)| o.ok())
    }
    pub fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.outcomes.iter().filter(|(_, _, o)| f(o)).count()
    }
    /// Instance ids executed (Done) in this run.
    pub fn executed(&self) -> Vec<&str> {
        self.outcomes
            .iter()
            .filter(|(_, _, o)| *o == Outcome::Done)
            .map(|(id, _, _)| id.as_str())
            .collect()
    }
    pub fn outcome(&self, id: &str) -> Option<&Outcome> {
        self.outcomes
            .iter()
            .find(|(i, _, _)| i == id)
            .map(|(_, _, o)| o)
    }
    /// `N done, M cached, F failed, S skipped` (+ cancelled / not started when present).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} done, {} cached, {} failed, {} skipped",
            self.count(|o| *o == Outcome::Done),
            self.count(|o| *o == Outcome::Cached),
            self.count(|o| matches!(o, Outcome::Failed(_))),
            self.count(|o| matches!(o, Outcome::Skipped(_))),
        );
        let c = self.count(|o| *o == Outcome::Cancelled);
        if c > 0 {
            s += &format!(", {c} cancelled");
        }
        let sh = self.count(|o| matches!(o, Outcome::Shared(_)));
        if sh > 0 {
            s += &format!(", {sh} shared");
        }
        let n = self.count(|o| *o == Outcome::NotStarted);
        if n > 0 {
            s += &format!(", {n} not started");
        }
        s
    }
}
