//! `linear`: a weighted average of the models.
//!
//! `out = Σᵢ wᵢ·θᵢ`, divided by `Σᵢ wᵢ` when `normalize` (default on); a zero sum of weights
//! leaves the sum undivided. No base. One model of weight 1 reproduces it bit for bit.

use super::{MergeFn, Method, Real, TensorParams, Tensors};

pub const METHOD: Method = Method {
    decl: &kinds::merge::LINEAR,
    merge_f32: merge::<f32> as MergeFn<f32>,
    merge_f64: merge::<f64> as MergeFn<f64>,
};

/// See the module doc.
pub fn merge<T: Real>(t: Tensors<T>, p: &TensorParams) -> Result<Vec<T>, String> {
    super::same_len(&t)?;
    let mut models = t.models.into_iter();
    let mut out = models.next().ok_or("linear needs at least one model")?;
    let w0 = T::from_f64(p.weight[0]);
    out.iter_mut().for_each(|x| *x = *x * w0);
    for (i, m) in models.enumerate() {
        let w = T::from_f64(p.weight[i + 1]);
        out.iter_mut().zip(&m).for_each(|(o, x)| *o += *x * w);
    }
    let total: f64 = p.weight.iter().sum();
    if p.normalize && total != 0.0 {
        let d = T::from_f64(total);
        out.iter_mut().for_each(|x| *x = *x / d);
    }
    Ok(out)
}
