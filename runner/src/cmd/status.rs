//! `temper status`: the run holding the store (if any) and the last run, node by node.
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
            .map(|h| serde_json::json!({ "pid": h.pid, "command": h.command, "since": h.since }));
        let runs = store.runs(usize::MAX)?;
        let out = serde_json::json!({ "running": holder, "runs": runs });
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
                "running: pid {} `{}` since {}\n",
                h.pid,
                h.command,
                human_time(h.since)
            )
        }
        None => out += "no run in progress\n",
    }
    let Some(run) = store.last_run()? else {
        out += "no runs yet\n";
        return Ok(out);
    };
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
    let mut recs: Vec<store::NodeRecord> = store
        .all_records()?
        .into_iter()
        .filter(|r| r.run_id == Some(run.id))
        .collect();
    recs.sort_by(|a, b| {
        a.started_at
            .partial_cmp(&b.started_at)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    for r in recs {
        out += &format!(
            "  {:<28} {:<12} {}{}\n",
            store.effective_status(&r).to_string(),
            &r.key[..12.min(r.key.len())],
            r.node,
            r.duration_s
                .map(|d| format!(" ({d:.1} s)"))
                .unwrap_or_default()
        );
        if let Some(e) = &r.error {
            out += &format!("      {}\n", e.lines().next().unwrap_or(""));
        }
    }
    Ok(out)
}
