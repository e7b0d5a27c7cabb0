//! `ties` (TIES-merging): each task vector `τᵢ = θᵢ − θbase` keeps its `k = ⌊densityᵢ·N⌋` entries of
//! largest magnitude; `Wᵢ = wᵢ·τᵢ`; `majority = sign(Σ Wᵢ)` (≥ 0 counts as +);
//! `maskᵢ = [sign(Wᵢ) = majority]` (zeros never vote); `mixed = Σ Wᵢ·maskᵢ / Σ wᵢ·maskᵢ` (with
//! `normalize`, default on; a zero divisor becomes 1); result `θbase + λ·mixed`.
//! Formula details and edge cases: [`super::task_vector`].

use super::task_vector::{self, Sparsify};
use super::{MergeFn, Method, Real, TensorParams, Tensors};

pub const METHOD: Method = Method {
    decl: &kinds::merge::TIES,
    merge_f32: merge::<f32> as MergeFn<f32>,
    merge_f64: merge::<f64> as MergeFn<f64>,
};

/// See the module doc.
pub fn merge<T: Real>(t: Tensors<T>, p: &TensorParams) -> Result<Vec<T>, String> {
    task_vector::merge(t, p, Sparsify::TopK, true)
}
