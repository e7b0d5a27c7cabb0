//! Shared helpers for the store's integration tests: temporary stores, staged outputs, and
//! re-running the test binary as a child process (for crashes, locks and concurrency).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};
use store::{NodeRecord, Store};

/// A fresh store in a temp dir (kept alive by the returned guard).
pub fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("store")).expect("open store");
    (dir, store)
}

/// A deterministic fake node key.
pub fn key(name: &str) -> String {
    blake3::hash(name.as_bytes()).to_hex().to_string()
}

/// A `Running` record for `key` as the runner would write it.
pub fn record(key: &str, node: &str) -> NodeRecord {
    NodeRecord::running(
        key,
        "dataset",
        node,
        "recipe",
        serde_json::json!({"kind": "dataset", "params": {"path": "data/x.jsonl"}}),
        Some(1),
    )
}

/// Fills the staging dir of `key` with a small multi-file output and returns it.
pub fn stage(store: &Store, key: &str) -> PathBuf {
    let out = store.prepare_staging(key).expect("prepare staging");
    std::fs::write(
        out.join("data.jsonl"),
        b"{\"text\":\"hello\"}\n{\"text\":\"world\"}\n",
    )
    .unwrap();
    std::fs::create_dir_all(out.join("sub")).unwrap();
    std::fs::write(out.join("sub/b.bin"), vec![7u8; 70_000]).unwrap();
    std::fs::write(out.join("a.txt"), b"alpha").unwrap();
    out
}

/// Publishes the standard staged output for `key`.
pub fn publish(store: &Store, key: &str, node: &str) -> store::Manifest {
    let out = stage(store, key);
    let mut rec = record(key, node);
    rec.summary = serde_json::json!({"records": 2});
    store.publish(key, &out, rec).expect("publish")
}

/// Re-runs this test binary's `child` test of `module` (the caller's `module_path!()`) with
/// `role` and extra environment.
pub fn spawn_child(module: &str, role: &str, dir: &Path, env: &[(&str, &str)]) -> Child {
    let exe = std::env::current_exe().expect("current exe");
    // `all::publish` → the test `publish::child` (test names leave out the crate).
    let module = module.split_once("::").map_or("", |(_, m)| m);
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        &format!("{module}::child"),
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("STORE_TEST_ROLE", role)
    .env("STORE_TEST_DIR", dir)
    .env_remove("TEMPER_CRASH_AT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(std::process::Stdio::null());
    cmd.stderr(std::process::Stdio::null());
    cmd.spawn().expect("spawn child test process")
}

/// Waits for `child` with a timeout, killing it if it overruns.
pub fn wait_child(mut child: Child, timeout: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("child process did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls until `path` exists.
pub fn wait_for_file(path: &Path, timeout: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < timeout,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The role and directory if this process is a child started by [`spawn_child`].
pub fn child_role() -> Option<(String, PathBuf)> {
    let role = std::env::var("STORE_TEST_ROLE").ok()?;
    let dir = std::env::var_os("STORE_TEST_DIR")?;
    Some((role, PathBuf::from(dir)))
}

/// A small tmpfs mounted on a temporary directory, unmounted on drop (even when the test
/// fails). For full-disk tests; needs root (or `CAP_SYS_ADMIN`).
pub struct Tmpfs {
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=…`, e.g. "3m"), or says why not: the caller
    /// prints "skipped: cannot mount tmpfs: …" and returns.
    pub fn mount(size: &str) -> Result<Tmpfs, String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs { dir, _tmp: tmp })
    }

    /// Bytes available on the tmpfs.
    pub fn free(&self) -> u64 {
        store::free_space_at(&self.dir).expect("statvfs")
    }

    /// Fills the tmpfs completely with `fill-<tag>` (4 KiB writes until ENOSPC, then single
    /// bytes), returning its path.
    pub fn fill(&self, tag: &str) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join(format!("fill-{tag}"));
        let mut f = std::fs::File::create(&path).expect("create fill file");
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&[0u8]).is_ok() {}
        assert_eq!(self.free(), 0, "the tmpfs is full");
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Busy (a file still open): detach it now, the kernel frees it when unused.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Mounts a tmpfs or prints why the calling test is skipped.
#[macro_export]
macro_rules! tmpfs_or_skip {
    ($size:expr) => {
        match Tmpfs::mount($size) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("skipped: cannot mount tmpfs: {e}");
                return;
            }
        }
    };
}
