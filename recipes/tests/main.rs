//! The integration tests of `temper-recipes`, one binary (linking libtorch is slow): each
//! group is a module with its own helpers (`<group>/common.rs`); `common` holds what they share.
//! `Cargo.toml` sets `autotests = false`, so a new file under `tests/` is built only once it is
//! declared here (`every_test_file_is_a_module` fails until then).

mod common;

mod arch_parity;
mod eval;
mod kinds;
mod merge;
mod pref;
mod reweight;
mod train_core;
mod trainer;

/// `autotests = false`: cargo does not build a new `tests/*.rs` or `tests/*/mod.rs` on its own.
#[test]
fn every_test_file_is_a_module() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let main = include_str!("main.rs");
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let module = match name.strip_suffix(".rs") {
            Some("main") => continue,
            Some(stem) => stem.to_string(),
            None if path.join("mod.rs").is_file() => name.clone(),
            None => continue,
        };
        assert!(
            main.contains(&format!("\nmod {module};")),
            "tests/{name} is not declared in tests/main.rs (`mod {module};`)"
        );
    }
}
