//! Damaged artifacts: a published artifact whose bytes are no longer the ones it was published
//! with is never served. Nothing downstream may read it; a run moves it aside and rebuilds it.
//!
//! What is checked, and when:
//! - **stamps**, at every lookup that matters (`plan`, a run, a worker before it reads an
//!   input): each artifact file's size and modification time as published ([`Stamp`], kept in
//!   the manifest and, with the manifest's own stamp and blake3, in the `Done` record). A
//!   missing file or a changed size is damage. A changed time alone is confirmed by hashing
//!   the file against the manifest: different bytes are damage; the same bytes (a `touch`, a
//!   copy without `-p`) are restamped in the record, so the next check is a `stat` again.
//! - **markers**, written by `temper verify` (or `run --verify-inputs`) when a file's content
//!   hash no longer matches its manifest: `damaged/<key>.json`. A marked artifact is damaged
//!   from then on whatever its stamps say (an in-place edit that restored size and time).
//! - **moving aside** ([`Store::set_aside`]): a run that rebuilds a damaged artifact first
//!   renames it, and its work directory (whose checkpoints nothing vouches for either), into
//!   `damaged/<key>-<time>/` with a `DAMAGE.json` saying what was wrong; it is never deleted
//!   silently (`temper gc --damaged` deletes these copies on request).
//!
//! The key of the rebuilt node is the same (keys hash what determines an artifact, not its
//! bytes), so on CPU the rebuild is bit-identical and nothing downstream changes.

use crate::durable::{read_json_opt, write_atomic};
use crate::filehash::hash_file_uncached;
use crate::publish::{mtime_ns, stamps_from_manifest, Stamp, MANIFEST_FILE};
use crate::record::{NodeRecord, Status};
use crate::{now_secs, Result, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Directory under the store root holding verify's markers (`<key>.json`) and the damaged
/// copies moved aside (`<key>-<unix time>/`).
pub const DAMAGED_DIR: &str = "damaged";
/// What a moved-aside copy says about itself.
pub const DAMAGE_FILE: &str = "DAMAGE.json";
/// A changed mtime is only restamped once the file is at least this old (nanoseconds): an edit
/// in the same clock tick as the check could otherwise hide behind the new stamp.
const RACY_NS: i64 = 1_000_000_000;

/// Why an artifact cannot be used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Damage {
    pub key: String,
    /// The instance that built it.
    pub node: String,
    /// The first file found damaged (relative path).
    pub file: String,
    /// `changed since it was published`, `is missing`, …
    pub what: String,
    /// Unix seconds when it was found.
    pub found_at: f64,
    /// `stat`, `verify` or `verify-inputs`.
    pub found_by: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.file, self.what)?;
        match self.found_by.as_str() {
            "verify" => write!(f, " (found by temper verify)"),
            "verify-inputs" => write!(f, " (found by run --verify-inputs)"),
            _ => Ok(()),
        }
    }
}

/// A moved-aside damaged copy under `damaged/`.
#[derive(Clone, Debug)]
pub struct DamagedCopy {
    pub dir: PathBuf,
    pub damage: Option<Damage>,
    pub bytes: u64,
}

/// What a `stat` says of one stamp: fine, damaged (`what`), or a changed time to confirm.
enum Look {
    Same,
    Damaged(String),
    TimeChanged(i64),
}

fn look(dir: &Path, s: &Stamp) -> Look {
    match fs::metadata(dir.join(&s.path)) {
        Err(_) => Look::Damaged("is missing".into()),
        Ok(md) if !md.is_file() => Look::Damaged("is no longer a regular file".into()),
        Ok(md) if md.len() != s.size => Look::Damaged(format!(
            "changed since it was published ({} bytes, published with {})",
            md.len(),
            s.size
        )),
        Ok(md) => match s.mtime_ns {
            Some(t) if t != mtime_ns(&md) => Look::TimeChanged(mtime_ns(&md)),
            _ => Look::Same,
        },
    }
}

fn now_ns() -> i64 {
    (now_secs() * 1e9) as i64
}

