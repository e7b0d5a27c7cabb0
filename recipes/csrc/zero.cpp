// What `shard gradients | full` needs of libtorch beyond tch's bindings (called from
// recipes/src/trainer/zero.rs; compiled by recipes/build.rs):
// - freeing a tensor's storage while the tensor keeps its sizes, and allocating it again: a rank
//   holds the parameters it does not own only while a block computes (`shard full`); every
//   tensor sharing the storage (tch's shallow clones, autograd's saved variables) sees the same
//   bytes, so nothing holds a stale copy;
// - assigning a gradient (the owner's summed gradient after the reduce-scatter).
//
// Invariants: a freed storage has 0 bytes and no data pointer; reading through it before it is
// allocated again is the caller's bug, which the Rust side rules out by tracking which storages
// are live. Allocation uses the storage's own allocator (CPU or CUDA caching allocator).

#include <ATen/core/Tensor.h>
#include <c10/core/StorageImpl.h>

#include "shim.h"

using temper_shim::guarded;

extern "C" {

// Frees the storages of `n` tensors (their sizes and strides stay).
char *temper_free_storage(const at::Tensor *const *ts, size_t n) {
  return guarded([&] {
    for (size_t i = 0; i < n; ++i) {
      c10::StorageImpl *s = ts[i]->storage().unsafeGetStorageImpl();
      s->reset();
    }
  });
}

// Gives each of `n` tensors whose storage was freed storage for its elements again (contents
// undefined); a tensor whose storage is live is left alone.
char *temper_alloc_storage(const at::Tensor *const *ts, size_t n) {
  return guarded([&] {
    for (size_t i = 0; i < n; ++i) {
      const at::Tensor &t = *ts[i];
      c10::StorageImpl *s = t.storage().unsafeGetStorageImpl();
      size_t need = (t.storage_offset() + t.numel()) * t.element_size();
      if (s->nbytes() >= need && s->data() != nullptr) {
        continue;
      }
      TORCH_CHECK(s->allocator() != nullptr, "tensor storage has no allocator");
      s->set_data_ptr_noswap(s->allocator()->allocate(need));
      s->set_nbytes(need);
    }
  });
}

// `t.grad = g` (`g` undefined: the gradient released).
char *temper_set_grad(const at::Tensor *t, const at::Tensor *g) {
  return guarded([&] { const_cast<at::Tensor *>(t)->mutable_grad() = *g; });
}

} // extern "C"
