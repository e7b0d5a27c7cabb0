//! `task_arithmetic`: `θbase + λ·Σᵢ wᵢ·(θᵢ − θbase)` (no sparsification, no sign consensus, `normalize` off by
//! default; with it the sum is divided by `Σ wᵢ`).
//! Formula details and edge cases: [`super::task_vector`].

use super::task_vector::{self, Sparsify};
use super::{MergeFn, MethodDef, ParamDecl, Real, TensorParams, Tensors};
use super::{LAMBDA, NORMALIZE, WEIGHT};

pub const DEF: MethodDef = MethodDef {
    name: "task_arithmetic",
    doc: "sum of weighted task vectors: θbase + λ·Σ wᵢτᵢ",
    base: super::BaseUse::Required,
    min_models: 1,
    params: &[WEIGHT, LAMBDA, NORMALIZE] as &[ParamDecl],
    normalize_default: false,
    random: false,
    merge_f32: merge::<f32> as MergeFn<f32>,
    merge_f64: merge::<f64> as MergeFn<f64>,
};

/// See the module doc.
pub fn merge<T: Real>(t: Tensors<T>, p: &TensorParams) -> Result<Vec<T>, String> {
    task_vector::merge(t, p, Sparsify::None, false)
}
