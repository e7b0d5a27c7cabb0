//! Tests of the `dataset`, `tokenizer` and `model` kinds, run through the `Stage` interface
//! with a `StageCtx` built as the runner builds it.

mod common;
mod corpus;
mod dataset;
mod model;
mod pq;
mod tokenizer;
