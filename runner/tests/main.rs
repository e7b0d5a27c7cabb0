//! The integration tests of `temper` (the runner), one binary (linking libtorch is slow): each
//! former test file is a module; `common` holds the fake kinds they share. `Cargo.toml` sets
//! `autotests = false`, so a new file under `tests/` is built only once it is declared here
//! (`every_test_file_is_a_module` in the end-to-end tests fails until then).

mod common;

mod keys;
mod run;
mod select;
mod slurm;
