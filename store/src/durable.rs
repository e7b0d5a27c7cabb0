//! Pins and run history as small durable files beside the artifacts, so that losing or
//! rebuilding the sled index never loses them (a pin lost is an artifact gc deletes).
//!
//! Layout under the store root:
//!
//! ```text
//! pins/<name>.json   {"name": …, "keys": […]}; <name> file-safe (see `pin_file_name`)
//! runs/<id>.json     one RunInfo per `temper run`
//! durable.v1         marker: pins and runs written out of sled (migration done)
//! ```
//!
//! Invariants:
//! - the files are the truth: every read of pins and runs comes from them. The sled trees
//!   `pins` and `runs` are a best-effort mirror (kept for older binaries and tools); a failure
//!   to update it is logged and ignored, and [`Store::rebuild_index`] rewrites it from the files;
//! - each file is replaced atomically: written to a hidden `.<file>.tmp-<pid>`, fsynced, renamed
//!   over the old one, and the directory fsynced. A crash leaves the old or the new content,
//!   never a mix; a stray tmp file is hidden and ignored. A write that finds the disk full
//!   fails with [`StoreError::DiskFull`] and changes nothing;
//! - removing a pin writes no new bytes (unlink + directory fsync), so it works on a full disk;
//! - every access holds the index lock (`index.lock`), so writers never interleave;
//! - migration: a store made before these files existed has pins and runs only in sled. The
//!   first access copies them out (files already present win), then writes the marker; until
//!   the marker exists every access retries, so a crash midway loses nothing. A rebuild of an
//!   unmigrated index migrates what it can salvage from the old index before deleting it.

use crate::index::{PINS, RUNS};
use crate::record::RunInfo;
use crate::{now_secs, Result, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Directory of pin files.
pub(crate) const PINS_DIR: &str = "pins";
/// Directory of run files.
pub(crate) const RUNS_DIR: &str = "runs";
/// Marker file: pins and runs have been migrated out of sled.
pub(crate) const MARKER: &str = "durable.v1";

/// Content of `pins/<name>.json`.
#[derive(Serialize, Deserialize)]
struct PinFile {
    name: String,
    keys: Vec<String>,
}

fn fsync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::io("fsyncing", dir))
}

/// Replaces `path` with `bytes` atomically and durably (tmp file, fsync, rename, fsync dir).
/// On failure the tmp file is removed and `path` is unchanged.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(StoreError::io("creating directory", dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|_| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::io("writing", path)(e));
    }
    fsync_dir(dir)
}

/// Removes `path` durably; returns whether it existed.
fn remove_durably(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StoreError::io("removing", path)(e)),
    }
    fsync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(true)
}

/// The file name of pin `name`: ASCII letters, digits, `_`, `-` and (not first) `.` kept,
/// every other byte `%XX`; an empty or very long name becomes `=<blake3 of the name>`. The
/// real name is inside the file, so the mapping never needs reversing.
fn pin_file_name(name: &str) -> String {
    let mut s = String::new();
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    if s.is_empty() || s.len() > 200 {
        s = format!("={}", blake3::hash(name.as_bytes()).to_hex());
    }
    format!("{s}.json")
}

/// Non-hidden `*.json` files of `dir` (none if it does not exist): (stem, path).
fn json_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    Ok(crate::maint::entry_names(dir)?
        .into_iter()
        .filter_map(|name| {
            let stem = name.strip_suffix(".json")?.to_string();
            Some((stem, dir.join(&name)))
        })
        .collect())
}

/// Reads and decodes the JSON file `path`; `None` when it does not exist.
pub(crate) fn read_json_opt<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("reading", path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(StoreError::json(format!("decoding {}", path.display())))
}

pub(crate) fn write_pin(root: &Path, name: &str, keys: &[String]) -> Result<()> {
    let file = PinFile {
        name: name.to_string(),
        keys: keys.to_vec(),
    };
    let bytes = serde_json::to_vec_pretty(&file).map_err(StoreError::json("encoding pin"))?;
    write_atomic(&root.join(PINS_DIR).join(pin_file_name(name)), &bytes)
}

pub(crate) fn remove_pin(root: &Path, name: &str) -> Result<bool> {
    remove_durably(&root.join(PINS_DIR).join(pin_file_name(name)))
}

