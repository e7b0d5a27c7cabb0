// What every file of temper's C++ shim shares: how an error crosses the C ABI. An entry point
// returns NULL on success or a malloc'd, NUL-terminated message (freed by `temper_free_error`);
// no C++ exception ever crosses the boundary.

#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>

namespace temper_shim {

// A malloc'd copy of `msg` (NULL if out of memory).
inline char *error_copy(const char *msg) {
  size_t n = std::strlen(msg);
  char *out = static_cast<char *>(std::malloc(n + 1));
  if (out != nullptr) {
    std::memcpy(out, msg, n + 1);
  }
  return out;
}

// Runs `f`, turning any exception into a message.
template <typename F> char *guarded(F f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error &e) {
    return error_copy(e.what_without_backtrace());
  } catch (const std::exception &e) {
    return error_copy(e.what());
  } catch (...) {
    return error_copy("unknown C++ exception");
  }
}

} // namespace temper_shim
