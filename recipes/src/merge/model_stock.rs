//! `model_stock` (Model Stock): a base and `N ≥ 2` fine-tuned models; the interpolation ratio
//! comes from the geometry of their task vectors `τᵢ = θᵢ − θbase`:
//!
//! `cos = mean over pairs i<j of ⟨τᵢ, τⱼ⟩ / max(‖τᵢ‖·‖τⱼ‖, 1e-6)`,
//! `t = N·cos / (1 + (N−1)·cos)` (`t = 0` when the denominator is 0),
//! `out = t·mean(θᵢ) + (1−t)·θbase`.
//!
//! Models identical to the base give `cos = 0`, `t = 0`: the base itself.

use super::{MergeFn, Method, Real, TensorParams, Tensors};

pub const METHOD: Method = Method {
    decl: &kinds::merge::MODEL_STOCK,
    merge_f32: merge::<f32> as MergeFn<f32>,
    merge_f64: merge::<f64> as MergeFn<f64>,
};

/// Lower clamp of the norm product in the cosine.
pub const NORM_EPS: f64 = 1e-6;

/// The ratio `t` of the module doc for task vectors given by their pairwise dot products and
/// norms (computed on the fly from the models and the base).
fn ratio<T: Real>(base: &[T], models: &[Vec<T>]) -> f64 {
    let n = models.len();
    let tau_dot = |a: &[T], b: &[T]| -> f64 {
        a.iter()
            .zip(b)
            .zip(base)
            .map(|((x, y), z)| (x.to_f64() - z.to_f64()) * (y.to_f64() - z.to_f64()))
            .sum()
    };
    let norms: Vec<f64> = models.iter().map(|m| tau_dot(m, m).sqrt()).collect();
    let (mut sum, mut pairs) = (0.0, 0usize);
    for i in 0..n {
        for j in i + 1..n {
            sum += tau_dot(&models[i], &models[j]) / (norms[i] * norms[j]).max(NORM_EPS);
            pairs += 1;
        }
    }
    let cos = if pairs == 0 { 0.0 } else { sum / pairs as f64 };
    let den = 1.0 + (n as f64 - 1.0) * cos;
    if den == 0.0 {
        0.0
    } else {
        n as f64 * cos / den
    }
}

/// See the module doc.
pub fn merge<T: Real>(t: Tensors<T>, _p: &TensorParams) -> Result<Vec<T>, String> {
    super::same_len(&t)?;
    let mut base = t.base.ok_or("model_stock needs a base model (`base=`)")?;
    let models = t.models;
    if models.len() < 2 {
        return Err(format!(
            "model_stock needs at least two models besides the base, got {}",
            models.len()
        ));
    }
    let r = ratio(&base, &models);
    let n = models.len() as f64;
    for (e, b) in base.iter_mut().enumerate() {
        let mean = models.iter().map(|m| m[e].to_f64()).sum::<f64>() / n;
        *b = T::from_f64(r * mean + (1.0 - r) * b.to_f64());
    }
    Ok(base)
}
