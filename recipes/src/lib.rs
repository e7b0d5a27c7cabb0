//! temper's stage implementations on libtorch (tch): one file per node kind under `kinds/`,
//! all registered in [`stages`]. The only crate that links tch. The runner calls stages
//! through the [`Stage`] interface and never looks inside them.

pub mod arch;
pub mod data;
pub mod evaluate;
pub mod hf;
pub mod influence;
pub mod kinds;
pub mod llama_init;
pub mod merge;
pub mod pref;
pub mod stage;
pub mod tok;
pub mod train;
pub mod trainer;

pub use stage::{
    CancelToken, Checkpoints, InputArtifact, MetricsSink, NoProgress, Progress, Stage, StageCtx,
    StageError,
};

/// Every node kind temper knows, by name. Adding a kind: one file in `kinds/` plus a line here.
pub fn stages() -> Vec<Box<dyn Stage>> {
    vec![
        Box::new(kinds::dataset::Dataset),
        Box::new(kinds::tokenizer::Tokenizer),
        Box::new(kinds::model::Model),
        Box::new(kinds::mixture::Mixture),
        Box::new(kinds::cpt::Cpt),
        Box::new(kinds::sft::Sft),
        Box::new(kinds::ref_logps::RefLogps),
        Box::new(kinds::dpo::Dpo),
        Box::new(kinds::npo::Npo),
        Box::new(kinds::eval::Eval),
        Box::new(kinds::merge::Merge),
        Box::new(kinds::reweight::Reweight),
    ]
}

/// The DSL registry built from [`stages`].
pub fn registry() -> dsl::Registry {
    let mut r = dsl::Registry::new();
    for s in stages() {
        r.register(s.schema());
    }
    r
}
