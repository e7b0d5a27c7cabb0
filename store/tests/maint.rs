//! verify, rebuild_index (lost and corrupt index) and gc.

mod common;
use common::*;
use std::collections::HashSet;
use store::{Status, VerifyIssue};

#[test]
fn verify_detects_a_flipped_byte_and_other_damage() {
    let (_t, store) = temp_store();
    let (a, b, c) = (key("a"), key("b"), key("c"));
    publish(&store, &a, "a");
    publish(&store, &b, "b");
    publish(&store, &c, "c");
    let clean = store.verify().unwrap();
    assert!(clean.is_clean() && clean.checked == 3, "{clean:?}");

    // Flip one byte in the middle of a 70 kB file (same size).
    let f = store.artifact_dir(&a).join("sub/b.bin");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[35_000] ^= 0x01;
    std::fs::write(&f, bytes).unwrap();
    // Remove a file, add a file.
    std::fs::remove_file(store.artifact_dir(&b).join("a.txt")).unwrap();
    std::fs::write(store.artifact_dir(&b).join("stray.txt"), b"x").unwrap();
    // A record whose artifact vanished.
    std::fs::remove_dir_all(store.artifact_dir(&c)).unwrap();

    let r = store.verify().unwrap();
    assert!(!r.is_clean());
    assert!(r.issues.iter().any(
        |i| matches!(i, VerifyIssue::Mismatch { key, path, .. } if *key == a && path == "sub/b.bin")
    ));
    assert!(r.issues.contains(&VerifyIssue::MissingFile {
        key: b.clone(),
        path: "a.txt".into()
    }));
    assert!(r.issues.contains(&VerifyIssue::ExtraFile {
        key: b.clone(),
        path: "stray.txt".into()
    }));
    assert!(r.issues.contains(&VerifyIssue::RecordWithoutArtifact {
        key: c.clone(),
        node: "c".into()
    }));
    assert_eq!(r.issues.len(), 4, "{:?}", r.issues);
    let text = r
        .issues
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("sub/b.bin: content changed"), "{text}");
}

#[test]
fn verify_reports_artifact_without_manifest() {
    let (_t, store) = temp_store();
    let k = key("nm");
    std::fs::create_dir_all(store.artifact_dir(&k)).unwrap();
    let r = store.verify().unwrap();
    assert_eq!(r.issues, vec![VerifyIssue::NoManifest { key: k }]);
}

#[test]
fn rebuild_recreates_records_from_manifests_and_keeps_pins() {
    let (_t, store) = temp_store();
    let (a, b) = (key("a"), key("b"));
    publish(&store, &a, "a");
    publish(&store, &b, "b");
    store.pin("keep", std::slice::from_ref(&a)).unwrap();
    store
        .put_record(&record(&key("failed"), "f").finished(Status::Failed, None))
        .unwrap();

    let n = store.rebuild_index().unwrap();
    assert_eq!(n, 2);
    let done: Vec<String> = store
        .list_done()
        .unwrap()
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(done.len(), 2);
    assert!(done.contains(&a) && done.contains(&b));
    assert_eq!(
        store.pins().unwrap()["keep"],
        vec![a.clone()],
        "pins survive a rebuild"
    );
    let rec = store.lookup_done(&a).unwrap().unwrap();
    assert_eq!(rec.summary, serde_json::json!({"records": 2}));
    assert_eq!(rec.key_tree["kind"], "dataset");
    assert_eq!(store.last_key("recipe/a").unwrap(), Some(a.clone()));
    assert!(store.verify().unwrap().is_clean());
}

#[test]
fn lost_or_corrupt_index_is_rebuilt() {
    let (_t, store) = temp_store();
    let a = key("a");
    publish(&store, &a, "a");

    // Lost: delete the index entirely.
    std::fs::remove_dir_all(store.root().join("index")).unwrap();
    assert!(
        store.list_done().unwrap().is_empty(),
        "a fresh index knows nothing..."
    );
    assert_eq!(store.rebuild_index().unwrap(), 1);
    assert_eq!(store.list_done().unwrap().len(), 1);

    // Corrupt: overwrite sled's files with garbage; the next open rebuilds by itself.
    let index = store.root().join("index");
    for entry in walkdir::WalkDir::new(&index) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            std::fs::write(entry.path(), vec![0xAB; 4096]).unwrap();
        }
    }
    let done = store.list_done().unwrap();
    assert_eq!(done.len(), 1, "rebuilt on open");
    assert_eq!(done[0].key, a);
}

#[test]
fn gc_removes_unreachable_keeps_pinned_and_live() {
    let (_t, store) = temp_store();
    let (keep, pinned, doomed, live) = (key("keep"), key("pin"), key("doomed"), key("live"));
    for (k, n) in [(&keep, "keep"), (&pinned, "pin"), (&doomed, "doomed")] {
        publish(&store, k, n);
    }
    std::fs::create_dir_all(store.work_dir(&doomed).join("checkpoints")).unwrap();
    std::fs::write(
        store.work_dir(&doomed).join("checkpoints/w.bin"),
        vec![0u8; 1000],
    )
    .unwrap();
    std::fs::write(store.log_path(&doomed), b"log line\n").unwrap();
    // A failed attempt's leftovers (no artifact) are collected too.
    let failed = key("failed");
    store
        .put_record(&record(&failed, "f").finished(Status::Failed, None))
        .unwrap();
    std::fs::create_dir_all(store.work_dir(&failed)).unwrap();
    // A node running right now in this (live) process is never touched.
    store.put_record(&record(&live, "live")).unwrap();
    std::fs::create_dir_all(store.work_dir(&live)).unwrap();
    store.pin("p", std::slice::from_ref(&pinned)).unwrap();

    let keep_set: HashSet<String> = [keep.clone()].into();
    let dry = store.gc(&keep_set, true).unwrap();
    let mut expected = vec![doomed.clone(), failed.clone()];
    expected.sort();
    assert_eq!(
        dry.removed
            .iter()
            .map(|(k, _)| k.clone())
            .collect::<Vec<_>>(),
        expected
    );
    let doomed_bytes = dry.removed.iter().find(|(k, _)| *k == doomed).unwrap().1;
    let artifact_bytes = store.read_manifest(&doomed).unwrap().unwrap().total_bytes();
    assert!(doomed_bytes >= artifact_bytes + 1000 + 9, "{doomed_bytes}");
    assert!(
        store.artifact_dir(&doomed).exists(),
        "dry run deletes nothing"
    );

    let real = store.gc(&keep_set, false).unwrap();
    assert_eq!(real, dry);
    assert!(!store.artifact_dir(&doomed).exists());
    assert!(!store.work_dir(&doomed).exists() && !store.log_path(&doomed).exists());
    assert!(store.record(&doomed).unwrap().is_none() && store.record(&failed).unwrap().is_none());
    assert!(!store.work_dir(&failed).exists());
    for k in [&keep, &pinned] {
        assert!(store.lookup_done(k).unwrap().is_some());
    }
    assert!(store.work_dir(&live).exists() && store.record(&live).unwrap().is_some());
    assert!(store.verify().unwrap().is_clean());
    assert_eq!(
        std::fs::read_dir(store.tmp_dir()).unwrap().count(),
        0,
        "tmp is cleaned"
    );
}
