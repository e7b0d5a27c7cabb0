//! Inside a job: `temper worker --slurm JOB` runs one node in its Slurm allocation, as the
//! local executor runs one node: it records the attempt (`Running`, with the host and the job
//! id), writes the node's log, starts a `temper-worker` and hands it the job; the worker
//! publishes. Then it records how the node ended and exits: 0 done (or already built), 1
//! failed, 143 stopped by Slurm.
//!
//! Signals. The batch script forwards the warning signal and `TERM` here; both ask the worker
//! to checkpoint at its next step boundary and stop (`SIGTERM`, once). After the warning
//! signal, the job requeues itself (`scontrol requeue`): Slurm restarts it (same job id, log
//! appended) and the stage resumes from its checkpoint. A warning that comes with less than
//! `signal-lead` + 60 s left is a time-out; after `max-timeouts` of them the node fails
//! instead of requeueing forever. A `TERM` alone (scancel, preemption, the time limit itself) is
//! recorded as cancelled; when Slurm requeues the job (preemption) it resumes the same way.
//! A failed node cancels the jobs that wait on it (they could never start).

use super::cli;
use super::ledger::{Ledger, Submission};
use crate::exec::{Control, Finished};
use crate::pool::{Assignment, Pool};
use crate::{launch, nodelog, progress};
use anyhow::{Context, Result};
use kinds::job::{End, Job};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// The last signal received (0: none), and whether the warning signal was among them.
static SIGNAL: AtomicI32 = AtomicI32::new(0);
static WARNED: AtomicI32 = AtomicI32::new(0);
static WARNING: AtomicI32 = AtomicI32::new(libc::SIGUSR2);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == WARNING.load(Ordering::SeqCst) {
        WARNED.store(1, Ordering::SeqCst);
    }
    SIGNAL.store(sig, Ordering::SeqCst);
}

fn signal_number(name: &str) -> libc::c_int {
    match name {
        "USR1" => libc::SIGUSR1,
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "TERM" => libc::SIGTERM,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        _ => libc::SIGUSR2,
    }
}

fn install(warning: libc::c_int) {
    WARNING.store(warning, Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, warning] {
        // SAFETY: installs an async-signal-safe handler (it only stores atomics).
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

fn hostname() -> String {
    store::hostname().unwrap_or_else(|| "unknown host".into())
}

/// Runs the job in `path` in this allocation (see the module docs).
pub fn run(path: &Path) -> Result<ExitCode> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the job file {}", path.display()))?;
    let mut job: Job = serde_json::from_str(text.trim())
        .with_context(|| format!("{} is not a temper job file", path.display()))?;
    let store = store::Store::open(&job.store)?;
    let ledger = Ledger::new(&store);
    let sub = ledger.get(&job.key)?;
    let slurm_id = std::env::var("SLURM_JOB_ID").unwrap_or_default();
    let host = hostname();
    install(signal_number(
        sub.as_ref().map(|s| s.signal.as_str()).unwrap_or("USR2"),
    ));
    progress::init(0, false);
    if store.lookup_done(&job.key)?.is_some() {
        tracing::info!("{}: already built ({}); nothing to do", job.node, job.key);
        return Ok(ExitCode::SUCCESS);
    }
    // The device, from what Slurm gave this job (CUDA_VISIBLE_DEVICES): `auto` is its first
    // GPU, or the CPU without one.
    let want = job.device.clone();
    let mut devices = crate::device::Devices::new();
    job.device = match devices.take(&want) {
        Ok(Some((d, _))) => d,
        Ok(None) | Err(_) => {
            let msg = format!(
                "node {}: device `{want}` is not available on {host} (CUDA devices here: {}); \
                 ask Slurm for GPUs with `gpus-per-node` in `executor slurm` or the node's \
                 `resources`",
                job.node,
                crate::device::cuda_devices()
            );
            return Ending::new(&store, &ledger, &job, sub.as_ref(), &slurm_id)
                .finish(Err(msg), false);
        }
    };
    job.out_dir = store.prepare_staging(&job.key)?;
    let mut rec = Ending::new(&store, &ledger, &job, sub.as_ref(), &slurm_id).fresh_record();
    rec.host = Some(host.clone());
    if !slurm_id.is_empty() {
        rec.scheduler_job = Some(format!("slurm {slurm_id}"));
    }
    store.put_record(&rec)?;
    let log = store.log_path(&job.key);
    nodelog::open(&job.node, &log, job.run_id)?;
    let restarts = std::env::var("SLURM_RESTART_COUNT").unwrap_or_else(|_| "0".into());
    let start = format!(
        "start {} (kind {}, key {}, device {}, run {}) on {host}, slurm job {slurm_id}{}",
        job.node,
        job.kind,
        job.key,
        job.device,
        job.run_id,
        if restarts != "0" {
            format!(", restart {restarts}")
        } else {
            String::new()
        }
    );
    nodelog::line(&job.node, "INFO", &start);
    tracing::info!("{start}");

    let launcher = Arc::new(launch::Processes {
        env: vec![(kinds::job::SIGNALS_ONCE_ENV.into(), "1".into())],
    });
    let (tx, rx) = mpsc::channel::<Finished>();
    let control = Control::new();
    let mut pool = Pool::new(launcher, tx);
    let assignment = Assignment {
        pos: 0,
        node: job.node.clone(),
        span: progress::node_span(&job.node),
    };
    // A data-parallel node's ranks are a step on the job's tasks (`srun --mpi=pmix`); they read
    // this allocation's copy of the job (its device resolved here), not `job.json`, which a
    // requeued job resolves again wherever it lands.
    let file = job.work_dir.join("allocation-job.json");
    let started = crate::assemble::hand_over(&mut pool, &job, file, assignment, &control, true);
    if let Err(e) = started {
        let msg = format!("node {}: {e:#}", job.node);
        return Ending::new(&store, &ledger, &job, sub.as_ref(), &slurm_id).finish(Err(msg), false);
    }
    let finished = loop {
        if SIGNAL.load(Ordering::SeqCst) != 0 && !control.interrupted() {
            tracing::warn!(
                "{}: signal {} received: checkpointing and stopping",
                job.node,
                SIGNAL.load(Ordering::SeqCst)
            );
            control.interrupt();
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(f) => break Some(f),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break None,
        }
    };
    control.unregister(&job.node);
    let end = match finished.map(|f| f.end) {
        Some(Ok(end)) => Ok(end),
        Some(Err(how)) => Err(format!(
            "node {}: the worker process died ({how})",
            job.node
        )),
        None => Err(format!("node {}: the worker vanished", job.node)),
    };
    drop(pool);
    let warned = WARNED.load(Ordering::SeqCst) != 0;
    Ending::new(&store, &ledger, &job, sub.as_ref(), &slurm_id).finish(end, warned)
}

/// What recording a job's end needs.
struct Ending<'a> {
    store: &'a store::Store,
    ledger: &'a Ledger,
    job: &'a Job,
    sub: Option<&'a Submission>,
    slurm_id: &'a str,
}

