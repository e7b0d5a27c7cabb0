//! Garbage collection: delete artifacts (and work dirs, logs, records) that nothing keeps.
//!
//! Invariants:
//! - a pinned key, a key the caller keeps, and a key whose record is `Running` by a live pid
//!   are never touched; pins are read from their durable files, and an unreadable pin file
//!   stops gc (never "no pins");
//! - no `Done` record is ever served for a half-deleted artifact: a doomed artifact leaves
//!   `artifacts/` in one rename into `tmp/` before it is deleted (on a filesystem too full even
//!   for that rename, its manifest is removed first, which makes it incomplete, then the rest);
//! - normally records are removed first, then files, so a crash midway leaves at worst an
//!   unrecorded complete artifact (adopted later). On a full disk files go first — a `Done`
//!   record without its artifact counts as absent — and the records follow once the
//!   deletions have freed space. So gc frees space on a full disk, which is what it is for
//!   then; it writes nothing before deleting (the run lock is taken even when its holder
//!   details cannot be written, see `runlock.rs`);
//! - gc opens the index only with [`index_room`] free: sled writes while it opens (up to a
//!   512 KiB segment tail, a snapshot) and a write that fails half-way keeps the blocks it got,
//!   so a hopeless attempt would swallow the space just freed. Record removals it cannot do
//!   are reported in [`GcReport::index_error`] and done by the next gc; meanwhile those
//!   records have no artifact and count as absent.

use crate::maint::entry_names;
use crate::publish::MANIFEST_FILE;
use crate::record::{NodeRecord, Status};
use crate::space::SPACE_MARGIN;
use crate::{pid_alive, Result, Store, StoreError};
use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::Path;

/// What [`Store::gc`] removed (or would remove, in a dry run).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// (key, bytes of artifact + work dir + log), sorted by key.
    pub removed: Vec<(String, u64)>,
    pub freed_bytes: u64,
    /// Set when files were deleted but the index could not be updated (the disk is still too
    /// full): the deleted artifacts' records count as absent meanwhile, and the next gc
    /// removes them.
    pub index_error: Option<String>,
}

