//! Tests of the training building blocks (`recipes::train`, the chunked LM head) and the
//! `mixture` kind. Golden
//! values come from `fixtures/train/gen_reference.py` (transformers + torch), committed as JSON.

mod util;

mod chat;
mod checkpointing;
mod chunked_ce;
mod dist;
mod examples;
mod fused;
mod mixture;
mod optim;
mod pack;
mod shard;
mod stream;
