//! Free space on the store's filesystem, and recognising "disk full" errors.
//!
//! A full disk must never cost the user data, and must fail with a message that says what to
//! do ([`crate::DISK_FULL_HINT`]). So: every `ENOSPC`/`EDQUOT` becomes
//! [`StoreError::DiskFull`]; [`Store::publish`] checks free space before it writes the
//! manifest (and the runner can check before a stage starts, with [`Store::ensure_space`]);
//! pins and runs live in small durable files ([`crate::durable`]) that survive whatever a full
//! disk does to the sled index; and `gc`, `unpin` and `verify` work without writing first.

use crate::{Result, Store, StoreError};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Headroom every space check keeps on top of what an operation itself writes: room for the
/// index to grow (sled appends to its log in segments of 512 KiB and writes a snapshot when it
/// opens) and for the small durable files (pins, runs, manifests).
pub const SPACE_MARGIN: u64 = 1024 * 1024;

/// Whether an I/O error means the filesystem (or the user's quota) is full.
pub fn is_out_of_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
}

/// Bytes available to an unprivileged user on the filesystem holding `path` (`statvfs`:
/// `f_bavail * f_frsize`).
pub fn free_space_at(path: &Path) -> std::io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path; `st` is a plain C struct that statvfs fills
    // in completely on success, and is read only then.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

impl Store {
    /// Bytes available on the store's filesystem.
    pub fn free_space(&self) -> Result<u64> {
        free_space_at(self.root()).map_err(StoreError::io("checking free space on", self.root()))
    }

    /// Fails with [`StoreError::DiskFull`] (naming `what`, the bytes needed and available, and
    /// the hint) unless `bytes` + [`SPACE_MARGIN`] are free on the store's filesystem. Call it
    /// before writing something big: the runner before a stage starts (with an estimate of its
    /// output, or 0 to check the margin only), [`Store::publish`] before its manifest.
    pub fn ensure_space(&self, bytes: u64, what: &str) -> Result<()> {
        let available = self.free_space()?;
        let needed = bytes.saturating_add(SPACE_MARGIN);
        if available < needed {
            return Err(StoreError::DiskFull {
                what: what.to_string(),
                path: self.root().to_path_buf(),
                needed: Some(needed),
                available: Some(available),
            });
        }
        Ok(())
    }
}
