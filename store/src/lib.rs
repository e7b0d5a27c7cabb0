//! temper's embedded store. A sled index (node records with key trees, lineage, file-hash
//! cache) beside content-addressed artifact directories named by node key, each with a
//! manifest written last, and small durable files for pins and runs. Publishing is atomic;
//! locks recover from dead processes; the index can be rebuilt from the manifests and those
//! files; a full disk fails cleanly and loses nothing. Knows nothing of torch or recipes.
//!
//! Layout under the store root (the runner picks it, default `./.temper/`):
//!
//! ```text
//! index/              sled database (a cache, rebuildable from the manifests and pins/, runs/)
//! index.lock          flock taken around every index open (see [`Store::with_index`])
//! run.lock            flock held by a running `temper run`; holds its pid, command and start
//! pins/<name>.json    pins (the truth; mirrored in sled), see `durable.rs`
//! runs/<id>.json      run history (the truth; mirrored in sled)
//! durable.v1          marker: pins and runs were moved out of sled (older stores migrate)
//! artifacts/<key>/    published artifacts, read-only once there, `MANIFEST.json` inside
//! damaged/<key>.json  verify found `<key>`'s artifact damaged (see `damage.rs`)
//! damaged/<key>-<t>/  a damaged artifact (and its work dir) a run moved aside to rebuild it
//! work/<key>/         a node's persistent work dir (checkpoints, `out/` staging, metrics)
//! logs/<key>.log      per-node log
//! tmp/                scratch (gc moves doomed artifacts here before deleting them)
//! ```
//!
//! Invariants:
//! - no process keeps sled open: every index access is one short [`Store::with_index`] call,
//!   so read-only commands work while a run is going;
//! - a node is `Done` only if its artifact is complete: publish writes the manifest last,
//!   fsyncs, renames into `artifacts/`, and only then records; a crash at any instant leaves no
//!   `Done` record or a complete artifact (an unrecorded complete artifact is adopted);
//! - an artifact whose files changed since publishing (size, time confirmed by hash, or a
//!   verify marker) is *damaged*: never served, moved aside and rebuilt by a run;
//! - the index is a cache: [`Store::rebuild_index`] recreates the node records from manifests
//!   and its pin and run mirrors from their files; pins and runs are written atomically
//!   (tmp, fsync, rename, fsync dir) before the index, so no index loss or corruption loses
//!   them, and run ids keep growing;
//! - a full disk is [`StoreError::DiskFull`] with a hint, never a corrupt index:
//!   [`Store::publish`] checks free space before writing its manifest
//!   ([`Store::ensure_space`]), unfinished sled snapshots are cleared before every open, and
//!   an index that looks corrupt on a nearly full disk is not rebuilt; `gc`, `unpin`,
//!   `verify` and taking the run lock write nothing before they free space.

mod checkpoints;
mod damage;
mod durable;
mod error;
mod filehash;
mod gc;
pub mod human;
mod index;
mod maint;
mod publish;
mod record;
mod runlock;
mod space;

pub use checkpoints::Checkpoints;
pub use damage::{Damage, DamagedCopy, DAMAGED_DIR, DAMAGE_FILE};
pub use durable::write_atomic;
pub use error::{Result, StoreError, DISK_FULL_HINT};
pub use filehash::FileHashEntry;
pub use gc::GcReport;
pub use human::human_bytes;
pub use index::Index;
pub use maint::{VerifyIssue, VerifyReport};
pub use publish::{Manifest, ManifestFile, Stamp, MANIFEST_FILE};
pub use record::{identity, EffectiveStatus, NodeRecord, RunInfo, Status};
pub use runlock::{hostname, LockHolder, RunLock};
pub use space::{free_space_at, is_out_of_space, SPACE_MARGIN};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A handle on a store directory. Cheap to clone; holds no open database or lock.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    /// Bytes actually read to compute content hashes (cache misses), for tests and stats.
    hashed_bytes: Arc<AtomicU64>,
}

impl Store {
    /// Opens (creating if needed) the store at `root`: makes the directory layout. Does not
    /// open the index; that happens per operation.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root: PathBuf = root.into();
        for sub in ["", "artifacts", "work", "logs", "tmp"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir)
                .map_err(StoreError::io("creating store directory", &dir))?;
        }
        let root = root
            .canonicalize()
            .map_err(StoreError::io("resolving store directory", &root))?;
        Ok(Store {
            root,
            hashed_bytes: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The store root (absolute).
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `artifacts/<key>`: the published artifact (may not exist).
    pub fn artifact_dir(&self, key: &str) -> PathBuf {
        self.root.join("artifacts").join(key)
    }
    /// `work/<key>`: the node's persistent work directory (may not exist).
    pub fn work_dir(&self, key: &str) -> PathBuf {
        self.root.join("work").join(key)
    }
    /// `work/<key>/out`: where a stage writes its output before [`Store::publish`].
    pub fn staging_dir(&self, key: &str) -> PathBuf {
        self.work_dir(key).join("out")
    }
    /// `logs/<key>.log`.
    pub fn log_path(&self, key: &str) -> PathBuf {
        self.root.join("logs").join(format!("{key}.log"))
    }
    /// `tmp/`: scratch space on the store's filesystem.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub(crate) fn artifacts_root(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    /// Creates the work directory and an *empty* staging directory for `key` (leftovers of an
    /// earlier attempt's output are removed; checkpoints elsewhere in the work dir are kept).
    pub fn prepare_staging(&self, key: &str) -> Result<PathBuf> {
        let out = self.staging_dir(key);
        if out.exists() {
            std::fs::remove_dir_all(&out).map_err(StoreError::io("clearing staging dir", &out))?;
        }
        std::fs::create_dir_all(&out).map_err(StoreError::io("creating staging dir", &out))?;
        Ok(out)
    }

    /// Total bytes read to compute file content hashes by this handle (and its clones); cache
    /// hits read nothing.
    pub fn bytes_hashed(&self) -> u64 {
        self.hashed_bytes.load(Ordering::Relaxed)
    }
    pub(crate) fn count_hashed(&self, n: u64) {
        self.hashed_bytes.fetch_add(n, Ordering::Relaxed);
    }
}

/// Seconds since the Unix epoch as f64 (0 if the clock is before 1970).
pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Whether process `pid` is alive (`kill(pid, 0)` succeeds or fails with `EPERM`).
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 performs only the existence/permission check; no signal is sent.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Crash-test hook: if the environment variable `TEMPER_CRASH_AT` equals `point`, the process
/// aborts at once (no unwinding, no destructors, like `kill -9`). Used by tests to prove that a
/// crash at `publish:before-manifest`, `publish:after-manifest`, `publish:after-rename` or
/// `publish:after-record` leaves the store consistent. Never set it in normal use.
pub fn crash_point(point: &str) {
    if std::env::var_os("TEMPER_CRASH_AT").is_some_and(|v| v == point) {
        std::process::abort();
    }
}
