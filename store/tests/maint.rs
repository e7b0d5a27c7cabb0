//! verify, rebuild_index (lost and corrupt index) and gc.

use crate::common::*;
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

/// Overwrites every file of the sled index with garbage.
fn corrupt_index(store: &store::Store) {
    for entry in walkdir::WalkDir::new(store.root().join("index")) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            std::fs::write(entry.path(), vec![0xAB; 4096]).unwrap();
        }
    }
}

fn run_ids(store: &store::Store) -> Vec<u64> {
    store
        .runs(usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect()
}

#[test]
fn pins_and_runs_survive_a_deleted_or_corrupt_index() {
    let (_t, store) = temp_store();
    let (a, b) = (key("a"), key("b"));
    publish(&store, &a, "a");
    publish(&store, &b, "b");
    store.pin("keepme", std::slice::from_ref(&a)).unwrap();
    let r1 = store.begin_run("temper run r.kdl", "recipe").unwrap();
    store
        .finish_run(r1.id, vec![("a".into(), a.clone(), Status::Done)], true)
        .unwrap();
    store.begin_run("temper run r.kdl", "recipe").unwrap();

    // Lost: the index directory deleted.
    std::fs::remove_dir_all(store.root().join("index")).unwrap();
    assert_eq!(store.pins().unwrap()["keepme"], vec![a.clone()]);
    assert_eq!(run_ids(&store), vec![2, 1]);
    assert_eq!(store.rebuild_index().unwrap(), 2);
    let dry = store.gc(&HashSet::new(), true).unwrap();
    assert_eq!(dry.removed.len(), 1, "only the unpinned artifact: {dry:?}");
    assert_eq!(dry.removed[0].0, b);

    // Corrupt: rebuilt on the next open, with the pins and runs (numbering goes on).
    corrupt_index(&store);
    assert_eq!(store.list_done().unwrap().len(), 2, "rebuilt on open");
    assert_eq!(store.pins().unwrap()["keepme"], vec![a.clone()]);
    let r3 = store.begin_run("temper run r.kdl", "recipe").unwrap();
    assert_eq!(r3.id, 3, "run numbering continues after the highest run");
    let last = store.runs(3).unwrap();
    assert_eq!(last[2].nodes, vec![("a".into(), a.clone(), Status::Done)]);
    assert_eq!(last[2].ok, Some(true));
    // The rebuilt index mirrors the pins again (for older binaries).
    let mirrored = store
        .with_index(|ix| Ok(ix.db().open_tree("pins").unwrap().len()))
        .unwrap();
    assert_eq!(mirrored, 1);
    assert!(store.unpin("keepme").unwrap());
    assert!(store.pins().unwrap().is_empty());
    assert!(!store.unpin("keepme").unwrap());
}

#[test]
fn rebuild_keeps_failed_attempts_and_run_metadata_of_a_readable_index() {
    let (_t, store) = temp_store();
    let (a, failed) = (key("a"), key("failed"));
    publish(&store, &a, "a");
    let run_id = store.lookup_done(&a).unwrap().unwrap().run_id;
    store
        .put_record(&record(&failed, "f").finished(Status::Failed, Some("boom".into())))
        .unwrap();
    store.rebuild_index().unwrap();
    let rec = store.record(&failed).unwrap().expect("failed attempt kept");
    assert_eq!(
        (rec.status, rec.error.as_deref()),
        (Status::Failed, Some("boom"))
    );
    assert_eq!(store.lookup_done(&a).unwrap().unwrap().run_id, run_id);
}

/// A store as an older temper left it: pins and runs only in sled's trees.
fn old_style_store() -> (tempfile::TempDir, store::Store, String) {
    let (t, store) = temp_store();
    let a = key("a");
    publish(&store, &a, "a");
    store
        .with_index(|ix| {
            let db = ix.db();
            let keys = serde_json::to_vec(&vec![a.clone()]).unwrap();
            db.open_tree("pins").unwrap().insert("old", keys).unwrap();
            for id in 1..=3u64 {
                let run = serde_json::json!({"id": id, "pid": 1, "command": "temper run r.kdl",
                    "recipe": "r", "started_at": 1.0, "ok": true});
                let v = serde_json::to_vec(&run).unwrap();
                db.open_tree("runs")
                    .unwrap()
                    .insert(id.to_be_bytes(), v)
                    .unwrap();
            }
            Ok(())
        })
        .unwrap();
    let root = store.root();
    let _ = std::fs::remove_file(root.join("durable.v1"));
    let _ = std::fs::remove_dir_all(root.join("pins"));
    let _ = std::fs::remove_dir_all(root.join("runs"));
    (t, store, a)
}

#[test]
fn pins_and_runs_kept_only_in_sled_by_an_older_version_are_migrated() {
    // First access after the upgrade writes them out...
    let (_t, store, a) = old_style_store();
    assert_eq!(store.pins().unwrap()["old"], vec![a.clone()]);
    assert!(store.root().join("pins").is_dir() && store.root().join("durable.v1").is_file());
    // ...so losing the index afterwards loses nothing.
    std::fs::remove_dir_all(store.root().join("index")).unwrap();
    assert_eq!(store.pins().unwrap()["old"], vec![a.clone()]);
    assert_eq!(run_ids(&store), vec![3, 2, 1]);
    assert_eq!(store.begin_run("temper run", "r").unwrap().id, 4);

    // A rebuild as the first access migrates from the old index before deleting it.
    let (_t2, store, a) = old_style_store();
    store.rebuild_index().unwrap();
    std::fs::remove_dir_all(store.root().join("index")).unwrap();
    assert_eq!(store.pins().unwrap()["old"], vec![a]);
    assert_eq!(run_ids(&store), vec![3, 2, 1]);
}

#[test]
fn on_a_full_disk_pins_and_runs_survive_and_gc_unpin_verify_free_space() {
    let disk = tmpfs_or_skip!("8m");
    let store = store::Store::open(disk.dir.join("store")).unwrap();
    let (kept, doomed, failed) = (key("kept"), key("doomed"), key("failed"));
    publish(&store, &kept, "kept");
    // Big enough that deleting it leaves room to update the index (1 MiB margin).
    let staging = stage(&store, &doomed);
    std::fs::write(staging.join("big.bin"), vec![1u8; 2 << 20]).unwrap();
    store
        .publish(&doomed, &staging, record(&doomed, "doomed"))
        .unwrap();
    store.pin("keepme", std::slice::from_ref(&kept)).unwrap();
    store.pin("scratch", std::slice::from_ref(&doomed)).unwrap();
    let run = store.begin_run("temper run r.kdl", "recipe").unwrap();
    store.finish_run(run.id, Vec::new(), false).unwrap();
    store
        .put_record(&record(&failed, "failed").finished(Status::Failed, Some("boom".into())))
        .unwrap();
    let fill = disk.fill("a");

    // Reading pins and runs and unpinning need no new bytes.
    assert_eq!(store.pins().unwrap().len(), 2);
    assert_eq!(run_ids(&store), vec![1]);
    assert!(
        store.unpin("scratch").unwrap(),
        "unpin works on a full disk"
    );
    let fill_b = disk.fill("b");
    // Writing fails cleanly, saying what to do.
    let err = store.begin_run("temper run r.kdl", "recipe").unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("temper gc") && msg.contains("--store"),
        "{msg}"
    );
    let err = store.pin("new", std::slice::from_ref(&kept)).unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    assert_eq!(store.pins().unwrap().len(), 1);

    // verify re-hashes without writing.
    let v = store.verify().unwrap();
    assert_eq!(v.checked, 2, "{v:?}");
    assert!(v.issues.is_empty(), "{v:?}");

    // gc takes the run lock (its holder details cannot be written) and frees space.
    let lock = store.lock_run(false, "temper gc").unwrap();
    let before = disk.free();
    let keep: HashSet<String> = [failed.clone()].into();
    let report = store.gc(&keep, false).unwrap();
    drop(lock);
    assert_eq!(
        report.removed.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        vec![&doomed],
        "{report:?}"
    );
    assert!(!store.artifact_dir(&doomed).exists());
    assert!(
        disk.free() >= before + (1 << 20),
        "gc freed space: {} -> {}",
        before,
        disk.free()
    );
    assert!(report.index_error.is_none(), "{report:?}");

    // Nothing was lost: the index was never taken for corrupt and rebuilt.
    std::fs::remove_file(fill).unwrap();
    std::fs::remove_file(fill_b).unwrap();
    let generating: Vec<_> = std::fs::read_dir(store.root().join("index"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".generating"))
        .collect();
    assert!(generating.is_empty(), "{generating:?}");
    assert_eq!(
        store.pins().unwrap().keys().collect::<Vec<_>>(),
        vec!["keepme"]
    );
    assert!(store.lookup_done(&kept).unwrap().is_some());
    assert!(store.record(&doomed).unwrap().is_none());
    let rec = store
        .record(&failed)
        .unwrap()
        .expect("failed attempt still recorded");
    assert_eq!(rec.status, Status::Failed);
    assert_eq!(store.begin_run("temper run", "recipe").unwrap().id, 2);
    assert!(store.verify().unwrap().is_clean());
}

