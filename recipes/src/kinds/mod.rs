//! One file per node kind.
pub mod cpt;
pub mod dataset;
pub mod eval;
pub mod mixture;
pub mod model;
pub mod sft;
pub mod tokenizer;
