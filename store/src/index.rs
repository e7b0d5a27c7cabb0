//! Short-lived access to the sled index.
//!
//! sled takes an exclusive lock on its files for as long as a `Db` is open, and a second open
//! fails even in the same process. So no process keeps it open: [`Store::with_index`] takes an
//! exclusive `flock` on `index.lock` (waiting up to [`INDEX_LOCK_TIMEOUT`]), opens sled, runs the
//! closure, flushes, closes sled and releases the flock. Threads of one process are serialised
//! by a mutex first, so they do not poll each other. Batch work into one closure: one open
//! costs ~8 ms with 2,000 records (measured by `open_close_cost_with_2000_records` in
//! `tests/index.rs`).
//!
//! A full disk: sled 0.34 writes a snapshot (`snap.<lsn>.generating`, renamed into place once
//! complete) while it opens. When the disk is full that write fails and leaves the empty
//! `.generating` file behind, and sled's next open takes it for the newest snapshot and reports
//! corruption — which is how a full disk used to get a healthy index "rebuilt" and its pins and
//! runs lost. [`open_sled`] removes such leftovers first (safe: only an open writes snapshots,
//! and opens happen under the index lock); out-of-space errors surface as
//! [`StoreError::DiskFull`]; and a corrupt-looking index on a nearly full disk is left alone
//! (reported as disk full) rather than rebuilt.

use crate::durable;
use crate::record::{NodeRecord, RunInfo};
use crate::space::{free_space_at, SPACE_MARGIN};
use crate::{Result, Store, StoreError};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long [`Store::with_index`] waits for another process to release the index.
pub const INDEX_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// sled tree names.
pub(crate) const NODES: &str = "nodes";
pub(crate) const LINEAGE: &str = "lineage";
pub(crate) const RUNS: &str = "runs";
pub(crate) const PINS: &str = "pins";
pub(crate) const FILEHASH: &str = "filehash";

static IN_PROCESS: Mutex<()> = Mutex::new(());
thread_local! {
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// Holds the in-process mutex and the `index.lock` flock; releases both on drop.
pub(crate) struct IndexGuard {
    _file: File,
    _mutex: std::sync::MutexGuard<'static, ()>,
}

impl Drop for IndexGuard {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(false));
        // The flock goes with the file descriptor; the mutex with its guard.
    }
}

impl Store {
    pub(crate) fn index_path(&self) -> PathBuf {
        self.root().join("index")
    }

    /// Takes the index lock (in-process mutex, then flock with timeout).
    pub(crate) fn lock_index(&self) -> Result<IndexGuard> {
        if ACTIVE.with(|a| a.get()) {
            return Err(StoreError::Reentrant);
        }
        let mutex = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.root().join("index.lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(StoreError::io("opening", &path))?;
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    if start.elapsed() >= INDEX_LOCK_TIMEOUT {
                        return Err(StoreError::IndexBusy {
                            path,
                            waited_s: start.elapsed().as_secs_f64(),
                        });
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(TryLockError::Error(e)) => return Err(StoreError::io("locking", &path)(e)),
            }
        }
        ACTIVE.with(|a| a.set(true));
        Ok(IndexGuard {
            _file: file,
            _mutex: mutex,
        })
    }

    /// Runs `f` with the index open, then flushes and closes it. All index access goes through
    /// here; put many reads/writes in one closure (one open/close). Not reentrant: calling it
    /// from inside `f` returns [`StoreError::Reentrant`]. If sled reports corruption on open, the
    /// index is rebuilt from the manifests and the pin and run files first (failed-attempt
    /// records, lineage and the file-hash cache are lost unless the old index can still be
    /// read); on a nearly full disk it is not rebuilt but reported as [`StoreError::DiskFull`].
    /// A full disk while opening or flushing is [`StoreError::DiskFull`].
    pub fn with_index<T>(&self, f: impl FnOnce(&Index) -> Result<T>) -> Result<T> {
        let _guard = self.lock_index()?;
        let db = self.open_db_locked()?;
        self.ensure_migrated(&db)?;
        let ix = Index {
            db,
            path: self.index_path(),
            root: self.root().to_path_buf(),
        };
        let out = f(&ix);
        let flushed = ix.db.flush();
        drop(ix);
        let out = out?;
        flushed.map_err(|source| StoreError::index(self.index_path(), source))?;
        Ok(out)
    }

