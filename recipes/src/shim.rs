//! The Rust side of the C++ shim's boundary (`recipes/csrc/`, compiled by `build.rs`): an entry
//! point returns NULL or a malloc'd message ([`check`] turns it into a result and frees it), and
//! a tensor it makes comes back as a `new at::Tensor` the caller owns ([`take`]). Every tensor
//! handed over is a tch `Tensor`'s `C_tensor*`, an `at::Tensor*`.

use std::ffi::{c_char, CStr};
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn temper_free_error(msg: *mut c_char);
}

/// `Ok` for a null message, else the message (freed).
pub(crate) fn check(msg: *mut c_char) -> Result<(), String> {
    if msg.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is a NUL-terminated string the shim malloc'd for us.
    let text = unsafe { CStr::from_ptr(msg) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: freed once, with the shim's allocator.
    unsafe { temper_free_error(msg) };
    Err(text)
}

/// The tensor an entry point wrote to its out-parameter, now ours; an error for a null one.
pub(crate) fn take(out: *mut C_tensor, what: &str) -> Result<Tensor, String> {
    if out.is_null() {
        return Err(format!("{what}: libtorch returned no tensor"));
    }
    // SAFETY: a non-null out-parameter is a `new at::Tensor` the shim handed over; tch frees it.
    Ok(unsafe { Tensor::from_ptr(out) })
}
