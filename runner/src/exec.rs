//! The executor: runs the uncached instances of a plan in dependency order, independent ones in
//! parallel (up to `jobs`), each in a worker ([`kinds::job`]): a `temper-worker` process by
//! default, started through the [`Kinds`]' launcher.
//!
//! Per instance the front writes a `Running` record (pid, run id), opens the log file
//! `store.log_path(key)`, empties the staging dir `work_dir/out`, resolves a device and hands a
//! [`Job`] to an idle worker (starting one while fewer than `jobs` run; a worker serves jobs one
//! at a time, so a DAG of many small nodes pays the libtorch start-up once per worker, not once
//! per node). A reader thread per worker re-emits the worker's log events inside the node's span
//! (so [`nodelog`] keeps writing node logs and the terminal shows them) and drives its bar; the
//! worker's end event, or its death, finishes the node. On success the worker has published
//! (`Store::complete`); the front records failures (dependents are skipped; without
//! `keep_going` no node starts after a failure) and cancellations (Ctrl-C: SIGTERM to the
//! running workers, which checkpoint and stop; recorded `Cancelled`, never `Done`).
//! Store bookkeeping of the front happens on the scheduling thread only.

use crate::assemble::{self, job_for, wanted_device};
use crate::device::Devices;
pub use crate::only::select;
use crate::plan::{self, Entry, Loaded, Plan, State};
use crate::pool::{Assignment, Pool};
pub use crate::report::{Control, Outcome, RunOptions, RunReport};
use crate::Kinds;
use crate::{nodelog, progress};
use anyhow::{Context, Result};
use kinds::job::End;
use std::collections::{HashMap, HashSet};
use std::sync::{mpsc, Arc};
use std::time::Duration;

enum Start {
    Started,
    /// Done in the front, without a worker (a select node).
    Finished,
    /// No device free yet.
    Wait,
    /// Could not start (recorded as failed).
    Failed,
}

/// A finished job, sent by the reader thread of the worker that ran it.
pub(crate) struct Finished {
    pub(crate) pos: usize,
    pub(crate) worker: usize,
    /// The worker's end event, or how the worker died without one.
    pub(crate) end: std::result::Result<End, String>,
}

