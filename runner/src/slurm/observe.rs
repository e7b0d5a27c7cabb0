//! Where submitted nodes stand, from one `squeue` call plus the store: what `temper status`
//! and `plan` show, and what `temper run --executor slurm --wait` follows.
//!
//! The store has the last word on success (a node is done when its artifact is published,
//! whatever Slurm says); Slurm on everything in flight. A job Slurm no longer lists (purged
//! after `MinJobAge`) is read from its record alone. A job that completed without a published
//! artifact is re-checked for a while before it is called lost: on a shared file system an
//! output can appear on this host some time after its job ended. A node whose job id was never
//! recorded (its front was killed while it submitted) is judged by the job Slurm lists under its
//! name (`adopt`).

use super::adopt;
use super::cli::{self, QueueState};
use super::ledger::{Ledger, RunFile, Submission};
use crate::plan::{Entry, State};
use anyhow::Result;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A submitted node's phase.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    /// Waiting in the queue (Slurm's reason: `Dependency`, `Resources`, `Priority`, …).
    Queued {
        reason: String,
    },
    /// Stopped after a checkpoint and requeued, waiting to restart; `delayed` while Slurm holds
    /// it back (`BeginTime`: about two minutes after a requeue).
    Requeued {
        delayed: bool,
    },
    Running {
        nodes: String,
    },
    /// Waiting on a dependency that failed: it can never start.
    NeverRuns,
    Done,
    Failed {
        message: String,
    },
    Cancelled {
        why: String,
    },
    /// Slurm has nothing more to say and the store has no result.
    Lost {
        why: String,
    },
    /// The run that meant to submit it stopped before it did.
    NotSubmitted,
}

impl Phase {
    pub fn finished(&self) -> bool {
        matches!(
            self,
            Phase::Done
                | Phase::Failed { .. }
                | Phase::Cancelled { .. }
                | Phase::Lost { .. }
                | Phase::NotSubmitted
        )
    }
    /// One line: `queued (slurm job 12: Dependency)`, `running on node07 (slurm job 12)`.
    pub fn describe(&self, job: Option<&str>) -> String {
        let job = job.unwrap_or("?");
        match self {
            Phase::Queued { reason } if reason.is_empty() || reason == "None" => {
                format!("queued (slurm job {job})")
            }
            Phase::Queued { reason } => format!("queued (slurm job {job}: {reason})"),
            Phase::Requeued { .. } => format!("requeued after a checkpoint (slurm job {job})"),
            Phase::Running { nodes } => format!("running on {nodes} (slurm job {job})"),
            Phase::NeverRuns => format!("never runs: an input failed (slurm job {job})"),
            Phase::Done => format!("done (slurm job {job})"),
            Phase::Failed { .. } => format!("failed (slurm job {job})"),
            Phase::Cancelled { why } => format!("cancelled (slurm job {job}): {why}"),
            Phase::Lost { why } => format!("lost (slurm job {job}): {why}"),
            Phase::NotSubmitted => {
                "not submitted: the run stopped before it got there (run it again)".into()
            }
        }
    }
}

/// One node of a submission and its phase.
#[derive(Clone, Debug)]
pub struct View {
    pub node: String,
    pub key: String,
    pub sub: Option<Submission>,
    pub phase: Phase,
}

impl View {
    pub fn job(&self) -> Option<&str> {
        self.sub.as_ref().and_then(|s| s.job_id.as_deref())
    }
}

