//! `temper verify [--rebuild]`: re-hash every artifact against its manifest; exit 1 on any
//! mismatch. `--rebuild` first recreates the index from the manifests (and the pin and run
//! files). Works on a full disk: it writes nothing, and checks the artifacts even when the
//! index cannot be opened there.
use super::Global;
use anyhow::{Context, Result};
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Rebuild the index from the artifact manifests first.
    #[arg(long)]
    pub rebuild: bool,
}

pub fn run(g: &Global, a: VerifyArgs) -> Result<ExitCode> {
    let store = g.open_store()?;
    if a.rebuild {
        let _lock = store
            .lock_run(true, "temper verify --rebuild")
            .context("taking the store's run lock")?;
        let n = store.rebuild_index()?;
        println!("index rebuilt: {n} artifact(s) recorded");
    }
    let r = store.verify()?;
    for issue in &r.issues {
        eprintln!("{issue}");
    }
    if !r.marked.is_empty() {
        eprintln!(
            "marked {} artifact(s) damaged: `temper plan` shows them, the next `temper run` that \
             needs them moves them aside and rebuilds them",
            r.marked.len()
        );
    }
    if let Some(e) = &r.mark_error {
        eprintln!("warning: could not mark every damaged artifact: {e}");
    }
    if let Some(e) = &r.index_error {
        eprintln!("warning: artifacts checked, but not the index: {e}");
    }
    println!(
        "checked {} artifact(s): {} issue(s){}",
        r.checked,
        r.issues.len(),
        if r.unrecorded.is_empty() {
            String::new()
        } else {
            format!(", {} unrecorded (adopted on next use)", r.unrecorded.len())
        }
    );
    Ok(if r.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
