//! Text generation: the sampler ([`sample`]), the KV-cached batched decoder ([`decode`]), the
//! ranking of completions into preference pairs ([`rank`]) and the judge's score ([`judge`]).
//! The `generate` and `pairs` node kinds ([`crate::kinds::generate`], [`crate::kinds::pairs`])
//! build on them.

pub mod decode;
mod engine;
pub mod judge;
pub mod rank;
pub mod sample;
