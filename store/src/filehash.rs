//! Content hashes of input files, cached in the index so unchanged files are not re-read.
//!
//! Cache (sled tree `filehash`): canonical absolute path → [`FileHashEntry`] `(size, mtime ns,
//! inode, hash, hashed_at ns)`. An entry is used only if size, mtime and inode still match
//! *and* the file's mtime was at least [`RACY_MARGIN_NS`] older than the moment it was hashed:
//! a file written in the same timestamp tick as its hashing could change again without its
//! mtime moving (git's "racy clean" problem), so such entries are re-hashed next time. Index
//! access is batched: one open to read all entries, hashing outside the lock, one open to
//! write the new entries. On a full disk, where the index may not open or take writes, the
//! cache is skipped (every file hashed, nothing stored), so keys can still be computed — e.g.
//! for `temper gc recipe.kdl` to free space.

use crate::{Result, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// How much older than its hashing time a file's mtime must be for a cache entry to be trusted.
pub const RACY_MARGIN_NS: i64 = 1_000_000_000;

/// A cached content hash and the file identity it was computed for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHashEntry {
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    /// Hex blake3.
    pub hash: String,
    /// When the hash was computed (Unix ns).
    pub hashed_at_ns: i64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stat {
    size: u64,
    mtime_ns: i64,
    inode: u64,
}

fn stat(path: &Path) -> Result<Stat> {
    let md = std::fs::metadata(path).map_err(StoreError::io("reading metadata of", path))?;
    if !md.is_file() {
        return Err(StoreError::io("hashing", path)(std::io::Error::other(
            "not a regular file",
        )));
    }
    Ok(Stat {
        size: md.len(),
        mtime_ns: md
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(md.mtime_nsec()),
        inode: md.ino(),
    })
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl FileHashEntry {
    fn valid_for(&self, s: &Stat) -> bool {
        self.size == s.size
            && self.mtime_ns == s.mtime_ns
            && self.inode == s.inode
            && self.hashed_at_ns.saturating_sub(self.mtime_ns) >= RACY_MARGIN_NS
    }
}

/// Hex blake3 of a file's content and its size, reading it (memory-mapped and multi-threaded
/// for big files).
pub(crate) fn hash_file_uncached(path: &Path) -> Result<(String, u64)> {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_mmap_rayon(path)
        .map_err(StoreError::io("hashing", path))?;
    Ok((hasher.finalize().to_hex().to_string(), hasher.count()))
}

impl Store {
    /// Hex blake3 of `path`'s content, from the cache when the file is unchanged.
    pub fn hash_file(&self, path: &Path) -> Result<String> {
        let mut v = self.hash_files(&[path.to_path_buf()])?;
        Ok(v.pop().unwrap_or_default())
    }

    /// Hashes of many files (same order), with two index opens in all.
    pub fn hash_files(&self, paths: &[PathBuf]) -> Result<Vec<String>> {
        let mut canon = Vec::with_capacity(paths.len());
        for p in paths {
            let c = p.canonicalize().map_err(StoreError::io("resolving", p))?;
            let s = stat(&c)?;
            canon.push((c, s));
        }
        let cached: Vec<Option<FileHashEntry>> = match self.with_index(|ix| {
            let tree = ix.tree(crate::index::FILEHASH)?;
            canon
                .iter()
                .map(|(c, _)| {
                    let v = tree.get(c.as_os_str().as_bytes()).map_err(|e| ix.err(e))?;
                    // An undecodable entry is just a cache miss.
                    Ok(v.and_then(|b| serde_json::from_slice(&b).ok()))
                })
                .collect()
        }) {
            Ok(v) => v,
            Err(e) if e.is_disk_full() => {
                tracing::warn!("file hash cache not used: {e}");
                vec![None; canon.len()]
            }
            Err(e) => return Err(e),
        };

        let mut out = Vec::with_capacity(canon.len());
        let mut fresh = Vec::new();
        for ((c, s), hit) in canon.iter().zip(cached) {
            if let Some(e) = hit.filter(|e| e.valid_for(s)) {
                out.push(e.hash);
                continue;
            }
            let hashed_at_ns = now_ns();
            let (hash, n) = hash_file_uncached(c)?;
            self.count_hashed(n);
            // Cache only if the file did not change while we read it.
            if stat(c)? == *s && n == s.size {
                fresh.push((
                    c.clone(),
                    FileHashEntry {
                        size: s.size,
                        mtime_ns: s.mtime_ns,
                        inode: s.inode,
                        hash: hash.clone(),
                        hashed_at_ns,
                    },
                ));
            }
            out.push(hash);
        }
        if !fresh.is_empty() {
            let stored = self.with_index(|ix| {
                let tree = ix.tree(crate::index::FILEHASH)?;
                for (c, e) in &fresh {
                    let bytes =
                        serde_json::to_vec(e).map_err(StoreError::json("encoding file hash"))?;
                    tree.insert(c.as_os_str().as_bytes(), bytes)
                        .map_err(|e| ix.err(e))?;
                }
                Ok(())
            });
            match stored {
                Ok(()) => {}
                Err(e) if e.is_disk_full() => tracing::warn!("file hashes not cached: {e}"),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Hashes of every regular file under `dir` (symlinks followed), as (path relative to `dir`
    /// with `/` separators, hex blake3), sorted by path.
    pub fn hash_tree(&self, dir: &Path) -> Result<Vec<(String, String)>> {
        let mut rels = Vec::new();
        let mut paths = Vec::new();
        for entry in walkdir::WalkDir::new(dir)
            .follow_links(true)
            .sort_by_file_name()
        {
            let entry = entry.map_err(|e| {
                let path = e.path().unwrap_or(dir).to_path_buf();
                StoreError::io("listing", path)(e.into())
            })?;
            if !entry.file_type().is_file() {
                continue;
            }
            let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            rels.push(rel.join("/"));
            paths.push(entry.path().to_path_buf());
        }
        let hashes = self.hash_files(&paths)?;
        let mut out: Vec<(String, String)> = rels.into_iter().zip(hashes).collect();
        out.sort();
        Ok(out)
    }
}
