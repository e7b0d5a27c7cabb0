//! How the runner writes things for people (times and sizes, from `store::human`) and the
//! usage error every command
//! may return. A leaf module (no imports from the rest of the crate), so the executor, the
//! node logs and the commands share it without depending on each other.

pub use store::human::{human_bytes, human_time};

/// A usage mistake (`--only` naming no node, an ambiguous node name…): exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);
impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}
