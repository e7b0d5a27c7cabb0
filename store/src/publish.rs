//! Atomic publish of a node's output, and lookups that only ever serve complete artifacts.
//!
//! Publish order (each step durable before the next):
//! 1. hash and fsync every file of the staging dir `work/<key>/out`;
//! 2. check free space for the manifest plus [`crate::SPACE_MARGIN`] (room for the index
//!    record), failing with [`StoreError::DiskFull`] before anything is written; then write
//!    `MANIFEST.json` last, fsync it and every directory of the staging tree;
//! 3. `rename` the staging dir to `artifacts/<key>` and fsync `artifacts/`;
//! 4. record `Done` in the index and flush.
//!
//! So a crash at any instant leaves either no `Done` record or a complete artifact: before
//! step 3 nothing is visible under `artifacts/`; between 3 and 4 the artifact is complete but
//! unrecorded, and [`Store::lookup_done`] adopts it (after checking file sizes against the
//! manifest). The hooks [`crate::crash_point`] `publish:before-manifest`,
//! `publish:after-manifest`, `publish:after-rename` and `publish:after-record` let tests abort
//! the process at each boundary.

use crate::filehash::hash_file_uncached;
use crate::record::{NodeRecord, Status};
use crate::{crash_point, now_secs, Index, Result, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// File name of the manifest inside an artifact directory.
pub const MANIFEST_FILE: &str = "MANIFEST.json";

/// The manifest of an artifact: what it is and every file in it (sorted by path, the manifest
/// itself excluded). Written last; its presence marks the artifact complete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub key: String,
    pub kind: String,
    pub node: String,
    #[serde(default)]
    pub recipe: String,
    pub files: Vec<ManifestFile>,
    #[serde(default)]
    pub key_tree: serde_json::Value,
    #[serde(default)]
    pub summary: serde_json::Value,
    /// Unix seconds.
    pub created_at: f64,
}

/// One file of an artifact: path relative to the artifact root with `/` separators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub path: String,
    pub size: u64,
    /// Hex blake3 of the content.
    pub blake3: String,
    /// Modification time (ns since the epoch) when published: with the size, what a `stat`
    /// checks before the artifact is used (see `damage.rs`). Absent in older manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
}

/// One artifact file as published: what a `stat` can check cheaply, and the content hash a
/// changed time is confirmed against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Relative `/` path in the artifact (`MANIFEST.json` for the manifest itself).
    pub path: String,
    pub size: u64,
    /// Modification time in ns since the epoch; absent in manifests older than stamps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
    /// Hex blake3 of the content.
    pub blake3: String,
}

impl Manifest {
    /// Total size of the listed files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// A file's modification time in ns since the epoch.
pub(crate) fn mtime_ns(md: &fs::Metadata) -> i64 {
    md.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(md.mtime_nsec())
}

/// The stamp of file `rel` of `dir` as it is now, with `blake3` (already known) as its hash.
pub(crate) fn stamp_now(dir: &Path, rel: &str, blake3: &str) -> Result<Stamp> {
    let path = dir.join(rel);
    let md = fs::metadata(&path).map_err(StoreError::io("reading metadata of", &path))?;
    Ok(Stamp {
        path: rel.to_string(),
        size: md.len(),
        mtime_ns: Some(mtime_ns(&md)),
        blake3: blake3.to_string(),
    })
}

/// The stamps of an artifact as its manifest lists them, plus the manifest's own (stamped now:
/// the manifest is read from `dir`, so it is what it is at publish or adoption time).
pub(crate) fn stamps_from_manifest(dir: &Path, m: &Manifest) -> Vec<Stamp> {
    let mut out = stamps_listed(m);
    if let Ok((hash, _)) = hash_file_uncached(&dir.join(MANIFEST_FILE)) {
        if let Ok(s) = stamp_now(dir, MANIFEST_FILE, &hash) {
            out.push(s);
        }
    }
    out
}

/// The stamps of the files a manifest lists (not the manifest's own).
pub(crate) fn stamps_listed(m: &Manifest) -> Vec<Stamp> {
    m.files
        .iter()
        .map(|f| Stamp {
            path: f.path.clone(),
            size: f.size,
            mtime_ns: f.mtime_ns,
            blake3: f.blake3.clone(),
        })
        .collect()
}

fn fsync_path(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::io("fsyncing", path))
}

