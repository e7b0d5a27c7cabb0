//! `temper cancel recipe.kdl [NODE…]`: stops the Slurm jobs this recipe submitted — all, or
//! those of the named nodes and of everything downstream of them (which could never start
//! otherwise). One `scancel`; running jobs get SIGTERM, checkpoint and record themselves
//! cancelled; pending ones are marked cancelled in the ledger. Waits until Slurm lists none of
//! them as active, so the store is consistent when it returns.
use super::{Global, RecipeArgs};
use crate::slurm::{cli, Ledger};
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
            if let Some(s) = ledger.get(&k.key)?.filter(|s| s.job_id.is_some()) {
                subs.push(s);
            }
        }
    }
    let job_ids: Vec<String> = subs.iter().filter_map(|s| s.job_id.clone()).collect();
    if job_ids.is_empty() {
        println!(
            "nothing to cancel: no Slurm job of {}",
            loaded.path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    cli::require_tools()?;
    let queue = cli::squeue(&job_ids)?;
    let live: Vec<&crate::slurm::Submission> = subs
        .iter()
        .filter(|s| s.in_queue(&queue).is_some_and(|q| q.active()))
        .collect();
    if live.is_empty() {
        println!(
            "nothing to cancel: every job of {} has ended",
            loaded.path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let live_ids: Vec<String> = live.iter().filter_map(|s| s.job_id.clone()).collect();
    cli::scancel(&live_ids, &[])?;
    for s in &live {
        ledger.update(&s.key, |s| s.ended = Some("by `temper cancel`".into()))?;
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
    for s in &live {
        println!(
            "cancelled {} (slurm job {})",
            s.node,
            s.job_id.as_deref().unwrap_or("?")
        );
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
