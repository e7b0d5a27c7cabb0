//! KTO (Ethayarajh et al.) per-example losses, with `r = logπ(y) − logπref(y)` and `z0` the
//! (clamped, ≥ 0) batch KL estimate:
//! desirable `1 − σ(β(r − z0))`, undesirable `1 − σ(β(z0 − r))`. Provided for reference and
//! tested against the golden values; no node kind trains with it yet.

use tch::Tensor;

/// `1 − σ(β(r − z0))` for desirable examples, `1 − σ(β(z0 − r))` for undesirable ones.
pub fn kto(r: &Tensor, z0: f64, beta: f64, desirable: bool) -> Tensor {
    let z0 = z0.max(0.0);
    let x = if desirable {
        (r - z0) * beta
    } else {
        (-r + z0) * beta
    };
    -(x.sigmoid()) + 1.0
}
