//! Training building blocks shared by the `cpt` and `sft` stages: chat templates, example
//! tokenisation with label masks, packing/batching, the mixture artifact and its deterministic
//! stream, AdamW with savable state, learning-rate schedules and the summed cross-entropy.
//! Everything except `optim` and `loss` is plain Rust (testable without a model).

pub mod chat;
pub mod examples;
pub mod loss;
pub mod mixture;
pub mod optim;
pub mod pack;
pub mod rng;
pub mod schedule;
pub mod stream;
