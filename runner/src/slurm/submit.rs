//! `temper run --executor slurm`: every uncached instance becomes one `sbatch` job running
//! `temper worker --slurm <work dir>/job.json` against the shared store, in plan order, each
//! with `--dependency=afterok:` on the jobs of its inputs that are still to be built.
//!
//! Before anything is submitted: Slurm's commands, each partition and the shared store are
//! checked (`preflight`). Under the run lock, the plan is made again; a node a live job already
//! builds (queued or running, found through the ledger and one `squeue`) is not submitted twice
//! and its dependents wait on that job; a finished input is read from the store, so no job
//! ever depends on one Slurm may have purged. Jobs that could never start (an input failed)
//! are cancelled by `--kill-on-invalid-dep=yes`, by the failed job itself and by the follower.
//!
//! A front killed at any point of a submission leaves nothing a rerun submits twice: each
//! node's intent (its ledger entry) is written before `sbatch` runs, `sbatch` dies with the
//! front, and a job whose id the front never wrote carries the node's key in its name, so the
//! next plan finds it live (`adopt`) and this submission records its id instead of submitting
//! again. The run file is written first with the nodes the run means to send, so `status`
//! shows a submission that stopped half-way.

use super::adopt;
use super::cli;
use super::ledger::{Ledger, RunFile, Submission};
use super::preflight;
use super::script::batch_script;
use super::settings::{Settings, Sources};
use crate::assemble::{job_for, wanted_device};
use crate::exec::select;
use crate::plan::{self, Loaded, State};
use crate::Kinds;
use anyhow::{anyhow, Context, Result};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Options of a Slurm submission.
#[derive(Clone, Debug, Default)]
pub struct SubmitOptions {
    pub only: Vec<String>,
    /// Wait for another run's lock instead of failing.
    pub lock_wait: bool,
    /// Submit the jobs held (`sbatch --hold`; `scontrol release` starts them).
    pub hold: bool,
    pub command: String,
    /// Re-hash every built artifact a submitted node reads first (`--verify-inputs`).
    pub verify_inputs: bool,
}

/// What became of one selected instance.
#[derive(Clone, Debug, PartialEq)]
pub enum Sent {
    Cached,
    /// Submitted now as this job.
    Submitted(String),
    /// A live job already builds it.
    Queued(String),
    /// Not submitted (an input could not be).
    Skipped(String),
    /// Not submitted yet: downstream of a select whose scores are not built (submit again
    /// once they are; `run --wait` does).
    Waiting(String),
}

/// The result of a submission.
pub struct Submitted {
    pub run: RunFile,
    /// (instance id, key, what became of it), in plan order.
    pub nodes: Vec<(String, String, Sent)>,
}

/// The absolute path of the running `temper` (what the jobs run).
fn temper_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the temper executable")?;
    Ok(exe.canonicalize().unwrap_or(exe))
}

