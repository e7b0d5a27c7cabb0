//! Hugging Face decoder models on tch: the Llama family as transformers defines it —
//! `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM` (q/k/v biases), tied embeddings
//! (SmolLM) — with RMSNorm, default RoPE (`rope_theta` at the top level or in
//! `rope_parameters`), grouped-query attention, SwiGLU, explicit `head_dim`, sliding windows.
//!
//! Shape of the code: [`config`] mirrors and validates `config.json`; [`layers`] holds
//! `Attention`, `Mlp`, `Block` built from an `nn::Path` named like the checkpoint; [`model`] is
//! the causal LM with a plain `forward(ids, positions, mask) -> logits`; [`mask`] the attention
//! masks (causal, padding, packed segments) and [`varlen`] the attention of packed sequences
//! (the varlen flash kernel on CUDA); [`checkpoint`] makes blocks autograd nodes temper sees
//! (recomputed in backward: activation checkpointing) and [`hooks`] what sharded training does
//! around them; [`cache`] the KV cache of decoding (with
//! `Model::forward_cached`); [`io`] loads and saves HF directories.
//! Training concerns (loss, optimizer, packing) live elsewhere.
//!
//! Using it from a stage:
//! ```no_run
//! # fn f() -> anyhow::Result<()> {
//! use recipes::arch::{AttnMask, HfModel, LoadOptions, SaveOptions};
//! let m = HfModel::load("models/base".as_ref(), "models/base", &LoadOptions::default())?;
//! let ids = tch::Tensor::from_slice(&[1i64, 2, 3]).view([1, 3]);
//! let pos = tch::Tensor::arange(3, (tch::Kind::Int64, tch::Device::Cpu)).view([1, 3]);
//! let logits = m.forward(&ids, &pos, AttnMask::Causal)?; // [1, 3, vocab]
//! let trainable = m.vs.trainable_variables();
//! m.save("out".as_ref(), &SaveOptions { copy_from: m.source.clone(), ..Default::default() })?;
//! # Ok(()) }
//! ```

pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod hooks;
pub mod io;
pub mod layers;
pub mod mask;
pub mod model;
pub mod varlen;

pub use cache::KvCache;
pub use config::{ArchConfig, Family};
pub use io::{default_dtype, HfModel, LoadOptions, SaveOptions};
pub use mask::{for_padded, right_padded};
pub use mask::{positions_from_segments, AttnMask};
pub use model::Model;