    /// Opens sled; the caller holds the index guard. Recovers from corruption by rebuilding,
    /// except on a nearly full disk.
    pub(crate) fn open_db_locked(&self) -> Result<sled::Db> {
        let path = self.index_path();
        match open_sled(&path) {
            Ok(db) => Ok(db),
            Err(OpenError::Corrupt(why)) => {
                let available = free_space_at(self.root()).unwrap_or(u64::MAX);
                if available < SPACE_MARGIN {
                    tracing::warn!(
                        "store index {} cannot be opened ({why}) and the disk is nearly full; \
                         not rebuilding it until space is freed",
                        path.display()
                    );
                    return Err(StoreError::DiskFull {
                        what: "opening the index".into(),
                        path,
                        needed: Some(SPACE_MARGIN),
                        available: Some(available),
                    });
                }
                tracing::warn!(
                    "store index {} is corrupt ({why}); rebuilding it from the artifact manifests",
                    path.display()
                );
                let (db, n) = self.rebuild_locked()?;
                tracing::warn!("store index rebuilt: {n} artifacts recorded");
                Ok(db)
            }
            Err(OpenError::Other(source)) => Err(StoreError::index(path, source)),
        }
    }
}

pub(crate) enum OpenError {
    Corrupt(String),
    Other(sled::Error),
}

/// Removes `snap.*.generating` files from the sled directory `path`: snapshots whose writing
/// was interrupted (typically by a full disk). sled renames a snapshot into place only once it
/// is complete and fsynced, so these are never needed; left behind, sled's next open reads one
/// as the newest snapshot and reports corruption. Only call with the index lock held.
fn remove_unfinished_snapshots(path: &Path) {
    let Ok(rd) = std::fs::read_dir(path) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            if let Err(err) = std::fs::remove_file(e.path()) {
                tracing::warn!("removing unfinished index snapshot {name}: {err}");
            }
        }
    }
}

/// Opens sled at `path` with no background flusher (we flush explicitly before closing, and
/// a flusher thread would delay every close). A lock conflict with a `Db` still being torn
/// down in this process is retried briefly; a panic inside sled counts as corruption.
/// Unfinished snapshots are removed before (and after a failed) open. The caller holds the
/// index lock.
pub(crate) fn open_sled(path: &Path) -> Result<sled::Db, OpenError> {
    remove_unfinished_snapshots(path);
    let res = open_sled_inner(path);
    if res.is_err() {
        remove_unfinished_snapshots(path);
    }
    res
}

fn open_sled_inner(path: &Path) -> Result<sled::Db, OpenError> {
    let config = sled::Config::new()
        .path(path)
        .flush_every_ms(None)
        .cache_capacity(16 * 1024 * 1024);
    let start = Instant::now();
    loop {
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
        match attempt {
            Ok(Ok(db)) => return Ok(db),
            Ok(Err(sled::Error::Io(e)))
                if e.to_string().contains("could not acquire lock")
                    && start.elapsed() < Duration::from_secs(5) =>
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(Err(e @ sled::Error::Corruption { .. })) => {
                return Err(OpenError::Corrupt(e.to_string()))
            }
            Ok(Err(e @ sled::Error::Unsupported(_))) => {
                return Err(OpenError::Corrupt(e.to_string()))
            }
            Ok(Err(e @ sled::Error::ReportableBug(_))) => {
                return Err(OpenError::Corrupt(e.to_string()))
            }
            Ok(Err(e)) => return Err(OpenError::Other(e)),
            Err(_) => return Err(OpenError::Corrupt("sled panicked while opening".into())),
        }
    }
}

/// The open index, valid inside a [`Store::with_index`] closure. Typed accessors for the sled
/// trees `nodes` (key → [`NodeRecord`]), `lineage` (`<recipe>/<instance id>` → last key) and
/// `filehash`; and for pins and runs, which live in durable files (`pins/`, `runs/`, see
/// `durable.rs`) mirrored in the sled trees `pins` (name → key list) and `runs` (big-endian
/// run id → [`RunInfo`]).
pub struct Index {
    pub(crate) db: sled::Db,
    path: PathBuf,
    root: PathBuf,
}

