//! What temper submitted to Slurm, kept in the store so any process (a later `temper run`,
//! `temper status` from another login shell, the job itself) can find it:
//!
//! ```text
//! slurm/jobs/<key>.json     one Submission per node key: its job id, dependencies, log, key tree
//! slurm/runs/<run id>.json  the nodes one `temper run --executor slurm` submitted or re-used
//! slurm/logs/               the jobs' own stdout/stderr (`<node>-<job id>.out`, appended on requeue)
//! slurm/scripts/<key>.sh    the batch script as submitted
//! ```
//!
//! A submission file is written before `sbatch` (without a job id: the intent) and again with
//! the id, each time atomically (tmp, fsync, rename), so a job that starts at once always finds
//! it, and a job whose id was never written is found by its name (`adopt`). Records
//! of the attempts themselves (running, done, failed) stay in the index like local ones; the
//! ledger only says which job is (or was) building a key.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One node submitted as one Slurm job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    pub key: String,
    /// Instance id.
    pub node: String,
    pub kind: String,
    /// Recipe stem.
    pub recipe: String,
    pub identity: String,
    /// The node's key tree (for the attempt's record, which `why` reads).
    pub key_tree: serde_json::Value,
    /// The `temper run` that submitted it.
    pub run_id: u64,
    /// `None` between writing this file and `sbatch` answering.
    pub job_id: Option<String>,
    /// The job's name (`temper:<recipe>:<instance id>:<key prefix>`, `adopt::job_name`): a job
    /// Slurm lists under this id but another name is not this one (ids are reused after a
    /// controller reset), and a job under this name is this key's even when its id was never
    /// written here.
    #[serde(default)]
    pub job_name: String,
    /// Job ids it waits for (`afterok`).
    #[serde(default)]
    pub after: Vec<String>,
    /// The instance ids of its inputs that were submitted with it.
    #[serde(default)]
    pub after_nodes: Vec<String>,
    /// The job's stdout/stderr (known once the job id is).
    pub log: Option<PathBuf>,
    pub submitted_at: f64,
    /// The warning signal the job was submitted with (`USR2`).
    pub signal: String,
    /// Seconds before the time limit that signal comes.
    pub signal_lead: u64,
    /// Requeues after a time-out allowed before the node fails.
    pub max_timeouts: u32,
    /// Time-outs so far (the job counts them when it checkpoints and requeues itself).
    #[serde(default)]
    pub timeouts: u32,
    /// Requeues the job asked for after a checkpoint (the follower lets those start at once).
    #[serde(default)]
    pub requeues: u32,
    /// What temper itself concluded about the job when Slurm had nothing more to say
    /// (`cancelled: input X failed`, `cancelled by temper cancel`).
    #[serde(default)]
    pub ended: Option<String>,
}

impl Submission {
    /// Whether the `squeue` line `q` is this submission's job.
    pub fn is_job(&self, q: &super::cli::QueueState) -> bool {
        self.job_name.is_empty() || q.name.is_empty() || q.name == self.job_name
    }
    /// This submission's job in the `squeue` answer `queue`.
    pub fn in_queue<'q>(
        &self,
        queue: &'q std::collections::HashMap<String, super::cli::QueueState>,
    ) -> Option<&'q super::cli::QueueState> {
        self.job_id
            .as_ref()
            .and_then(|j| queue.get(j))
            .filter(|q| self.is_job(q))
    }
}

/// The nodes one submitting run sent (or found already queued), in plan order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunFile {
    pub run_id: u64,
    pub recipe: String,
    pub submitted_at: f64,
    /// (instance id, key).
    pub nodes: Vec<(String, String)>,
    /// `false` while the run submits (it is written first with the nodes it means to submit):
    /// a run file left so belongs to a front that stopped before it finished.
    #[serde(default = "finished")]
    pub complete: bool,
}

fn finished() -> bool {
    true
}

/// The ledger of one store.
#[derive(Clone, Debug)]
pub struct Ledger {
    root: PathBuf,
}

impl Ledger {
    pub fn new(store: &store::Store) -> Ledger {
        Ledger {
            root: store.root().join("slurm"),
        }
    }
    pub fn jobs_dir(&self) -> PathBuf {
        self.root.join("jobs")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn script_path(&self, key: &str) -> PathBuf {
        self.root.join("scripts").join(format!("{key}.sh"))
    }
    /// The Slurm log of job `job` (`%j`: the pattern sbatch fills in) of instance `node`.
    pub fn job_log(&self, node: &str, job: &str) -> PathBuf {
        self.logs_dir()
            .join(format!("{}-{job}.out", file_safe(node)))
    }
    fn job_path(&self, key: &str) -> PathBuf {
        self.jobs_dir().join(format!("{key}.json"))
    }
    fn run_path(&self, run_id: u64) -> PathBuf {
        self.root.join("runs").join(format!("{run_id}.json"))
    }

    /// The submission of `key`, if temper ever submitted it.
    pub fn get(&self, key: &str) -> Result<Option<Submission>> {
        read_json(&self.job_path(key))
    }
    /// Writes (replaces) a submission.
    pub fn put(&self, s: &Submission) -> Result<()> {
        write_json(&self.job_path(&s.key), s)
    }
    /// Changes the submission of `key` with `f` (nothing when there is none).
    pub fn update(&self, key: &str, f: impl FnOnce(&mut Submission)) -> Result<Option<Submission>> {
        let Some(mut s) = self.get(key)? else {
            return Ok(None);
        };
        f(&mut s);
        self.put(&s)?;
        Ok(Some(s))
    }
    /// The keys with a submission file (no file is read).
    pub fn keys(&self) -> Result<std::collections::HashSet<String>> {
        let dir = self.jobs_dir();
        let mut out = std::collections::HashSet::new();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(k) = name.strip_suffix(".json") {
                if !k.starts_with('.') {
                    out.insert(k.to_string());
                }
            }
        }
        Ok(out)
    }
    /// Every submission.
    pub fn all(&self) -> Result<Vec<Submission>> {
        let mut v = Vec::new();
        for k in self.keys()? {
            if let Some(s) = self.get(&k)? {
                v.push(s);
            }
        }
        Ok(v)
    }

    pub fn put_run(&self, r: &RunFile) -> Result<()> {
        write_json(&self.run_path(r.run_id), r)
    }
    /// Removes the run file of `run_id` (a run that ended having sent nothing).
    pub fn remove_run(&self, run_id: u64) -> Result<()> {
        let path = self.run_path(run_id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        }
    }
    /// The newest submitting run (highest id).
    pub fn last_run(&self) -> Result<Option<RunFile>> {
        let dir = self.root.join("runs");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(None);
        };
        let newest = rd
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_suffix(".json")?
                    .parse::<u64>()
                    .ok()
            })
            .max();
        match newest {
            Some(id) => read_json(&self.run_path(id)),
            None => Ok(None),
        }
    }
}

/// A file-name-safe form of an instance id (for the job's log).
fn file_safe(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.=,".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(v)?;
    store::write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
}
