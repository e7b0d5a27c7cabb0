// temper's shim over libtorch ops tch 0.24 does not bind: the multi-tensor AdamW
// (`_fused_adamw_`) and the multi-tensor norm and scale (`_foreach_norm`, `_foreach_mul_`)
// that clipping needs. Compiled by recipes/build.rs against the headers of the libtorch
// torch-sys links; called from recipes/src/trainer/fused.rs.
//
// Invariants:
// - A tensor argument is a tch `Tensor`'s `C_tensor*`, which is an `at::Tensor*`
//   (torch-sys's libtch: `typedef torch::Tensor *tensor`).
// - No C++ exception crosses the C ABI (shim.h): every entry point catches everything and
//   returns a malloc'd message (freed by `temper_free_error`), or NULL on success.
// - Tensors returned through `out` are `new at::Tensor`, owned by the caller (tch frees them
//   with `delete`, in `at_free`).

#include <ATen/core/Tensor.h>
#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/stack.h>

#include "shim.h"

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {

using temper_shim::error_copy;
using temper_shim::guarded;

std::vector<at::Tensor> list(const at::Tensor *const *ts, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(*ts[i]);
  }
  return out;
}

} // namespace

extern "C" {

void temper_free_error(char *msg) { std::free(msg); }

// One AdamW step over `n` parameters of one device and dtype sharing `weight_decay`:
// each step counter (an f32 scalar tensor on the parameters' device) is incremented, then
// `_fused_adamw_` updates parameters and moments in place (amsgrad and maximize off).
char *temper_fused_adamw(const at::Tensor *const *params, const at::Tensor *const *grads,
                         const at::Tensor *const *exp_avgs,
                         const at::Tensor *const *exp_avg_sqs,
                         const at::Tensor *const *steps, size_t n, double lr, double beta1,
                         double beta2, double weight_decay, double eps) {
  return guarded([&] {
    auto ps = list(params, n);
    auto gs = list(grads, n);
    auto ms = list(exp_avgs, n);
    auto vs = list(exp_avg_sqs, n);
    auto ss = list(steps, n);
    at::_foreach_add_(ss, at::Scalar(1.0));
    at::_fused_adamw_(ps, gs, ms, vs, {}, ss, lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false);
  });
}

// The global 2-norm of `n` tensors, `‖(‖t_1‖, …, ‖t_n‖)‖` in f32 on the first tensor's
// device (`_foreach_norm`, one stack, one norm): written to `*out`.
char *temper_total_norm(const at::Tensor *const *ts, size_t n, at::Tensor **out) {
  return guarded([&] {
    auto xs = list(ts, n);
    TORCH_CHECK(!xs.empty(), "total norm of no tensors");
    auto norms = at::_foreach_norm(xs, 2, at::kFloat);
    auto device = xs[0].device();
    for (auto &t : norms) {
      if (t.device() != device) {
        t = t.to(device);
      }
    }
    auto total = at::linalg_vector_norm(at::stack(norms), 2);
    *out = new at::Tensor(std::move(total));
  });
}

// The 2-norms of `n` tensors as one f32 vector `[n]` on the first tensor's device (the
// per-tensor norms `temper_total_norm` stacks): written to `*out`.
char *temper_norms(const at::Tensor *const *ts, size_t n, at::Tensor **out) {
  return guarded([&] {
    auto xs = list(ts, n);
    TORCH_CHECK(!xs.empty(), "norms of no tensors");
    auto norms = at::_foreach_norm(xs, 2, at::kFloat);
    auto device = xs[0].device();
    for (auto &t : norms) {
      if (t.device() != device) {
        t = t.to(device);
      }
    }
    *out = new at::Tensor(at::stack(norms));
  });
}

// `‖t‖₂` of one tensor (`linalg_vector_norm`, as `temper_total_norm` takes it of the stacked
// norms): written to `*out`.
char *temper_vector_norm(const at::Tensor *t, at::Tensor **out) {
  return guarded([&] { *out = new at::Tensor(at::linalg_vector_norm(*t, 2)); });
}

// Releases the gradients of `n` tensors (`.grad` becomes undefined, its memory freed once
// nothing else holds it): what a rank does with the gradients it does not own.
char *temper_release_grads(const at::Tensor *const *ts, size_t n) {
  return guarded([&] {
    for (size_t i = 0; i < n; ++i) {
      const_cast<at::Tensor *>(ts[i])->mutable_grad().reset();
    }
  });
}

// Multiplies `n` tensors of one device in place by the 0-dim tensor `factor`.
char *temper_foreach_mul_(const at::Tensor *const *ts, size_t n, const at::Tensor *factor) {
  return guarded([&] {
    auto xs = list(ts, n);
    at::_foreach_mul_(xs, *factor);
  });
}

} // extern "C"