/// Loads nothing: runs `loaded` with `kinds` on `store`. Takes the run lock (waiting or failing
/// per `opts.wait`), re-plans under the lock, executes, and returns the report. Nodes waiting for
/// a select's scores are left out of a pass; when a pass leaves some, the recipe is planned
/// again (the scores are built now, so the selects resolve) and the next pass runs them.
pub fn run(
    store: &store::Store,
    kinds: &Kinds,
    loaded: Loaded,
    opts: &RunOptions,
    control: &Arc<Control>,
) -> Result<RunReport> {
    let _lock = store
        .lock_run(opts.wait, &opts.command)
        .context("taking the store's run lock")?;
    let run = store
        .begin_run(&opts.command, &loaded.stem)
        .context("recording the run")?;
    let mut outcomes: Vec<(String, String, Outcome)> = Vec::new();
    let mut result;
    // Nodes the last pass left waiting: (id, provisional key).
    let mut left: Vec<(String, String)> = Vec::new();
    loop {
        let plan = match plan::plan(store, &kinds.registry, loaded.clone()) {
            Ok(p) => p,
            // A select that cannot resolve (a score missing from a built eval): its nodes fail.
            Err(err) if !left.is_empty() => {
                let msg = format!("{err:#}");
                tracing::error!("{msg}");
                for (id, key) in left {
                    merge_outcome(&mut outcomes, &id, &key, Outcome::Failed(msg.clone()));
                }
                result = Ok(());
                break;
            }
            Err(err) => {
                store.finish_run(run.id, Vec::new(), false).ok();
                return Err(err);
            }
        };
        // Damaged artifacts this pass rebuilds are moved aside first (and, with
        // `--verify-inputs`, what it reads is re-hashed).
        let plan = crate::damage::before_pass(
            store,
            &kinds.registry,
            plan,
            &opts.only,
            opts.verify_inputs,
        )
        .inspect_err(|_| {
            store.finish_run(run.id, Vec::new(), false).ok();
        })?;
        let selected = select(&plan, &opts.only)?;
        let mut ex = Executor {
            store,
            kinds,
            plan: &plan,
            opts,
            control,
            run_id: run.id,
            outcomes: vec![None; plan.entries.len()],
            devices: Devices::new(),
            device_of: HashMap::new(),
        };
        result = ex.execute(&selected);
        let waiting: Vec<usize> = (0..plan.entries.len())
            .filter(|&i| selected[i] && matches!(plan.entries[i].state, State::Waiting { .. }))
            .collect();
        let progressed = ex
            .outcomes
            .iter()
            .any(|o| matches!(o, Some(Outcome::Done) | Some(Outcome::Shared(_))));
        for (i, e) in plan.entries.iter().enumerate() {
            if !selected[i] || waiting.contains(&i) {
                continue;
            }
            let o = ex.outcomes[i].clone().unwrap_or(Outcome::NotStarted);
            merge_outcome(&mut outcomes, &e.id, &e.key, o);
        }
        let ok = result.is_ok() && outcomes.iter().all(|(_, _, o)| o.ok());
        let stuck =
            |i: &usize| matches!(plan.entries[*i].state, State::Waiting { stuck: true, .. });
        let all_stuck = waiting.iter().all(stuck);
        if all_stuck || !ok || !progressed || control.interrupted() {
            for &i in &waiting {
                let e = &plan.entries[i];
                let o = match &e.state {
                    State::Waiting { why, stuck: true } => Outcome::Failed(why.clone()),
                    State::Waiting { why, .. } => {
                        Outcome::Skipped(format!("{why}, which were not all built"))
                    }
                    _ => Outcome::Skipped("waiting".into()),
                };
                if let Outcome::Failed(m) = &o {
                    tracing::error!("{m}");
                }
                merge_outcome(&mut outcomes, &e.id, &e.key, o);
            }
            break;
        }
        left = waiting
            .iter()
            .map(|&i| (plan.entries[i].id.clone(), plan.entries[i].key.clone()))
            .collect();
        tracing::info!("scores built: planning again to resolve the selects");
    }
    let report = RunReport {
        run_id: run.id,
        outcomes,
        interrupted: control.interrupted(),
    };
    let nodes = report
        .outcomes
        .iter()
        .filter_map(|(id, key, o)| {
            let st = match o {
                Outcome::Done => store::Status::Done,
                Outcome::Failed(_) => store::Status::Failed,
                Outcome::Cancelled => store::Status::Cancelled,
                _ => return None,
            };
            Some((id.clone(), key.clone(), st))
        })
        .collect();
    store
        .finish_run(run.id, nodes, report.success())
        .context("recording the end of the run")?;
    result?;
    Ok(report)
}

/// Adds instance `id`'s outcome of one pass: a later pass replaces an earlier outcome, except
/// that what an earlier pass built stays `done` (the later pass finds it cached).
fn merge_outcome(all: &mut Vec<(String, String, Outcome)>, id: &str, key: &str, o: Outcome) {
    match all.iter_mut().find(|(i, _, _)| i == id) {
        Some(slot) if !(matches!(o, Outcome::Cached) && slot.2.ok()) => {
            *slot = (id.to_string(), key.to_string(), o)
        }
        Some(_) => {}
        None => all.push((id.to_string(), key.to_string(), o)),
    }
}

struct Executor<'a> {
    store: &'a store::Store,
    kinds: &'a Kinds,
    plan: &'a Plan,
    opts: &'a RunOptions,
    control: &'a Arc<Control>,
    run_id: u64,
    outcomes: Vec<Option<Outcome>>,
    devices: Devices,
    device_of: HashMap<usize, Option<usize>>,
}

