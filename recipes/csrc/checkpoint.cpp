// Activation checkpointing for temper's decoder blocks: an autograd node that runs a block
// (a Rust closure) without keeping its activations, and in backward runs it again with autograd
// on and back-propagates through the recomputed graph (torch.utils.checkpoint's reentrant
// variant). Called from recipes/src/arch/checkpoint.rs; compiled by recipes/build.rs.
//
// Invariants:
// - The closure is a Rust box behind `ctx`: `run` calls it (it takes ownership of the input
//   tensor handed to it and gives back a `new at::Tensor` or a malloc'd error message, made
//   with `temper_error_copy`), `drop` frees it. The node owns the closure from the forward until
//   the graph is freed, so the closure outlives every recomputation.
// - The recomputation sees what the forward saw: the same input values and the generator state
//   of the input's device as it was before the forward (adapter dropout draws the same masks);
//   the generator is put back afterwards, so what runs after the backward draws as it would have
//   without checkpointing.
// - Gradients: the recomputed graph's backward accumulates into the block's parameters exactly as
//   the plain graph would (each parameter is used once in a block), and returns the gradient of
//   the input. `anchor` (a leaf requiring grad) makes the output require grad when the input does
//   not (a frozen embedding under LoRA), so the node is part of the graph.
// - Without grad mode (evaluation, generation) the closure is called directly.

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "shim.h"

#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>

extern "C" {
typedef char *(*temper_block_run)(void *ctx, at::Tensor *x, at::Tensor **out);
typedef void (*temper_block_drop)(void *ctx);
}

namespace {

using temper_shim::error_copy;

// The Rust closure of one block call; freed with the node that holds it.
struct Closure : torch::CustomClassHolder {
  void *ctx;
  temper_block_run run;
  temper_block_drop drop;

  Closure(void *c, temper_block_run r, temper_block_drop d) : ctx(c), run(r), drop(d) {}
  ~Closure() override { drop(ctx); }

  at::Tensor call(const at::Tensor &x) const {
    at::Tensor *out = nullptr;
    char *err = run(ctx, new at::Tensor(x), &out);
    if (err != nullptr) {
      std::string msg(err);
      std::free(err);
      TORCH_CHECK(false, msg);
    }
    TORCH_CHECK(out != nullptr, "checkpointed block returned no tensor");
    at::Tensor y = std::move(*out);
    delete out;
    return y;
  }
};

at::Tensor rng_state(const at::Generator &gen) {
  std::lock_guard<std::mutex> lock(const_cast<at::Generator &>(gen).mutex());
  return gen.get_state();
}

void set_rng_state(const at::Generator &gen, const at::Tensor &state) {
  auto &g = const_cast<at::Generator &>(gen);
  std::lock_guard<std::mutex> lock(g.mutex());
  g.set_state(state);
}

struct Checkpoint : public torch::autograd::Function<Checkpoint> {
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x,
                            const at::Tensor &anchor, c10::intrusive_ptr<Closure> f) {
    (void)anchor;
    ctx->save_for_backward({x});
    const auto &gen = at::globalContext().defaultGenerator(x.device());
    ctx->saved_data["rng"] = rng_state(gen);
    ctx->saved_data["requires_grad"] = x.requires_grad();
    at::Tensor y = f->call(x);
    ctx->saved_data["f"] = c10::IValue::make_capsule(std::move(f));
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto f = c10::static_intrusive_pointer_cast<Closure>(ctx->saved_data["f"].toCapsule());
    at::Tensor x = saved[0].detach();
    x.requires_grad_(ctx->saved_data["requires_grad"].toBool());
    const auto &gen = at::globalContext().defaultGenerator(x.device());
    at::Tensor now = rng_state(gen);
    set_rng_state(gen, ctx->saved_data["rng"].toTensor());
    at::Tensor y;
    try {
      at::AutoGradMode on(true);
      y = f->call(x);
    } catch (...) {
      set_rng_state(gen, now);
      throw;
    }
    set_rng_state(gen, now);
    TORCH_CHECK(y.requires_grad(), "checkpointed block: the recomputed output has no graph");
    torch::autograd::backward({y}, {grads[0]});
    at::Tensor gx = x.requires_grad() ? x.grad() : at::Tensor();
    return {gx, at::Tensor(), at::Tensor()};
  }
};

} // namespace

extern "C" {

// A malloc'd copy of `msg` (the error a `temper_block_run` returns).
char *temper_error_copy(const char *msg) { return error_copy(msg); }

// `*out` = the block behind `ctx` applied to `x`, checkpointed when grad mode is on (see the
// file's invariants). `ctx` is handed over in every case: `drop(ctx)` runs once it is no longer
// needed, here or when the graph is freed. Returns NULL or a malloc'd message.
char *temper_checkpoint(const at::Tensor *x, const at::Tensor *anchor, void *ctx,
                        temper_block_run run, temper_block_drop drop, at::Tensor **out) {
  c10::intrusive_ptr<Closure> f;
  try {
    f = c10::make_intrusive<Closure>(ctx, run, drop);
  } catch (...) {
    drop(ctx);
    return error_copy("out of memory making a checkpoint node");
  }
  return temper_shim::guarded([&] {
    at::Tensor y;
    if (at::GradMode::is_enabled()) {
      y = Checkpoint::apply(*x, *anchor, std::move(f));
    } else {
      y = f->call(*x);
    }
    *out = new at::Tensor(std::move(y));
  });
}

} // extern "C"
