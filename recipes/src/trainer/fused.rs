//! Safe wrappers of the fused-optimizer shim (`recipes/csrc/fused.cpp`, compiled by
//! `recipes/build.rs` against the libtorch torch-sys links): libtorch's multi-tensor kernels
//! that tch 0.24 does not bind. [`super::optim::AdamW`] uses them unless it is built as the
//! per-tensor reference.
//!
//! Invariants: every pointer handed to the shim is a live tch `Tensor`'s `C_tensor` (an
//! `at::Tensor*`) borrowed for the call; a C++ exception never crosses the boundary — the shim
//! returns it as a message, which becomes an `Err` here. The in-place updates run with autograd
//! off (the callers hold `tch::no_grad`), as torch's optimizers do.

use anyhow::{anyhow, bail, Result};
use std::ffi::c_char;
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn temper_fused_adamw(
        params: *const *const C_tensor,
        grads: *const *const C_tensor,
        exp_avgs: *const *const C_tensor,
        exp_avg_sqs: *const *const C_tensor,
        steps: *const *const C_tensor,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
    ) -> *mut c_char;
    fn temper_total_norm(
        ts: *const *const C_tensor,
        n: usize,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn temper_norms(ts: *const *const C_tensor, n: usize, out: *mut *mut C_tensor) -> *mut c_char;
    fn temper_vector_norm(t: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
    fn temper_release_grads(ts: *const *const C_tensor, n: usize) -> *mut c_char;
    fn temper_free_storage(ts: *const *const C_tensor, n: usize) -> *mut c_char;
    fn temper_alloc_storage(ts: *const *const C_tensor, n: usize) -> *mut c_char;
    fn temper_set_grad(t: *const C_tensor, g: *const C_tensor) -> *mut c_char;
    fn temper_foreach_mul_(
        ts: *const *const C_tensor,
        n: usize,
        factor: *const C_tensor,
    ) -> *mut c_char;
}

/// The shim's result as an error ([`crate::shim::check`]).
fn check(msg: *mut c_char) -> Result<()> {
    crate::shim::check(msg).map_err(|text| anyhow!("libtorch: {text}"))
}

/// The shim's new tensor ([`crate::shim::take`]).
fn take(out: *mut C_tensor, what: &str) -> Result<Tensor> {
    crate::shim::take(out, what).map_err(|e| anyhow!(e))
}

fn ptrs(ts: &[&Tensor]) -> Vec<*const C_tensor> {
    ts.iter().map(|t| t.as_ptr()).collect()
}

/// One AdamW group for [`adamw`]: parameters of one device and dtype, with their gradients,
/// moments and step counters (f32 scalar tensors on the same device), index-aligned.
#[derive(Default)]
pub struct AdamWGroup<'a> {
    pub params: Vec<&'a Tensor>,
    pub grads: Vec<&'a Tensor>,
    pub exp_avgs: Vec<&'a Tensor>,
    pub exp_avg_sqs: Vec<&'a Tensor>,
    pub steps: Vec<&'a Tensor>,
}

/// Hyper-parameters of one [`adamw`] call.
#[derive(Clone, Copy, Debug)]
pub struct AdamWArgs {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub eps: f64,
}

/// Increments each step counter of `g` and applies `torch._fused_adamw_` (torch.optim.AdamW's
/// `fused=True` update: decoupled weight decay, then the moments, then the bias-corrected
/// step) to every tensor of the group in place.
pub fn adamw(g: &AdamWGroup, a: AdamWArgs) -> Result<()> {
    let n = g.params.len();
    if [&g.grads, &g.exp_avgs, &g.exp_avg_sqs, &g.steps]
        .iter()
        .any(|v| v.len() != n)
    {
        bail!("fused AdamW: the group's lists differ in length");
    }
    if n == 0 {
        return Ok(());
    }
    let (p, gr, m, v, s) = (
        ptrs(&g.params),
        ptrs(&g.grads),
        ptrs(&g.exp_avgs),
        ptrs(&g.exp_avg_sqs),
        ptrs(&g.steps),
    );
    // SAFETY: five arrays of `n` live tensor pointers, borrowed for the call.
    check(unsafe {
        temper_fused_adamw(
            p.as_ptr(),
            gr.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            s.as_ptr(),
            n,
            a.lr,
            a.beta1,
            a.beta2,
            a.weight_decay,
            a.eps,
        )
    })
}

