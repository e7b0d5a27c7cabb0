//! From records to token batches, shared by the training and eval stages: chat templates,
//! example tokenisation with label masks, packing, the mixture artifact and its deterministic
//! stream, and the summed cross-entropy over target tokens (`loss` from logits, `head` from the
//! hidden states, chunked). Everything except `loss` and `head` is plain Rust (testable without
//! a model). The optimiser and schedules live in `trainer`.

pub mod chat;
pub mod examples;
pub mod head;
pub mod loss;
pub mod mixture;
pub mod pack;
pub mod stream;
