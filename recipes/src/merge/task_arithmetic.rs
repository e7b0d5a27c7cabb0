//! `task_arithmetic`: `θbase + λ·Σᵢ wᵢ·(θᵢ − θbase)` (no sparsification, no sign consensus, `normalize` off by
//! default; with it the sum is divided by `Σ wᵢ`).
//! Formula details and edge cases: [`super::task_vector`].

use super::task_vector::{self, Sparsify};
use super::{MergeFn, Method, Real, TensorParams, Tensors};

pub const METHOD: Method = Method {
    decl: &kinds::merge::TASK_ARITHMETIC,
    merge_f32: merge::<f32> as MergeFn<f32>,
    merge_f64: merge::<f64> as MergeFn<f64>,
};

/// See the module doc.
pub fn merge<T: Real>(t: Tensors<T>, p: &TensorParams) -> Result<Vec<T>, String> {
    task_vector::merge(t, p, Sparsify::None, false)
}
