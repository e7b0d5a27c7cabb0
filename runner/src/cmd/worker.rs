//! `temper worker JOB` (hidden): runs the one job in the file `JOB` (a `kinds::job::Job`, as
//! `temper run` writes it into the node's work dir) against its store and publishes it, by
//! exec'ing `temper-worker` — the seam a cluster executor uses. Events go to stdout as JSON
//! lines; exit 0 done, 1 failed, 130 cancelled. With `--slurm`, the job of a Slurm allocation
//! (`crate::slurm::alloc`).
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
    /// Run inside a Slurm allocation: record the attempt, log, requeue on the warning signal
    /// (what the batch scripts of `temper run --executor slurm` call).
    #[arg(long)]
    pub slurm: bool,
}

pub fn run(_g: &Global, a: WorkerArgs) -> Result<ExitCode> {
    if a.slurm {
        return crate::slurm::alloc::run(&a.job);
    }
    let exe = crate::launch::worker_exe()?;
    let err = std::process::Command::new(&exe).arg(&a.job).exec();
    Err(err).with_context(|| format!("running {}", exe.display()))
}
