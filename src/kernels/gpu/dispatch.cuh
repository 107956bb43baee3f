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

// E consecutive elements at p as fp32, in the widest loads their size allows (16-byte pieces,
// or one 8-, 4-byte load; else one element at a time). p aligned to min(E * sizeof(T), 16).
template <typename T, int E>
__device__ __forceinline__ void load_f32(const T *__restrict__ p, float (&out)[E]) {
  constexpr int bytes = E * static_cast<int>(sizeof(T));
  T e[E];
  if constexpr (bytes % 16 == 0) {
#pragma unroll
    for (int c = 0; c < bytes / 16; c++) {
      const uint4 raw = reinterpret_cast<const uint4 *>(p)[c];
      memcpy(reinterpret_cast<char *>(e) + 16 * c, &raw, 16);  // register moves, no aliasing through T*
    }
  } else if constexpr (bytes == 8) {
    const uint2 raw = *reinterpret_cast<const uint2 *>(p);
    memcpy(static_cast<void *>(e), &raw, 8);
  } else if constexpr (bytes == 4) {
    const unsigned raw = *reinterpret_cast<const unsigned *>(p);
    memcpy(static_cast<void *>(e), &raw, 4);
  } else {
#pragma unroll
    for (int i = 0; i < E; i++) e[i] = p[i];
  }
#pragma unroll
  for (int i = 0; i < E; i++) out[i] = to_f32(e[i]);
}
}  // namespace ffspec::gpu
