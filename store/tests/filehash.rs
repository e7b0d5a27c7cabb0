//! The file-hash cache: unchanged files are read once; changed, touched or fresh files are
//! re-read; content decides the hash.

use crate::common::*;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Writes `content` to `path` and backdates its mtime by `age` (so the cache may trust it).
fn write_aged(path: &Path, content: &[u8], age: Duration) {
    std::fs::write(path, content).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

#[test]
fn unchanged_file_is_read_once() {
    let (t, store) = temp_store();
    let p = t.path().join("data.jsonl");
    let content = vec![b'x'; 100_000];
    write_aged(&p, &content, Duration::from_secs(10));
    let h1 = store.hash_file(&p).unwrap();
    assert_eq!(h1, blake3::hash(&content).to_hex().to_string());
    assert_eq!(store.bytes_hashed(), 100_000);
    let h2 = store.hash_file(&p).unwrap();
    assert_eq!(h1, h2);
    assert_eq!(
        store.bytes_hashed(),
        100_000,
        "second hash came from the cache"
    );
    // Another handle on the same store shares the persistent cache.
    let other = store::Store::open(store.root()).unwrap();
    assert_eq!(other.hash_file(&p).unwrap(), h1);
    assert_eq!(other.bytes_hashed(), 0);
}

#[test]
fn modified_or_touched_file_is_rehashed() {
    let (t, store) = temp_store();
    let p = t.path().join("a.txt");
    write_aged(&p, b"hello world", Duration::from_secs(20));
    let h1 = store.hash_file(&p).unwrap();
    // Same size, different content, different mtime.
    write_aged(&p, b"hello WORLD", Duration::from_secs(10));
    let h2 = store.hash_file(&p).unwrap();
    assert_ne!(h1, h2);
    assert_eq!(store.bytes_hashed(), 22);
    // Touched only: re-read, same hash.
    let f = std::fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(5))
        .unwrap();
    assert_eq!(store.hash_file(&p).unwrap(), h2);
    assert_eq!(store.bytes_hashed(), 33);
}

#[test]
fn fresh_file_is_not_trusted_from_cache() {
    // Written "now": a change within the same timestamp tick could go unnoticed, so the entry
    // is not trusted until the file is older than the racy margin.
    let (t, store) = temp_store();
    let p = t.path().join("fresh.txt");
    std::fs::write(&p, b"abc").unwrap();
    store.hash_file(&p).unwrap();
    store.hash_file(&p).unwrap();
    assert_eq!(store.bytes_hashed(), 6);
}

#[test]
fn renamed_file_with_same_content_has_same_hash() {
    let (t, store) = temp_store();
    let a = t.path().join("a.bin");
    write_aged(&a, b"same bytes", Duration::from_secs(10));
    let h1 = store.hash_file(&a).unwrap();
    let b = t.path().join("b.bin");
    std::fs::rename(&a, &b).unwrap();
    assert_eq!(store.hash_file(&b).unwrap(), h1);
    let err = store.hash_file(&a).unwrap_err().to_string();
    assert!(err.contains("a.bin"), "error names the file: {err}");
}

#[test]
fn hash_tree_is_sorted_relative_and_cached() {
    let (t, store) = temp_store();
    let d = t.path().join("model");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    write_aged(&d.join("z.json"), b"{}", Duration::from_secs(10));
    write_aged(
        &d.join("a.safetensors"),
        b"weights",
        Duration::from_secs(10),
    );
    write_aged(&d.join("sub/m.txt"), b"m", Duration::from_secs(10));
    let tree = store.hash_tree(&d).unwrap();
    let names: Vec<&str> = tree.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["a.safetensors", "sub/m.txt", "z.json"]);
    assert_eq!(tree[2].1, blake3::hash(b"{}").to_hex().to_string());
    let before = store.bytes_hashed();
    assert_eq!(store.hash_tree(&d).unwrap(), tree);
    assert_eq!(store.bytes_hashed(), before);
    // Moving the whole directory elsewhere gives the same relative listing and hashes.
    let moved = t.path().join("elsewhere");
    std::fs::rename(&d, &moved).unwrap();
    assert_eq!(store.hash_tree(&moved).unwrap(), tree);
}
