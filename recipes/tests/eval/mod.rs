//! Tests of the `eval` kind and of `recipes::evaluate` (held-out loss, greedy decoding,
//! exact-match) on tiny models the tests make: a random one from the `model` kind, and a
//! hand-wired one whose greedy output is known in advance.

pub mod common;
mod decode;
mod pref;
mod scores;