/// Submits the uncached instances of `loaded` (see the module docs).
pub fn submit(
    store: &store::Store,
    kinds: &Kinds,
    mut loaded: Loaded,
    opts: &SubmitOptions,
) -> Result<Submitted> {
    cli::require_tools()?;
    let sources = Sources::read(&loaded.recipe)?;
    // Keyed as the jobs' nodes will build them: `dtype auto` is bf16 where a job gets GPUs.
    loaded.target = sources.target()?;
    let lock = store
        .lock_run(opts.lock_wait, &opts.command)
        .context("taking the store's run lock")?;
    let plan = plan::plan(store, &kinds.registry, loaded)?;
    // Damaged artifacts the jobs would rebuild are moved aside here, under the lock.
    let plan =
        crate::damage::before_pass(store, &kinds.registry, plan, &opts.only, opts.verify_inputs)?;
    let selected = select(&plan, &opts.only)?;
    let entries = &plan.entries;
    // Settings per instance to submit, and the checks of every partition they use.
    let mut settings: HashMap<usize, Settings> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        let front = e.kind == dsl::schema::SELECT_KIND || matches!(e.state, State::Waiting { .. });
        // A node a live job builds may be submitted again (`stale_wait`).
        let live = matches!(e.state, State::OnSlurm { .. });
        if selected[i] && (e.state.needs_run() || live) && !front {
            settings.insert(i, sources.for_node(&e.node, &e.kind)?);
        }
    }
    // CUDA ranks against the GPUs each job asks for, before anything is submitted.
    let mut ranked: Vec<(&usize, &Settings)> = settings.iter().collect();
    ranked.sort_by_key(|(i, _)| **i);
    for (&i, s) in ranked {
        crate::assemble::check_slurm_ranks(&plan, i, s.gpus_per_node, &s.extra)?;
    }
    let temper = temper_exe()?;
    let mut checked: Vec<Option<String>> = Vec::new();
    for s in settings.values() {
        if checked.contains(&s.partition) {
            continue;
        }
        checked.push(s.partition.clone());
        let p = preflight::partition(s.partition.as_deref())?;
        preflight::shared(store.root(), "the store", &p, s.shared_store)?;
        preflight::shared(&temper, "the temper executable", &p, s.shared_store)?;
    }
    let ledger = Ledger::new(store);
    let run = store
        .begin_run(&opts.command, &plan.loaded.stem)
        .context("recording the run")?;
    let pos: HashMap<&str, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.as_str(), i))
        .collect();
    // What this run means to send, on record before the first `sbatch` (see the module docs).
    let planned: Vec<(String, String)> = entries
        .iter()
        .enumerate()
        .filter(|(i, e)| {
            selected[*i] && (matches!(e.state, State::OnSlurm { .. }) || settings.contains_key(i))
        })
        .map(|(_, e)| (e.id.clone(), e.key.clone()))
        .collect();
    if !planned.is_empty() {
        ledger.put_run(&RunFile {
            run_id: run.id,
            recipe: plan.loaded.stem.clone(),
            submitted_at: store::now_secs(),
            nodes: planned,
            complete: false,
        })?;
    }
    // Instances whose job an interrupted submission left unrecorded, adopted now.
    let mut adopted: std::collections::HashSet<usize> = std::collections::HashSet::new();
    let mut sent: Vec<Option<Sent>> = vec![None; entries.len()];
    let mut by_key: HashMap<&str, String> = HashMap::new();
    // The jobs each submitted instance waits on (for the line printed about it).
    let mut deps: HashMap<usize, Vec<String>> = HashMap::new();
    let mut failure: Option<anyhow::Error> = None;
    let mut out = std::io::stdout();
    for i in 0..entries.len() {
        if !selected[i] {
            continue;
        }
        let e = &entries[i];
        // A live job that can never start is cancelled, and the node submitted again.
        let mut replace = false;
        if let State::OnSlurm { job, .. } = &e.state {
            if let Some(why) = stale_wait(&ledger, &e.key, job, &pos, &sent)? {
                cli::scancel(std::slice::from_ref(job), &[])?;
                ledger.update(&e.key, |s| s.ended = Some(why.clone()))?;
                let _ = writeln!(
                    out,
                    "{:<12} {} cancelled slurm job {job}: {why}",
                    e.short_key(),
                    e.id
                );
                replace = true;
            }
        }
        let outcome = match &e.state {
            State::Cached => Sent::Cached,
            State::OnSlurm { job, .. } if !replace => {
                if adopt::record(&ledger, &e.key, job)? {
                    adopted.insert(i);
                }
                Sent::Queued(job.clone())
            }
            _ if failure.is_some() => Sent::Skipped("an earlier submission failed".into()),
            State::Waiting { why, stuck: true } => Sent::Skipped(why.clone()),
            State::Waiting { why, .. } => Sent::Waiting(why.clone()),
            // A resolved select is recorded here, at once: it needs no job.
            _ if e.kind == dsl::schema::SELECT_KIND => {
                match crate::select::publish(store, &plan, i, run.id) {
                    Ok(lines) => {
                        for l in lines {
                            let _ = writeln!(out, "{:<12} {} {l}", e.short_key(), e.id);
                        }
                        Sent::Cached
                    }
                    Err(err) => {
                        let msg = format!("node {}: {err:#}", e.id);
                        failure = Some(anyhow!("{msg}"));
                        Sent::Skipped(msg)
                    }
                }
            }
            _ => {
                if let Some(job) = by_key.get(e.key.as_str()) {
                    Sent::Queued(job.clone())
                } else {
                    let mut after = Vec::new();
                    let mut after_nodes = Vec::new();
                    let mut bad = None;
                    for (_, input) in &e.inputs {
                        let j = pos[input.as_str()];
                        match &sent[j] {
                            Some(Sent::Submitted(id)) | Some(Sent::Queued(id)) => {
                                if !after.contains(id) {
                                    after.push(id.clone());
                                    after_nodes.push(input.clone());
                                }
                            }
                            Some(Sent::Skipped(_)) | Some(Sent::Waiting(_)) => {
                                bad = Some(format!("input {input} was not submitted"))
                            }
                            Some(Sent::Cached) => {}
                            None if entries[j].state == State::Cached => {}
                            None => bad = Some(format!("input {input} is not part of this run")),
                        }
                    }
                    deps.insert(i, after.clone());
                    match bad {
                        Some(why) => Sent::Skipped(why),
                        None => match submit_one(
                            store,
                            kinds,
                            &plan,
                            i,
                            &ledger,
                            &settings[&i],
                            &temper,
                            run.id,
                            (after, after_nodes),
                            opts.hold,
                        ) {
                            Ok(id) => Sent::Submitted(id),
                            Err(err) => {
                                let msg = format!("node {}: submitting it failed: {err:#}", e.id);
                                failure = Some(anyhow!("{msg}"));
                                Sent::Skipped(msg)
                            }
                        },
                    }
                }
            }
        };
        if let Sent::Submitted(id) | Sent::Queued(id) = &outcome {
            by_key.entry(e.key.as_str()).or_insert_with(|| id.clone());
        }
        let line = match &outcome {
            Sent::Cached => format!("{:<12} {} cached", e.short_key(), e.id),
            Sent::Submitted(id) => {
                let deps = deps.remove(&i).unwrap_or_default();
                format!(
                    "{:<12} {} submitted: slurm job {id}{}",
                    e.short_key(),
                    e.id,
                    if deps.is_empty() {
                        String::new()
                    } else {
                        format!(" (after {})", deps.join(", "))
                    }
                )
            }
            Sent::Queued(id) => format!(
                "{:<12} {} already queued: slurm job {id}{}",
                e.short_key(),
                e.id,
                if adopted.contains(&i) {
                    " (submitted by a run that stopped before recording it; recorded now)"
                } else {
                    ""
                }
            ),
            Sent::Skipped(why) => format!("{:<12} {} not submitted: {why}", e.short_key(), e.id),
            Sent::Waiting(why) => format!(
                "{:<12} {} not submitted yet: {why} (submit again once they are built)",
                e.short_key(),
                e.id
            ),
        };
        let _ = writeln!(out, "{line}");
        sent[i] = Some(outcome);
    }
    let nodes: Vec<(String, String, Sent)> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| sent[i].clone().map(|s| (e.id.clone(), e.key.clone(), s)))
        .collect();
    let run_file = RunFile {
        run_id: run.id,
        recipe: plan.loaded.stem.clone(),
        submitted_at: store::now_secs(),
        nodes: nodes
            .iter()
            .filter(|(_, _, s)| matches!(s, Sent::Submitted(_) | Sent::Queued(_)))
            .map(|(id, key, _)| (id.clone(), key.clone()))
            .collect(),
        complete: true,
    };
    // A run that sent nothing is not "the last submission" `status` shows.
    if !run_file.nodes.is_empty() {
        ledger.put_run(&run_file)?;
    } else {
        ledger.remove_run(run.id)?;
    }
    store
        .finish_run(run.id, Vec::new(), failure.is_none())
        .context("recording the end of the run")?;
    drop(lock);
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(Submitted {
        run: run_file,
        nodes,
    })
}

