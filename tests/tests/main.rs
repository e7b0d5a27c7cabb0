//! The end-to-end tests of the `temper` binary (`TEMPER_BIN`, see `src/lib.rs`), one binary:
//! each former test file is a module. `UPDATE_SNAPSHOTS=1 make test` rewrites the bad-input
//! snapshots (`bad_inputs`). `Cargo.toml` sets `autotests = false`, so a new file under `tests/`
//! is built only once it is declared here (`every_test_file_is_a_module` fails until then).

mod bad_inputs;
mod damage;
mod devices;
mod foundation;
mod hostile;
mod lora;
mod merge;
mod preference;
mod ranks;
mod report;
mod resume;
mod reweight;
mod select;
mod serve;
mod shard;
mod slurm;
mod slurm_submit;
mod terminal;
mod workers;

/// `autotests = false` in every crate: cargo does not build a new `tests/*.rs` or
/// `tests/*/mod.rs` on its own, so each must be declared in its crate's `tests/main.rs`.
#[test]
fn every_test_file_is_a_module() {
    for krate in ["dsl", "store", "recipes", "runner", "tests"] {
        let dir = temper_e2e::repo_root().join(krate).join("tests");
        let main = std::fs::read_to_string(dir.join("main.rs")).unwrap();
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
                "{krate}/tests/{name} is not declared in {krate}/tests/main.rs (`mod {module};`)"
            );
        }
    }
}
