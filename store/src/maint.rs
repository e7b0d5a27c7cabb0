//! Maintenance: verify artifacts against their manifests and rebuild the index from the
//! manifests and the pin and run files (gc is in `gc.rs`).

use crate::durable::{self, tree_entries};
use crate::index::{open_sled, OpenError, LINEAGE, NODES, PINS, RUNS};
use crate::publish::{
    list_tree, read_manifest_at, record_from_manifest, size_problem, MANIFEST_FILE,
};
use crate::record::{NodeRecord, Status};
use crate::{Result, Store, StoreError};
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
    /// Set when the index could not be read because the disk is full: the artifacts were still
    /// re-hashed, but records were not checked against them (`unrecorded` is then empty).
    pub index_error: Option<String>,
    /// Keys whose artifact was found damaged (a content mismatch or a missing file) and is now
    /// marked so (`damaged/<key>.json`): every later plan and run treats it as damaged.
    pub marked: Vec<String>,
    /// Why some damaged artifacts could not be marked (a full disk), if so.
    pub mark_error: Option<String>,
}

impl VerifyReport {
    /// No mismatches, missing files, unmanifested artifacts or dangling records.
    pub fn is_clean(&self) -> bool {
        self.issues.is_empty()
    }
}

/// Names of the entries of `dir` (none if it does not exist), hidden ones skipped.
pub(crate) fn entry_names(dir: &Path) -> Result<Vec<String>> {
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
    /// the artifacts. Writes nothing of its own, so it works on a full disk: if the index
    /// cannot even be opened there, the artifacts are still checked and
    /// [`VerifyReport::index_error`] says why the records were not.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let records = match self.with_index(|ix| ix.all_records()) {
            Ok(r) => r,
            Err(e) if e.is_disk_full() => {
                report.index_error = Some(e.to_string());
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let index_ok = report.index_error.is_none();
        let done: BTreeMap<&str, &str> = records
            .iter()
            .filter(|r| r.status == Status::Done)
            .map(|r| (r.key.as_str(), r.node.as_str()))
            .collect();
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
                    let node = done.get(key.as_str()).copied().unwrap_or_default();
                    self.mark_found(key, node, &mut report);
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
            if index_ok && !done.contains_key(key.as_str()) {
                report.unrecorded.push(key.clone());
            }
            self.mark_found(key, &m.node, &mut report);
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

    /// Marks `key` damaged when the issues verify found for it so far make it so (content
    /// mismatches, missing files); a write that fails is reported, not fatal.
    fn mark_found(&self, key: &str, node: &str, report: &mut VerifyReport) {
        let manifest = MANIFEST_FILE.to_string();
        let problems: Vec<crate::Damage> = report
            .issues
            .iter()
            .filter_map(|i| {
                let (k, path, what) = match i {
                    VerifyIssue::Mismatch { key, path, .. } => {
                        (key, path, "content no longer matches its manifest")
                    }
                    VerifyIssue::MissingFile { key, path } => (key, path, "is missing"),
                    VerifyIssue::BadManifest { key, .. } => {
                        (key, &manifest, "cannot be read (not valid JSON)")
                    }
                    _ => return None,
                };
                (k == key).then(|| crate::Damage {
                    key: key.to_string(),
                    node: node.to_string(),
                    file: path.clone(),
                    what: what.into(),
                    found_at: crate::now_secs(),
                    found_by: "verify".into(),
                })
            })
            .collect();
        if problems.is_empty() {
            return;
        }
        match self.mark_damaged(key, &problems) {
            Ok(()) => report.marked.push(key.to_string()),
            Err(e) => report.mark_error = Some(e.to_string()),
        }
    }

    /// Deletes the index and recreates it. Keeps: a `Done` record (and lineage) for every
    /// artifact with a manifest whose file sizes match, its key tree (for `why`) from the
    /// manifest; every pin and run from their files (`pins/`, `runs/`; run numbering goes on
    /// after the highest). When the old index can still be read it also keeps the lineage, the
    /// records of failed, cancelled and incomplete attempts, and the run metadata of `Done`
    /// records. Loses otherwise: those attempt records (the plan then says "new" rather than
    /// "previous attempt failed"), lineage beyond the newest artifact per identity, and always
    /// the file-hash cache (files are re-hashed once). Returns the number of artifacts recorded.
    pub fn rebuild_index(&self) -> Result<usize> {
        let _guard = self.lock_index()?;
        let (db, n) = self.rebuild_locked()?;
        db.flush()
            .map_err(|source| StoreError::index(self.index_path(), source))?;
        Ok(n)
    }

    /// The rebuild itself; the caller holds the index guard and gets the open, rebuilt Db.
    pub(crate) fn rebuild_locked(&self) -> Result<(sled::Db, usize)> {
        let path = self.index_path();
        let old = salvage(&path);
        // An index from before the pin and run files: save what it holds before deleting it.
        if !self.root().join(durable::MARKER).is_file() {
            durable::migrate_entries(self.root(), old.pins, old.runs)?;
        }
        if path.exists() {
            self.remove_via_tmp(&path, "index")?;
        }
        let db = match open_sled(&path) {
            Ok(db) => db,
            Err(OpenError::Other(source)) => return Err(StoreError::index(path, source)),
            Err(OpenError::Corrupt(why)) => {
                return Err(StoreError::Index {
                    path,
                    source: sled::Error::Unsupported(why),
                })
            }
        };
        let ierr = |source| StoreError::index(self.index_path(), source);
        let pins = db.open_tree(PINS).map_err(ierr)?;
        for (name, keys) in durable::read_pins(self.root())? {
            let v = serde_json::to_vec(&keys).map_err(StoreError::json("encoding pin"))?;
            pins.insert(name.as_bytes(), v).map_err(ierr)?;
        }
        let runs = db.open_tree(RUNS).map_err(ierr)?;
        for run in durable::read_runs(self.root(), usize::MAX)? {
            let v = serde_json::to_vec(&run).map_err(StoreError::json("encoding run"))?;
            runs.insert(run.id.to_be_bytes(), v).map_err(ierr)?;
        }
        let lineage = db.open_tree(LINEAGE).map_err(ierr)?;
        for (k, v) in old.lineage {
            lineage.insert(k, v).map_err(ierr)?;
        }
        let nodes = db.open_tree(NODES).map_err(ierr)?;
        for rec in old.records.values().filter(|r| r.status != Status::Done) {
            let bytes = serde_json::to_vec(rec).map_err(StoreError::json("encoding record"))?;
            nodes.insert(rec.key.as_bytes(), bytes).map_err(ierr)?;
        }
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
            let mut rec = record_from_manifest(&m, old.records.get(&key));
            rec.files = crate::publish::stamps_from_manifest(&dir, &m);
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
}

/// What can still be read from an index about to be rebuilt.
#[derive(Default)]
struct Salvaged {
    lineage: Vec<(Vec<u8>, Vec<u8>)>,
    /// Node records by key (undecodable ones dropped).
    records: BTreeMap<String, NodeRecord>,
    /// Raw `pins` and `runs` entries, for the migration of a store from before their files.
    pins: Vec<(Vec<u8>, Vec<u8>)>,
    runs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Best-effort read of the index at `path` (nothing if it is missing or cannot be opened).
fn salvage(path: &Path) -> Salvaged {
    if !path.exists() {
        return Salvaged::default();
    }
    let Ok(db) = open_sled(path) else {
        return Salvaged::default();
    };
    let records = tree_entries(&db, NODES)
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice::<NodeRecord>(&v).ok())
        .map(|r| (r.key.clone(), r))
        .collect();
    Salvaged {
        lineage: tree_entries(&db, LINEAGE),
        records,
        pins: tree_entries(&db, PINS),
        runs: tree_entries(&db, RUNS),
    }
}
