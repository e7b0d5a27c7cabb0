//! `temper status`: the run holding the store (if any) and the last run, node by node; and the
//! last Slurm submission, node by node with its job (one `squeue`), with the log tail of
//! every node that failed; and the damaged artifacts (found by `temper verify`, or moved aside
//! by a run that rebuilt them).
use super::{human_time, Global};
use anyhow::Result;
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Machine-readable: the lock holder and every recorded run (newest first) with the nodes it
    /// executed (cached nodes are not listed: they did not execute).
    #[arg(long)]
    json: bool,
}

pub fn run(g: &Global, a: StatusArgs) -> Result<ExitCode> {
    let store = g.open_store()?;
    if a.json {
        let holder = store
            .run_lock_holder()
            .map(|h| serde_json::json!({ "pid": h.pid, "host": h.host, "job": h.job, "command": h.command, "since": h.since }));
        let runs = store.runs(usize::MAX)?;
        let slurm = match crate::slurm::Ledger::new(&store).last_run()? {
            Some(run) => {
                let views = crate::slurm::observe::views(&store, &run.nodes)?;
                let nodes: Vec<serde_json::Value> = views
                    .iter()
                    .map(|v| {
                        serde_json::json!({
                            "node": v.node, "key": v.key, "job": v.job(),
                            "phase": v.phase.describe(v.job()),
                            "finished": v.phase.finished(),
                            "log": v.sub.as_ref().and_then(|s| s.log.clone()),
                        })
                    })
                    .collect();
                serde_json::json!({ "run": run.run_id, "recipe": run.recipe, "nodes": nodes })
            }
            None => serde_json::Value::Null,
        };
        let damaged = store.damage_markers()?;
        let aside: Vec<serde_json::Value> = store
            .damaged_copies()?
            .iter()
            .map(|c| serde_json::json!({ "dir": c.dir, "bytes": c.bytes, "damage": c.damage }))
            .collect();
        let out = serde_json::json!({
            "running": holder, "runs": runs, "slurm": slurm,
            "damaged": damaged, "damaged_copies": aside,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", status_text(&store)?);
    Ok(ExitCode::SUCCESS)
}

/// The text `temper status` prints.
pub fn status_text(store: &store::Store) -> Result<String> {
    let mut out = String::new();
    match store.run_lock_holder() {
        Some(h) => {
            out += &format!(
                "running: {} `{}` since {}\n",
                h.describe(),
                h.command,
                human_time(h.since)
            )
        }
        None => out += "no run in progress\n",
    }
    out += &damage_text(store)?;
    let slurm_run = crate::slurm::Ledger::new(store).last_run()?;
    let Some(run) = store.last_run()? else {
        out += "no runs yet\n";
        return Ok(out);
    };
    if let Some(s) = slurm_run.as_ref().filter(|s| s.run_id == run.id) {
        if !s.complete && run.ok.is_none() && !store::pid_alive(run.pid) {
            out += &format!(
                "slurm run {} stopped while it submitted (process gone): `temper run RECIPE \
                 --executor slurm` submits the rest and records the jobs it left unrecorded\n",
                run.id
            );
        }
        out += &slurm_text(store, s)?;
        return Ok(out);
    }
    let state = match run.ok {
        Some(true) => "succeeded".to_string(),
        Some(false) => "failed".to_string(),
        None if store::pid_alive(run.pid) => "running".to_string(),
        None => "interrupted (process gone)".to_string(),
    };
    out += &format!(
        "last run {}: {} ({}), recipe {}, started {}{}\n",
        run.id,
        state,
        run.command,
        run.recipe,
        human_time(run.started_at),
        run.finished_at
            .map(|f| format!(", took {:.1} s", f - run.started_at))
            .unwrap_or_default()
    );
    // Per node: the records of this run (also those still running).
    let mut recs: Vec<store::NodeRecord> = store.run_records(run.id)?;
    recs.sort_by(|a, b| {
        a.started_at
            .partial_cmp(&b.started_at)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    use std::fmt::Write as _;
    out.reserve(recs.len() * 64);
    for r in recs {
        let _ = write!(
            out,
            "  {:<28} {:<12} {}",
            store.effective_status(&r).to_string(),
            &r.key[..12.min(r.key.len())],
            r.node,
        );
        if let Some(d) = r.duration_s {
            let _ = write!(out, " ({d:.1} s)");
        }
        out.push('\n');
        if let Some(e) = &r.error {
            out += &format!("      {}\n", e.lines().next().unwrap_or(""));
        }
    }
    if let Some(s) = &slurm_run {
        out += &slurm_text(store, s)?;
    }
    Ok(out)
}

/// The artifacts `temper verify` found damaged (a run rebuilds them) and the damaged copies
/// runs moved aside (`temper gc --damaged` deletes them); nothing when there are none.
fn damage_text(store: &store::Store) -> Result<String> {
    let mut out = String::new();
    for d in store.damage_markers()? {
        out += &format!(
            "damaged: {} {} ({d}); the next run that needs it rebuilds it\n",
            &d.key[..12.min(d.key.len())],
            d.node
        );
    }
    let copies = store.damaged_copies()?;
    if !copies.is_empty() {
        let bytes: u64 = copies.iter().map(|c| c.bytes).sum();
        out += &format!(
            "{} damaged cop{} moved aside under {} ({}); `temper gc --damaged` deletes them\n",
            copies.len(),
            if copies.len() == 1 { "y" } else { "ies" },
            store.root().join(store::DAMAGED_DIR).display(),
            super::human_bytes(bytes)
        );
    }
    Ok(out)
}

/// Lines of log shown under a failed Slurm node.
const TAIL: usize = 8;

/// The last Slurm submission, node by node.
fn slurm_text(store: &store::Store, run: &crate::slurm::RunFile) -> Result<String> {
    use crate::slurm::Phase;
    let views = match crate::slurm::observe::views(store, &run.nodes) {
        Ok(v) => v,
        Err(e) => {
            return Ok(format!(
                "slurm run {} (recipe {}): {} nodes; Slurm cannot be asked here: {e:#}\n",
                run.run_id,
                run.recipe,
                run.nodes.len()
            ))
        }
    };
    let done = views.iter().filter(|v| v.phase == Phase::Done).count();
    let mut out = format!(
        "slurm run {} (recipe {}), submitted {}: {done}/{} done\n",
        run.run_id,
        run.recipe,
        human_time(run.submitted_at),
        views.len()
    );
    for v in &views {
        out += &format!(
            "  {:<12} {} {}\n",
            &v.key[..12.min(v.key.len())],
            v.node,
            v.phase.describe(v.job())
        );
        if let Phase::Failed { message } = &v.phase {
            for l in message.lines() {
                out += &format!("      {l}\n");
            }
            let log = store.log_path(&v.key);
            let node_log = std::fs::read_to_string(&log).unwrap_or_default();
            let mut tail: Vec<String> = crate::nodelog::last_attempt(&node_log)
                .iter()
                .map(|s| s.to_string())
                .collect();
            let mut from = log.clone();
            if tail.is_empty() {
                // It failed before temper's own log began (a node that cannot see the store,
                // a missing executable): Slurm's log of the job says why.
                if let Some(l) = v.sub.as_ref().and_then(|s| s.log.clone()) {
                    let text = std::fs::read_to_string(&l).unwrap_or_default();
                    tail = text.lines().map(String::from).collect();
                    from = l;
                }
            }
            out += &format!("      log {} (last lines):\n", from.display());
            for l in &tail[tail.len().saturating_sub(TAIL)..] {
                out += &format!("        {l}\n");
            }
        }
    }
    Ok(out)
}
