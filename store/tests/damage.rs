//! Damaged artifacts: a published artifact's stamps (size and time per file, in the manifest
//! and the record) catch a changed file with a `stat`; a changed time over the same bytes is
//! confirmed by hash and restamped; `verify` marks what it finds so an edit that restored size
//! and time stays damaged; `set_aside` moves the copy (and the work dir) aside, never deletes it.

use crate::common::*;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};
use store::{NodeRecord, Status, Store, MANIFEST_FILE};

/// Flips `n` bytes of `path` in place, `from_end` bytes before its end; with `keep_time` the
/// modification time is put back (what a careful tamperer or a silent disk error leaves).
fn flip(path: &Path, from_end: u64, n: usize, keep_time: bool) {
    let before = std::fs::metadata(path).unwrap().modified().unwrap();
    let bytes = std::fs::read(path).unwrap();
    let at = bytes.len() as u64 - from_end;
    let mut f = OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    let flipped: Vec<u8> = bytes[at as usize..at as usize + n]
        .iter()
        .map(|b| !b)
        .collect();
    f.write_all(&flipped).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let after = SystemTime::now() + Duration::from_secs(3);
    let t = if keep_time { before } else { after };
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

fn done(store: &Store, key: &str) -> NodeRecord {
    let r = store.record(key).unwrap().expect("record");
    assert_eq!(r.status, Status::Done);
    r
}

fn damage(store: &Store, key: &str) -> Option<store::Damage> {
    let r = done(store, key);
    store.damage_of(&[&r]).unwrap().remove(key)
}

#[test]
fn publish_stamps_every_file_and_the_manifest() {
    let (_t, store) = temp_store();
    let k = key("stamped");
    let m = publish(&store, &k, "stamped");
    assert!(m.files.iter().all(|f| f.mtime_ns.is_some()), "{m:?}");
    let r = done(&store, &k);
    let paths: Vec<&str> = r.files.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["a.txt", "data.jsonl", "sub/b.bin", MANIFEST_FILE]);
    assert_eq!(damage(&store, &k), None);
}

#[test]
fn a_flipped_byte_a_changed_size_and_a_missing_file_are_damage() {
    let (_t, store) = temp_store();
    let (a, b, c) = (key("a"), key("b"), key("c"));
    for (k, n) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        publish(&store, k, n);
    }
    flip(&store.artifact_dir(&a).join("sub/b.bin"), 3, 3, false);
    let d = damage(&store, &a).expect("flipped bytes are damage");
    assert_eq!(d.file, "sub/b.bin");
    assert_eq!(d.to_string(), "sub/b.bin changed since it was published");
    assert_eq!(d.node, "a");

    std::fs::write(store.artifact_dir(&b).join("a.txt"), b"alphabet").unwrap();
    let d = damage(&store, &b).expect("a new size is damage");
    assert_eq!(
        d.to_string(),
        "a.txt changed since it was published (8 bytes, published with 5)"
    );

    std::fs::remove_file(store.artifact_dir(&c).join("data.jsonl")).unwrap();
    assert_eq!(
        damage(&store, &c).unwrap().to_string(),
        "data.jsonl is missing"
    );
}

#[test]
fn a_new_time_over_the_same_bytes_is_restamped_not_damage() {
    let (_t, store) = temp_store();
    let k = key("touched");
    publish(&store, &k, "touched");
    let path = store.artifact_dir(&k).join("sub/b.bin");
    let old = SystemTime::now() - Duration::from_secs(3600);
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let before = store.bytes_hashed();
    assert_eq!(damage(&store, &k), None, "same bytes: not damaged");
    assert!(store.bytes_hashed() >= before, "confirmed by hashing");
    let stamp = done(&store, &k)
        .files
        .into_iter()
        .find(|s| s.path == "sub/b.bin")
        .unwrap();
    let now: i64 = old
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert_eq!(stamp.mtime_ns, Some(now), "the record holds the new time");
    // And an edit after that is still caught.
    flip(&path, 10, 1, false);
    assert!(damage(&store, &k).is_some());
}

