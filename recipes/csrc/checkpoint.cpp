// A decoder block as one autograd node whose backward temper sees (a "unit"): the block is a
// Rust closure. Two variants:
// - recomputed (activation checkpointing): the forward runs the block without keeping its
//   activations, and the backward runs it again with autograd on and back-propagates through
//   the recomputed graph (torch.utils.checkpoint's reentrant variant);
// - kept: the forward runs the block with autograd on and keeps its graph; the backward
//   back-propagates through it.
// Either way the node's backward then calls the closure's `done` hook, when the block's parameter
// gradients of this backward are complete (sharded training reduces them there). Called from
// recipes/src/arch/checkpoint.rs; compiled by recipes/build.rs.
//
// Invariants:
// - The closure is a Rust box behind `ctx`: `run` calls it (it takes ownership of the input
//   tensor handed to it, is told whether autograd records, and gives back a `new at::Tensor` or
//   a malloc'd error message, made with `temper_error_copy`), `done` (may be NULL) reports the
//   end of the block's backward the same way, `drop` frees it. The node owns the closure from the forward until
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
typedef char *(*temper_block_run)(void *ctx, at::Tensor *x, int grad, at::Tensor **out);
typedef char *(*temper_block_done)(void *ctx);
typedef void (*temper_block_drop)(void *ctx);
}

namespace {

using temper_shim::error_copy;

// The Rust closure of one block call; freed with the node that holds it.
// Raises a malloc'd error message (if any) as a c10::Error.
void raise(char *err) {
  if (err != nullptr) {
    std::string msg(err);
    std::free(err);
    TORCH_CHECK(false, msg);
  }
}

struct Closure : torch::CustomClassHolder {
  void *ctx;
  temper_block_run run;
  temper_block_done on_done;
  temper_block_drop drop;

  Closure(void *c, temper_block_run r, temper_block_done d, temper_block_drop f)
      : ctx(c), run(r), on_done(d), drop(f) {}
  ~Closure() override { drop(ctx); }

  at::Tensor call(const at::Tensor &x) const {
    at::Tensor *out = nullptr;
    raise(run(ctx, new at::Tensor(x), at::GradMode::is_enabled() ? 1 : 0, &out));
    TORCH_CHECK(out != nullptr, "block returned no tensor");
    at::Tensor y = std::move(*out);
    delete out;
    return y;
  }

  void done() const {
    if (on_done != nullptr) {
      raise(on_done(ctx));
    }
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
    f->done();
    at::Tensor gx = x.requires_grad() ? x.grad() : at::Tensor();
    return {gx, at::Tensor(), at::Tensor()};
  }
};

// The kept variant: the block's graph is built in the forward (on a detached input) and saved;
// the backward runs it, then the hook.
struct Kept : public torch::autograd::Function<Kept> {
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x,
                            const at::Tensor &anchor, c10::intrusive_ptr<Closure> f) {
    (void)anchor;
    at::Tensor xi = x.detach();
    xi.requires_grad_(x.requires_grad());
    at::Tensor yi;
    {
      at::AutoGradMode on(true);
      yi = f->call(xi);
    }
    TORCH_CHECK(yi.requires_grad(), "block: the output has no graph");
    ctx->saved_data["x"] = xi;
    ctx->saved_data["y"] = yi;
    ctx->saved_data["f"] = c10::IValue::make_capsule(std::move(f));
    return yi.detach();
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto f = c10::static_intrusive_pointer_cast<Closure>(ctx->saved_data["f"].toCapsule());
    at::Tensor xi = ctx->saved_data["x"].toTensor();
    at::Tensor yi = ctx->saved_data["y"].toTensor();
    torch::autograd::backward({yi}, {grads[0]});
    ctx->saved_data.erase("y");
    f->done();
    at::Tensor gx = xi.requires_grad() ? xi.grad() : at::Tensor();
    return {gx, at::Tensor(), at::Tensor()};
  }
};

} // namespace

extern "C" {

// A malloc'd copy of `msg` (the error a `temper_block_run` returns).
char *temper_error_copy(const char *msg) { return error_copy(msg); }

// `*out` = the block behind `ctx` applied to `x`, as a unit node when grad mode is on —
// recomputed in backward when `recompute` is non-zero, else with its graph kept (see the file's
// invariants). `ctx` is handed over in every case: `drop(ctx)` runs once it is no longer needed,
// here or when the graph is freed. Returns NULL or a malloc'd message.
char *temper_unit(const at::Tensor *x, const at::Tensor *anchor, int recompute, void *ctx,
                  temper_block_run run, temper_block_done done, temper_block_drop drop,
                  at::Tensor **out) {
  c10::intrusive_ptr<Closure> f;
  try {
    f = c10::make_intrusive<Closure>(ctx, run, done, drop);
  } catch (...) {
    drop(ctx);
    return error_copy("out of memory making a block node");
  }
  return temper_shim::guarded([&] {
    at::Tensor y;
    if (!at::GradMode::is_enabled()) {
      y = f->call(*x);
    } else if (recompute != 0) {
      y = Checkpoint::apply(*x, *anchor, std::move(f));
    } else {
      y = Kept::apply(*x, *anchor, std::move(f));
    }
    *out = new at::Tensor(std::move(y));
  });
}

} // extern "C"
