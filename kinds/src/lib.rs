//! temper's node kinds as declarations, without torch: for each kind (one file each) its typed
//! parameters, declared once with [`params!`] so the schema the DSL validates against and the
//! struct the kind's `run` reads come from the same lines; its [`dsl::KindSchema`] and its
//! cross-parameter `check`. The front end (`temper`: check, plan, keys) needs only this crate;
//! the implementations live in `recipes` and run in the worker process.

pub mod common;
pub mod params;
pub mod precision;
pub mod train;

pub mod cpt;
pub mod dataset;
pub mod dpo;
pub mod eval;
pub mod eval_scores;
pub mod generate;
pub mod lora;
pub mod losses;
pub mod memory;
pub mod merge;
pub mod mixture;
pub mod model;
pub mod npo;
pub mod pairs;
pub mod ref_logps;
pub mod reweight;
pub mod select;
pub mod sft;
pub mod shapes;
pub mod tokenizer;

pub mod job;

pub use common::Common;

/// Every kind temper ships, by declaration (the implementations, in `recipes`, are checked
/// against this list by a unit test there).
pub fn schemas() -> Vec<dsl::KindSchema> {
    vec![
        dataset::schema(),
        tokenizer::schema(),
        model::schema(),
        mixture::schema(),
        cpt::schema(),
        sft::schema(),
        ref_logps::schema(),
        dpo::schema(),
        npo::schema(),
        eval::schema(),
        merge::schema(),
        reweight::schema(),
        generate::schema(),
        pairs::schema(),
    ]
}

/// Kinds the front resolves itself, never a worker: no stage implements them.
pub fn front_schemas() -> Vec<dsl::KindSchema> {
    vec![select::schema()]
}

/// The DSL registry of every built-in kind: what `check`, `plan` and keys validate against.
pub fn registry() -> dsl::Registry {
    let mut r = dsl::Registry::new();
    for s in schemas().into_iter().chain(front_schemas()) {
        r.register(s);
    }
    r
}
pub use params::{DecodeError, FromParam, Input, ParamSet, PathParam};
