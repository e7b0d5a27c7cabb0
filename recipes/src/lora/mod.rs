//! LoRA adapters: low-rank updates trained on a frozen base, stored in PEFT's layout.
//!
//! An adapted linear layer computes `y = x Wᵀ + b + s · B(A(dropout(x)))`, with `A: r × in`
//! (initialised as PEFT does: `kaiming_uniform(a = √5)`, i.e. uniform in `±1/√in`), `B: out × r`
//! (zero, so a fresh adapter leaves the model's output exactly unchanged) and
//! `s = α / r` (rsLoRA: `α / √r`). Dropout acts on the adapter's input only, and only while
//! training.
//!
//! - [`attach`]: resolving `target` patterns against the model's modules, creating and
//!   initialising the adapter (its own var store: the optimizer, checkpoints and gradients see
//!   only it) and freezing the base;
//! - [`peft`]: the artifact — `adapter_config.json`, `adapter_model.safetensors` with PEFT's
//!   tensor names, and `temper_adapter.json` with the keys of the base and of any adapters
//!   below this one;
//! - [`load`]: loading any `model=` input: a full model as is, an adapter as its base with
//!   every adapter of its stack folded into the weights (`W ← W + s · B A`, PEFT's merge).
//!
//! Stacking: a LoRA node whose `model=` is itself an adapter trains a new adapter on the base
//! with the lower adapters folded in; it stores only its own `A`/`B` and lists the lower
//! adapters' keys in `temper_adapter.json`, so the base files stay shared in the store.

pub mod attach;
pub mod load;
pub mod peft;

pub use attach::{attach, Adapter};
pub use load::{is_adapter_dir, load_model_dir};
pub use peft::{Lineage, NodeRef};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tch::{TchError, Tensor};

/// Whether the adapters of a model are in training mode (dropout active).
#[derive(Debug, Default)]
pub struct Flags {
    training: AtomicBool,
}

impl Flags {
    pub fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::SeqCst)
    }
    pub fn training(&self) -> bool {
        self.training.load(Ordering::SeqCst)
    }
}

/// The adapter of one linear layer: `delta(x) = s · (dropout(x) Aᵀ) Bᵀ`, PEFT's order. The
/// adapter is kept in f32 whatever the base's dtype (as PEFT's `autocast_adapter_dtype` does):
/// on a bf16 base, `x` is cast to f32 for the adapter and the result back to `x`'s dtype.
#[derive(Debug)]
pub struct LoraLayer {
    /// `[r, in]`.
    pub a: Tensor,
    /// `[out, r]`.
    pub b: Tensor,
    pub scaling: f64,
    pub dropout: f64,
    pub flags: Arc<Flags>,
}

impl LoraLayer {
    /// The same adapter sharing its variables and flags.
    pub fn shallow_clone(&self) -> LoraLayer {
        LoraLayer {
            a: self.a.shallow_clone(),
            b: self.b.shallow_clone(),
            scaling: self.scaling,
            dropout: self.dropout,
            flags: self.flags.clone(),
        }
    }

    /// The adapter's contribution for input `x` `[…, in]`.
    pub fn delta(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let (xk, ak) = (x.f_kind()?, self.a.f_kind()?);
        let cast;
        let x = if xk != ak {
            cast = x.f_to_kind(ak)?;
            &cast
        } else {
            x
        };
        let dropped;
        let x = if self.dropout > 0.0 && self.flags.training() {
            dropped = x.f_dropout(self.dropout, true)?;
            &dropped
        } else {
            x
        };
        let y = x
            .f_linear::<&Tensor>(&self.a, None)?
            .f_linear::<&Tensor>(&self.b, None)?
            .f_mul_scalar(self.scaling)?;
        if xk != ak {
            y.f_to_kind(xk)
        } else {
            Ok(y)
        }
    }
}

/// The seed of torch's generator before micro-batch `micro` (its index within the step, the
/// same on every rank) of optimizer step `step`: adapter dropout masks are then a function of
/// the run's seed and position only, so a resumed run and a run on more ranks draw the same.
pub fn dropout_seed(seed: u64, step: u64, micro: usize) -> i64 {
    let mut g = crate::rng::SplitMix64::derived(seed ^ 0x10_AA_D0, step, micro as u64);
    (g.next_u64() >> 1) as i64
}