/// Checks the stamps of the artifact in `dir` (key `key`, built by `node`): the first damage,
/// and the stamps to record instead when only times changed over the same bytes.
fn check_stamps(
    dir: &Path,
    key: &str,
    node: &str,
    stamps: &[Stamp],
) -> (Option<Damage>, Option<Vec<Stamp>>) {
    let damage = |file: &str, what: String| Damage {
        key: key.to_string(),
        node: node.to_string(),
        file: file.to_string(),
        what,
        found_at: now_secs(),
        found_by: "stat".into(),
    };
    let mut fresh: Option<Vec<Stamp>> = None;
    for (i, s) in stamps.iter().enumerate() {
        match look(dir, s) {
            Look::Same => {}
            Look::Damaged(what) => return (Some(damage(&s.path, what)), None),
            Look::TimeChanged(t) => match hash_file_uncached(&dir.join(&s.path)) {
                Ok((h, _)) if h == s.blake3 => {
                    if now_ns().saturating_sub(t) >= RACY_NS {
                        fresh.get_or_insert_with(|| stamps.to_vec())[i].mtime_ns = Some(t);
                    }
                }
                Ok(_) => {
                    return (
                        Some(damage(&s.path, "changed since it was published".into())),
                        None,
                    )
                }
                Err(e) => return (Some(damage(&s.path, format!("cannot be read: {e}"))), None),
            },
        }
    }
    (None, fresh)
}

/// Marker file content: what verify found.
#[derive(Serialize, Deserialize)]
struct Marker {
    key: String,
    problems: Vec<Damage>,
}

fn marker_path(root: &Path, key: &str) -> PathBuf {
    root.join(DAMAGED_DIR).join(format!("{key}.json"))
}

fn marker_at(root: &Path, key: &str) -> Result<Option<Damage>> {
    let m: Option<Marker> = read_json_opt(&marker_path(root, key))?;
    Ok(m.and_then(|m| m.problems.into_iter().next()))
}

impl Store {
    /// The first damage of each `Done` record's artifact (records of other states and
    /// artifacts that are fine are left out). Stats every file; hashes only the files whose
    /// time changed at the same size; restamps, in one index open, those whose bytes are the
    /// same (best effort: a full disk only costs a hash next time).
    pub fn damage_of(&self, records: &[&NodeRecord]) -> Result<HashMap<String, Damage>> {
        let mut out = HashMap::new();
        let mut restamp: Vec<NodeRecord> = Vec::new();
        for r in records.iter().filter(|r| r.status == Status::Done) {
            if let Some(d) = marker_at(self.root(), &r.key)? {
                out.insert(r.key.clone(), d);
                continue;
            }
            let dir = self.artifact_dir(&r.key);
            if !dir.join(MANIFEST_FILE).is_file() {
                continue; // not published (or gone): absent, not damaged
            }
            let stamps = if r.files.is_empty() {
                // A record from before stamps: the manifest's sizes (and times, if any).
                match crate::publish::read_manifest_at(&dir)? {
                    Some(m) => stamps_from_manifest(&dir, &m),
                    None => continue,
                }
            } else {
                r.files.clone()
            };
            match check_stamps(&dir, &r.key, &r.node, &stamps) {
                (Some(d), _) => {
                    out.insert(r.key.clone(), d);
                }
                (None, Some(fresh)) => {
                    let mut r = (*r).clone();
                    r.files = fresh;
                    restamp.push(r);
                }
                (None, None) if r.files.is_empty() => {
                    let mut r = (*r).clone();
                    r.files = stamps;
                    restamp.push(r);
                }
                (None, None) => {}
            }
        }
        if !restamp.is_empty() {
            let put = self.with_index(|ix| restamp.iter().try_for_each(|r| ix.put_record(r)));
            if let Err(e) = put {
                tracing::warn!("could not record the new file times of intact artifacts: {e}");
            }
        }
        Ok(out)
    }

    /// [`Store::damage_of`] for the artifacts of `keys` (what a worker checks before it reads
    /// its inputs): keys without a `Done` record are left out (their absence is reported where
    /// they are read).
    pub fn damaged_inputs(&self, keys: &[String]) -> Result<HashMap<String, Damage>> {
        let recs = self.records_many(keys)?;
        let recs: Vec<&NodeRecord> = recs.values().collect();
        self.damage_of(&recs)
    }

    /// Re-hashes every file of `key`'s artifact against its manifest (what `run
    /// --verify-inputs` does to each input): the first mismatch, also recorded as a marker so
    /// the artifact stays damaged for every later command.
    pub fn verify_content(&self, key: &str) -> Result<Option<Damage>> {
        let dir = self.artifact_dir(key);
        let Some(m) = self.read_manifest(key)? else {
            return Ok(None);
        };
        for f in &m.files {
            let path = dir.join(&f.path);
            let what = match hash_file_uncached(&path) {
                Ok((h, n)) => {
                    self.count_hashed(n);
                    if h == f.blake3 {
                        continue;
                    }
                    "content no longer matches its manifest".to_string()
                }
                Err(_) if !path.exists() => "is missing".to_string(),
                Err(e) => format!("cannot be read: {e}"),
            };
            let d = Damage {
                key: key.to_string(),
                node: m.node.clone(),
                file: f.path.clone(),
                what,
                found_at: now_secs(),
                found_by: "verify-inputs".into(),
            };
            self.mark_damaged(key, std::slice::from_ref(&d))?;
            return Ok(Some(d));
        }
        Ok(None)
    }

