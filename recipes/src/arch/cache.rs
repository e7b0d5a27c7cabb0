//! The KV cache of batched decoding: per layer, keys and values `[B, kv_heads, capacity,
//! head_dim]` allocated once for a batch (capacity = longest prompt + new tokens), in the
//! model's dtype and device, filled column by column.
//!
//! A forward over new columns `start..start + t` ([`crate::arch::Model::forward_cached`]) writes
//! their keys and values at those columns and attends over columns `0..start + t` under
//! [`crate::arch::mask::padding_at`]; columns are indices in the padded rows, as in a
//! cache-free forward over the whole batch, so both see the same keys with the same masks
//! (sliding windows included) and greedy decoding gives the same tokens.

use super::Model;
use anyhow::{bail, Result};
use tch::Tensor;

/// Keys and values of every layer of one batch.
pub struct KvCache {
    pub keys: Vec<Tensor>,
    pub values: Vec<Tensor>,
    /// Columns filled so far.
    pub len: i64,
    /// Columns allocated.
    pub capacity: i64,
}

impl KvCache {
    /// An empty cache for `batch` rows of up to `capacity` columns of `model`.
    pub fn new(model: &Model, batch: i64, capacity: i64) -> Result<KvCache> {
        let c = &model.config;
        let kind = model.embed_tokens.f_kind()?;
        let dev = model.embed_tokens.device();
        let shape = [batch, c.num_kv_heads as i64, capacity, c.head_dim as i64];
        let mut keys = Vec::with_capacity(c.num_layers);
        let mut values = Vec::with_capacity(c.num_layers);
        for _ in 0..c.num_layers {
            keys.push(Tensor::f_zeros(shape, (kind, dev))?);
            values.push(Tensor::f_zeros(shape, (kind, dev))?);
        }
        Ok(KvCache {
            keys,
            values,
            len: 0,
            capacity,
        })
    }

    /// Checks that `t` more columns fit.
    pub fn reserve(&self, t: i64) -> Result<()> {
        if self.len + t > self.capacity {
            bail!(
                "internal: KV cache of {} columns cannot take {} more after {}",
                self.capacity,
                t,
                self.len
            );
        }
        Ok(())
    }
}
