//! Starting worker processes: [`Processes`], the [`Launcher`] `temper run` uses, spawns
//! `temper-worker` (found beside the running executable; `TEMPER_WORKER` overrides) with jobs
//! on its stdin and events on its stdout, in a process group of its own so a terminal's Ctrl-C
//! reaches only the front, which forwards cancellation as SIGTERM.

use anyhow::{bail, Result};
use kinds::job::{Launcher, WorkerConn, WorkerControl};
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
        let events = child.stdout.take().expect("piped stdout");
        let pid = child.id();
        Ok(WorkerConn {
            jobs: Box::new(jobs),
            events: Box::new(std::io::BufReader::new(events)),
            control: Arc::new(Process {
                pid,
                child: Mutex::new(child),
                status: Mutex::new(None),
            }),
        })
    }
}

struct Process {
    pid: u32,
    child: Mutex<Child>,
    status: Mutex<Option<String>>,
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
        self.signal(libc::SIGTERM);
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
