//! One file per node kind.
pub mod cpt;
pub mod dataset;
pub mod dpo;
pub mod eval;
pub mod generate;
pub mod merge;
pub mod mixture;
pub mod model;
pub mod npo;
pub mod pairs;
pub mod ref_logps;
pub mod reweight;
pub mod sft;
pub mod tokenizer;
