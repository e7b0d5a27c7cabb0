//! `dare_ties`: DARE's random drop and L1 rescale of each task vector (as `dare_linear`), then TIES'
//! sign consensus: `Wᵢ = wᵢ·τ̃ᵢ`, `majority = sign(Σ Wᵢ)` (≥ 0 counts as +),
//! `mixed = Σ Wᵢ·[sign(Wᵢ) = majority]`; `normalize` off by default (with it divided by
//! `Σ wᵢ·maskᵢ`, a zero divisor becoming 1); result `θbase + λ·mixed`.
//! Formula details and edge cases: [`super::task_vector`].

use super::task_vector::{self, Sparsify};
use super::{MergeFn, Method, Real, TensorParams, Tensors};

pub const METHOD: Method = Method {
    decl: &kinds::merge::DARE_TIES,
    merge_f32: merge::<f32> as MergeFn<f32>,
    merge_f64: merge::<f64> as MergeFn<f64>,
};

/// See the module doc.
pub fn merge<T: Real>(t: Tensors<T>, p: &TensorParams) -> Result<Vec<T>, String> {
    task_vector::merge(t, p, Sparsify::Random { rescale: true }, true)
}