impl<'a> Ending<'a> {
    fn new(
        store: &'a store::Store,
        ledger: &'a Ledger,
        job: &'a Job,
        sub: Option<&'a Submission>,
        slurm_id: &'a str,
    ) -> Self {
        Ending {
            store,
            ledger,
            job,
            sub,
            slurm_id,
        }
    }

    /// A `Running` record of this attempt (recipe and key tree from the submission, when
    /// there is one: `temper worker --slurm` can also run a job file by hand).
    fn fresh_record(&self) -> store::NodeRecord {
        let job = self.job;
        let recipe = match self.sub {
            Some(s) => s.recipe.clone(),
            None => job.identity.split('/').next().unwrap_or("").to_string(),
        };
        store::NodeRecord::running(
            &job.key,
            &job.kind,
            &job.node,
            &recipe,
            self.sub.map(|s| s.key_tree.clone()).unwrap_or_default(),
            Some(job.run_id),
        )
    }

    /// Records how the node ended, requeues or cancels dependents, and picks the exit code.
    fn finish(&self, end: std::result::Result<End, String>, warned: bool) -> Result<ExitCode> {
        let (store, ledger, job, sub, slurm_id) =
            (self.store, self.ledger, self.job, self.sub, self.slurm_id);
        let log_hint = sub
            .and_then(|s| s.log.as_ref())
            .map(|l| format!("\n  slurm log: {}", l.display()))
            .unwrap_or_default();
        let base = || -> Result<store::NodeRecord> {
            Ok(store
                .record(&job.key)?
                .unwrap_or_else(|| self.fresh_record()))
        };
        let fail = |msg: String| -> Result<ExitCode> {
            let msg = msg + &log_hint;
            nodelog::line(&job.node, "ERROR", &msg);
            nodelog::close(&job.node);
            tracing::error!("{msg}");
            store.put_record(&base()?.finished(store::Status::Failed, Some(msg)))?;
            cancel_dependents(ledger, slurm_id, &job.node);
            Ok(ExitCode::from(1))
        };
        match end {
            Ok(End::Done { .. }) => {
                nodelog::line(&job.node, "INFO", "done");
                nodelog::close(&job.node);
                tracing::info!("{}: done ({})", job.node, &job.key[..12.min(job.key.len())]);
                Ok(ExitCode::SUCCESS)
            }
            Ok(End::Cancelled) if warned && !slurm_id.is_empty() => {
                let (lead, max) = sub
                    .map(|s| (s.signal_lead, s.max_timeouts))
                    .unwrap_or((300, 3));
                let timeout = cli::time_left(slurm_id).is_some_and(|left| left <= lead + 60);
                let after = sub.map(|s| s.timeouts).unwrap_or(0) + u32::from(timeout);
                if timeout && after > max {
                    return fail(format!(
                        "node {}: reached its time limit {after} times (checkpointed each time); \
                     raise `time` in `executor slurm` or the node's `resources`, or \
                     `max-timeouts`",
                        job.node
                    ));
                }
                ledger.update(&job.key, |s| {
                    s.timeouts = after;
                    s.requeues += 1;
                })?;
                let why = if timeout {
                    "the time limit is near"
                } else {
                    "preemption or a request"
                };
                let msg = format!(
                    "checkpointed on the warning signal ({why}); requeued as slurm job {slurm_id}"
                );
                nodelog::line(&job.node, "WARN", &msg);
                nodelog::close(&job.node);
                tracing::warn!("{}: {msg}", job.node);
                store.put_record(&base()?.finished(store::Status::Cancelled, Some(msg)))?;
                if let Err(e) = cli::requeue(slurm_id) {
                    return fail(format!(
                        "node {}: checkpointed, but the job could not requeue itself: {e:#}; \
                     `temper run --executor slurm` resubmits it and it resumes",
                        job.node
                    ));
                }
                Ok(ExitCode::SUCCESS)
            }
            Ok(End::Cancelled) => {
                let msg = "stopped by Slurm (SIGTERM: scancel, preemption or the time limit); its \
                       checkpoint is kept"
                    .to_string();
                nodelog::line(&job.node, "WARN", &msg);
                nodelog::close(&job.node);
                tracing::warn!("{}: {msg}", job.node);
                store.put_record(&base()?.finished(store::Status::Cancelled, Some(msg)))?;
                Ok(ExitCode::from(143))
            }
            Ok(End::UserError { message, hint }) => {
                let mut msg = crate::exec::node_prefixed(&job.node, &message);
                if let Some(h) = hint {
                    msg += &format!("\n  hint: {h}");
                }
                fail(msg)
            }
            Ok(End::Error { message }) => fail(crate::exec::node_prefixed(&job.node, &message)),
            Err(message) => {
                if store.lookup_done(&job.key)?.is_some() {
                    nodelog::close(&job.node);
                    return Ok(ExitCode::SUCCESS); // it published before it died
                }
                fail(message)
            }
        }
    }
}