/// `‖(‖t_1‖₂, …, ‖t_n‖₂)‖₂` as an f32 scalar tensor on the first tensor's device, computed
/// there (`_foreach_norm` in f32, one stack, one norm); `None` for no tensors.
pub fn total_norm(ts: &[&Tensor]) -> Result<Option<Tensor>> {
    if ts.is_empty() {
        return Ok(None);
    }
    let p = ptrs(ts);
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: `ts.len()` live tensor pointers; on success `out` is a new tensor we own.
    check(unsafe { temper_total_norm(p.as_ptr(), p.len(), &mut out) })?;
    Ok(Some(take(out, "total norm")?))
}

/// Multiplies every tensor of `ts` (all on `factor`'s device) in place by the scalar tensor
/// `factor` (`_foreach_mul_`).
pub fn mul_(ts: &[&Tensor], factor: &Tensor) -> Result<()> {
    if ts.is_empty() {
        return Ok(());
    }
    let p = ptrs(ts);
    // SAFETY: `ts.len()` live tensor pointers and one live factor, borrowed for the call.
    check(unsafe { temper_foreach_mul_(p.as_ptr(), p.len(), factor.as_ptr()) })
}

/// The per-tensor 2-norms `‖t_i‖₂` (f32, as [`total_norm`] computes them before stacking), read
/// to the host in one counted read ([`super::host::read`]); exact (f32 values as f64).
pub fn norms(ts: &[&Tensor]) -> Result<Vec<f64>> {
    if ts.is_empty() {
        return Ok(Vec::new());
    }
    let p = ptrs(ts);
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: `ts.len()` live tensor pointers; on success `out` is a new tensor we own.
    check(unsafe { temper_norms(p.as_ptr(), p.len(), &mut out) })?;
    super::host::read(&take(out, "norms")?)
}

/// `‖t‖₂` (libtorch's `linalg_vector_norm`, the last step of [`total_norm`]).
pub fn vector_norm(t: &Tensor) -> Result<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: a live tensor pointer; on success `out` is a new tensor we own.
    check(unsafe { temper_vector_norm(t.as_ptr(), &mut out) })?;
    take(out, "vector norm")
}

/// Releases the gradients of `ts` (each `.grad` becomes undefined).
pub fn release_grads(ts: &[&Tensor]) -> Result<()> {
    if ts.is_empty() {
        return Ok(());
    }
    let p = ptrs(ts);
    // SAFETY: `ts.len()` live tensor pointers, borrowed for the call.
    check(unsafe { temper_release_grads(p.as_ptr(), p.len()) })
}

/// Frees the storage of each tensor of `ts` (sizes kept; `csrc/zero.cpp`): every handle sharing
/// it sees no data until [`alloc_storage`].
pub fn free_storage(ts: &[&Tensor]) -> Result<()> {
    if ts.is_empty() {
        return Ok(());
    }
    let p = ptrs(ts);
    // SAFETY: `ts.len()` live tensor pointers, borrowed for the call.
    check(unsafe { temper_free_storage(p.as_ptr(), p.len()) })
}

/// Gives each tensor of `ts` whose storage was freed storage again (contents undefined).
pub fn alloc_storage(ts: &[&Tensor]) -> Result<()> {
    if ts.is_empty() {
        return Ok(());
    }
    let p = ptrs(ts);
    // SAFETY: `ts.len()` live tensor pointers, borrowed for the call.
    check(unsafe { temper_alloc_storage(p.as_ptr(), p.len()) })
}

/// `t.grad = g`.
pub fn set_grad(t: &Tensor, g: &Tensor) -> Result<()> {
    // SAFETY: two live tensor pointers, borrowed for the call.
    check(unsafe { temper_set_grad(t.as_ptr(), g.as_ptr()) })
}
