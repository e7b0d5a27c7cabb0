// Varlen flash attention for packed rows on CUDA: libtorch's `_flash_attention_forward` with
// cumulative sequence lengths, which tch 0.24 does not bind. Called from
// recipes/src/arch/varlen.rs; compiled by recipes/build.rs.
//
// Invariants:
// - q `[total, H, D]`, k and v `[total, KV, D]` (KV divides H: the kernel shares each k/v head
//   without copying), half precision, on one CUDA device; `cu` int32 `[n + 1]`, the offsets of
//   the n sequences in `total` (cu[0] = 0, cu[n] = total); `max_len` ≥ the longest sequence.
// - Attention is causal within each sequence and never crosses one; `window_left` ≥ 0 limits a
//   query `i` to keys `j` with `i − j ≤ window_left` (a sliding window of `window_left + 1`).
// - Autograd records the call (libtorch's derivative of `_flash_attention_forward`), so the
//   gradients of q, k and v flow as for any op.
// - No C++ exception crosses the C ABI (NULL or a malloc'd message, as in fused.cpp).

#include <ATen/core/Tensor.h>
#include <ATen/ops/_flash_attention_forward.h>

#include "shim.h"

#include <optional>
#include <tuple>

extern "C" {

// `*out` = attention output `[total, H, D]` (see the file's invariants). `window_left` < 0 means
// no window. Returns NULL or a malloc'd message.
char *temper_flash_varlen(const at::Tensor *q, const at::Tensor *k, const at::Tensor *v,
                          const at::Tensor *cu, int64_t max_len, double scale,
                          int64_t window_left, at::Tensor **out) {
  return temper_shim::guarded([&] {
    std::optional<int64_t> left;
    std::optional<int64_t> right;
    if (window_left >= 0) {
      left = window_left;
      right = 0;
    }
    auto res = at::_flash_attention_forward(*q, *k, *v, *cu, *cu, max_len, max_len, 0.0,
                                            /*is_causal=*/true, /*return_debug_mask=*/false,
                                            scale, left, right);
    *out = new at::Tensor(std::move(std::get<0>(res)));
  });
}

} // extern "C"
