//! `precision`, the numerics of a training node: its values and the rule that resolves `auto`
//! ([`crate::train`] documents the rule; [`crate::memory`] and the trainer apply it).

use dsl::device::Dtype;

crate::enum_param! {
    /// The numerics of training ([`Precision::resolve`]).
    pub enum Precision { Auto = "auto", Bf16Mixed = "bf16-mixed", Bf16 = "bf16", F32 = "f32" }
}

impl Precision {
    /// The precision a node trains in, from its `precision`, its `dtype` and whether it runs on
    /// CUDA (the rule of [`crate::train`]'s docs; never `Auto`). The one rule: the keys apply it to the device
    /// a node asks for, the trainer to the device it was given.
    pub fn resolve(self, dtype: Dtype, on_cuda: bool) -> Precision {
        match (self, dtype) {
            (Precision::Auto, Dtype::Bf16) => Precision::Bf16,
            (Precision::Auto, Dtype::F32) => Precision::F32,
            (Precision::Auto, Dtype::Auto) if on_cuda => Precision::Bf16Mixed,
            (Precision::Auto, Dtype::Auto) => Precision::F32,
            (p, _) => p,
        }
    }

    /// The dtype forward and backward run in: `Auto` for `Auto` (then `dtype` decides), `bf16`
    /// for both bf16 precisions, `f32` for `f32`.
    pub fn compute(self) -> Dtype {
        match self {
            Precision::Auto => Dtype::Auto,
            Precision::Bf16Mixed | Precision::Bf16 => Dtype::Bf16,
            Precision::F32 => Dtype::F32,
        }
    }
}
