//! Atomic publish: manifest contents, crash at every publish boundary (in a child process that
//! aborts), adoption of unrecorded artifacts, and racing publishers.

use crate::common::*;
use std::time::Duration;
use store::{Status, Store, MANIFEST_FILE};

const POINTS: [&str; 4] = [
    "publish:before-manifest",
    "publish:after-manifest",
    "publish:after-rename",
    "publish:after-record",
];

/// Child process entry (run by `spawn_child`): publishes `key("crash")`, normally aborting at
/// the crash point given in `TEMPER_CRASH_AT`.
#[test]
#[ignore = "child process helper, started by other tests"]
fn child() {
    let Some((role, dir)) = child_role() else {
        return;
    };
    let store = Store::open(&dir).unwrap();
    if role == "publish" {
        publish(&store, &key("crash"), "crash");
    }
}

#[test]
fn publish_writes_manifest_last_and_records_done() {
    let (_t, store) = temp_store();
    let k = key("a");
    let staging = stage(&store, &k);
    // A stale manifest left by an earlier crashed attempt must not end up listed.
    std::fs::write(staging.join(MANIFEST_FILE), b"garbage").unwrap();
    let mut rec = record(&k, "a");
    rec.summary = serde_json::json!({"records": 2});
    let m = store.publish(&k, &staging, rec).unwrap();

    let paths: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["a.txt", "data.jsonl", "sub/b.bin"]);
    assert_eq!(m.files[0].size, 5);
    assert_eq!(
        m.files[0].blake3,
        blake3::hash(b"alpha").to_hex().to_string()
    );
    assert_eq!(m.summary, serde_json::json!({"records": 2}));
    assert!(!staging.exists(), "staging dir is moved, not copied");

    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.artifact_dir(&k).join(MANIFEST_FILE)).unwrap())
            .unwrap();
    for field in [
        "key",
        "kind",
        "node",
        "files",
        "key_tree",
        "summary",
        "created_at",
    ] {
        assert!(on_disk.get(field).is_some(), "manifest lacks {field}");
    }
    let rec = store.lookup_done(&k).unwrap().expect("done");
    assert_eq!(rec.status, Status::Done);
    assert!(rec.finished_at.is_some() && rec.duration_s.is_some());
    assert_eq!(
        store.last_key("recipe/a").unwrap().as_deref(),
        Some(k.as_str())
    );
}

#[test]
fn crash_at_each_publish_point_leaves_no_record_or_complete_artifact() {
    for point in POINTS {
        let (t, store) = temp_store();
        let dir = store.root().to_path_buf();
        let k = key("crash");
        let child = spawn_child(
            module_path!(),
            "publish",
            &dir,
            &[("TEMPER_CRASH_AT", point)],
        );
        let st = wait_child(child, Duration::from_secs(60));
        assert!(!st.success(), "{point}: child should have aborted");

        let raw = store.record(&k).unwrap();
        let artifact = store.artifact_dir(&k);
        match point {
            "publish:before-manifest" | "publish:after-manifest" => {
                assert!(raw.is_none(), "{point}: no record");
                assert!(!artifact.exists(), "{point}: nothing published");
                assert!(store.lookup_done(&k).unwrap().is_none());
            }
            "publish:after-rename" => {
                assert!(raw.is_none(), "{point}: record not yet written");
                let v = store.verify().unwrap();
                assert!(v.is_clean(), "{point}: {:?}", v.issues);
                assert_eq!(v.unrecorded, vec![k.clone()]);
                // Adopted by lookup.
                let rec = store.lookup_done(&k).unwrap().expect("adopted");
                assert_eq!(rec.node, "crash");
                assert_eq!(store.record(&k).unwrap().unwrap().status, Status::Done);
            }
            _ => {
                assert_eq!(raw.expect("record").status, Status::Done);
                assert!(store.lookup_done(&k).unwrap().is_some());
            }
        }
        let v = store.verify().unwrap();
        assert!(v.is_clean(), "{point}: {:?}", v.issues);
        // Whatever happened, a rerun of the publish ends with the complete artifact.
        let m = publish(&store, &k, "crash");
        assert_eq!(m.files.len(), 3, "{point}");
        assert!(store.lookup_done(&k).unwrap().is_some());
        assert!(store.verify().unwrap().is_clean());
        drop(t);
    }
}

#[test]
fn done_record_with_vanished_artifact_is_absent() {
    let (_t, store) = temp_store();
    let k = key("gone");
    publish(&store, &k, "gone");
    std::fs::remove_dir_all(store.artifact_dir(&k)).unwrap();
    assert!(store.lookup_done(&k).unwrap().is_none());
    assert!(
        store.record(&k).unwrap().is_some(),
        "the record itself is kept for `why`"
    );
}