/// Why the live job `job` of `key` can never start, if it cannot: it is still pending on
/// (`afterok`) a job of an input that this submission replaced (the input's job ended without
/// building it, or was never recorded and died: the input was submitted again). A job already
/// running is past its dependencies and never stale.
fn stale_wait(
    ledger: &Ledger,
    key: &str,
    job: &str,
    pos: &HashMap<&str, usize>,
    sent: &[Option<Sent>],
) -> Result<Option<String>> {
    let Some(sub) = ledger.get(key)? else {
        return Ok(None);
    };
    let replaced = sub
        .after
        .iter()
        .zip(&sub.after_nodes)
        .find_map(
            |(old, node)| match pos.get(node.as_str()).and_then(|&j| sent[j].as_ref()) {
                Some(Sent::Submitted(new)) | Some(Sent::Queued(new)) if new != old => Some(
                    format!("it waited on job {old} of {node}, which {node}'s job {new} replaces"),
                ),
                _ => None,
            },
        );
    let Some(why) = replaced else {
        return Ok(None);
    };
    let queue = cli::squeue(&[job.to_string()])?;
    Ok(queue.get(job).filter(|q| q.state == "PENDING").map(|_| why))
}

/// Writes the job file, the ledger entry and the script of entry `i`, and submits it.
#[allow(clippy::too_many_arguments)]
fn submit_one(
    store: &store::Store,
    kinds: &Kinds,
    plan: &plan::Plan,
    i: usize,
    ledger: &Ledger,
    settings: &Settings,
    temper: &std::path::Path,
    run_id: u64,
    (after, after_nodes): (Vec<String>, Vec<String>),
    hold: bool,
) -> Result<String> {
    let e = &plan.entries[i];
    // The device is chosen in the allocation, from what Slurm gives the job.
    let device = wanted_device(plan, i)?;
    let job = job_for(
        store,
        kinds,
        plan,
        i,
        &device,
        run_id,
        store.staging_dir(&e.key),
    )?;
    let work = store.work_dir(&e.key);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let job_path = work.join(kinds::job::JOB_FILE);
    store::write_atomic(&job_path, (job.to_line() + "\n").as_bytes())?;
    std::fs::create_dir_all(ledger.logs_dir())?;
    let log_pattern = ledger.job_log(&e.id, "%j");
    let mut sub = Submission {
        key: e.key.clone(),
        node: e.id.clone(),
        kind: e.kind.clone(),
        recipe: plan.loaded.stem.clone(),
        identity: e.identity.clone(),
        key_tree: e.tree.clone(),
        run_id,
        job_id: None,
        job_name: adopt::job_name(&plan.loaded.stem, &e.id, &e.key),
        after: after.clone(),
        after_nodes,
        log: None,
        submitted_at: store::now_secs(),
        signal: settings.signal.clone(),
        signal_lead: settings.signal_lead,
        max_timeouts: settings.max_timeouts,
        timeouts: 0,
        requeues: 0,
        ended: None,
    };
    ledger.put(&sub)?;
    let script = batch_script(
        &e.id,
        &e.key,
        &job_path,
        temper,
        store.root(),
        &settings.signal,
    );
    let script_path = ledger.script_path(&e.key);
    store::write_atomic(&script_path, script.as_bytes())?;
    let mut args = vec![
        format!("--job-name={}", sub.job_name),
        format!("--output={}", log_pattern.display()),
        "--open-mode=append".into(),
        format!("--chdir={}", store.root().display()),
        // The job gets this shell's environment minus its Slurm variables (cli::command).
        "--export=ALL".into(),
        "--kill-on-invalid-dep=yes".into(),
    ];
    if !after.is_empty() {
        args.push(format!("--dependency=afterok:{}", after.join(":")));
    }
    if hold {
        args.push("--hold".into());
    }
    // A data-parallel node: one job of R tasks; `mpirun` in the job starts the ranks on them.
    let ranks = crate::assemble::ranks_of(plan, i);
    if ranks > 1 {
        args.push(format!("--ntasks={ranks}"));
    }
    args.extend(settings.sbatch_args());
    // A job a failed `sbatch` created all the same (the controller queued it, then the answer
    // was lost) is taken, not submitted again.
    let queued_anyway = || -> Option<String> {
        let listing = cli::squeue_all().ok()?;
        adopt::live_job(&sub, &listing).map(String::from)
    };
    let id = match cli::sbatch(&args, &script, Duration::from_secs(600), &queued_anyway) {
        Ok(id) => id,
        Err(e) => match queued_anyway() {
            Some(id) => id,
            None => {
                let _ = std::fs::remove_file(ledger.jobs_dir().join(format!("{}.json", sub.key)));
                return Err(e);
            }
        },
    };
    sub.job_id = Some(id.clone());
    sub.log = Some(PathBuf::from(
        log_pattern.to_string_lossy().replace("%j", &id),
    ));
    ledger.put(&sub)?;
    Ok(id)
}