/// Every pin. An unreadable pin file is an error (naming it), never skipped: skipping it would
/// let gc delete what it protects.
pub(crate) fn read_pins(root: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    for (_, path) in json_files(&root.join(PINS_DIR))? {
        let bytes = fs::read(&path).map_err(StoreError::io("reading", &path))?;
        let pin: PinFile = serde_json::from_slice(&bytes).map_err(StoreError::json(format!(
            "decoding pin file {}",
            path.display()
        )))?;
        out.insert(pin.name, pin.keys);
    }
    Ok(out)
}

fn run_path(root: &Path, id: u64) -> PathBuf {
    root.join(RUNS_DIR).join(format!("{id}.json"))
}

pub(crate) fn write_run(root: &Path, run: &RunInfo) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(run).map_err(StoreError::json("encoding run"))?;
    write_atomic(&run_path(root, run.id), &bytes)
}

pub(crate) fn read_run(root: &Path, id: u64) -> Result<Option<RunInfo>> {
    read_json_opt(&run_path(root, id))
}

/// Ids of the run files, ascending.
pub(crate) fn run_ids(root: &Path) -> Result<Vec<u64>> {
    let mut ids: Vec<u64> = json_files(&root.join(RUNS_DIR))?
        .into_iter()
        .filter_map(|(stem, _)| stem.parse().ok())
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// The `limit` most recent runs, newest first (undecodable files skipped with a warning).
pub(crate) fn read_runs(root: &Path, limit: usize) -> Result<Vec<RunInfo>> {
    let mut out = Vec::new();
    for id in run_ids(root)?.into_iter().rev() {
        if out.len() >= limit {
            break;
        }
        match read_run(root, id) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(e) => tracing::warn!("skipping run {id}: {e}"),
        }
    }
    Ok(out)
}

