//! temper's stage implementations on libtorch (tch): one file per node kind under `kinds/`,
//! all registered in [`stages`]. The only crate that links tch. Stages run in the worker
//! ([`worker`], the `temper-worker` binary), which the runner drives through the job contract
//! (`kinds::job`); nothing else looks inside them.

pub mod arch;
pub mod batching;
pub mod data;
pub mod dist;
pub mod evaluate;
pub mod generate;
pub mod hf;
pub mod influence;
pub mod json;
pub mod kinds;
pub mod llama_init;
pub mod lora;
pub mod merge;
pub mod pref;
pub mod prologue;
pub mod rng;
mod shim;
pub mod stage;
pub mod tok;
pub mod trainer;
pub mod worker;

pub use stage::{
    CancelToken, Checkpoints, InputArtifact, Job, MetricsSink, NoProgress, Progress, Stage,
    StageCtx, StageError,
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
        Box::new(kinds::generate::Generate),
        Box::new(kinds::pairs::Pairs),
    ]
}

#[cfg(test)]
mod tests {
    /// Every declared kind has an implementation, with the same schema, and nothing else.
    #[test]
    fn stages_implement_the_declared_kinds() {
        let declared: Vec<(&str, u32)> = ::kinds::schemas()
            .iter()
            .map(|s| (s.name, s.version))
            .collect();
        let implemented: Vec<(&str, u32)> = super::stages()
            .iter()
            .map(|s| {
                let k = s.schema();
                (k.name, k.version)
            })
            .collect();
        assert_eq!(declared, implemented);
    }
}