    /// Records that `key`'s artifact is damaged (`damaged/<key>.json`, written atomically):
    /// every later lookup treats it as damaged until a run moves it aside.
    pub fn mark_damaged(&self, key: &str, problems: &[Damage]) -> Result<()> {
        let marker = Marker {
            key: key.to_string(),
            problems: problems.to_vec(),
        };
        let bytes =
            serde_json::to_vec_pretty(&marker).map_err(StoreError::json("encoding marker"))?;
        write_atomic(&marker_path(self.root(), key), &bytes)
    }

    /// The keys verify marked damaged, with what it found (first problem each).
    pub fn damage_markers(&self) -> Result<Vec<Damage>> {
        let dir = self.root().join(DAMAGED_DIR);
        let mut out = Vec::new();
        for name in crate::maint::entry_names(&dir)? {
            if let Some(key) = name.strip_suffix(".json") {
                if let Some(d) = marker_at(self.root(), key)? {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Moves `key`'s damaged artifact and its work directory aside into
    /// `damaged/<key>-<unix time>/` (`artifact/`, `work/`, and `DAMAGE.json` saying what was
    /// wrong), then forgets its `Done` record and marker, so the key is absent and a run
    /// rebuilds it. Each step is a rename or a small atomic write: a crash in between leaves the
    /// artifact either in place (still damaged) or aside (absent). Returns the copy's directory.
    pub fn set_aside(&self, damage: &Damage) -> Result<PathBuf> {
        self.move_aside(damage, true)
    }

    /// [`Store::set_aside`], the work directory moved too when `with_work` (not while a stage
    /// publishes from it).
    pub(crate) fn move_aside(&self, damage: &Damage, with_work: bool) -> Result<PathBuf> {
        let key = &damage.key;
        let aside = self
            .root()
            .join(DAMAGED_DIR)
            .join(format!("{key}-{}", now_secs() as u64));
        let aside = if aside.exists() {
            aside.with_extension(std::process::id().to_string())
        } else {
            aside
        };
        fs::create_dir_all(&aside).map_err(StoreError::io("creating", &aside))?;
        let art = self.artifact_dir(key);
        if art.exists() {
            fs::rename(&art, aside.join("artifact"))
                .map_err(StoreError::io("moving the damaged artifact aside", &art))?;
        }
        let work = self.work_dir(key);
        if with_work && work.exists() {
            fs::rename(&work, aside.join("work"))
                .map_err(StoreError::io("moving the work directory aside", &work))?;
        }
        let bytes = serde_json::to_vec_pretty(damage).map_err(StoreError::json("encoding"))?;
        write_atomic(&aside.join(DAMAGE_FILE), &bytes)?;
        self.with_index(|ix| {
            if ix.record(key)?.is_some_and(|r| r.status == Status::Done) {
                ix.remove_record(key)?;
            }
            Ok(())
        })?;
        let marker = marker_path(self.root(), key);
        if marker.exists() {
            fs::remove_file(&marker).map_err(StoreError::io("removing", &marker))?;
        }
        Ok(aside)
    }

    /// The damaged copies moved aside so far (oldest first by name), with their sizes.
    pub fn damaged_copies(&self) -> Result<Vec<DamagedCopy>> {
        let dir = self.root().join(DAMAGED_DIR);
        let mut out = Vec::new();
        for name in crate::maint::entry_names(&dir)? {
            let d = dir.join(&name);
            if !d.is_dir() {
                continue;
            }
            let damage = read_json_opt::<Damage>(&d.join(DAMAGE_FILE)).ok().flatten();
            out.push(DamagedCopy {
                bytes: crate::gc::dir_bytes(&d),
                dir: d,
                damage,
            });
        }
        Ok(out)
    }

    /// Deletes the moved-aside damaged copies (`temper gc --damaged`); returns how many and
    /// the bytes freed.
    pub fn remove_damaged_copies(&self) -> Result<(usize, u64)> {
        let copies = self.damaged_copies()?;
        let mut freed = 0;
        for c in &copies {
            freed += c.bytes;
            fs::remove_dir_all(&c.dir).map_err(StoreError::io("removing", &c.dir))?;
        }
        Ok((copies.len(), freed))
    }
}