impl Index {
    /// The raw sled database, for anything the typed accessors lack.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    pub(crate) fn tree(&self, name: &str) -> Result<sled::Tree> {
        self.db.open_tree(name).map_err(|e| self.err(e))
    }
    pub(crate) fn err(&self, source: sled::Error) -> StoreError {
        StoreError::index(self.path.clone(), source)
    }
    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        tree: &str,
        key: &[u8],
    ) -> Result<Option<T>> {
        match self.tree(tree)?.get(key).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(StoreError::json(format!(
                    "decoding index entry {tree}/{}",
                    String::from_utf8_lossy(key)
                ))),
        }
    }
    fn put_json<T: serde::Serialize>(&self, tree: &str, key: &[u8], value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value)
            .map_err(StoreError::json(format!("encoding {tree} entry")))?;
        self.tree(tree)?
            .insert(key, bytes)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The record of node `key`, whatever its status.
    pub fn record(&self, key: &str) -> Result<Option<NodeRecord>> {
        self.get_json(NODES, key.as_bytes())
    }
    /// Inserts or replaces the record of `record.key`.
    pub fn put_record(&self, record: &NodeRecord) -> Result<()> {
        self.put_json(NODES, record.key.as_bytes(), record)
    }
    /// Removes the record of `key`; returns whether there was one.
    pub fn remove_record(&self, key: &str) -> Result<bool> {
        let old = self
            .tree(NODES)?
            .remove(key.as_bytes())
            .map_err(|e| self.err(e))?;
        Ok(old.is_some())
    }
    /// Every node record (undecodable entries are skipped with a warning).
    pub fn all_records(&self) -> Result<Vec<NodeRecord>> {
        self.decoded::<NodeRecord>(|_| true)
    }

    /// The records of run `run_id`, heads only ([`crate::record::RecordHead`]).
    pub fn run_records(&self, run_id: u64) -> Result<Vec<NodeRecord>> {
        let heads = self.decoded::<crate::record::RecordHead>(|h| h.run_id() == Some(run_id))?;
        Ok(heads.into_iter().map(|h| h.into_record()).collect())
    }

    /// The entries of the `nodes` tree decoded as `T` that `keep` keeps (undecodable entries are
    /// skipped with a warning).
    fn decoded<T: serde::de::DeserializeOwned>(&self, keep: impl Fn(&T) -> bool) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for item in self.tree(NODES)?.iter() {
            let (k, v) = item.map_err(|e| self.err(e))?;
            match serde_json::from_slice::<T>(&v) {
                Ok(r) if keep(&r) => out.push(r),
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    "skipping undecodable index record {}: {e}",
                    String::from_utf8_lossy(&k)
                ),
            }
        }
        Ok(out)
    }

    /// The key last built (or attempted) for `identity` = `<recipe>/<instance id>`.
    pub fn last_key(&self, identity: &str) -> Result<Option<String>> {
        let v = self
            .tree(LINEAGE)?
            .get(identity.as_bytes())
            .map_err(|e| self.err(e))?;
        Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }
    /// Records `key` as the last key of `identity`.
    pub fn set_last_key(&self, identity: &str, key: &str) -> Result<()> {
        self.tree(LINEAGE)?
            .insert(identity.as_bytes(), key.as_bytes())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The id the next run gets: one more than the largest ever recorded, in the run files or
    /// the sled mirror (ids start at 1).
    pub fn next_run_id(&self) -> Result<u64> {
        let last = self.tree(RUNS)?.last().map_err(|e| self.err(e))?;
        let in_sled = last.and_then(|(k, _)| run_id_from(&k)).unwrap_or(0);
        let in_files = durable::run_ids(&self.root)?.last().copied().unwrap_or(0);
        Ok(in_sled.max(in_files) + 1)
    }
    /// Inserts or replaces run `run.id` (its file first, then the sled mirror).
    pub fn put_run(&self, run: &RunInfo) -> Result<()> {
        durable::write_run(&self.root, run)?;
        self.put_json(RUNS, &run.id.to_be_bytes(), run)
    }
    /// Run `id`, if recorded.
    pub fn run(&self, id: u64) -> Result<Option<RunInfo>> {
        durable::read_run(&self.root, id)
    }
    /// The `limit` most recent runs, newest first.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunInfo>> {
        durable::read_runs(&self.root, limit)
    }

    /// Sets pin `name` to `keys` (replacing it): its file first, then the sled mirror.
    pub fn pin(&self, name: &str, keys: &[String]) -> Result<()> {
        durable::write_pin(&self.root, name, keys)?;
        self.put_json(PINS, name.as_bytes(), &keys)
    }
    /// Removes pin `name`; returns whether it existed.
    pub fn unpin(&self, name: &str) -> Result<bool> {
        let existed = durable::remove_pin(&self.root, name)?;
        self.tree(PINS)?
            .remove(name.as_bytes())
            .map_err(|e| self.err(e))?;
        Ok(existed)
    }
    /// All pins, by name (from the pin files).
    pub fn pins(&self) -> Result<BTreeMap<String, Vec<String>>> {
        durable::read_pins(&self.root)
    }
}

fn run_id_from(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}
