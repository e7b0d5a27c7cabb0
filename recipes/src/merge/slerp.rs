//! `slerp`: spherical linear interpolation between exactly two models, the first being the base
//! (`t = 0` returns it, `t = 1` the other).
//!
//! On the flattened tensors `v0`, `v1`: `v̂ = v/‖v‖` (a side with `‖v‖ ≤ 1e-8` is left
//! unnormalised); `d = ⟨v̂0, v̂1⟩`; if `|d| > 0.9995` (nearly colinear) the result is the
//! linear `(1−t)·v0 + t·v1`; else `θ = arccos d` and
//! `res = [sin((1−t)θ)·v0 + sin(tθ)·v1] / sin θ` on the **unnormalised** originals.
//! `t = 0` and `t = 1` return the base / the other input exactly (bit for bit).

use super::{MergeFn, Method, Real, TensorParams, Tensors};

pub const METHOD: Method = Method {
    decl: &kinds::merge::SLERP,
    merge_f32: merge::<f32> as MergeFn<f32>,
    merge_f64: merge::<f64> as MergeFn<f64>,
};

/// Threshold on `|⟨v̂0, v̂1⟩|` above which slerp falls back to linear interpolation.
pub const DOT_THRESHOLD: f64 = 0.9995;
/// Norms at or below this are not normalised.
pub const EPS: f64 = 1e-8;

/// See the module doc.
pub fn merge<T: Real>(t: Tensors<T>, p: &TensorParams) -> Result<Vec<T>, String> {
    super::same_len(&t)?;
    let v0 = t.base.ok_or("slerp needs a base (the first model)")?;
    if t.models.len() != 1 {
        return Err(format!(
            "slerp merges exactly two models, got {}",
            t.models.len() + 1
        ));
    }
    let Some(v1) = t.models.into_iter().next() else {
        return Err("slerp merges exactly two models".into());
    };
    let tt = p.t;
    if tt == 0.0 {
        return Ok(v0);
    }
    if tt == 1.0 {
        return Ok(v1);
    }
    let (n0, n1) = (super::norm(&v0), super::norm(&v1));
    let s0 = if n0 > EPS { n0 } else { 1.0 };
    let s1 = if n1 > EPS { n1 } else { 1.0 };
    let d = super::dot(&v0, &v1) / (s0 * s1);
    let (a, b) = if d.abs() > DOT_THRESHOLD {
        (1.0 - tt, tt)
    } else {
        let theta = d.acos();
        let s = theta.sin();
        (((1.0 - tt) * theta).sin() / s, (tt * theta).sin() / s)
    };
    let (a, b) = (T::from_f64(a), T::from_f64(b));
    let mut out = v0;
    out.iter_mut()
        .zip(&v1)
        .for_each(|(o, x)| *o = a * *o + b * *x);
    Ok(out)
}