/// Regular files of a tree as (relative `/` path, absolute path), sorted; and its directories.
pub(crate) type TreeListing = (Vec<(String, PathBuf)>, Vec<PathBuf>);

/// Lists the regular files (relative `/` paths, sorted) and directories of `dir`; a symlink or
/// other special file is an error (artifacts hold plain files only).
pub(crate) fn list_tree(dir: &Path, key: &str) -> Result<TreeListing> {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_path_buf();
            StoreError::io("listing", path)(e.into())
        })?;
        let ft = entry.file_type();
        if ft.is_dir() {
            dirs.push(entry.path().to_path_buf());
        } else if ft.is_file() {
            let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
            let parts: Option<Vec<&str>> =
                rel.components().map(|c| c.as_os_str().to_str()).collect();
            let rel = parts
                .map(|p| p.join("/"))
                .ok_or_else(|| StoreError::Publish {
                    key: key.to_string(),
                    message: format!("file name is not UTF-8: {}", entry.path().display()),
                })?;
            files.push((rel, entry.path().to_path_buf()));
        } else {
            return Err(StoreError::Publish {
                key: key.to_string(),
                message: format!(
                    "{} is a symlink or special file; artifacts may hold regular files only",
                    entry.path().display()
                ),
            });
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((files, dirs))
}

impl Store {
    /// Publishes `staging` (normally [`Store::staging_dir`]) as the artifact of `key` and records
    /// `record` as `Done` (its status, finish time and duration are set here). If a complete
    /// artifact for `key` already exists (another process won the race), the staging dir is
    /// discarded and the existing manifest returned.
    pub fn publish(&self, key: &str, staging: &Path, record: NodeRecord) -> Result<Manifest> {
        if record.key != key {
            return Err(StoreError::Publish {
                key: key.to_string(),
                message: format!("record is for key {}", record.key),
            });
        }
        let dest = self.artifact_dir(key);
        if let Some(existing) = self.read_manifest(key)? {
            self.discard(staging)?;
            self.record_published(&existing, record)?;
            return Ok(existing);
        }
        if dest.exists() {
            // No manifest: not a complete artifact (only tampering makes one). Move it aside,
            // never delete it silently.
            let damage = crate::Damage {
                key: key.to_string(),
                node: record.node.clone(),
                file: MANIFEST_FILE.into(),
                what: "is missing".into(),
                found_at: now_secs(),
                found_by: "stat".into(),
            };
            let aside = self.move_aside(&damage, false)?;
            tracing::warn!(
                "artifact {key} had no {MANIFEST_FILE}: moved aside to {}",
                aside.display()
            );
        }

        let (files, dirs) = list_tree(staging, key)?;
        let mut listed = Vec::with_capacity(files.len());
        for (rel, path) in files {
            if rel == MANIFEST_FILE {
                continue; // left over from an attempt that crashed before the rename
            }
            let (hash, size) = hash_file_uncached(&path)?;
            self.count_hashed(size);
            fsync_path(&path)?;
            let stamp = stamp_now(staging, &rel, &hash)?;
            if stamp.size != size {
                return Err(StoreError::Publish {
                    key: key.to_string(),
                    message: format!("{rel} changed while it was being published"),
                });
            }
            listed.push(ManifestFile {
                path: rel,
                size,
                blake3: hash,
                mtime_ns: stamp.mtime_ns,
            });
        }
        let manifest = Manifest {
            key: key.to_string(),
            kind: record.kind.clone(),
            node: record.node.clone(),
            recipe: record.recipe.clone(),
            files: listed,
            key_tree: record.key_tree.clone(),
            summary: record.summary.clone(),
            created_at: now_secs(),
        };

        let bytes =
            serde_json::to_vec_pretty(&manifest).map_err(StoreError::json("encoding manifest"))?;
        // The staged files are already on this filesystem (the rename moves them for free);
        // what is still to write is the manifest and the index record.
        self.ensure_space(
            bytes.len() as u64,
            &format!("publishing node {} ({key})", record.node),
        )?;
        crash_point("publish:before-manifest");
        let mpath = staging.join(MANIFEST_FILE);
        fs::write(&mpath, bytes).map_err(StoreError::io("writing", &mpath))?;
        fsync_path(&mpath)?;
        for d in dirs.iter().rev() {
            fsync_path(d)?;
        }
        crash_point("publish:after-manifest");

        let artifacts = self.artifacts_root();
        if let Err(e) = fs::rename(staging, &dest) {
            if self.read_manifest(key)?.is_some() {
                // Lost the race to another process between our check and the rename.
                self.discard(staging)?;
                let existing = self.read_manifest(key)?.unwrap_or(manifest);
                self.record_published(&existing, record)?;
                return Ok(existing);
            }
            return Err(StoreError::io("moving staged output into", &dest)(e));
        }
        fsync_path(&artifacts)?;
        crash_point("publish:after-rename");

        self.record_published(&manifest, record)?;
        crash_point("publish:after-record");
        Ok(manifest)
    }

