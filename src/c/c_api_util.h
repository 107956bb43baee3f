// Shared by the C API's translation units: the exception-to-status boundary.
#pragma once
#include <exception>
#include <new>
#include <string>

#include "flexflow_spec/c/flexflow_spec.h"
#include "util/error.h"

namespace ffspec::capi {

// The calling thread's message for ffs_last_error().
std::string &last_error();

template <typename F>
ffs_status_t guarded(F &&f) {
  try {
    last_error().clear();
    f();
    return FFS_OK;
  } catch (const ffspec::Error &e) {
    last_error() = e.what();
    return e.status();
  } catch (const std::bad_alloc &) {
    last_error() = "out of host memory";
    return FFS_ERR_OUT_OF_MEMORY;
  } catch (const std::exception &e) {
    last_error() = std::string("internal error: ") + e.what();
    return FFS_ERR_INTERNAL;
  } catch (...) {
    last_error() = "internal error";
    return FFS_ERR_INTERNAL;
  }
}

inline void require(bool cond, const char *what) {
  if (!cond) ffspec::fail(FFS_ERR_INVALID_ARGUMENT, what);
}

}  // namespace ffspec::capi
