//! The process of one rank of a data-parallel node (`temper-rank JOB`, started R times by
//! `mpirun`): the worker loop on one job file, with the ranks' [`Collective`].
//!
//! Rank 0 speaks the worker protocol on stdout (the front reads it through `mpirun`, which
//! forwards rank 0's output) and publishes; the other ranks print their warnings and errors on
//! stderr as `rank R: …`. Cancelling: `mpirun` (or `srun`) forwards SIGUSR2 (and SIGUSR1) to
//! every rank, which is what the front sends it; SIGTERM and SIGINT work too. Every rank stops at
//! the same step boundary and only rank 0 writes the checkpoint (see [`crate::trainer`]). Each
//! rank dies with its parent (`PR_SET_PDEATHSIG`), so no rank outlives its launcher.

use super::Collective;
use crate::stage::CancelToken;
use crate::worker::{self, Events, LogLayer, Logging, Worker};
use kinds::job::{End, Event};
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use tracing_subscriber::prelude::*;

/// The event stream of a rank other than 0: warnings and errors as `rank R: …` on stderr.
struct RankStderr {
    rank: usize,
    line: Vec<u8>,
}

impl Write for RankStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        while let Some(i) = self.line.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.line.drain(..=i).collect();
            let text = match Event::parse(&String::from_utf8_lossy(&line)) {
                Some(Event::Log { level, message, .. }) if level == "WARN" || level == "ERROR" => {
                    Some(format!("{level} {message}"))
                }
                Some(Event::End(End::Error { message })) => Some(format!("ERROR {message}")),
                Some(Event::End(End::UserError { message, .. })) => {
                    Some(format!("ERROR {message}"))
                }
                _ => None,
            };
            if let Some(t) = text {
                let _ = writeln!(std::io::stderr(), "rank {}: {t}", self.rank);
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// SIGUSR2 and SIGUSR1 (what `mpirun` forwards) cancel the job: blocked in every thread and
/// waited for by one.
fn cancel_on_user_signals(token: CancelToken) {
    // SAFETY: sigset manipulation and pthread_sigmask on this thread, before other threads
    // exist (they inherit the mask); sigwait in the dedicated thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let _ = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                let mut sig: libc::c_int = 0;
                if libc::sigwait(&set, &mut sig) == 0 {
                    token.cancel();
                }
            });
    }
}

/// The rank's index among the ranks of its host (its CUDA device): from temper's launcher,
/// Open MPI or `srun`, else `rank`.
pub fn local_rank(rank: usize) -> usize {
    [
        "TEMPER_DP_LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "SLURM_LOCALID",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok()?.parse().ok())
    .unwrap_or(rank)
}

/// `temper-rank JOB` as a CUDA rank summing over NCCL (`TEMPER_COLLECTIVE=nccl`, set by
/// `temper-rank --launch` and by the front's `srun` step): the placement from the environment
/// ([`super::nccl::Placement`]), the communicator, then [`main`].
pub fn main_nccl() -> ExitCode {
    let Some(job) = std::env::args_os().nth(1) else {
        eprintln!("usage: temper-rank --launch RANKS JOB");
        return ExitCode::from(2);
    };
    let placed = super::nccl::Placement::from_env(|k| std::env::var(k).ok()).unwrap_or_else(|| {
        Err(anyhow::anyhow!(
            "no rank placement: start CUDA ranks with `temper-rank --launch RANKS JOB` or `srun`"
        ))
    });
    let rank0 = placed.as_ref().is_ok_and(|p| p.rank == 0);
    let nccl = placed.and_then(|p| super::nccl::Nccl::init(&p, std::path::Path::new(&job)));
    match nccl {
        Ok(n) => main(Arc::new(n)),
        Err(e) => {
            let message = format!("starting the NCCL rank: {e:#}");
            eprintln!("temper-rank: {message}");
            if rank0 {
                // The node's error, in its log and `temper status`.
                Events::new(worker::take_stdout()).send(&Event::End(End::Error { message }));
            }
            ExitCode::from(1)
        }
    }
}

/// `temper-rank JOB`: runs the job file `JOB` as rank `collective.rank()` of
/// `collective.world()`. Exit 0 done, 1 failed, 130 cancelled, 2 bad use.
pub fn main(collective: Arc<dyn Collective>) -> ExitCode {
    worker::die_with_parent();
    let rank = collective.rank();
    let cancel = CancelToken::new();
    cancel_on_user_signals(cancel.clone());
    let token = cancel.clone();
    let _ = ctrlc::set_handler(move || token.cancel());
    let events = if rank == 0 {
        Events::new(worker::take_stdout())
    } else {
        Events::new(Box::new(RankStderr {
            rank,
            line: Vec::new(),
        }))
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(worker::env_filter("warn"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(LogLayer(events.clone()))
        .try_init();
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: mpirun -n R temper-rank JOB");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t.replace('\n', " "),
        Err(e) => {
            eprintln!(
                "temper-rank {rank}: reading {}: {e}",
                path.to_string_lossy()
            );
            return ExitCode::from(2);
        }
    };
    // One GPU per rank: the rank's local index among the ranks of its host.
    let text = match serde_json::from_str::<kinds::job::Job>(text.trim()) {
        Ok(mut job) if job.device.starts_with("cuda") => {
            job.device = format!("cuda:{}", local_rank(rank));
            job.to_line()
        }
        _ => text,
    };
    if rank == 0 {
        if let Err(e) = worker::prepare_alone(&text) {
            eprintln!("temper-rank: {}: {e:#}", path.to_string_lossy());
            return ExitCode::from(2);
        }
    }
    let w = Worker {
        stages: Arc::new(worker::stage_map(crate::stages())),
        events,
        cancel,
        logging: Logging::Global(handle),
        name: format!(
            "rank {rank}/{} pid {} ({}){}",
            collective.world(),
            std::process::id(),
            collective.describe(),
            match (
                std::env::var("SLURM_JOB_ID"),
                std::env::var("SLURM_STEP_ID")
            ) {
                (Ok(j), Ok(s)) => format!(", slurm step {j}.{s}"),
                _ => String::new(),
            }
        ),
        collective: collective.clone(),
    };
    let code = match w.serve(std::io::Cursor::new(text)) {
        Some(End::Done { .. }) => 0,
        Some(End::Cancelled) => 130,
        _ => 1,
    };
    // MPI_Finalize runs when the last handle on the collective goes.
    drop(w);
    drop(collective);
    let _ = std::io::stderr().flush();
    // SAFETY: everything is written and MPI is finalised; skip libtorch's static destructors.
    unsafe { libc::_exit(code) }
}
