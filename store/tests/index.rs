//! The index: short open/close cycles (sled's lock really released), typed trees, two processes
//! writing concurrently, and the cost of one open/close on a store with 2,000 records.

use crate::common::*;
use std::time::{Duration, Instant};
use store::{EffectiveStatus, Status, Store, StoreError};

/// Child process entry: `counter` does 100 read-modify-write increments of one shared counter
/// (each in its own index open) and writes 100 records of its own.
#[test]
#[ignore = "child process helper, started by other tests"]
fn child() {
    let Some((role, dir)) = child_role() else {
        return;
    };
    let store = Store::open(&dir).unwrap();
    if let Some(tag) = role.strip_prefix("counter-") {
        for i in 0..100 {
            store
                .with_index(|ix| {
                    let tree = ix.db().open_tree("test-counter").unwrap();
                    let n = tree
                        .get("n")
                        .unwrap()
                        .map(|v| u64::from_le_bytes(v.as_ref().try_into().unwrap()))
                        .unwrap_or(0);
                    tree.insert("n", &(n + 1).to_le_bytes()).unwrap();
                    ix.put_record(&record(&key(&format!("{tag}-{i}")), tag))
                })
                .unwrap();
        }
    }
}

#[test]
fn index_reopens_many_times_in_one_process() {
    let (_t, store) = temp_store();
    for i in 0..50 {
        let k = key(&format!("r{i}"));
        store.put_record(&record(&k, "n")).unwrap();
        assert_eq!(store.record(&k).unwrap().unwrap().key, k);
    }
    assert_eq!(store.all_records().unwrap().len(), 50);
}

#[test]
fn with_index_is_not_reentrant_and_says_so() {
    let (_t, store) = temp_store();
    let err = store.with_index(|_| store.record("x")).unwrap_err();
    assert!(matches!(err, StoreError::Reentrant), "{err}");
    // And the store still works afterwards.
    store.put_record(&record(&key("after"), "n")).unwrap();
}