fn phase_of(
    sub: &Submission,
    q: Option<&QueueState>,
    rec: Option<&store::NodeRecord>,
    done: bool,
) -> Phase {
    if done {
        return Phase::Done;
    }
    let from_record = |fallback: String| match rec.map(|r| (r.status, r)) {
        Some((store::Status::Failed, r)) => Phase::Failed {
            message: r.error.clone().unwrap_or_else(|| "failed".into()),
        },
        Some((store::Status::Cancelled, r)) => Phase::Cancelled {
            why: r.error.clone().unwrap_or_else(|| "cancelled".into()),
        },
        _ => match &sub.ended {
            Some(why) => Phase::Cancelled { why: why.clone() },
            None => Phase::Lost { why: fallback },
        },
    };
    let Some(q) = q else {
        return from_record(
            "Slurm no longer lists the job and it left no result; see its log".into(),
        );
    };
    if q.never_runs() {
        return Phase::NeverRuns;
    }
    match q.state.as_str() {
        // Stopped after a checkpoint (its record says so) and requeued: by the job itself after
        // the warning signal, or by Slurm (preemption, `scontrol requeue`).
        "PENDING"
            if rec.is_some_and(|r| {
                r.status == store::Status::Cancelled && r.scheduler_job.is_some()
            }) =>
        {
            Phase::Requeued {
                delayed: q.reason.starts_with("BeginTime"),
            }
        }
        "PENDING" => Phase::Queued {
            reason: q.reason.clone(),
        },
        "RUNNING" | "COMPLETING" | "CONFIGURING" | "SIGNALING" | "STAGE_OUT" => Phase::Running {
            nodes: q.nodes.clone(),
        },
        "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "PREEMPTED" => {
            Phase::Requeued { delayed: false }
        }
        _ if q.active() => Phase::Queued {
            reason: q.state.to_lowercase(),
        },
        "COMPLETED" => match rec.map(|r| r.status) {
            Some(store::Status::Failed) | Some(store::Status::Cancelled) => {
                from_record(String::new())
            }
            _ => Phase::Lost {
                why: "the job completed but its artifact is not in the store".into(),
            },
        },
        "CANCELLED" => match rec.map(|r| r.status) {
            Some(store::Status::Failed) => from_record(String::new()),
            _ => Phase::Cancelled {
                why: sub
                    .ended
                    .clone()
                    .or_else(|| {
                        rec.filter(|r| r.status == store::Status::Cancelled)
                            .and_then(|r| r.error.clone())
                    })
                    .unwrap_or_else(|| match q.reason.as_str() {
                        "" | "None" => "scancel".into(),
                        r => r.to_string(),
                    }),
            },
        },
        other => match rec.map(|r| r.status) {
            Some(store::Status::Failed) => from_record(String::new()),
            _ => Phase::Failed {
                message: format!(
                    "slurm job {} ended {other} ({}) before temper recorded a result",
                    sub.job_id.as_deref().unwrap_or("?"),
                    q.reason
                ),
            },
        },
    }
}

/// The phases of `nodes` ((instance id, key)): one `squeue`, one index open. A submission
/// without a job id takes the job named for it, if Slurm lists one (in the view only; a
/// resubmission records it).
pub fn views(store: &store::Store, nodes: &[(String, String)]) -> Result<Vec<View>> {
    let ledger = Ledger::new(store);
    let mut subs: Vec<Option<Submission>> = nodes
        .iter()
        .map(|(_, k)| ledger.get(k))
        .collect::<Result<_>>()?;
    let listing = if subs.iter().any(Option::is_some) {
        cli::squeue_all()?
    } else {
        Vec::new()
    };
    for s in subs.iter_mut().flatten() {
        if s.job_id.is_none() {
            if let Some(id) = adopt::latest_job(s, &listing) {
                adopt::fill(&ledger, s, id);
            }
        }
    }
    let queue: HashMap<String, QueueState> = listing.into_iter().collect();
    let keys: Vec<String> = nodes.iter().map(|(_, k)| k.clone()).collect();
    let (records, done) = store.with_index(|ix| {
        let mut recs = HashMap::new();
        let mut done = HashMap::new();
        for k in &keys {
            if let Some(r) = ix.record(k)? {
                recs.insert(k.clone(), r);
            }
            done.insert(k.clone(), store.lookup_done_in(ix, k)?.is_some());
        }
        Ok((recs, done))
    })?;
    Ok(nodes
        .iter()
        .zip(subs)
        .map(|((node, key), sub)| {
            let phase = match &sub {
                None if done[key] => Phase::Done,
                // An intent whose `sbatch` created no job Slurm lists, and no job of which
                // recorded an attempt.
                Some(s)
                    if s.job_id.is_none()
                        && !done[key]
                        && records.get(key).is_none_or(|r| r.scheduler_job.is_none()) =>
                {
                    Phase::NotSubmitted
                }
                Some(s) => phase_of(s, s.in_queue(&queue), records.get(key), done[key]),
                None => Phase::NotSubmitted,
            };
            View {
                node: node.clone(),
                key: key.clone(),
                sub,
                phase,
            }
        })
        .collect())
}

/// Marks the plan entries whose key a live Slurm job is building (queued or running):
/// `plan` shows them so, and a local run leaves them alone. A submission without a job id (its
/// front was killed while it submitted) is matched by its job's name, which holds the key. One
/// `squeue`, only when the ledger has any of the plan's keys; without Slurm on this machine
/// nothing is marked.
pub fn annotate(store: &store::Store, entries: &mut [Entry]) -> Result<()> {
    let ledger = Ledger::new(store);
    let keys = ledger.keys()?;
    if keys.is_empty() {
        return Ok(());
    }
    let mut subs: Vec<(usize, Submission)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e.state != State::Cached && keys.contains(&e.key) {
            if let Some(s) = ledger
                .get(&e.key)?
                .filter(|s| s.job_id.is_some() || adopt::named_by_key(s))
            {
                subs.push((i, s));
            }
        }
    }
    if subs.is_empty() || cli::which("squeue").is_none() {
        return Ok(());
    }
    let listing = match cli::squeue_all() {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!("squeue: {e:#}");
            return Ok(());
        }
    };
    for (_, s) in subs.iter_mut().filter(|(_, s)| s.job_id.is_none()) {
        if let Some(id) = adopt::live_job(s, &listing) {
            adopt::fill(&ledger, s, id);
        }
    }
    let queue: HashMap<String, QueueState> = listing.into_iter().collect();
    for (i, s) in subs {
        let Some(job) = s.job_id.clone() else {
            continue;
        };
        if let Some(q) = s.in_queue(&queue).filter(|q| adopt::live(q)) {
            let phase = phase_of(&s, Some(q), None, false);
            entries[i].state = State::OnSlurm {
                job: job.clone(),
                what: phase.describe(Some(&job)),
            };
            entries[i].reasons.clear();
        }
    }
    Ok(())
}