#[test]
fn verify_marks_an_edit_that_kept_size_and_time_and_set_aside_keeps_the_copy() {
    let (_t, store) = temp_store();
    let k = key("sneaky");
    publish(&store, &k, "sneaky");
    std::fs::create_dir_all(store.work_dir(&k).join("checkpoints")).unwrap();
    let path = store.artifact_dir(&k).join("data.jsonl");
    flip(&path, 4, 2, true);
    assert_eq!(damage(&store, &k), None, "a stat cannot see it");

    let report = store.verify().unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.marked, vec![k.clone()]);
    let d = damage(&store, &k).expect("verify's marker makes it damaged");
    assert_eq!(
        d.to_string(),
        "data.jsonl content no longer matches its manifest (found by temper verify)"
    );
    assert_eq!(store.damage_markers().unwrap().len(), 1);

    let aside = store.set_aside(&d).unwrap();
    assert!(
        store.lookup_done(&k).unwrap().is_none(),
        "the key is absent"
    );
    assert!(!store.artifact_dir(&k).exists());
    assert!(!store.work_dir(&k).exists(), "checkpoints go aside too");
    assert!(aside.join("artifact").join("data.jsonl").is_file());
    assert!(aside.join("work").join("checkpoints").is_dir());
    let saved: store::Damage =
        serde_json::from_slice(&std::fs::read(aside.join(store::DAMAGE_FILE)).unwrap()).unwrap();
    assert_eq!(saved, d);
    assert!(store.damage_markers().unwrap().is_empty());
    let copies = store.damaged_copies().unwrap();
    assert_eq!(copies.len(), 1);
    assert!(copies[0].bytes > 0);

    // Republishing the key works and is intact; the copy stays until asked for.
    publish(&store, &k, "sneaky");
    assert_eq!(damage(&store, &k), None);
    assert_eq!(store.damaged_copies().unwrap().len(), 1);
    let (n, freed) = store.remove_damaged_copies().unwrap();
    assert_eq!((n, freed > 0), (1, true));
    assert!(store.damaged_copies().unwrap().is_empty());
}

#[test]
fn verify_content_rehashes_and_marks() {
    let (_t, store) = temp_store();
    let k = key("rehash");
    publish(&store, &k, "rehash");
    assert_eq!(store.verify_content(&k).unwrap(), None);
    flip(&store.artifact_dir(&k).join("a.txt"), 2, 1, true);
    let d = store.verify_content(&k).unwrap().expect("re-hash finds it");
    assert_eq!(d.file, "a.txt");
    assert_eq!(damage(&store, &k).unwrap().found_by, "verify-inputs");
}

#[test]
fn a_manifest_edited_in_place_is_damage_and_an_old_record_is_checked_by_its_manifest() {
    let (_t, store) = temp_store();
    let k = key("manifest");
    publish(&store, &k, "manifest");
    let mpath = store.artifact_dir(&k).join(MANIFEST_FILE);
    flip(&mpath, 200, 1, false);
    assert!(
        damage(&store, &k).is_some(),
        "the manifest itself is stamped"
    );

    // A record from before stamps: the manifest's sizes and times are checked instead.
    let k2 = key("old");
    publish(&store, &k2, "old");
    let mut r = done(&store, &k2);
    r.files.clear();
    store.put_record(&r).unwrap();
    assert_eq!(damage(&store, &k2), None);
    assert!(
        !done(&store, &k2).files.is_empty(),
        "stamped on first check"
    );
    std::fs::write(store.artifact_dir(&k2).join("a.txt"), b"omega").unwrap();
    File::options()
        .write(true)
        .open(store.artifact_dir(&k2).join("a.txt"))
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    assert!(damage(&store, &k2).is_some());
}
