//! `temper cancel recipe.kdl [NODE…]`: stops the Slurm jobs this recipe submitted — all, or
//! those of the named nodes and of everything downstream of them (which could never start
//! otherwise). One `scancel`; running jobs get SIGTERM, checkpoint and record themselves
//! cancelled; pending ones are marked cancelled in the ledger. Waits until Slurm lists none of
//! them as active, so the store is consistent when it returns. A job whose id its submitting run
//! never recorded (killed while it submitted) is found by its name, which holds the node's key,
//! and its id is recorded with the cancellation.
use super::{Global, RecipeArgs};
use crate::slurm::{adopt, cli, Ledger};
use anyhow::Result;
use clap::Args;
use std::collections::HashSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct CancelArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Only these nodes (declared names or instance ids) and their dependents.
    pub nodes: Vec<String>,
}

pub fn run(g: &Global, a: CancelArgs) -> Result<ExitCode> {
    let kinds = crate::Kinds::builtin();
    let loaded = a.recipe.load_to_inspect(&kinds)?;
    let store = g.open_store()?;
    let keyed = crate::plan::keys_of(&loaded, &kinds.registry, &store, Some(&store))?;
    let ids: Vec<&str> = keyed
        .order
        .iter()
        .map(|&i| loaded.expanded.instances[i].id.as_str())
        .collect();
    // The chosen instances and everything downstream.
    let mut chosen: HashSet<usize> = HashSet::new();
    for (pos, &i) in keyed.order.iter().enumerate() {
        let inst = &loaded.expanded.instances[i];
        let named = a.nodes.is_empty() || a.nodes.iter().any(|n| *n == inst.node || *n == inst.id);
        let below = inst.inputs.iter().any(|(_, input)| {
            ids.iter()
                .position(|x| x == input)
                .is_some_and(|p| chosen.contains(&p))
        });
        if named || below {
            chosen.insert(pos);
        }
    }
    for n in &a.nodes {
        if !loaded
            .expanded
            .instances
            .iter()
            .any(|i| i.node == *n || i.id == *n)
        {
            return Err(crate::text::UsageError(format!(
                "no node or instance `{n}` in {}",
                loaded.path.display()
            ))
            .into());
        }
    }
    let ledger = Ledger::new(&store);
    let mut subs = Vec::new();
    for (pos, k) in keyed.keyed.iter().enumerate() {
        if chosen.contains(&pos) {
            if let Some(s) = ledger
                .get(&k.key)?
                .filter(|s| s.job_id.is_some() || adopt::named_by_key(s))
            {
                subs.push(s);
            }
        }
    }
    if subs.is_empty() {
        println!(
            "nothing to cancel: no Slurm job of {}",
            loaded.path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    cli::require_tools()?;
    let listing = cli::squeue_all()?;
    let queue: std::collections::HashMap<String, cli::QueueState> =
        listing.iter().cloned().collect();
    // (node, key, job) of every active job: the recorded one, and any other under the node's
    // name (one whose id was never recorded).
    let mut live: Vec<(String, String, String)> = Vec::new();
    for s in &subs {
        let mut jobs: Vec<String> = Vec::new();
        if let Some(id) = s.job_id.as_ref() {
            if s.in_queue(&queue).is_some_and(|q| q.active()) {
                jobs.push(id.clone());
            }
        }
        for (id, q) in adopt::named(s, &listing) {
            if q.active() && !jobs.iter().any(|j| j == id) {
                jobs.push(id.to_string());
            }
        }
        live.extend(jobs.into_iter().map(|j| (s.node.clone(), s.key.clone(), j)));
    }
    if live.is_empty() {
        println!(
            "nothing to cancel: every job of {} has ended",
            loaded.path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let live_ids: Vec<String> = live.iter().map(|(_, _, j)| j.clone()).collect();
    cli::scancel(&live_ids, &[])?;
    for (_, key, job) in &live {
        adopt::record(&ledger, key, job)?;
        ledger.update(key, |s| s.ended = Some("by `temper cancel`".into()))?;
    }
    // Wait (up to KillWait and a margin) for running jobs to checkpoint and stop.
    let kill_wait = cli::config_value("KillWait")
        .ok()
        .flatten()
        .and_then(|v| {
            v.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(30);
    let deadline = Instant::now() + Duration::from_secs(kill_wait + 30);
    let mut pending = live_ids.clone();
    while !pending.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        let q = cli::squeue(&pending)?;
        pending.retain(|j| q.get(j).is_some_and(|s| s.active()));
    }
    for (node, _, job) in &live {
        println!("cancelled {node} (slurm job {job})");
    }
    if !pending.is_empty() {
        eprintln!(
            "still stopping after {} s: slurm jobs {}",
            kill_wait + 30,
            pending.join(", ")
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
