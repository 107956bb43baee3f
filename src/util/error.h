// Errors inside the core are C++ exceptions carrying a C API status; the C boundary
// (src/c/c_api.cc) turns them into a status code plus a thread-local message.
#pragma once
#include <stdexcept>
#include <string>

#include "flexflow_spec/c/flexflow_spec.h"

namespace ffspec {

class Error : public std::runtime_error {
 public:
  Error(ffs_status_t status, const std::string &msg) : std::runtime_error(msg), status_(status) {}
  ffs_status_t status() const { return status_; }

 private:
  ffs_status_t status_;
};

[[noreturn]] inline void fail(ffs_status_t status, const std::string &msg) { throw Error(status, msg); }
#define FFS_CHECK(cond, status, msg) \
  do {                               \
    if (!(cond)) ::ffspec::fail(status, msg); \
  } while (0)

}  // namespace ffspec
