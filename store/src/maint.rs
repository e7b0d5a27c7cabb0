//! Maintenance: verify artifacts against their manifests, rebuild the index from the
//! manifests, and garbage-collect unreachable artifacts.

use crate::index::{open_sled, OpenError, LINEAGE, PINS, RUNS};
use crate::publish::{
    list_tree, read_manifest_at, record_from_manifest, size_problem, MANIFEST_FILE,
};
use crate::record::Status;
use crate::{pid_alive, Result, Store, StoreError};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::path::Path;

/// One problem found by [`Store::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyIssue {
    /// A file's content hash differs from the manifest's.
    Mismatch {
        key: String,
        path: String,
        expected: String,
        actual: String,
    },
    /// A file listed in the manifest is gone.
    MissingFile { key: String, path: String },
    /// A file is in the artifact but not in its manifest.
    ExtraFile { key: String, path: String },
    /// An artifact directory without `MANIFEST.json`.
    NoManifest { key: String },
    /// A manifest that cannot be decoded.
    BadManifest { key: String, error: String },
    /// A `Done` record whose artifact directory is missing.
    RecordWithoutArtifact { key: String, node: String },
}

impl std::fmt::Display for VerifyIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyIssue::Mismatch {
                key,
                path,
                expected,
                actual,
            } => write!(
                f,
                "{key}/{path}: content changed (manifest blake3 {expected}, now {actual})"
            ),
            VerifyIssue::MissingFile { key, path } => write!(f, "{key}/{path}: missing"),
            VerifyIssue::ExtraFile { key, path } => write!(f, "{key}/{path}: not in the manifest"),
            VerifyIssue::NoManifest { key } => write!(f, "{key}: artifact without {MANIFEST_FILE}"),
            VerifyIssue::BadManifest { key, error } => {
                write!(f, "{key}: unreadable manifest: {error}")
            }
            VerifyIssue::RecordWithoutArtifact { key, node } => {
                write!(
                    f,
                    "{key} ({node}): recorded as done but its artifact is missing"
                )
            }
        }
    }
}

/// What [`Store::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Artifacts whose files were re-hashed.
    pub checked: usize,
    pub issues: Vec<VerifyIssue>,
    /// Complete artifacts with no `Done` record (a crash between rename and record); harmless,
    /// adopted by the next lookup.
    pub unrecorded: Vec<String>,
}

impl VerifyReport {
    /// No mismatches, missing files, unmanifested artifacts or dangling records.
    pub fn is_clean(&self) -> bool {
        self.issues.is_empty()
    }
}

/// What [`Store::gc`] removed (or would remove, in a dry run).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// (key, bytes of artifact + work dir + log), sorted by key.
    pub removed: Vec<(String, u64)>,
    pub freed_bytes: u64,
}

