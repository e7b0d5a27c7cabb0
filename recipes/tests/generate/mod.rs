//! Generation: the sampler, the KV-cached decoder, pairs.
mod decode;
mod hf;
mod node;
mod pairs;
mod sample;
mod smollm2;
