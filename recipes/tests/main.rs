//! The integration tests of `temper-recipes`, one binary (linking libtorch is slow): each
//! group is a module with its own helpers (`<group>/common.rs`); `common` holds what they share.
//! `Cargo.toml` sets `autotests = false`, so a new file under `tests/` is built only once it is
//! declared here (`every_test_file_is_a_module` in the end-to-end tests fails until then).

mod common;

mod arch_parity;
mod eval;
mod generate;
mod kinds;
mod merge;
mod pref;
mod reweight;
mod train_core;
mod trainer;
