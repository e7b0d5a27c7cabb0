//! The run lock: contention names the holder, a SIGKILLed holder never blocks, waiting works.

use crate::common::*;
use std::time::{Duration, Instant};
use store::{Store, StoreError};

/// Child process entry: takes the run lock, writes `held`, then holds it until `release`
/// appears (or forever, for the SIGKILL test).
#[test]
#[ignore = "child process helper, started by other tests"]
fn child() {
    let Some((role, dir)) = child_role() else {
        return;
    };
    let store = Store::open(&dir).unwrap();
    if role == "hold" {
        let _lock = store.lock_run(false, "temper run held.kdl").unwrap();
        std::fs::write(dir.join("held"), b"").unwrap();
        let start = Instant::now();
        while !dir.join("release").exists() && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn contention_without_wait_names_the_holder() {
    let (_t, store) = temp_store();
    let dir = store.root().to_path_buf();
    let child = spawn_child(module_path!(), "hold", &dir, &[]);
    let pid = child.id();
    wait_for_file(&dir.join("held"), Duration::from_secs(30));

    let holder = store.run_lock_holder().expect("a holder");
    assert_eq!(
        (holder.pid, holder.command.as_str()),
        (pid, "temper run held.kdl")
    );
    match store.lock_run(false, "temper run mine.kdl") {
        Err(StoreError::Locked {
            pid: p, command, ..
        }) => {
            assert_eq!(p, pid);
            assert_eq!(command, "temper run held.kdl");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    let msg = store.lock_run(false, "x").unwrap_err().to_string();
    assert!(
        msg.contains(&format!("pid {pid}")) && msg.contains("held.kdl"),
        "{msg}"
    );

    // wait=true blocks until the holder lets go.
    let release = dir.join("release");
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(release, b"").unwrap();
    });
    let start = Instant::now();
    let lock = store.lock_run(true, "temper run mine.kdl").unwrap();
    assert!(start.elapsed() >= Duration::from_millis(250), "it waited");
    assert_eq!(lock.holder().pid, std::process::id());
    t.join().unwrap();
    assert!(wait_child(child, Duration::from_secs(30)).success());
    assert_eq!(
        store.run_lock_holder().unwrap().command,
        "temper run mine.kdl"
    );
    drop(lock);
    assert!(store.run_lock_holder().is_none(), "released on drop");
}

#[test]
fn lock_of_a_killed_process_never_blocks() {
    let (_t, store) = temp_store();
    let dir = store.root().to_path_buf();
    let mut child = spawn_child(module_path!(), "hold", &dir, &[]);
    wait_for_file(&dir.join("held"), Duration::from_secs(30));
    assert!(store.run_lock_holder().is_some());
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    child.wait().unwrap();
    assert!(store.run_lock_holder().is_none());
    let lock = store
        .lock_run(false, "temper run after.kdl")
        .expect("not blocked by a dead holder");
    assert_eq!(lock.holder().command, "temper run after.kdl");
}

#[test]
fn lock_is_exclusive_within_one_process_too() {
    let (_t, store) = temp_store();
    assert!(store.run_lock_holder().is_none());
    let first = store.lock_run(false, "one").unwrap();
    let err = store.lock_run(false, "two").unwrap_err();
    assert!(matches!(err, StoreError::Locked { pid, .. } if pid == std::process::id()));
    drop(first);
    store.lock_run(false, "three").unwrap();
}

/// NFS without working locks answers `flock` with ENOLCK: a clear error saying what to mount,
/// not a bare OS error.
#[test]
fn a_file_system_without_locks_is_a_clear_error() {
    let e = store::StoreError::io("locking", "/nfs/store/index.lock")(
        std::io::Error::from_raw_os_error(libc::ENOLCK),
    );
    assert!(matches!(e, store::StoreError::NoLocks { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("/nfs/store/index.lock"), "{msg}");
    assert!(msg.contains("ENOLCK") && msg.contains("lockd"), "{msg}");
}
