//! Decoder blocks as autograd nodes temper sees ([`unit`]).
//!
//! Activation checkpointing (`activation-checkpointing #true`): a block run as a *recomputed*
//! unit keeps only its input for the backward pass; its activations are recomputed there, block
//! by block, trading one more forward per block for memory — the block's inner activations
//! (attention projections, the MLP's `[tokens, intermediate]` tensors) are never held for more
//! than one block at a time. A *kept* unit keeps its graph as a plain block would. Either way the
//! unit's backward ends with the block's `done` hook, called once the block's parameter gradients
//! of that backward are complete (sharded training reduces and frees them there:
//! [`super::hooks`]).
//!
//! The mechanism lives in the C++ shim (`recipes/csrc/checkpoint.cpp`): an autograd node that
//! calls back into a Rust closure, in the forward without autograd (recomputed) or with it
//! (kept), and in the recomputing backward with it, under the generator state of the forward. The recomputed graph is the plain graph, so the
//! gradients are bit-identical to a run without checkpointing on CPU (the test in
//! `recipes/tests/trainer/checkpointing.rs`).
//!
//! Invariants of the boundary: the closure is boxed and handed to the shim, which owns it until
//! the graph is freed (it must therefore own what it reads: shallow clones of the block's
//! variables, of the rotary tables and of the mask); a panic in it is caught and becomes an
//! error; every tensor crossing the boundary is a tch `Tensor`'s `at::Tensor*`.

use std::ffi::{c_char, c_int, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use tch::{Kind, TchError, Tensor};
use torch_sys::C_tensor;

/// What a block computes: its output for an input, told whether autograd records.
pub type BlockFn = dyn Fn(&Tensor, bool) -> Result<Tensor, TchError> + Send;

/// A block that ignores whether autograd records (activation checkpointing's).
pub type PlainFn = dyn Fn(&Tensor) -> Result<Tensor, TchError> + Send;

/// The hook a unit's backward calls last.
pub type DoneFn = dyn Fn() -> Result<(), TchError> + Send;

/// The closures of one unit, owned by the shim until the graph is freed.
struct Unit {
    f: Box<BlockFn>,
    done: Option<Box<DoneFn>>,
}

type RunFn = extern "C" fn(*mut c_void, *mut C_tensor, c_int, *mut *mut C_tensor) -> *mut c_char;
type HookFn = extern "C" fn(*mut c_void) -> *mut c_char;
type DropFn = extern "C" fn(*mut c_void);

extern "C" {
    fn temper_error_copy(msg: *const c_char) -> *mut c_char;
    fn temper_unit(
        x: *const C_tensor,
        anchor: *const C_tensor,
        recompute: c_int,
        ctx: *mut c_void,
        run: RunFn,
        done: Option<HookFn>,
        drop: DropFn,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

/// A message the shim can own (malloc'd by it).
fn shim_message(msg: &str) -> *mut c_char {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    // SAFETY: `c` is a valid NUL-terminated string; the shim copies it.
    unsafe { temper_error_copy(c.as_ptr()) }
}

extern "C" fn run_block(
    ctx: *mut c_void,
    x: *mut C_tensor,
    grad: c_int,
    out: *mut *mut C_tensor,
) -> *mut c_char {
    // SAFETY: `ctx` is the `Box<Unit>` made in `unit`, alive until `drop_block`; `x` is a
    // `new at::Tensor` whose ownership the shim hands over.
    let u = unsafe { &*(ctx as *const Unit) };
    let x = unsafe { Tensor::from_ptr(x) };
    match catch_unwind(AssertUnwindSafe(|| (u.f)(&x, grad != 0))) {
        Ok(Ok(mut y)) => {
            // SAFETY: `out` is the shim's out-parameter; ownership of `y` moves to it.
            unsafe { *out = y.as_mut_ptr() };
            std::mem::forget(y);
            std::ptr::null_mut()
        }
        Ok(Err(e)) => shim_message(&e.to_string()),
        Err(_) => shim_message("a block panicked"),
    }
}

extern "C" fn block_done(ctx: *mut c_void) -> *mut c_char {
    // SAFETY: as in `run_block`.
    let u = unsafe { &*(ctx as *const Unit) };
    let Some(done) = &u.done else {
        return std::ptr::null_mut();
    };
    match catch_unwind(AssertUnwindSafe(done)) {
        Ok(Ok(())) => std::ptr::null_mut(),
        Ok(Err(e)) => shim_message(&e.to_string()),
        Err(_) => shim_message("a block's backward hook panicked"),
    }
}

extern "C" fn drop_block(ctx: *mut c_void) {
    // SAFETY: `ctx` came from `Box::into_raw` in `unit` and the shim drops it once.
    drop(unsafe { Box::from_raw(ctx as *mut Unit) });
}

/// `f(x)` as a unit node when autograd is recording — recomputed in backward when `recompute`,
/// else with its graph kept — and `done` called at the end of the node's backward (see the
/// module docs); a plain call `f(x, false)` otherwise. `anchor` is a scalar leaf requiring grad
/// ([`anchor`]).
pub fn unit(
    x: &Tensor,
    anchor: &Tensor,
    recompute: bool,
    f: Box<BlockFn>,
    done: Option<Box<DoneFn>>,
) -> Result<Tensor, TchError> {
    let ctx = Box::into_raw(Box::new(Unit { f, done })) as *mut c_void;
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: the pointers are live tch tensors; `ctx` is handed over to the shim, which drops it
    // through `drop_block` exactly once.
    let msg = unsafe {
        temper_unit(
            x.as_ptr(),
            anchor.as_ptr(),
            c_int::from(recompute),
            ctx,
            run_block,
            Some(block_done),
            drop_block,
            &mut out,
        )
    };
    let shown = |e: String| TchError::Torch(format!("block: {e}"));
    crate::shim::check(msg).map_err(shown)?;
    crate::shim::take(out, "block").map_err(shown)
}

/// `f(x)`, checkpointed when autograd is recording: a recomputed [`unit`] without a hook.
pub fn checkpointed(x: &Tensor, anchor: &Tensor, f: Box<PlainFn>) -> Result<Tensor, TchError> {
    unit(x, anchor, true, Box::new(move |x, _| f(x)), None)
}

/// The scalar leaf that keeps a unit in the graph when its input needs no gradient (the
/// embeddings of a frozen base under LoRA): it requires grad and gets none.
pub fn anchor(device: tch::Device) -> Result<Tensor, TchError> {
    Ok(Tensor::f_zeros([], (Kind::Float, device))?.set_requires_grad(true))
}
