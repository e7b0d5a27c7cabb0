//! The integration tests of `temper-dsl`, one binary: each former test file is a module.
//! `Cargo.toml` sets `autotests = false`, so a new file under `tests/` is built only once it is
//! declared here (`every_test_file_is_a_module` in the end-to-end tests fails until then). The fuzzer alone:
//! `TEMPER_FUZZ_SECS=600 cargo test --release -p temper-dsl --test all fuzz -- --nocapture`.

mod common;

mod bad_corpus;
mod executor;
mod expand;
mod fuzz;
mod hostile;
mod load;
mod prop;
mod recipe_checks;
mod repeat;
mod snippets;
