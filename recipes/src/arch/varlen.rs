//! Attention over packed sequences given by offsets ([`super::mask::Packed`]): the flattened
//! tokens `[total, heads, head_dim]` of a packed batch, sequence `s` = tokens `cu[s]..cu[s+1]`,
//! causal within a sequence and never across one:
//!
//! `out[i] = softmax_{j ∈ seq(i), j ≤ i, i − j ≤ window_left} (q_i · k_j · scale) v_j`,
//!
//! each k/v head shared by `heads / kv_heads` query heads (GQA, no copies).
//!
//! On CUDA in half precision this is libtorch's varlen flash kernel (`_flash_attention_forward`
//! with cumulative sequence lengths, through the shim `recipes/csrc/varlen.cpp`): no `T×T` mask,
//! memory linear in the tokens. Elsewhere [`attention`] computes the same thing sequence by
//! sequence with `scaled_dot_product_attention` — the reference the CPU tests check the layout
//! code against (a packed batch on CPU normally takes the dense segment mask instead).

use std::ffi::c_char;
use tch::{Device, Kind, TchError, Tensor};
use torch_sys::C_tensor;

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn temper_flash_varlen(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        cu: *const C_tensor,
        max_len: i64,
        scale: f64,
        window_left: i64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

/// Whether the varlen flash kernel takes a model on `device` computing in `kind` with heads of
/// `head_dim`: CUDA, bf16 or f16, a head size that is a multiple of 8 up to 256.
pub fn supported(device: Device, kind: Kind, head_dim: usize) -> bool {
    device.is_cuda()
        && matches!(kind, Kind::BFloat16 | Kind::Half)
        && head_dim.is_multiple_of(8)
        && head_dim <= 256
}

/// The sequences and the attention's constants: `cu` int32 `[n + 1]` on the tensors' device,
/// `max_len` ≥ the longest sequence, the softmax `scale`, the left window.
#[derive(Clone, Copy, Debug)]
pub struct Seqs<'a> {
    pub cu: &'a Tensor,
    pub max_len: i64,
    pub scale: f64,
    pub window_left: Option<i64>,
}

/// The attention of the module docs: q `[total, H, D]`, k and v `[total, KV, D]`;
/// `[total, H, D]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, s: Seqs) -> Result<Tensor, TchError> {
    let (qk, hd) = (q.f_kind()?, q.size().last().copied().unwrap_or(0) as usize);
    if supported(q.device(), qk, hd) {
        flash(q, k, v, s)
    } else {
        reference(q, k, v, s)
    }
}

/// The varlen flash kernel (CUDA, half precision).
fn flash(q: &Tensor, k: &Tensor, v: &Tensor, s: Seqs) -> Result<Tensor, TchError> {
    let (q, k, v) = (q.f_contiguous()?, k.f_contiguous()?, v.f_contiguous()?);
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: every pointer is a live tch tensor borrowed for the call; the shim catches every
    // C++ exception and hands back either a new tensor or a malloc'd message.
    let msg = unsafe {
        temper_flash_varlen(
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            s.cu.as_ptr(),
            s.max_len,
            s.scale,
            s.window_left.unwrap_or(-1),
            &mut out,
        )
    };
    let shown = |e: String| TchError::Torch(format!("varlen flash attention: {e}"));
    crate::shim::check(msg).map_err(shown)?;
    crate::shim::take(out, "varlen flash attention").map_err(shown)
}

/// Sequence by sequence with SDPA (the offsets are read to the host: a reference, not a fast
/// path).
fn reference(q: &Tensor, k: &Tensor, v: &Tensor, s: Seqs) -> Result<Tensor, TchError> {
    let (scale, window_left) = (s.scale, s.window_left);
    let cu = Vec::<i64>::try_from(s.cu.f_to_kind(Kind::Int64)?.f_to_device(Device::Cpu)?)?;
    let gqa = q.size()[1] != k.size()[1];
    let mut outs = Vec::with_capacity(cu.len().saturating_sub(1));
    for w in cu.windows(2) {
        let (a, len) = (w[0], w[1] - w[0]);
        // [L, H, D] → [1, H, L, D]
        let seq = |t: &Tensor| -> Result<Tensor, TchError> {
            t.f_narrow(0, a, len)?.f_transpose(0, 1)?.f_unsqueeze(0)
        };
        let mask = match window_left {
            Some(wl) if wl + 1 < len => {
                let ones = Tensor::f_ones([len, len], (Kind::Bool, q.device()))?;
                Some(ones.f_tril(0)?.f_logical_and(&ones.f_triu(-wl)?)?)
            }
            _ => None,
        };
        let y = Tensor::f_scaled_dot_product_attention(
            &seq(q)?,
            &seq(k)?,
            &seq(v)?,
            mask.as_ref(),
            0.0,
            mask.is_none(),
            scale,
            gqa,
        )?;
        outs.push(y.f_squeeze_dim(0)?.f_transpose(0, 1)?);
    }
    Tensor::f_cat(&outs, 0)
}
