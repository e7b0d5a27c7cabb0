//! Per-tensor parameter values: a scalar, a gradient over layers, or a filter list.
//!
//! - **Filter list**: the first entry whose filter is empty, `*`, or a substring of the tensor
//!   name wins; its value (itself a scalar or gradient) is then resolved for the tensor. No
//!   matching entry → no value (the caller falls back to the next source or the default).
//! - **Gradient** `s` over a model of `n` layers: layer `i` sits at `t = i/(n−1)` (`t = 1` when
//!   `n = 1`); `x = t·(|s|−1)`, `i0 = ⌊x⌋`, `i1 = min(i0+1, |s|−1)`, `f = x − i0`,
//!   value `= s[i0]·(1−f) + s[i1]·f`. Tensors outside the layers (embeddings, the final norm,
//!   the LM head) take `t = 0`. A one-entry gradient is that scalar everywhere.

/// A parameter's value as written.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamValue {
    Scalar(f64),
    Gradient(Vec<f64>),
    /// `(filter, value)` entries, first match wins.
    Filters(Vec<(String, ParamValue)>),
}

/// The layer index of a tensor name: the number after a `layers.` / `h.` / `blocks.` segment
/// (`model.layers.3.mlp.up_proj.weight` → 3).
pub fn layer_index(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split('.').collect();
    parts.windows(2).find_map(|w| match w[0] {
        "layers" | "h" | "blocks" | "layer" => w[1].parse().ok(),
        _ => None,
    })
}

/// The position `t ∈ [0, 1]` of a tensor along the layers of a model with `n_layers` layers
/// (0 for tensors outside the layers).
pub fn layer_position(name: &str, n_layers: usize) -> f64 {
    match layer_index(name) {
        None => 0.0,
        Some(_) if n_layers <= 1 => 1.0,
        Some(i) => (i.min(n_layers - 1)) as f64 / (n_layers - 1) as f64,
    }
}

/// Interpolates gradient `s` at position `t` (module doc). `s` must not be empty.
pub fn gradient_at(s: &[f64], t: f64) -> f64 {
    if s.len() == 1 {
        return s[0];
    }
    let last = s.len() - 1;
    let x = t.clamp(0.0, 1.0) * last as f64;
    let i0 = (x.floor() as usize).min(last);
    let i1 = (i0 + 1).min(last);
    let f = x - i0 as f64;
    s[i0] * (1.0 - f) + s[i1] * f
}

/// Whether filter `f` selects tensor `name`.
pub fn filter_matches(f: &str, name: &str) -> bool {
    f.is_empty() || f == "*" || name.contains(f)
}

impl ParamValue {
    /// The value for tensor `name` of a model with `n_layers` layers, `None` when a filter list
    /// has no matching entry.
    pub fn resolve(&self, name: &str, n_layers: usize) -> Option<f64> {
        match self {
            ParamValue::Scalar(x) => Some(*x),
            ParamValue::Gradient(s) if s.is_empty() => None,
            ParamValue::Gradient(s) => Some(gradient_at(s, layer_position(name, n_layers))),
            ParamValue::Filters(entries) => entries
                .iter()
                .find(|(f, _)| filter_matches(f, name))
                .and_then(|(_, v)| v.resolve(name, n_layers)),
        }
    }

    /// A node-level value from its numbers as written: one number → scalar; several →
    /// gradient; none → unset.
    pub fn from_numbers(xs: &[f64]) -> Option<ParamValue> {
        match xs {
            [] => None,
            [x] => Some(ParamValue::Scalar(*x)),
            _ => Some(ParamValue::Gradient(xs.to_vec())),
        }
    }

    /// Every number the value can produce (for range checks).
    pub fn numbers(&self) -> Vec<f64> {
        match self {
            ParamValue::Scalar(x) => vec![*x],
            ParamValue::Gradient(s) => s.clone(),
            ParamValue::Filters(e) => e.iter().flat_map(|(_, v)| v.numbers()).collect(),
        }
    }
}
