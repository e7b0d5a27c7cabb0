//! The run lock: one `temper run` at a time per store.
//!
//! An exclusive `flock` on `run.lock`. The holder writes its pid, command line and start time
//! into the file so others can name it. The kernel drops a flock when its process dies, so a
//! lock left by a crashed or `kill -9`ed run never blocks anyone. Read-only commands do not
//! take this lock; they use [`Store::run_lock_holder`] to say a run is going.
//!
//! The holder details are advisory: the flock alone is the lock. So on a full disk, where they
//! cannot be written, the lock is still taken (the file left empty, others then see an
//! "unknown" holder) — `temper gc` must get it to free space.

use crate::{now_secs, Result, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Who holds the run lock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LockHolder {
    pub pid: u32,
    pub command: String,
    /// Unix seconds when the lock was taken.
    pub since: f64,
    /// The holder's host: on a store shared by several machines its pid means nothing elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The Slurm job the holder runs in (`SLURM_JOB_ID`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

impl LockHolder {
    /// `pid 12 on node07 (slurm job 345)`.
    pub fn describe(&self) -> String {
        let mut s = format!("pid {}", self.pid);
        if let Some(h) = &self.host {
            s += &format!(" on {h}");
        }
        if let Some(j) = &self.job {
            s += &format!(" (slurm job {j})");
        }
        s
    }
}

/// This machine's host name.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// A held run lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct RunLock {
    file: File,
    holder: LockHolder,
}

impl RunLock {
    /// What this lock advertises (our pid, command, start time).
    pub fn holder(&self) -> &LockHolder {
        &self.holder
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Clear our details while still holding the lock; the flock goes with the descriptor.
        let _ = self.file.set_len(0);
    }
}

impl Store {
    fn run_lock_path(&self) -> PathBuf {
        self.root().join("run.lock")
    }

    fn open_run_lock(&self) -> Result<File> {
        let path = self.run_lock_path();
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(StoreError::io("opening", &path))
    }

    /// Reads the holder details, retrying briefly while the holder is still writing them.
    fn read_holder(&self) -> LockHolder {
        let path = self.run_lock_path();
        for _ in 0..20 {
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Ok(h) = serde_json::from_str::<LockHolder>(&text) {
                    return h;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        LockHolder {
            pid: 0,
            command: "unknown".into(),
            since: now_secs(),
            host: None,
            job: None,
        }
    }

    /// Takes the run lock. If another live process holds it: with `wait = false` fails at once
    /// with [`StoreError::Locked`] naming its pid and command; with `wait = true` logs once
    /// "waiting for pid N (cmd)" and blocks until it is released. A process must not call this
    /// while it already holds a [`RunLock`] on the same store (it would wait for itself).
    pub fn lock_run(&self, wait: bool, command: &str) -> Result<RunLock> {
        let path = self.run_lock_path();
        let file = self.open_run_lock()?;
        // A `run_lock_holder` probe holds a shared lock for microseconds: retry briefly
        // before concluding that a run holds it.
        let mut attempt = file.try_lock();
        for _ in 0..5 {
            if !matches!(attempt, Err(TryLockError::WouldBlock)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            attempt = file.try_lock();
        }
        match attempt {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let h = self.read_holder();
                if !wait {
                    return Err(StoreError::Locked {
                        pid: h.pid,
                        command: h.command,
                        since: h.since,
                    });
                }
                tracing::info!(
                    "waiting for pid {} ({}) to finish with the store",
                    h.pid,
                    h.command
                );
                file.lock().map_err(StoreError::io("locking", &path))?;
            }
            Err(TryLockError::Error(e)) => return Err(StoreError::io("locking", &path)(e)),
        }
        let holder = LockHolder {
            pid: std::process::id(),
            command: command.to_string(),
            since: now_secs(),
            host: hostname(),
            job: std::env::var("SLURM_JOB_ID").ok().filter(|j| !j.is_empty()),
        };
        let text = serde_json::to_string(&holder).map_err(StoreError::json("encoding run lock"))?;
        let mut f = &file;
        // Truncate first: that frees the old details' block, so a full disk rarely bites.
        let written = f
            .set_len(0)
            .and_then(|_| f.write_all(text.as_bytes()))
            .and_then(|_| f.sync_data());
        match written {
            Ok(()) => {}
            Err(e) if crate::space::is_out_of_space(&e) => {
                let _ = f.set_len(0);
                tracing::warn!(
                    "{}: no space to record who holds the run lock; holding it anyway",
                    path.display()
                );
            }
            Err(e) => return Err(StoreError::io("writing", &path)(e)),
        }
        Ok(RunLock { file, holder })
    }

    /// Who holds the run lock right now, if anyone (non-blocking; `None` also when the lock
    /// file cannot be opened).
    pub fn run_lock_holder(&self) -> Option<LockHolder> {
        let file = self.open_run_lock().ok()?;
        match file.try_lock_shared() {
            Ok(()) => None, // nobody holds it exclusively; our shared lock goes with `file`
            Err(TryLockError::WouldBlock) => Some(self.read_holder()),
            Err(TryLockError::Error(_)) => None,
        }
    }
}