pub(crate) fn dir_bytes(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Free bytes gc wants before opening the index to remove `n` records: the store's margin
/// plus a generous allowance per record.
pub(crate) fn index_room(n: usize) -> u64 {
    SPACE_MARGIN + 512 * n as u64
}

/// Keys of `Running` records whose process is alive.
fn live_keys(records: &[NodeRecord]) -> HashSet<String> {
    records
        .iter()
        .filter(|r| r.status == Status::Running && r.pid.is_some_and(pid_alive))
        .map(|r| r.key.clone())
        .collect()
}

impl Store {
    /// Removes every artifact (with its record, work dir and log) whose key is neither in
    /// `keep` nor pinned, and work dirs/logs/records of such keys without artifacts. Never
    /// touches a key whose record is `Running` with a live pid. Works on a full disk (see the
    /// module doc): when the index cannot even be read there, live records are unknown and gc
    /// relies on the run lock, which the caller should hold in any case.
    pub fn gc(&self, keep: &HashSet<String>, dry_run: bool) -> Result<GcReport> {
        let pinned: HashSet<String> = self.pins()?.into_values().flatten().collect();
        let records = match self
            .room_for(index_room(0), "reading the index")
            .and_then(|()| self.with_index(|ix| ix.all_records()))
        {
            Ok(r) => Some(r),
            Err(e) if e.is_disk_full() => {
                tracing::warn!("gc: {e}; deleting unreachable artifacts first");
                None
            }
            Err(e) => return Err(e),
        };
        let live = live_keys(records.as_deref().unwrap_or_default());
        let doomed = |k: &str, live: &HashSet<String>| {
            !keep.contains(k) && !pinned.contains(k) && !live.contains(k)
        };
        let mut candidates: BTreeSet<String> = BTreeSet::new();
        candidates.extend(entry_names(&self.artifacts_root())?);
        candidates.extend(entry_names(&self.root().join("work"))?);
        candidates.extend(
            entry_names(&self.root().join("logs"))?
                .into_iter()
                .filter_map(|n| n.strip_suffix(".log").map(str::to_string)),
        );
        candidates.extend(records.iter().flatten().map(|r| r.key.clone()));
        candidates.retain(|k| doomed(k, &live));

        let mut report = GcReport::default();
        for key in &candidates {
            let log = self.log_path(key);
            let bytes = dir_bytes(&self.artifact_dir(key))
                + dir_bytes(&self.work_dir(key))
                + fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            report.removed.push((key.clone(), bytes));
            report.freed_bytes += bytes;
        }
        if dry_run || (candidates.is_empty() && records.is_some()) {
            return Ok(report);
        }
        let mut recorded = false;
        if records.is_some() {
            let removed = self
                .room_for(index_room(candidates.len()), "removing records")
                .and_then(|()| {
                    self.with_index(|ix| {
                        for key in &candidates {
                            ix.remove_record(key)?;
                        }
                        Ok(())
                    })
                });
            match removed {
                Ok(()) => recorded = true,
                Err(e) if e.is_disk_full() => {
                    tracing::warn!("gc: {e}; deleting the artifacts first")
                }
                Err(e) => return Err(e),
            }
        }
        for key in &candidates {
            for dir in [self.artifact_dir(key), self.work_dir(key)] {
                if dir.exists() {
                    self.remove_doomed(&dir, key)?;
                }
            }
            let log = self.log_path(key);
            if log.exists() {
                fs::remove_file(&log).map_err(StoreError::io("removing", &log))?;
            }
        }
        if !recorded {
            // Space is free now: remove the records of what was deleted, and of keys that
            // only have a record (unknown before if the index could not be read).
            match self.remove_records_after(&candidates, &doomed) {
                Ok(extra) => {
                    report.removed.extend(extra.into_iter().map(|k| (k, 0)));
                    report.removed.sort();
                }
                Err(e) if e.is_disk_full() => report.index_error = Some(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        // Leftovers of an earlier gc that crashed mid-delete.
        for name in entry_names(&self.tmp_dir())? {
            if name.starts_with("rm-") {
                let _ = fs::remove_dir_all(self.tmp_dir().join(name));
            }
        }
        Ok(report)
    }

    /// Removes the records of `deleted` keys and of every other key `doomed` says goes (given
    /// the live keys); returns the latter.
    fn remove_records_after(
        &self,
        deleted: &BTreeSet<String>,
        doomed: &dyn Fn(&str, &HashSet<String>) -> bool,
    ) -> Result<Vec<String>> {
        self.room_for(index_room(deleted.len()), "updating the index after gc")?;
        let recs = self.with_index(|ix| ix.all_records())?;
        let live = live_keys(&recs);
        let gone: Vec<String> = recs
            .into_iter()
            .map(|r| r.key)
            .filter(|k| deleted.contains(k) || doomed(k, &live))
            .collect();
        self.room_for(index_room(gone.len()), "updating the index after gc")?;
        self.with_index(|ix| {
            for k in &gone {
                ix.remove_record(k)?;
            }
            Ok(())
        })?;
        Ok(gone.into_iter().filter(|k| !deleted.contains(k)).collect())
    }

    /// [`StoreError::DiskFull`] for `what` unless `bytes` are free (passes if free space
    /// cannot be told).
    fn room_for(&self, bytes: u64, what: &str) -> Result<()> {
        let available = self.free_space().unwrap_or(u64::MAX);
        if available >= bytes {
            return Ok(());
        }
        Err(StoreError::DiskFull {
            what: format!("gc: {what}"),
            path: self.root().to_path_buf(),
            needed: Some(bytes),
            available: Some(available),
        })
    }

    /// Deletes `dir` (an artifact or work dir of `key`): out of sight by one rename into
    /// `tmp/`, then recursively. If the rename fails for lack of space (a new directory entry
    /// in `tmp/`), deletes in place, `MANIFEST.json` first so the artifact is incomplete (never
    /// served) before anything else goes.
    fn remove_doomed(&self, dir: &Path, key: &str) -> Result<()> {
        match self.remove_via_tmp(dir, key) {
            Err(StoreError::DiskFull { .. }) if dir.exists() => {
                let manifest = dir.join(MANIFEST_FILE);
                match fs::remove_file(&manifest) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io("removing", &manifest)(e)),
                }
                fs::remove_dir_all(dir).map_err(StoreError::io("removing", dir))
            }
            other => other,
        }
    }
}
