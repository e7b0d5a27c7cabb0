//! Tests of `recipes::arch`, the Hugging Face decoder models on tch:
//! - `parity`: logits against transformers on random tiny checkpoints it writes
//!   (tests/python/make_tiny_hf.py, run with the project's .venv python), and checkpoints saved
//!   by temper loaded back in transformers (tests/python/logits.py);
//! - `config`: unsupported config.json values fail naming the field and value;
//! - `io`: sharding, dtypes, tied embeddings, missing/unexpected/mis-shaped tensors;
//! - `packing`: a packed row equals the separate forwards of its sequences;
//! - `lora`: LoRA adapters — a fresh one is a no-op, stored ones match PEFT
//!   (tests/python/peft_logits.py) and fold (also stacked) into full models.

pub mod common;
mod config;
mod io;
mod lora;
mod packing;
mod parity;