impl Executor<'_> {
    fn execute(&mut self, selected: &[bool]) -> Result<()> {
        let entries = &self.plan.entries;
        let pos: HashMap<&str, usize> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id.as_str(), i))
            .collect();
        // Cached (or running elsewhere: we hold the run lock, so such a record is stale) first.
        let mut pending: Vec<usize> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if !selected[i] {
                continue;
            }
            if e.state == State::Cached {
                self.outcomes[i] = Some(Outcome::Cached);
            } else if matches!(e.state, State::Waiting { .. }) {
                // Its key is provisional: the next pass, planned after the scores, runs it.
            } else if let State::OnSlurm { what, .. } = &e.state {
                self.outcomes[i] = Some(Outcome::Skipped(format!(
                    "{what}: wait for it (`temper status`) or stop it (`temper cancel`)"
                )));
            } else {
                pending.push(i);
            }
        }
        // Instances with equal keys (same kind, parameters and inputs under two names) are
        // built once: the first to start builds, the others wait for it and share its artifact.
        let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
        for &i in &pending {
            by_key.entry(entries[i].key.as_str()).or_default().push(i);
        }
        let (tx, rx) = mpsc::channel::<Finished>();
        let mut pool = Pool::new(self.kinds.launcher.clone(), tx);
        let mut running: HashSet<usize> = HashSet::new();
        let mut stop = false;
        let jobs = self.opts.jobs.max(1);
        loop {
            if self.control.interrupted() {
                stop = true;
            }
            // Propagate failures to dependents, start what is ready.
            let mut changed = false;
            let mut still = Vec::with_capacity(pending.len());
            for &i in &pending {
                let inputs = &entries[i].inputs;
                let mut blocked = false;
                let mut bad: Option<String> = None;
                for (_, input) in inputs {
                    let j = pos[input.as_str()];
                    match &self.outcomes[j] {
                        Some(Outcome::Cached) | Some(Outcome::Done) | Some(Outcome::Shared(_)) => {}
                        None if entries[j].state == State::Cached => {}
                        Some(Outcome::Failed(_)) => bad = Some(format!("input {input} failed")),
                        Some(Outcome::Skipped(_)) => {
                            bad = Some(format!("input {input} was skipped"))
                        }
                        Some(Outcome::Cancelled) => {
                            bad = Some(format!("input {input} was cancelled"))
                        }
                        Some(Outcome::NotStarted) => {
                            bad = Some(format!("input {input} did not run"))
                        }
                        None => blocked = true,
                    }
                }
                let twin = by_key[entries[i].key.as_str()]
                    .iter()
                    .copied()
                    .find(|&j| j != i && (running.contains(&j) || self.outcomes[j].is_some()));
                if bad.is_none() && !blocked {
                    if let Some(j) = twin {
                        match &self.outcomes[j] {
                            None => blocked = true, // building now: wait for it
                            Some(o) if o.ok() => {
                                self.outcomes[i] = Some(Outcome::Shared(entries[j].id.clone()));
                                changed = true;
                                continue;
                            }
                            Some(o) => {
                                bad = Some(format!(
                                    "same key as {}, which ended {}",
                                    entries[j].id,
                                    o.word()
                                ))
                            }
                        }
                    }
                }
                if let Some(why) = bad {
                    self.outcomes[i] = Some(Outcome::Skipped(why));
                    changed = true;
                } else if blocked || stop || running.len() >= jobs {
                    still.push(i);
                } else {
                    match self.start(i, &mut pool)? {
                        Start::Started => {
                            running.insert(i);
                        }
                        Start::Finished => changed = true,
                        Start::Wait => still.push(i),
                        Start::Failed => {
                            changed = true;
                            if !self.opts.keep_going {
                                stop = true;
                            }
                        }
                    }
                }
            }
            pending = still;
            if running.is_empty() {
                if changed && !pending.is_empty() {
                    continue; // propagate the new failures/skips further down
                }
                // Nothing runs and nothing could start: done (the rest stays NotStarted).
                break;
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(f) => {
                    running.remove(&f.pos);
                    let failed = self.finish(f, &mut pool)?;
                    if failed && !self.opts.keep_going {
                        stop = true;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        for i in pending {
            if self.outcomes[i].is_none() {
                self.outcomes[i] = Some(Outcome::NotStarted);
            }
        }
        Ok(())
    }

    /// Records node `i` as failed with `msg` before it could start.
    fn fail_to_start(&mut self, i: usize, msg: String, pooled: Option<usize>) -> Result<Start> {
        self.record_failure(i, &msg).ok();
        self.outcomes[i] = Some(Outcome::Failed(msg));
        self.devices.give(pooled);
        self.device_of.remove(&i);
        Ok(Start::Failed)
    }

    /// Prepares instance `i` and hands it to a worker.
    fn start(&mut self, i: usize, pool: &mut Pool) -> Result<Start> {
        let e: &Entry = &self.plan.entries[i];
        if e.kind == dsl::schema::SELECT_KIND {
            return self.record_select(i);
        }
        let want = wanted_device(self.plan, i)?;
        let (device, pooled) = match self.devices.take(&want) {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(Start::Wait),
            Err(msg) => return self.fail_to_start(i, format!("node {}: {msg}", e.id), None),
        };
        self.device_of.insert(i, pooled);
        if self.kinds.registry.get(&e.kind).is_none() {
            let msg = format!("node {}: kind `{}` has no implementation", e.id, e.kind);
            return self.fail_to_start(i, msg, pooled);
        }
        let store = self.store;
        if let Err(err) = store.ensure_space(0, &format!("starting node {}", e.id)) {
            return self.fail_to_start(i, format!("node {}: {err}", e.id), pooled);
        }
        let record = self.new_record(e);
        store
            .put_record(&record)
            .with_context(|| format!("node {}: recording its start", e.id))?;
        let out_dir = store
            .prepare_staging(&e.key)
            .with_context(|| format!("node {}: preparing its output directory", e.id))?;
        let work_dir = store.work_dir(&e.key);
        let log = store.log_path(&e.key);
        nodelog::open(&e.id, &log, self.run_id)
            .with_context(|| format!("node {}: opening log {}", e.id, log.display()))?;
        nodelog::line(
            &e.id,
            "INFO",
            &format!(
                "start {} (kind {}, key {}, device {device}, run {})",
                e.id, e.kind, e.key, self.run_id
            ),
        );
        let job = job_for(
            store,
            self.kinds,
            self.plan,
            i,
            &device,
            self.run_id,
            out_dir,
        )?;
        let assignment = Assignment {
            pos: i,
            node: e.id.clone(),
            span: progress::node_span(&e.id),
        };
        // The job beside its checkpoints: `temper worker <work dir>/job.json` reruns it by hand.
        let job_file = work_dir.join(kinds::job::JOB_FILE);
        match assemble::hand_over(pool, &job, job_file, assignment, self.control, false) {
            Ok(()) => Ok(Start::Started),
            Err(err) => {
                let msg = format!("node {}: {err:#}", e.id);
                nodelog::line(&e.id, "ERROR", &msg);
                nodelog::close(&e.id);
                self.fail_to_start(i, msg, pooled)
            }
        }
    }

    /// Records a resolved select node (its scores are in the plan's key tree): `select.json`
    /// published under its key, the choice in its log.
    fn record_select(&mut self, i: usize) -> Result<Start> {
        let e = &self.plan.entries[i];
        let log = self.store.log_path(&e.key);
        nodelog::open(&e.id, &log, self.run_id)
            .with_context(|| format!("node {}: opening log {}", e.id, log.display()))?;
        match crate::select::publish(self.store, self.plan, i, self.run_id) {
            Ok(lines) => {
                for l in lines {
                    nodelog::line(&e.id, "INFO", &l);
                }
                tracing::info!("{}: done ({})", e.id, e.short_key());
                self.end_node(i, Outcome::Done);
                Ok(Start::Finished)
            }
            Err(err) => {
                let msg = node_prefixed(&e.id, &format!("{err:#}"));
                self.record_failure(i, &msg)?;
                self.end_node(i, Outcome::Failed(msg));
                Ok(Start::Failed)
            }
        }
    }

    /// A `Running` record of `e` started now by this run.
    fn new_record(&self, e: &Entry) -> store::NodeRecord {
        store::NodeRecord::running(
            &e.key,
            &e.kind,
            &e.id,
            &self.plan.loaded.stem,
            e.tree.clone(),
            Some(self.run_id),
        )
    }

    /// Records node `i` as failed with `msg`; its start time is kept when this run recorded
    /// the start (so `show` gives the attempt's real duration).
    fn record_failure(&self, i: usize, msg: &str) -> Result<()> {
        let e = &self.plan.entries[i];
        let started = self
            .store
            .record(&e.key)
            .ok()
            .flatten()
            .filter(|r| r.status == store::Status::Running && r.run_id == Some(self.run_id));
        let rec = started
            .unwrap_or_else(|| self.new_record(e))
            .finished(store::Status::Failed, Some(msg.to_string()));
        self.store
            .put_record(&rec)
            .with_context(|| format!("node {}: recording its failure", e.id))?;
        tracing::error!("{msg}");
        Ok(())
    }

    /// Records the end of a finished job. Returns whether it failed.
    fn finish(&mut self, f: Finished, pool: &mut Pool) -> Result<bool> {
        let i = f.pos;
        let e = &self.plan.entries[i];
        self.control.unregister(&e.id);
        if let Some(p) = self.device_of.remove(&i) {
            self.devices.give(p);
        }
        let end = match f.end {
            Ok(end) => {
                pool.done(f.worker, end == End::Cancelled);
                end
            }
            Err(how) => {
                pool.died(f.worker);
                let log = self.store.log_path(&e.key);
                let mut message = match assemble::ranks_of(self.plan, i) {
                    1 => format!(
                        "the worker process died ({how}); see its log {}",
                        log.display()
                    ),
                    r => format!(
                        "a rank of its {r} ended without reporting and its launcher stopped \
                         the others ({how}); see its log {} and the ranks' stderr above",
                        log.display()
                    ),
                };
                if self.store.lookup_done(&e.key)?.is_some() {
                    // After publishing: the artifact is complete and recorded (a rerun uses
                    // it); the run still fails, and the record stays `Done`.
                    message += " (after publishing its artifact, which is complete)";
                    let msg = node_prefixed(&e.id, &message);
                    tracing::error!("{msg}");
                    return Ok(self.end_node(i, Outcome::Failed(msg)));
                }
                if self.control.interrupted() {
                    End::Cancelled
                } else {
                    End::Error { message }
                }
            }
        };
        let outcome = match end {
            End::Done { .. } => {
                tracing::info!("{}: done ({})", e.id, e.short_key());
                Outcome::Done
            }
            End::Cancelled => {
                let base = self
                    .store
                    .record(&e.key)?
                    .unwrap_or_else(|| self.new_record(e));
                self.store.put_record(
                    &base.finished(store::Status::Cancelled, Some("cancelled".into())),
                )?;
                nodelog::line(&e.id, "WARN", "cancelled");
                tracing::warn!("{}: cancelled", e.id);
                Outcome::Cancelled
            }
            End::UserError { message, hint } => {
                let mut msg = node_prefixed(&e.id, &message);
                if let Some(h) = hint {
                    msg += &format!("\n  hint: {h}");
                }
                self.record_failure(i, &msg)?;
                Outcome::Failed(msg)
            }
            End::Error { message } => {
                let msg = node_prefixed(&e.id, &message);
                self.record_failure(i, &msg)?;
                Outcome::Failed(msg)
            }
        };
        Ok(self.end_node(i, outcome))
    }

    /// Writes the last line of node `i`'s log, closes it and keeps the outcome. Returns
    /// whether the node failed.
    fn end_node(&mut self, i: usize, outcome: Outcome) -> bool {
        let id = &self.plan.entries[i].id;
        match &outcome {
            Outcome::Failed(m) => nodelog::line(id, "ERROR", m),
            Outcome::Done => nodelog::line(id, "INFO", "done"),
            _ => {}
        }
        nodelog::close(id);
        let failed = matches!(outcome, Outcome::Failed(_));
        self.outcomes[i] = Some(outcome);
        failed
    }
}

/// `node ID: message`, without doubling the prefix when a stage already wrote it (a stage's
/// error context often names its node).
pub(crate) fn node_prefixed(id: &str, message: &str) -> String {
    let prefix = format!("node {id}: ");
    if message.starts_with(&prefix) {
        message.to_string()
    } else {
        prefix + message
    }
}
