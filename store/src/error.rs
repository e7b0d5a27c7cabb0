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
    /// Publishing an artifact failed for a reason other than I/O.
    #[error("publishing node {key}: {message}")]
    Publish { key: String, message: String },
}

fn running_for(since: f64) -> f64 {
    (crate::now_secs() - since).max(0.0)
}

impl StoreError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| StoreError::Io { op, path, source }
    }
    pub(crate) fn json(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> Self {
        let what = what.into();
        move |source| StoreError::Json { what, source }
    }
}

/// Result with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
