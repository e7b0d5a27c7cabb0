//! Checks before anything is submitted: Slurm's commands are on `PATH`, each partition the
//! recipe names exists, and the store (and the `temper` executable) is on a file system every
//! node of those partitions sees.
//!
//! "Every node sees it" cannot be asked of Slurm without running a job, so temper decides from
//! what it can know here: a network or cluster file system (NFS, Lustre, GPFS, BeeGFS, CephFS,
//! CIFS, FUSE mounts, …) is shared; any other (ext4, xfs, tmpfs, …) is this host's own, which
//! is fine only when this host is the partition's only node. `shared-store #true` says the
//! user knows better (a local path mounted identically everywhere). Each job also checks on
//! its node, before it starts, that it can read its job file in the store.

use super::cli;
use anyhow::Result;
use std::collections::BTreeSet;
use std::path::Path;

/// File systems seen from several hosts (`statfs` magic numbers, linux/magic.h and vendors').
const SHARED_FS: &[(i64, &str)] = &[
    (0x6969, "nfs"),
    (0x0BD0_0BD0, "lustre"),
    (0x4750_4653, "gpfs"),
    (0xFF53_4D42, "cifs"),
    (0xFE53_4D42, "smb2"),
    (0x517B, "smb"),
    (0x00C3_6400, "ceph"),
    (0x1983_0326, "beegfs"),
    (0x6573_5546, "fuse"),
    (0x0102_1997, "9p"),
    (0x5346_414F, "afs"),
    (0x7461_636F, "ocfs2"),
    (0x0116_1970, "gfs2"),
    (0xAAD7_AAEA, "panfs"),
    (0x5741_4B41, "wekafs"),
    (0x2454_6F73, "orangefs"),
];

/// The file system type of `path`: (magic, name if shared).
fn fs_of(path: &Path) -> Option<(i64, Option<&'static str>)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs fills the zeroed struct; `c` is a valid NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let magic = st.f_type as i64 & 0xFFFF_FFFF;
    Some((
        magic,
        SHARED_FS.iter().find(|(m, _)| *m == magic).map(|(_, n)| *n),
    ))
}

/// This host's names (short and full).
fn this_host() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    if let Some(full) = store::hostname() {
        if let Some((short, _)) = full.split_once('.') {
            names.insert(short.to_string());
        }
        names.insert(full);
    }
    names
}

/// A partition as the checks need it.
pub struct Partition {
    pub name: String,
    pub nodes: Vec<String>,
}

/// The partition `name` (`None`: the cluster's default), or a clear error naming the ones
/// that exist.
pub fn partition(name: Option<&str>) -> Result<Partition> {
    let name = match name {
        Some(n) => n.to_string(),
        None => cli::default_partition()?.ok_or_else(|| {
            crate::text::UsageError(format!(
                "--executor slurm: the cluster has no default partition\n  hint: set one: \
                 `executor slurm {{ partition \"NAME\" }}` (partitions: {})",
                cli::partitions().unwrap_or_default().join(", ")
            ))
        })?,
    };
    match cli::partition(&name)? {
        Some(p) => Ok(Partition {
            nodes: cli::hostnames(p.get("Nodes").map(String::as_str).unwrap_or(""))?,
            name,
        }),
        None => {
            let known = cli::partitions().unwrap_or_default();
            let hint = dsl::suggest::did_you_mean(&name, known.iter().map(String::as_str))
                .map(|c| format!("did you mean `{c}`? "))
                .unwrap_or_default();
            Err(crate::text::UsageError(format!(
                "--executor slurm: Slurm has no partition `{name}`\n  hint: {hint}partitions: {}",
                known.join(", ")
            ))
            .into())
        }
    }
}

/// An error unless `path` (what: "the store", "the temper executable") is visible from every
/// node of `p`.
pub fn shared(path: &Path, what: &str, p: &Partition, asserted: bool) -> Result<()> {
    if asserted {
        return Ok(());
    }
    let (magic, shared) = fs_of(path).unwrap_or((0, None));
    if shared.is_some() {
        return Ok(());
    }
    let me = this_host();
    let others: Vec<&String> = p.nodes.iter().filter(|n| !me.contains(*n)).collect();
    if others.is_empty() {
        return Ok(()); // this host is the partition's only node
    }
    let shown: Vec<&str> = others.iter().take(5).map(|s| s.as_str()).collect();
    Err(crate::text::UsageError(format!(
        "--executor slurm: {what} {} is on a file system of this host only (statfs type \
         {magic:#x}), but partition `{}` runs jobs on {}{}\n  hint: put it on a shared file \
         system (NFS, Lustre, GPFS, …) every node mounts (`--store /shared/…`), or, if this \
         path is mounted identically on every node, say so with `shared-store #true` in \
         `executor slurm`",
        path.display(),
        p.name,
        shown.join(", "),
        if others.len() > shown.len() {
            format!(" and {} more", others.len() - shown.len())
        } else {
            String::new()
        }
    ))
    .into())
}
