//! Helpers for the end-to-end tests: locating the built `temper` binary, scratch projects.