    /// Completes a node attempt that ran successfully: copies `work_dir/metrics.jsonl` into the
    /// staging dir (unless the stage wrote one there), publishes the staging dir of `key` with
    /// the attempt's record (the `Running` one the scheduler wrote before it started the stage)
    /// finished `Done` with `summary`, and records `key` as the last one built
    /// for `identity` (`<recipe stem>/<instance id>`). The one publish sequence every executor
    /// (the local worker, a future cluster one) goes through.
    pub fn complete(
        &self,
        key: &str,
        identity: &str,
        work_dir: &Path,
        summary: serde_json::Value,
    ) -> Result<Manifest> {
        let staging = self.staging_dir(key);
        let metrics = work_dir.join("metrics.jsonl");
        let dst = staging.join("metrics.jsonl");
        if metrics.is_file() && !dst.exists() {
            fs::copy(&metrics, &dst)
                .map_err(StoreError::io("copying into the artifact", &metrics))?;
        }
        let base = self.record(key)?.ok_or_else(|| StoreError::Publish {
            key: key.to_string(),
            message: "no record of this attempt (the scheduler writes one first)".into(),
        })?;
        let mut rec = base.finished(Status::Done, None);
        rec.summary = summary;
        let manifest = self.publish(key, &staging, rec)?;
        self.set_last_key(identity, key)?;
        Ok(manifest)
    }

    /// Records `record` as `Done` for the artifact described by `manifest` (and its lineage).
    fn record_published(&self, manifest: &Manifest, record: NodeRecord) -> Result<()> {
        let mut rec = record.finished(Status::Done, None);
        rec.summary = manifest.summary.clone();
        rec.files = stamps_from_manifest(&self.artifact_dir(&manifest.key), manifest);
        self.with_index(|ix| {
            if !rec.recipe.is_empty() {
                ix.set_last_key(&rec.identity(), &rec.key)?;
            }
            ix.put_record(&rec)
        })
    }

    fn discard(&self, staging: &Path) -> Result<()> {
        if staging.exists() {
            fs::remove_dir_all(staging).map_err(StoreError::io("removing staging dir", staging))?;
        }
        Ok(())
    }

    /// Renames `dir` into `tmp/` (atomically out of sight), then deletes it.
    pub(crate) fn remove_via_tmp(&self, dir: &Path, key: &str) -> Result<()> {
        let doomed = self.tmp_dir().join(format!(
            "rm-{key}-{}-{}",
            std::process::id(),
            now_secs().to_bits()
        ));
        fs::rename(dir, &doomed).map_err(StoreError::io("moving aside", dir))?;
        fs::remove_dir_all(&doomed).map_err(StoreError::io("removing", &doomed))
    }

