// Internal to the .cu files: run a templated body once per element type.
#pragma once
#include "kernels/gpu/kernels.h"

// Calls BODY with `using T = <element type of dt>;` in scope; unknown dt returns an error.
#define FFS_DISPATCH_DTYPE(dt, ...)                     \
  switch (dt) {                                         \
    case ::ffspec::gpu::DType::F32: {                   \
      using T = float;                                  \
      __VA_ARGS__;                                      \
    } break;                                            \
    case ::ffspec::gpu::DType::F16: {                   \
      using T = gpu_half;                               \
      __VA_ARGS__;                                      \
    } break;                                            \
    case ::ffspec::gpu::DType::BF16: {                  \
      using T = gpu_bf16;                               \
      __VA_ARGS__;                                      \
    } break;                                            \
    default:                                            \
      return gpuErrorInvalidValue;                      \
  }

namespace ffspec::gpu {
inline unsigned ceil_div(long long a, long long b) { return static_cast<unsigned>((a + b - 1) / b); }
}  // namespace ffspec::gpu
