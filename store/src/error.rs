//! The store's error type. Every variant names the file, key or lock it is about.

use std::path::PathBuf;

/// What can go wrong in the store. Never a panic: I/O, index and format problems all end here
/// with the path or key they concern.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The sled index could not be opened or used.
    #[error("store index {}: {source}", path.display())]
    Index {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// Another process held the index lock for longer than the timeout.
    #[error(
        "store index {} stayed locked by another process for {waited_s:.0} s",
        path.display()
    )]
    IndexBusy { path: PathBuf, waited_s: f64 },
    /// `with_index` was called from inside a `with_index` closure (it is not reentrant).
    #[error("internal error: Store::with_index called from inside a with_index closure")]
    Reentrant,
    /// Another `temper run` holds the run lock (and the caller asked not to wait).
    #[error(
        "the store is in use by pid {pid} (`{command}`, running for {:.0} s); \
         wait for it or run without --no-wait",
        running_for(*since)
    )]
    Locked {
        pid: u32,
        command: String,
        since: f64,
    },
    /// A stored value (record, manifest, cache entry) could not be decoded or encoded.
    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// The store's file system refused a lock (`ENOLCK`): an NFS mount without working file
    /// locking. Every store lock is a `flock`, which Linux maps to POSIX byte-range locks on
    /// NFS, served by the server's lock manager (`lockd`/`statd` for NFSv3, built in for v4).
    #[error(
        "{op} {}: the file system does not support locking (ENOLCK)\n  hint: the store needs \
         working file locks: on NFS, mount with locking (NFSv4, or NFSv3 with lockd/statd \
         running; not `nolock`); `local_lock=all` is not enough when several hosts share the \
         store",
        path.display()
    )]
    NoLocks { op: &'static str, path: PathBuf },
    /// Publishing an artifact failed for a reason other than I/O.
    #[error("publishing node {key}: {message}")]
    Publish { key: String, message: String },
    /// The store's filesystem is full: an operation failed with `ENOSPC`/`EDQUOT`, or a free
    /// space check found fewer bytes than an operation needs (`needed`, with what was
    /// `available`). Nothing half-written is left visible: the operation either did not start
    /// or failed before its result became visible.
    #[error("{}", disk_full_message(what, path, *needed, *available))]
    DiskFull {
        what: String,
        path: PathBuf,
        needed: Option<u64>,
        available: Option<u64>,
    },
}

/// What to do about [`StoreError::DiskFull`].
pub const DISK_FULL_HINT: &str = "free space: `temper gc`, or move the store with --store";

fn disk_full_message(
    what: &str,
    path: &std::path::Path,
    needed: Option<u64>,
    available: Option<u64>,
) -> String {
    let human = crate::human::human_bytes;
    let head = match (needed, available) {
        (Some(n), Some(a)) => format!(
            "{what}: not enough free space on the store's filesystem ({}): needs {} ({n} \
             bytes), {} ({a} bytes) available",
            path.display(),
            human(n),
            human(a)
        ),
        _ => format!(
            "{what} {}: no space left on the store's filesystem",
            path.display()
        ),
    };
    format!("{head}\n  hint: {DISK_FULL_HINT}")
}

fn running_for(since: f64) -> f64 {
    (crate::now_secs() - since).max(0.0)
}

impl StoreError {
    /// An I/O error of `op` on `path`; `ENOSPC`/`EDQUOT` become [`StoreError::DiskFull`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| {
            if crate::space::is_out_of_space(&source) {
                StoreError::DiskFull {
                    what: op.to_string(),
                    path,
                    needed: None,
                    available: None,
                }
            } else if source.raw_os_error() == Some(libc::ENOLCK) {
                StoreError::NoLocks { op, path }
            } else {
                StoreError::Io { op, path, source }
            }
        }
    }
    /// A sled error on the index at `path`; an out-of-space I/O error becomes
    /// [`StoreError::DiskFull`].
    pub(crate) fn index(path: impl Into<PathBuf>, source: sled::Error) -> Self {
        let path = path.into();
        match &source {
            sled::Error::Io(e) if crate::space::is_out_of_space(e) => StoreError::DiskFull {
                what: "writing the index".to_string(),
                path,
                needed: None,
                available: None,
            },
            _ => StoreError::Index { path, source },
        }
    }
    /// Whether this is [`StoreError::DiskFull`].
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. })
    }
    pub(crate) fn json(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> Self {
        let what = what.into();
        move |source| StoreError::Json { what, source }
    }
}

/// Result with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