fn dir_bytes(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Names of the entries of `dir` (none if it does not exist), hidden ones skipped.
fn entry_names(dir: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("listing", dir)(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(StoreError::io("listing", dir))?;
        if let Some(name) = e.file_name().to_str() {
            if !name.starts_with('.') {
                out.push(name.to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

impl Store {
    /// Re-hashes every artifact against its manifest (no cache) and checks the index against
    /// the artifacts. Read-only.
    pub fn verify(&self) -> Result<VerifyReport> {
        let records = self.with_index(|ix| ix.all_records())?;
        let done: BTreeMap<&str, &str> = records
            .iter()
            .filter(|r| r.status == Status::Done)
            .map(|r| (r.key.as_str(), r.node.as_str()))
            .collect();
        let mut report = VerifyReport::default();
        let artifacts = self.artifacts_root();
        let keys = entry_names(&artifacts)?;
        for key in &keys {
            let dir = artifacts.join(key);
            let m = match read_manifest_at(&dir) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    report
                        .issues
                        .push(VerifyIssue::NoManifest { key: key.clone() });
                    continue;
                }
                Err(e) => {
                    report.issues.push(VerifyIssue::BadManifest {
                        key: key.clone(),
                        error: e.to_string(),
                    });
                    continue;
                }
            };
            report.checked += 1;
            let (files, _) = list_tree(&dir, key)?;
            let listed: BTreeSet<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
            for (rel, _) in &files {
                if rel != MANIFEST_FILE && !listed.contains(rel.as_str()) {
                    report.issues.push(VerifyIssue::ExtraFile {
                        key: key.clone(),
                        path: rel.clone(),
                    });
                }
            }
            for f in &m.files {
                let path = dir.join(&f.path);
                if !path.is_file() {
                    report.issues.push(VerifyIssue::MissingFile {
                        key: key.clone(),
                        path: f.path.clone(),
                    });
                    continue;
                }
                let (actual, n) = crate::filehash::hash_file_uncached(&path)?;
                self.count_hashed(n);
                if actual != f.blake3 {
                    report.issues.push(VerifyIssue::Mismatch {
                        key: key.clone(),
                        path: f.path.clone(),
                        expected: f.blake3.clone(),
                        actual,
                    });
                }
            }
            if !done.contains_key(key.as_str()) {
                report.unrecorded.push(key.clone());
            }
        }
        let present: HashSet<&String> = keys.iter().collect();
        for (key, node) in done {
            if !present.contains(&key.to_string()) {
                report.issues.push(VerifyIssue::RecordWithoutArtifact {
                    key: key.to_string(),
                    node: node.to_string(),
                });
            }
        }
        Ok(report)
    }

    /// Deletes the index and recreates it: a `Done` record (and lineage) for every artifact
    /// with a manifest whose file sizes match. Runs, pins and lineage are carried over when
    /// the old index can still be read. Returns the number of artifacts recorded.
    pub fn rebuild_index(&self) -> Result<usize> {
        let _guard = self.lock_index()?;
        let (db, n) = self.rebuild_locked()?;
        db.flush().map_err(|source| StoreError::Index {
            path: self.index_path(),
            source,
        })?;
        Ok(n)
    }

    /// The rebuild itself; the caller holds the index guard and gets the open, rebuilt Db.
    pub(crate) fn rebuild_locked(&self) -> Result<(sled::Db, usize)> {
        let path = self.index_path();
        let salvaged = salvage(&path);
        if path.exists() {
            self.remove_via_tmp(&path, "index")?;
        }
        let db = match open_sled(&path) {
            Ok(db) => db,
            Err(OpenError::Other(source)) => return Err(StoreError::Index { path, source }),
            Err(OpenError::Corrupt(why)) => {
                return Err(StoreError::Index {
                    path,
                    source: sled::Error::Unsupported(why),
                })
            }
        };
        let ierr = |source| StoreError::Index {
            path: self.index_path(),
            source,
        };
        for (tree, k, v) in salvaged {
            db.open_tree(tree)
                .and_then(|t| t.insert(k, v))
                .map_err(ierr)?;
        }
        let nodes = db.open_tree(crate::index::NODES).map_err(ierr)?;
        let lineage = db.open_tree(LINEAGE).map_err(ierr)?;
        let mut newest: BTreeMap<String, (f64, String)> = BTreeMap::new();
        let mut n = 0;
        for key in entry_names(&self.artifacts_root())? {
            let dir = self.artifact_dir(&key);
            let m = match read_manifest_at(&dir) {
                Ok(Some(m)) if m.key == key => m,
                _ => continue,
            };
            if let Some(problem) = size_problem(&dir, &m) {
                tracing::warn!("rebuild: skipping artifact {key}: {problem}");
                continue;
            }
            let rec = record_from_manifest(&m, None);
            let bytes = serde_json::to_vec(&rec).map_err(StoreError::json("encoding record"))?;
            nodes.insert(key.as_bytes(), bytes).map_err(ierr)?;
            n += 1;
            if !rec.recipe.is_empty() {
                let e = newest
                    .entry(rec.identity())
                    .or_insert((f64::MIN, String::new()));
                if m.created_at > e.0 {
                    *e = (m.created_at, key.clone());
                }
            }
        }
        for (identity, (_, key)) in newest {
            if lineage.get(identity.as_bytes()).map_err(ierr)?.is_none() {
                lineage
                    .insert(identity.as_bytes(), key.as_bytes())
                    .map_err(ierr)?;
            }
        }
        Ok((db, n))
    }

    /// Removes every artifact (with its record, work dir and log) whose key is neither in
    /// `keep` nor pinned, and work dirs/logs/records of such keys without artifacts. Never
    /// touches a key whose record is `Running` with a live pid. Doomed artifacts are renamed
    /// into `tmp/` before deletion, and their records removed first, so no `Done` record ever
    /// points at a half-deleted artifact. The caller should hold the run lock.
    pub fn gc(&self, keep: &HashSet<String>, dry_run: bool) -> Result<GcReport> {
        let (records, pins) = self.with_index(|ix| Ok((ix.all_records()?, ix.pins()?)))?;
        let pinned: HashSet<String> = pins.into_values().flatten().collect();
        let live: HashSet<&str> = records
            .iter()
            .filter(|r| r.status == Status::Running && r.pid.is_some_and(pid_alive))
            .map(|r| r.key.as_str())
            .collect();
        let mut candidates: BTreeSet<String> = BTreeSet::new();
        candidates.extend(entry_names(&self.artifacts_root())?);
        candidates.extend(entry_names(&self.root().join("work"))?);
        candidates.extend(
            entry_names(&self.root().join("logs"))?
                .into_iter()
                .filter_map(|n| n.strip_suffix(".log").map(str::to_string)),
        );
        candidates.extend(records.iter().map(|r| r.key.clone()));
        candidates
            .retain(|k| !keep.contains(k) && !pinned.contains(k) && !live.contains(k.as_str()));

        let mut report = GcReport::default();
        for key in &candidates {
            let log = self.log_path(key);
            let bytes = dir_bytes(&self.artifact_dir(key))
                + dir_bytes(&self.work_dir(key))
                + fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            report.removed.push((key.clone(), bytes));
            report.freed_bytes += bytes;
        }
        if dry_run || candidates.is_empty() {
            return Ok(report);
        }
        self.with_index(|ix| {
            for key in &candidates {
                ix.remove_record(key)?;
            }
            Ok(())
        })?;
        for key in &candidates {
            for dir in [self.artifact_dir(key), self.work_dir(key)] {
                if dir.exists() {
                    self.remove_via_tmp(&dir, key)?;
                }
            }
            let log = self.log_path(key);
            if log.exists() {
                fs::remove_file(&log).map_err(StoreError::io("removing", &log))?;
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
}

/// Best-effort copy of the `runs`, `pins` and `lineage` trees of an index about to be rebuilt.
fn salvage(path: &Path) -> Vec<(&'static str, sled::IVec, sled::IVec)> {
    if !path.exists() {
        return Vec::new();
    }
    let Ok(db) = open_sled(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in [RUNS, PINS, LINEAGE] {
        let Ok(tree) = db.open_tree(name) else {
            continue;
        };
        out.extend(
            tree.iter()
                .filter_map(|kv| kv.ok())
                .map(|(k, v)| (name, k, v)),
        );
    }
    out
}