/// Cancels every submitted job that (transitively) waits on job `id`: none of them can start.
fn cancel_dependents(ledger: &Ledger, id: &str, node: &str) {
    if id.is_empty() {
        return;
    }
    let Ok(all) = ledger.all() else { return };
    let mut dead: Vec<String> = vec![id.to_string()];
    let mut doomed: Vec<&Submission> = Vec::new();
    loop {
        let more: Vec<&Submission> = all
            .iter()
            .filter(|s| {
                s.job_id.is_some()
                    && !doomed.iter().any(|d| d.key == s.key)
                    && s.after.iter().any(|a| dead.contains(a))
            })
            .collect();
        if more.is_empty() {
            break;
        }
        for s in more {
            dead.push(s.job_id.clone().unwrap_or_default());
            doomed.push(s);
        }
    }
    if doomed.is_empty() {
        return;
    }
    let ids: Vec<String> = doomed.iter().filter_map(|s| s.job_id.clone()).collect();
    // Only jobs still waiting: a job of an earlier submission that merely shares an old id
    // must not be touched.
    let live = cli::squeue(&ids).unwrap_or_default();
    let pending: Vec<String> = doomed
        .iter()
        .filter(|s| s.in_queue(&live).is_some_and(|q| q.state == "PENDING"))
        .filter_map(|s| s.job_id.clone())
        .collect();
    if pending.is_empty() {
        return;
    }
    match cli::scancel(&pending, &[]) {
        Ok(()) => {
            for s in doomed {
                if s.job_id.as_ref().is_some_and(|j| pending.contains(j)) {
                    let _ = ledger.update(&s.key, |s| {
                        s.ended = Some(format!("its input {node} failed"))
                    });
                }
            }
            tracing::warn!(
                "{node} failed: cancelled {} waiting job(s): {}",
                pending.len(),
                pending.join(", ")
            );
        }
        Err(e) => tracing::warn!("cancelling the jobs waiting on {node}: {e:#}"),
    }
}
