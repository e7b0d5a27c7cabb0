//! Tests of the training building blocks (`recipes::train`) and the `mixture` kind. One binary:
//! linking libtorch is slow. Golden values come from `fixtures/train/gen_reference.py`
//! (transformers + torch), committed as JSON.

#[path = "train_core/util.rs"]
mod util;

#[path = "train_core/chat.rs"]
mod chat;
#[path = "train_core/examples.rs"]
mod examples;
#[path = "train_core/mixture.rs"]
mod mixture;
#[path = "train_core/optim.rs"]
mod optim;
#[path = "train_core/pack.rs"]
mod pack;
#[path = "train_core/stream.rs"]
mod stream;
