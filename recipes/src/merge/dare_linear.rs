//! `dare_linear` (DARE): each task vector `τᵢ = θᵢ − θbase` keeps each entry with probability
//! `densityᵢ` (seeded, see [`super::task_vector::dare_mask`]) and the kept entries are rescaled by
//! `‖τᵢ‖₁ / ‖maskᵢ⊙τᵢ‖₁` (not by 1/density); result `θbase + λ·Σ wᵢ·τ̃ᵢ` (`normalize` off by
//! default; with it divided by `Σ wᵢ`).
//! Formula details and edge cases: [`super::task_vector`].

use super::task_vector::{self, Sparsify};
use super::{MergeFn, Method, Real, TensorParams, Tensors};

pub const METHOD: Method = Method {
    decl: &kinds::merge::DARE_LINEAR,
    merge_f32: merge::<f32> as MergeFn<f32>,
    merge_f64: merge::<f64> as MergeFn<f64>,
};

/// See the module doc.
pub fn merge<T: Real>(t: Tensors<T>, p: &TensorParams) -> Result<Vec<T>, String> {
    task_vector::merge(t, p, Sparsify::Random { rescale: true }, false)
}