/// Decodes sled `pins` entries (name → JSON key list) and `runs` entries (big-endian id →
/// JSON RunInfo) and writes each one that has no file yet, then the marker.
pub(crate) fn migrate_entries(
    root: &Path,
    pins: Vec<(Vec<u8>, Vec<u8>)>,
    runs: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<()> {
    let have = read_pins(root)?;
    let (mut n_pins, mut n_runs) = (0, 0);
    for (k, v) in pins {
        let name = String::from_utf8_lossy(&k).into_owned();
        if have.contains_key(&name) {
            continue;
        }
        let keys: Vec<String> = serde_json::from_slice(&v).map_err(StoreError::json(format!(
            "decoding pin {name} in the index"
        )))?;
        write_pin(root, &name, &keys)?;
        n_pins += 1;
    }
    for (_, v) in runs {
        match serde_json::from_slice::<RunInfo>(&v) {
            Ok(run) if read_run(root, run.id).ok().flatten().is_none() => {
                write_run(root, &run)?;
                n_runs += 1;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("not migrating an undecodable run record: {e}"),
        }
    }
    for dir in [PINS_DIR, RUNS_DIR] {
        let d = root.join(dir);
        fs::create_dir_all(&d).map_err(StoreError::io("creating directory", &d))?;
    }
    write_atomic(
        &root.join(MARKER),
        format!(
            "pins and runs live in {PINS_DIR}/ and {RUNS_DIR}/ since {}\n",
            now_secs()
        )
        .as_bytes(),
    )?;
    if n_pins + n_runs > 0 {
        tracing::info!(
            "store: moved {n_pins} pin(s) and {n_runs} run(s) out of the index into files"
        );
    }
    Ok(())
}

/// Every entry of sled tree `name` (none if it cannot be read).
pub(crate) fn tree_entries(db: &sled::Db, name: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(tree) = db.open_tree(name) else {
        return Vec::new();
    };
    tree.iter()
        .filter_map(|kv| kv.ok())
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

impl Store {
    fn migrated(&self) -> bool {
        self.root().join(MARKER).is_file()
    }

    /// Migrates pins and runs out of `db` unless done already. The caller holds the index lock.
    pub(crate) fn ensure_migrated(&self, db: &sled::Db) -> Result<()> {
        if self.migrated() {
            return Ok(());
        }
        migrate_entries(self.root(), tree_entries(db, PINS), tree_entries(db, RUNS))
    }

    /// [`Store::ensure_migrated`], opening sled only if the migration is still to do.
    fn ensure_migrated_locked(&self) -> Result<()> {
        if self.migrated() {
            return Ok(());
        }
        let db = self.open_db_locked()?;
        self.ensure_migrated(&db)
    }

    /// Best effort: applies `f` to the sled mirror and flushes. Failures (a full disk, a busy
    /// or corrupt index) are logged, never returned: the files are the truth.
    fn mirror_locked(&self, what: &str, f: impl FnOnce(&sled::Db) -> sled::Result<()>) {
        let res = self.open_db_locked().and_then(|db| {
            f(&db)
                .and_then(|_| db.flush().map(|_| ()))
                .map_err(|e| StoreError::index(self.index_path(), e))
        });
        if let Err(e) = res {
            tracing::warn!("{what}: the index copy was not updated (the store's files were): {e}");
        }
    }

    /// Runs `f` on the durable files under the index lock, migrating first if needed.
    fn with_durable<T>(&self, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
        let _guard = self.lock_index()?;
        self.ensure_migrated_locked()?;
        f(self.root())
    }

    /// Sets pin `name` to `keys` (replacing it); gc keeps pinned keys. Durable in
    /// `pins/<name>.json` before this returns.
    pub fn pin(&self, name: &str, keys: &[String]) -> Result<()> {
        self.with_durable(|root| {
            write_pin(root, name, keys)?;
            let value = serde_json::to_vec(keys).map_err(StoreError::json("encoding pin"))?;
            self.mirror_locked("pin", |db| {
                db.open_tree(PINS)?.insert(name.as_bytes(), value)?;
                Ok(())
            });
            Ok(())
        })
    }

    /// Removes pin `name`; returns whether it existed. Writes no new bytes before the pin file
    /// is gone, so it works on a full disk.
    pub fn unpin(&self, name: &str) -> Result<bool> {
        self.with_durable(|root| {
            let existed = remove_pin(root, name)?;
            self.mirror_locked("unpin", |db| {
                db.open_tree(PINS)?.remove(name.as_bytes())?;
                Ok(())
            });
            Ok(existed)
        })
    }

    /// All pins by name (read from the pin files; sled is not opened once migrated).
    pub fn pins(&self) -> Result<BTreeMap<String, Vec<String>>> {
        self.with_durable(read_pins)
    }

    /// Starts a run: allocates the next id (one more than the highest ever recorded, so
    /// numbering continues across index rebuilds) and records it (pid, command, start time).
    pub fn begin_run(&self, command: &str, recipe: &str) -> Result<RunInfo> {
        self.with_durable(|root| {
            let last = run_ids(root)?.last().copied().unwrap_or(0);
            let run = RunInfo::started(last + 1, command, recipe);
            self.store_run_locked(&run)?;
            Ok(run)
        })
    }

    /// Records the end of run `id` with the nodes it touched and whether all succeeded.
    pub fn finish_run(
        &self,
        id: u64,
        nodes: Vec<(String, String, crate::Status)>,
        ok: bool,
    ) -> Result<RunInfo> {
        self.with_durable(|root| {
            let mut run = read_run(root, id)?.unwrap_or_else(|| RunInfo::started(id, "", ""));
            run.finished_at = Some(now_secs());
            run.nodes = nodes;
            run.ok = Some(ok);
            self.store_run_locked(&run)?;
            Ok(run)
        })
    }

    /// Replaces run `run.id` (progress updates during a run).
    pub fn put_run(&self, run: &RunInfo) -> Result<()> {
        self.with_durable(|_| self.store_run_locked(run))
    }

    fn store_run_locked(&self, run: &RunInfo) -> Result<()> {
        write_run(self.root(), run)?;
        let value = serde_json::to_vec(run).map_err(StoreError::json("encoding run"))?;
        self.mirror_locked("recording the run", |db| {
            db.open_tree(RUNS)?.insert(run.id.to_be_bytes(), value)?;
            Ok(())
        });
        Ok(())
    }

    /// The `limit` most recent runs, newest first.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunInfo>> {
        self.with_durable(|root| read_runs(root, limit))
    }

    /// The most recent run.
    pub fn last_run(&self) -> Result<Option<RunInfo>> {
        Ok(self.runs(1)?.into_iter().next())
    }
}
