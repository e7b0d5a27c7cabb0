//! Starting worker processes: [`Processes`], the [`Launcher`] `temper run` uses, spawns
//! `temper-worker` (found beside the running executable; `TEMPER_WORKER` overrides) with jobs
//! on its stdin and events on its stdout, in a process group of its own so a terminal's Ctrl-C
//! reaches only the front, which forwards cancellation as SIGTERM.

use anyhow::{bail, Result};
use kinds::job::{Launcher, WorkerConn, WorkerControl};
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// File name of the worker binary.
pub const WORKER_BIN: &str = "temper-worker";

/// The worker executable: `$TEMPER_WORKER`, or `temper-worker` beside this executable.
pub fn worker_exe() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TEMPER_WORKER") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name(WORKER_BIN);
    if !p.is_file() {
        bail!(
            "{WORKER_BIN} not found beside {} (build both binaries: `cargo build --release --bin \
             temper --bin {WORKER_BIN}`, or set TEMPER_WORKER)",
            exe.display()
        );
    }
    Ok(p)
}

/// Spawns `temper-worker` processes, with `env` added to their environment.
#[derive(Default)]
pub struct Processes {
    pub env: Vec<(String, String)>,
}

impl Launcher for Processes {
    fn start(&self) -> std::io::Result<WorkerConn> {
        let exe = worker_exe().map_err(std::io::Error::other)?;
        let mut child = Command::new(&exe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env("TEMPER_FRONT_PID", std::process::id().to_string())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .process_group(0)
            .spawn()
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("starting {}: {e}", exe.display()))
            })?;
        let jobs = child.stdin.take().expect("piped stdin");
        Ok(connect(child, Box::new(jobs), libc::SIGTERM))
    }
}

/// The front's end of a spawned worker process: `jobs` written to it, events from its stdout,
/// `cancel_signal` to ask it to checkpoint and stop.
fn connect(mut child: Child, jobs: Box<dyn Write + Send>, cancel_signal: i32) -> WorkerConn {
    let events = child.stdout.take().expect("piped stdout");
    let pid = child.id();
    WorkerConn {
        jobs,
        events: Box::new(std::io::BufReader::new(events)),
        control: Arc::new(Process {
            pid,
            child: Mutex::new(child),
            status: Mutex::new(None),
            cancel_signal,
        }),
    }
}

/// File name of the binary of a data-parallel rank.
pub const RANK_BIN: &str = "temper-rank";

/// The rank executable: `$TEMPER_RANK`, or `temper-rank` beside this executable.
pub fn rank_exe() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TEMPER_RANK") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!(
                "TEMPER_RANK={} is not a file (the rank binary, `{RANK_BIN}`)",
                p.display()
            );
        }
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name(RANK_BIN);
    if !p.is_file() {
        bail!(
            "{RANK_BIN} not found beside {}: data-parallel nodes (`ranks` > 1) run their ranks \
             with it (`make build` builds it; with Open MPI installed, `apt install openmpi-bin \
             libopenmpi-dev libclang-dev`, it also runs CPU ranks)",
            exe.display()
        );
    }
    Ok(p)
}

/// `mpirun`: `$TEMPER_MPIRUN`, or the first on `PATH`.
pub fn mpirun() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TEMPER_MPIRUN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!(
                "TEMPER_MPIRUN={} is not a file (Open MPI's `mpirun`)",
                p.display()
            );
        }
        return Ok(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("mpirun"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "`mpirun` not found on PATH: data-parallel nodes (`ranks` > 1) run their ranks \
                 with MPI (install Open MPI: `apt install openmpi-bin`)"
            )
        })
}

