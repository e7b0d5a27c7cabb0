//! `temper-rank --launch R JOB`: temper's own launcher of the R ranks of a CUDA data-parallel
//! node on one host (what `torchrun` is to PyTorch). CUDA ranks sum over NCCL, which needs no
//! MPI, so a GPU machine needs no `mpirun` either.
//!
//! The launcher starts `temper-rank JOB` R times with `TEMPER_DP_RANK`, `TEMPER_DP_WORLD`,
//! `TEMPER_DP_LOCAL_RANK` and a per-launch `TEMPER_DP_RENDEZVOUS` tag (see [`super::nccl`]);
//! rank 0's stdout is the launcher's (the front reads the worker protocol from it). It behaves
//! as `mpirun` does for the front:
//! - SIGUSR2, SIGUSR1, SIGTERM and SIGINT are forwarded to every rank (they checkpoint and stop
//!   at the same step boundary);
//! - a rank that ends badly while others run makes it kill the rest after [`GRACE`] (a rank
//!   waiting in an NCCL collective for a dead peer would wait forever) and exit 1;
//! - otherwise it exits with rank 0's status; and it dies with its parent, as the ranks die
//!   with it.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};

/// How long the other ranks may take to end after one ended badly, before they are killed.
pub const GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The environment of rank `rank` of `world` for a launch tagged `tag`.
pub fn rank_env(rank: usize, world: usize, tag: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TEMPER_DP_RANK", rank.to_string()),
        ("TEMPER_DP_WORLD", world.to_string()),
        ("TEMPER_DP_LOCAL_RANK", rank.to_string()),
        ("TEMPER_DP_RENDEZVOUS", tag.to_string()),
    ]
}

fn describe(st: std::process::ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => "an unknown status".into(),
    }
}

/// Runs the launcher; `args` are what follows `--launch`: `R JOB`.
pub fn main(args: &[String]) -> ExitCode {
    crate::worker::die_with_parent();
    let (Some(world), Some(job)) = (
        args.first().and_then(|r| r.parse::<usize>().ok()),
        args.get(1),
    ) else {
        eprintln!("usage: temper-rank --launch RANKS JOB");
        return ExitCode::from(2);
    };
    if world == 0 {
        eprintln!("temper-rank --launch: RANKS must be at least 1");
        return ExitCode::from(2);
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("temper-rank --launch: locating this executable: {e}");
            return ExitCode::from(2);
        }
    };
    let forwarded = [libc::SIGUSR1, libc::SIGUSR2, libc::SIGTERM, libc::SIGINT];
    // SAFETY: signal-mask manipulation on this thread before any other thread exists (the
    // forwarding thread inherits the mask and sigwaits); the children get an empty mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in forwarded {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tag = format!("{}-{nanos}", std::process::id());
    let mut children: Vec<Child> = Vec::with_capacity(world);
    for r in 0..world {
        let mut cmd = Command::new(&exe);
        cmd.arg(job)
            .envs(rank_env(r, world, &tag))
            .env("TEMPER_COLLECTIVE", "nccl")
            .stdin(Stdio::null());
        // SAFETY: in the forked child before exec: unblock the signals this thread blocked.
        unsafe {
            cmd.pre_exec(|| {
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                eprintln!("temper-rank --launch: starting rank {r}: {e}");
                for c in &mut children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return ExitCode::from(1);
            }
        }
    }
    let pids: Arc<Mutex<Vec<Option<u32>>>> =
        Arc::new(Mutex::new(children.iter().map(|c| Some(c.id())).collect()));
    let signal_all = {
        let pids = pids.clone();
        move |sig: i32| {
            for pid in pids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .flatten()
            {
                // SAFETY: kill(2) on a child that is not reaped yet (reaped ones are `None`).
                unsafe {
                    libc::kill(*pid as libc::pid_t, sig);
                }
            }
        }
    };
    {
        let signal_all = signal_all.clone();
        let _ = std::thread::Builder::new()
            .name("forward-signals".into())
            .spawn(move || loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: sigwait on the blocked set.
                if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                    signal_all(sig);
                }
            });
    }
    let mut codes: Vec<Option<std::process::ExitStatus>> = vec![None; world];
    let mut failed: Option<String> = None;
    while codes.iter().any(Option::is_none) {
        let mut status: libc::c_int = 0;
        // SAFETY: waits for any child of this process.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            break;
        }
        let Some(r) = children.iter().position(|c| c.id() == pid as u32) else {
            continue;
        };
        let st = std::process::ExitStatus::from_raw(status);
        pids.lock().unwrap_or_else(|e| e.into_inner())[r] = None;
        codes[r] = Some(st);
        let cancelled = st.code() == Some(130);
        if !st.success() && !cancelled && failed.is_none() {
            let how = format!("rank {r} of {world} ended with {}", describe(st));
            if codes.iter().any(Option::is_none) {
                // The others get a moment to report (a failure every rank saw ends them all,
                // rank 0 writing the error); a rank blocked in a collective for a dead peer
                // would never end by itself.
                eprintln!(
                    "temper-rank --launch: {how}; stopping the other ranks within {} s",
                    GRACE.as_secs()
                );
                let signal_all = signal_all.clone();
                let _ = std::thread::Builder::new()
                    .name("stop-ranks".into())
                    .spawn(move || {
                        std::thread::sleep(GRACE);
                        signal_all(libc::SIGKILL);
                    });
            }
            failed = Some(how);
        }
    }
    if let Some(how) = failed {
        eprintln!("temper-rank --launch: {how}");
        return ExitCode::from(1);
    }
    match codes[0].and_then(|s| s.code()) {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(c.clamp(1, 255) as u8),
        None => ExitCode::from(1),
    }
}