/// Follows the nodes of `run` until every one has finished: prints each change of phase,
/// cancels jobs that can never start, lets requeued ones restart at once. Returns whether all
/// are done. Stops early (jobs keep running) when `stop` says so.
pub fn follow(store: &store::Store, run: &RunFile, stop: &dyn Fn() -> bool) -> Result<bool> {
    let ledger = Ledger::new(store);
    let mut last: HashMap<String, String> = HashMap::new();
    let mut released: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut delayed_since: HashMap<String, Instant> = HashMap::new();
    let mut lost_since: HashMap<String, Instant> = HashMap::new();
    let mut pause = Duration::from_millis(250);
    loop {
        let views = views(store, &run.nodes)?;
        let mut changed = false;
        let mut never: Vec<&View> = Vec::new();
        let mut all_done = true;
        let mut all_finished = true;
        for v in &views {
            let mut phase = v.phase.clone();
            // A completed job whose artifact is not here yet: wait for the file system.
            if let Phase::Lost { .. } = phase {
                let t = *lost_since.entry(v.key.clone()).or_insert_with(Instant::now);
                if t.elapsed() < Duration::from_secs(30) {
                    phase = Phase::Queued {
                        reason: "finishing".into(),
                    };
                }
            }
            if phase == Phase::NeverRuns {
                never.push(v);
            }
            // Once per requeue, let the job start in seconds rather than after Slurm's requeue
            // delay (its checkpoint is safe, and `max-timeouts` bounds the loops), but not in
            // the second it was stopped in (see `cli::start_now`).
            if let Some(job) = v.job() {
                match &phase {
                    Phase::Requeued { delayed: true } if !released.contains(job) => {
                        let since = *delayed_since
                            .entry(job.to_string())
                            .or_insert_with(Instant::now);
                        if since.elapsed() >= Duration::from_secs(2) {
                            if let Err(e) = cli::start_now(job) {
                                tracing::debug!("releasing requeued job {job}: {e:#}");
                            }
                            released.insert(job.to_string());
                        }
                    }
                    Phase::Running { .. } => {
                        released.remove(job);
                        delayed_since.remove(job);
                    }
                    _ => {}
                }
            }
            all_done &= phase == Phase::Done;
            all_finished &= phase.finished();
            let line = phase.describe(v.job());
            if last.get(&v.node) != Some(&line) {
                changed = true;
                eprintln!("{}: {line}", v.node);
                if let Phase::Failed { message } = &phase {
                    for l in message.lines() {
                        eprintln!("    {l}");
                    }
                }
                last.insert(v.node.clone(), line);
            }
        }
        if !never.is_empty() {
            cancel_never(&ledger, &views, &never)?;
            changed = true;
        }
        if all_finished {
            return Ok(all_done);
        }
        if stop() {
            eprintln!(
                "stopped following; the jobs go on: `temper status` shows them, `temper cancel \
                 RECIPE` stops them"
            );
            return Ok(false);
        }
        let waiting = delayed_since.keys().any(|j| !released.contains(j));
        pause = if changed {
            Duration::from_millis(250)
        } else if waiting {
            Duration::from_millis(500)
        } else {
            (pause * 3 / 2).min(Duration::from_secs(5))
        };
        let until = Instant::now() + pause;
        while Instant::now() < until && !stop() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Cancels jobs pending on a failed dependency and says why in the ledger.
fn cancel_never(ledger: &Ledger, views: &[View], never: &[&View]) -> Result<()> {
    let ids: Vec<String> = never
        .iter()
        .filter_map(|v| v.job().map(String::from))
        .collect();
    cli::scancel(&ids, &[])?;
    for v in never {
        let failed: Vec<&str> = v
            .sub
            .as_ref()
            .map(|s| s.after.clone())
            .unwrap_or_default()
            .iter()
            .filter_map(|a| {
                views
                    .iter()
                    .find(|w| w.job() == Some(a.as_str()) && !matches!(w.phase, Phase::Done))
                    .map(|w| w.node.as_str())
            })
            .collect();
        let why = if failed.is_empty() {
            "an input failed".to_string()
        } else {
            format!("its input {} failed", failed.join(", "))
        };
        ledger.update(&v.key, |s| s.ended = Some(why))?;
    }
    Ok(())
}