/// Starts the R ranks of one data-parallel job, whose stdout carries rank 0's events:
/// - CPU ranks (MPI): locally `mpirun -n R temper-rank JOB_FILE`; inside a Slurm allocation
///   (`srun: true`) a job step `srun --mpi=pmix --ntasks=R temper-rank JOB_FILE` on the job's
///   tasks, with the rendezvous from Slurm's PMIx;
/// - CUDA ranks (`nccl`: NCCL, no MPI): locally `temper-rank --launch R JOB_FILE`, temper's own
///   launcher; in Slurm `srun --mpi=none --ntasks=R temper-rank JOB_FILE`, each rank placed by
///   `SLURM_PROCID`/`SLURM_LOCALID`.
///
/// One job per launch (the job is in the file, not on stdin). Cancelling sends SIGUSR2, which
/// every launcher forwards to every rank.
pub struct Ranks {
    pub ranks: usize,
    pub job_file: PathBuf,
    pub srun: bool,
    pub nccl: bool,
}

impl Launcher for Ranks {
    fn start(&self) -> std::io::Result<WorkerConn> {
        let io = |e: anyhow::Error| std::io::Error::other(format!("{e:#}"));
        let rank = rank_exe().map_err(io)?;
        let (launcher, mut cmd) = if self.srun {
            let mut c = Command::new("srun");
            c.arg(if self.nccl {
                "--mpi=none"
            } else {
                "--mpi=pmix"
            })
            .arg(format!("--ntasks={}", self.ranks))
            .arg("--kill-on-bad-exit=1");
            (PathBuf::from("srun"), c)
        } else if self.nccl {
            let mut c = Command::new(&rank);
            c.arg("--launch").arg(self.ranks.to_string());
            (rank.clone(), c)
        } else {
            let mpirun = mpirun().map_err(io)?;
            let mut c = Command::new(&mpirun);
            c.arg("-n")
                .arg(self.ranks.to_string())
                // Each rank sets its own libtorch threads; no pinning to one core.
                .args(["--bind-to", "none"]);
            (mpirun, c)
        };
        if self.nccl {
            cmd.env("TEMPER_COLLECTIVE", "nccl");
        }
        if self.srun || !self.nccl {
            cmd.arg(&rank); // what mpirun and srun start
        }
        cmd.arg(&self.job_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } == 0 {
            // Open MPI refuses root unless told (CI and containers run as root).
            cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        }
        // SAFETY: prctl in the forked child before exec: mpirun (and so its ranks) ends when
        // the thread that started it does.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            std::io::Error::new(e.kind(), format!("starting {}: {e}", launcher.display()))
        })?;
        Ok(connect(child, Box::new(std::io::sink()), libc::SIGUSR2))
    }
}

struct Process {
    pid: u32,
    child: Mutex<Child>,
    status: Mutex<Option<String>>,
    /// What asks it to checkpoint and stop.
    cancel_signal: i32,
}

impl Process {
    fn signal(&self, sig: i32) {
        if self.exited() {
            return; // never signal a reaped (possibly reused) pid
        }
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        unsafe {
            libc::kill(self.pid as libc::pid_t, sig);
        }
    }
}

/// `signal 6 (SIGABRT)`, `exit code 1`.
fn describe(st: std::process::ExitStatus) -> String {
    if let Some(sig) = st.signal() {
        let name = match sig {
            libc::SIGABRT => " (SIGABRT)",
            libc::SIGKILL => " (SIGKILL)",
            libc::SIGSEGV => " (SIGSEGV)",
            libc::SIGTERM => " (SIGTERM)",
            libc::SIGINT => " (SIGINT)",
            libc::SIGBUS => " (SIGBUS)",
            _ => "",
        };
        format!("signal {sig}{name}")
    } else {
        format!("exit code {}", st.code().unwrap_or(-1))
    }
}

impl WorkerControl for Process {
    fn name(&self) -> String {
        format!("pid {}", self.pid)
    }
    fn cancel(&self) {
        self.signal(self.cancel_signal);
    }
    fn kill(&self) {
        self.signal(libc::SIGKILL);
    }
    fn wait(&self) -> String {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = &*status {
            return s.clone();
        }
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let s = match child.wait() {
            Ok(st) => describe(st),
            Err(e) => format!("unknown status: {e}"),
        };
        *status = Some(s.clone());
        s
    }
    fn exited(&self) -> bool {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if status.is_some() {
            return true;
        }
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match child.try_wait() {
            Ok(Some(st)) => {
                *status = Some(describe(st));
                true
            }
            Ok(None) => false,
            Err(_) => true,
        }
    }
}
