//! `temper worker JOB` (hidden): runs the one job in the file `JOB` (a `kinds::job::Job`, as
//! `temper run` writes it into the node's work dir) against its store and publishes it, by
//! exec'ing `temper-worker` — the seam a cluster executor uses. Events go to stdout as JSON
//! lines; exit 0 done, 1 failed, 130 cancelled.
use super::Global;
use anyhow::{Context, Result};
use clap::Args;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The job file.
    pub job: PathBuf,
}

pub fn run(_g: &Global, a: WorkerArgs) -> Result<ExitCode> {
    let exe = crate::launch::worker_exe()?;
    let err = std::process::Command::new(&exe).arg(&a.job).exec();
    Err(err).with_context(|| format!("running {}", exe.display()))
}