#[test]
fn unrecorded_artifact_with_wrong_sizes_is_not_adopted() {
    let (_t, store) = temp_store();
    let k = key("trunc");
    publish(&store, &k, "trunc");
    store.with_index(|ix| ix.remove_record(&k)).unwrap();
    std::fs::write(store.artifact_dir(&k).join("a.txt"), b"al").unwrap();
    assert!(store.lookup_done(&k).unwrap().is_none());
    assert!(store.record(&k).unwrap().is_none());
}

#[test]
fn adoption_keeps_run_metadata_of_a_running_record() {
    let (_t, store) = temp_store();
    let k = key("adopt");
    publish(&store, &k, "adopt");
    // Simulate "crash between rename and record": the index still says Running.
    let mut running = record(&k, "adopt");
    running.run_id = Some(42);
    store.put_record(&running).unwrap();
    let rec = store.lookup_done(&k).unwrap().expect("adopted");
    assert_eq!(rec.status, Status::Done);
    assert_eq!(rec.run_id, Some(42));
    assert_eq!(rec.summary, serde_json::json!({"records": 2}));
}

#[test]
fn second_publisher_of_the_same_key_discards_its_output() {
    let (_t, store) = temp_store();
    let k = key("race");
    let first = publish(&store, &k, "race");
    let out = store.prepare_staging(&k).unwrap();
    std::fs::write(out.join("other.txt"), b"different").unwrap();
    let second = store.publish(&k, &out, record(&k, "race")).unwrap();
    assert_eq!(first.files, second.files, "the existing artifact wins");
    assert_eq!(first.key, second.key);
    assert!(!out.exists());
    assert!(!store.artifact_dir(&k).join("other.txt").exists());
}

#[test]
fn publish_rejects_symlinks_and_mismatched_records() {
    let (_t, store) = temp_store();
    let k = key("link");
    let out = stage(&store, &k);
    std::os::unix::fs::symlink(out.join("a.txt"), out.join("link.txt")).unwrap();
    let err = store
        .publish(&k, &out, record(&k, "link"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("link.txt") && err.contains("symlink"), "{err}");
    assert!(!store.artifact_dir(&k).exists());

    let err = store
        .publish(&k, &out, record(&key("other"), "x"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("record is for key"), "{err}");
}

#[test]
fn lookup_done_many_batches_and_skips_absent() {
    let (_t, store) = temp_store();
    let (a, b) = (key("m1"), key("m2"));
    publish(&store, &a, "m1");
    let got = store.lookup_done_many(&[a.clone(), b.clone()]).unwrap();
    assert!(got.contains_key(&a) && !got.contains_key(&b));
}

#[test]
fn free_space_check_names_needed_and_available_bytes() {
    let (_t, store) = temp_store();
    store.ensure_space(0, "starting node x").unwrap();
    let err = store
        .ensure_space(u64::MAX / 4, "starting node big")
        .unwrap_err();
    assert!(err.is_disk_full());
    let msg = err.to_string();
    for part in [
        "starting node big",
        "needs",
        "bytes",
        "available",
        store::DISK_FULL_HINT,
    ] {
        assert!(msg.contains(part), "{part:?} in {msg}");
    }
}

#[test]
fn publish_on_a_full_disk_fails_with_disk_full_and_records_nothing() {
    let disk = tmpfs_or_skip!("3m");
    let store = Store::open(disk.dir.join("store")).unwrap();
    let a = key("a");
    publish(&store, &a, "a");
    let k = key("late");
    let staging = stage(&store, &k);
    let fill = disk.fill("a");
    let err = store.publish(&k, &staging, record(&k, "late")).unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    let msg = err.to_string();
    for part in ["publishing node late", "needs", "available", "temper gc"] {
        assert!(msg.contains(part), "{part:?} in {msg}");
    }
    assert!(!store.artifact_dir(&k).exists(), "nothing published");
    assert!(
        !staging.join(MANIFEST_FILE).exists(),
        "nothing written before the check"
    );
    std::fs::remove_file(fill).unwrap();
    assert!(store.lookup_done(&k).unwrap().is_none());
    assert!(store.record(&k).unwrap().is_none(), "no record");
    assert!(store.lookup_done(&a).unwrap().is_some());
    // With space back, the same staged output publishes.
    store.publish(&k, &staging, record(&k, "late")).unwrap();
    assert!(store.lookup_done(&k).unwrap().is_some());
}