    /// The manifest of `key`'s artifact, if the artifact is published. A manifest that cannot
    /// be decoded is an error naming the file.
    pub fn read_manifest(&self, key: &str) -> Result<Option<Manifest>> {
        read_manifest_at(&self.artifact_dir(key))
    }

    /// The `Done` record of `key` if its artifact is there. A `Done` record whose artifact
    /// vanished counts as absent; a complete artifact without a `Done` record (crash between
    /// rename and record) is adopted: its file sizes are checked against the manifest and a
    /// `Done` record made from the manifest.
    pub fn lookup_done(&self, key: &str) -> Result<Option<NodeRecord>> {
        self.with_index(|ix| self.lookup_done_in(ix, key))
    }

    /// [`Store::lookup_done`] for many keys in one index open; absent keys are left out.
    pub fn lookup_done_many(&self, keys: &[String]) -> Result<HashMap<String, NodeRecord>> {
        self.with_index(|ix| {
            let mut out = HashMap::new();
            for k in keys {
                if let Some(r) = self.lookup_done_in(ix, k)? {
                    out.insert(k.clone(), r);
                }
            }
            Ok(out)
        })
    }

    /// [`Store::lookup_done`] inside a [`Store::with_index`] closure.
    pub fn lookup_done_in(&self, ix: &Index, key: &str) -> Result<Option<NodeRecord>> {
        let rec = ix.record(key)?;
        let dir = self.artifact_dir(key);
        let has_manifest = dir.join(MANIFEST_FILE).is_file();
        match rec {
            Some(r) if r.status == Status::Done => Ok(has_manifest.then_some(r)),
            prev if has_manifest => {
                let Some(m) = read_manifest_at(&dir)? else {
                    return Ok(None);
                };
                if let Some(problem) = size_problem(&dir, &m) {
                    tracing::warn!("not adopting artifact {key}: {problem}");
                    return Ok(None);
                }
                let mut rec = record_from_manifest(&m, prev.as_ref());
                rec.files = stamps_from_manifest(&dir, &m);
                ix.put_record(&rec)?;
                if !rec.recipe.is_empty() && ix.last_key(&rec.identity())?.is_none() {
                    ix.set_last_key(&rec.identity(), key)?;
                }
                Ok(Some(rec))
            }
            _ => Ok(None),
        }
    }
}

/// Reads `dir/MANIFEST.json` if present.
pub(crate) fn read_manifest_at(dir: &Path) -> Result<Option<Manifest>> {
    crate::durable::read_json_opt(&dir.join(MANIFEST_FILE))
}

/// The first file of `m` that is missing or has the wrong size, described.
pub(crate) fn size_problem(dir: &Path, m: &Manifest) -> Option<String> {
    for f in &m.files {
        match fs::metadata(dir.join(&f.path)) {
            Ok(md) if md.len() == f.size => {}
            Ok(md) => {
                return Some(format!(
                    "{} has {} bytes, manifest says {}",
                    f.path,
                    md.len(),
                    f.size
                ))
            }
            Err(_) => return Some(format!("{} is missing", f.path)),
        }
    }
    None
}

/// A `Done` record rebuilt from a manifest, keeping run metadata of `prev` if any.
pub(crate) fn record_from_manifest(m: &Manifest, prev: Option<&NodeRecord>) -> NodeRecord {
    NodeRecord {
        key: m.key.clone(),
        kind: m.kind.clone(),
        node: m.node.clone(),
        recipe: m.recipe.clone(),
        key_tree: m.key_tree.clone(),
        status: Status::Done,
        run_id: prev.and_then(|p| p.run_id),
        started_at: prev.and_then(|p| p.started_at),
        finished_at: Some(m.created_at),
        duration_s: prev
            .and_then(|p| p.started_at)
            .map(|s| (m.created_at - s).max(0.0)),
        error: None,
        summary: m.summary.clone(),
        pid: prev.and_then(|p| p.pid),
        host: prev.and_then(|p| p.host.clone()),
        scheduler_job: prev.and_then(|p| p.scheduler_job.clone()),
        files: Vec::new(),
    }
}
