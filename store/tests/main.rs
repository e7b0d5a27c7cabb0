//! The integration tests of `temper-store`, one binary: each former test file is a module.
//! `Cargo.toml` sets `autotests = false`, so a new file under `tests/` is built only once it is
//! declared here (`every_test_file_is_a_module` in the end-to-end tests fails until then).

#[macro_use]
mod common;

mod damage;
mod filehash;
mod index;
mod maint;
mod publish;
mod runlock;