#[test]
fn gc_on_a_full_disk_frees_space_first_and_a_later_gc_finishes_the_index() {
    let disk = tmpfs_or_skip!("8m");
    let store = store::Store::open(disk.dir.join("store")).unwrap();
    let (kept, doomed) = (key("kept"), key("doomed"));
    publish(&store, &kept, "kept");
    publish(&store, &doomed, "doomed");
    // Many records of failed attempts, and a small artifact: deleting it frees too little to
    // update the index safely.
    store
        .with_index(|ix| {
            for i in 0..1500 {
                let k = key(&format!("failed{i}"));
                ix.put_record(&record(&k, "f").finished(Status::Failed, None))?;
            }
            Ok(())
        })
        .unwrap();
    let fill = disk.fill("a");
    let before = disk.free();
    let keep: HashSet<String> = [kept.clone()].into();
    let report = store.gc(&keep, false).unwrap();
    assert!(!store.artifact_dir(&doomed).exists());
    assert!(
        disk.free() >= before + 70_000,
        "space freed: {before} -> {}",
        disk.free()
    );
    let err = report.index_error.expect("the index could not be updated");
    assert!(err.contains("temper gc"), "{err}");

    std::fs::remove_file(fill).unwrap();
    // The index is intact (not taken for corrupt), and the record left without its artifact
    // counts as absent until the next gc removes it.
    assert_eq!(store.all_records().unwrap().len(), 1502);
    assert!(store.lookup_done(&doomed).unwrap().is_none());
    assert!(store.lookup_done(&kept).unwrap().is_some());
    let again = store.gc(&keep, false).unwrap();
    assert!(again.index_error.is_none(), "{again:?}");
    assert_eq!(
        store.all_records().unwrap().len(),
        1,
        "only the kept record is left"
    );
    assert!(store.verify().unwrap().is_clean());
}