#[test]
fn threads_share_the_index_without_errors() {
    let (_t, store) = temp_store();
    std::thread::scope(|s| {
        for t in 0..4 {
            let store = store.clone();
            s.spawn(move || {
                for i in 0..25 {
                    store
                        .put_record(&record(&key(&format!("t{t}-{i}")), "n"))
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(store.all_records().unwrap().len(), 100);
}

#[test]
fn two_processes_write_concurrently_without_lost_updates() {
    let (_t, store) = temp_store();
    let dir = store.root().to_path_buf();
    let a = spawn_child(module_path!(), "counter-a", &dir, &[]);
    let b = spawn_child(module_path!(), "counter-b", &dir, &[]);
    // This process reads at the same time.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(300) {
        store.all_records().unwrap();
    }
    assert!(wait_child(a, Duration::from_secs(120)).success());
    assert!(wait_child(b, Duration::from_secs(120)).success());
    let n = store
        .with_index(|ix| {
            let v = ix
                .db()
                .open_tree("test-counter")
                .unwrap()
                .get("n")
                .unwrap()
                .unwrap();
            Ok(u64::from_le_bytes(v.as_ref().try_into().unwrap()))
        })
        .unwrap();
    assert_eq!(n, 200, "every read-modify-write was exclusive");
    assert_eq!(store.all_records().unwrap().len(), 200);
}

#[test]
fn records_lineage_runs_and_pins_round_trip() {
    let (_t, store) = temp_store();
    let (a, b) = (key("a"), key("b"));
    let mut r = record(&a, "chat");
    store.put_record(&r).unwrap();
    r = r.finished(Status::Failed, Some("bad record at line 3".into()));
    store.put_record(&r).unwrap();
    let got = store.record(&a).unwrap().unwrap();
    // Times go through JSON (serde_json may differ in the last bit of an f64).
    let close = |x: Option<f64>, y: Option<f64>| (x.unwrap() - y.unwrap()).abs() < 1e-6;
    assert!(close(got.started_at, r.started_at) && close(got.finished_at, r.finished_at));
    assert_eq!(
        (got.status, &got.error, &got.key_tree),
        (Status::Failed, &r.error, &r.key_tree)
    );
    assert_eq!(
        (&got.node, &got.kind, got.pid, got.run_id),
        (&r.node, &r.kind, r.pid, r.run_id)
    );
    assert_eq!(store.effective_status(&got), EffectiveStatus::Failed);
    let many = store.records_many(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(many.len(), 1);

    store.set_last_key("recipe/chat", &a).unwrap();
    store.set_last_key("recipe/chat", &b).unwrap();
    assert_eq!(store.last_key("recipe/chat").unwrap(), Some(b.clone()));
    assert_eq!(store.last_key("recipe/none").unwrap(), None);

    let r1 = store.begin_run("temper run x.kdl", "x").unwrap();
    let r2 = store.begin_run("temper run y.kdl", "y").unwrap();
    assert_eq!((r1.id, r2.id), (1, 2));
    store
        .finish_run(r1.id, vec![("chat".into(), a.clone(), Status::Done)], true)
        .unwrap();
    let runs = store.runs(10).unwrap();
    assert_eq!(
        runs.iter().map(|r| r.id).collect::<Vec<_>>(),
        [2, 1],
        "newest first"
    );
    assert_eq!(runs[1].ok, Some(true));
    assert_eq!(runs[1].nodes[0].1, a);
    assert_eq!(store.last_run().unwrap().unwrap().id, 2);

    store.pin("best", std::slice::from_ref(&a)).unwrap();
    assert_eq!(store.pins().unwrap()["best"], vec![a.clone()]);
    assert!(store.unpin("best").unwrap());
    assert!(!store.unpin("best").unwrap());
}

#[test]
fn stale_running_record_is_incomplete() {
    let (_t, store) = temp_store();
    let mut r = record(&key("s"), "s");
    assert_eq!(
        store.effective_status(&r),
        EffectiveStatus::Running {
            pid: std::process::id()
        }
    );
    // A pid that has exited: spawn and reap a trivial child.
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    r.pid = Some(pid);
    assert_eq!(store.effective_status(&r), EffectiveStatus::Incomplete);
    assert_eq!(
        store.effective_status(&r).to_string(),
        "incomplete (previous attempt died)"
    );
    // A live pid that is not a run (recycled pid): nobody holds the run lock.
    let mut other = std::process::Command::new("sleep")
        .arg("10")
        .spawn()
        .unwrap();
    r.pid = Some(other.id());
    assert_eq!(store.effective_status(&r), EffectiveStatus::Incomplete);
    let lock = store.lock_run(false, "temper run").unwrap();
    assert_eq!(
        store.effective_status(&r),
        EffectiveStatus::Running { pid: other.id() }
    );
    drop(lock);
    other.kill().unwrap();
    other.wait().unwrap();
}

/// Cost of one `with_index` open/close with 2,000 records of realistic size. Prints the
/// numbers; fails only if grossly slow (shared CI machines vary).
#[test]
fn open_close_cost_with_2000_records() {
    let (_t, store) = temp_store();
    let tree = serde_json::json!({
        "kind": "sft", "version": 1,
        "params": {"lr": 1e-5, "epochs": 2, "loss-on": "assistant", "seq-len": 2048},
        "inputs": {"model": key("m"), "data": key("d")},
    });
    store
        .with_index(|ix| {
            for i in 0..2000 {
                let mut r = record(&key(&format!("k{i}")), &format!("node{i}"));
                r.key_tree = tree.clone();
                ix.put_record(&r)?;
            }
            Ok(())
        })
        .unwrap();
    let probe = key("k1000");
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        store.with_index(|ix| ix.record(&probe)).unwrap().unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let t = Instant::now();
    let all = store.all_records().unwrap();
    let scan_ms = t.elapsed().as_secs_f64() * 1000.0;
    println!(
        "index open+get+flush+close with 2000 records: median {:.2} ms, max {:.2} ms; \
         full scan of {} records {:.2} ms",
        times[times.len() / 2],
        times[times.len() - 1],
        all.len(),
        scan_ms
    );
    assert_eq!(all.len(), 2000);
    assert!(
        times[times.len() / 2] < 200.0,
        "one index open is far too slow: {times:?}"
    );
}

#[test]
fn a_full_disk_while_opening_does_not_make_the_index_look_corrupt() {
    let disk = tmpfs_or_skip!("3m");
    let store = Store::open(disk.dir.join("store")).unwrap();
    let failed = key("failed");
    store
        .put_record(&record(&failed, "f").finished(Status::Failed, Some("boom".into())))
        .unwrap();
    for i in 0..20 {
        store
            .put_record(&record(&key(&format!("r{i}")), "r"))
            .unwrap();
    }
    let fill = disk.fill("a");
    // sled writes a snapshot while opening: on a full disk that fails, and used to leave an
    // empty `snap.*.generating` that the next open took for corruption (and rebuilt, losing
    // everything but the artifacts).
    for _ in 0..3 {
        let err = store.put_record(&record(&key("new"), "new")).unwrap_err();
        assert!(err.is_disk_full(), "{err}");
        assert!(err.to_string().contains("temper gc"), "{err}");
    }
    std::fs::remove_file(fill).unwrap();
    let rec = store.record(&failed).unwrap().expect("index intact");
    assert_eq!(rec.status, Status::Failed);
    assert_eq!(store.all_records().unwrap().len(), 21);
    store.put_record(&record(&key("new"), "new")).unwrap();
}

/// `run_records` lists one run's records as `all_records` has them, less the key tree, the
/// summary and the stamps (what `temper status` reads without decoding them).
#[test]
fn run_records_are_the_run_s_records_without_their_trees() {
    let (_t, store) = temp_store();
    for i in 0..6 {
        let mut r = record(&key(&format!("r{i}")), &format!("n{i}"));
        r.run_id = Some(if i % 2 == 0 { 7 } else { 8 });
        r.summary = serde_json::json!({"rows": i});
        let r = if i == 0 {
            r.finished(Status::Failed, Some("boom".into()))
        } else {
            r
        };
        store.put_record(&r).unwrap();
    }
    let all = store.all_records().unwrap();
    let mut heads = store.run_records(7).unwrap();
    heads.sort_by(|a, b| a.node.cmp(&b.node));
    let mut want: Vec<_> = all.into_iter().filter(|r| r.run_id == Some(7)).collect();
    want.sort_by(|a, b| a.node.cmp(&b.node));
    assert_eq!(heads.len(), 3);
    for (h, mut w) in heads.into_iter().zip(want) {
        assert!(!w.key_tree.is_null());
        w.key_tree = serde_json::Value::Null;
        w.summary = serde_json::Value::Null;
        w.files.clear();
        assert_eq!(h, w);
    }
    assert!(store.run_records(9).unwrap().is_empty());
}
