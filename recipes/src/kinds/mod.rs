//! One file per node kind.
pub mod dataset;
pub mod mixture;
pub mod model;
pub mod tokenizer;
