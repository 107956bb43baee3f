// Rotary embedding in place: one thread per (token, head, i < head_dim/2) rotates the pair
// (i, i + half); rope_kv_store also writes the rotated K and the V of each token to the cache. The angle is float(position) * inv_freq[i] in fp32 with precise sinf/cosf
// (no fast-math intrinsics: angles reach thousands of radians at long contexts).
#include "kernels/gpu/dispatch.cuh"

namespace ffspec::gpu {

namespace {
// rope(): heads [0, n_heads) of each row rotate in place. STORE (rope_kv_store): n_heads counts
// the row's Q, K and V heads; heads before v_head rotate in place, the K heads [k_head, v_head)
// also go to cache_k at the token's slot and cache position, and the V heads from v_head on are
// copied there to cache_v unrotated.
template <typename T, bool STORE>
__global__ void rope_kernel(T *x, int T_, int row_stride, int n_heads, int half, const int32_t *positions,
                            const float *inv_freq, int k_head, int v_head, const int32_t *slots,
                            const int32_t *cache_pos, T *cache_k, T *cache_v, int max_seq) {
  const long long n = static_cast<long long>(T_) * n_heads * half;
  for (long long g = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; g < n;
       g += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(g % half);
    const int h = static_cast<int>((g / half) % n_heads);
    const int t = static_cast<int>(g / (static_cast<long long>(half) * n_heads));
    T *v = x + static_cast<size_t>(t) * row_stride + static_cast<size_t>(h) * 2 * half;
    T *cache = nullptr;
    if constexpr (STORE) {
      const int kv_dim = (v_head - k_head) * 2 * half;
      if (h >= k_head)
        cache = (h >= v_head ? cache_v : cache_k) +
                (static_cast<size_t>(slots[t]) * max_seq + cache_pos[t]) * kv_dim +
                static_cast<size_t>(h - (h >= v_head ? v_head : k_head)) * 2 * half;
      if (h >= v_head) {  // V: a copy
        cache[i] = v[i];
        cache[i + half] = v[i + half];
        continue;
      }
    }
    const float f = static_cast<float>(positions[t]) * inv_freq[i];
    float s, c;
    sincosf(f, &s, &c);
    const float a = to_f32(v[i]), b = to_f32(v[i + half]);
    const T ra = from_f32<T>(a * c - b * s), rb = from_f32<T>(b * c + a * s);
    v[i] = ra;
    v[i + half] = rb;
    if (STORE && cache) {
      cache[i] = ra;
      cache[i + half] = rb;
    }
  }
}

unsigned rope_blocks(long long n) { return static_cast<unsigned>(n / 256 + 1 < 65535 * 8 ? n / 256 + 1 : 65535 * 8); }
}  // namespace

gpuError_t rope(void *x, int T_, int row_stride, int n_heads, int head_dim, const int32_t *positions,
                const float *inv_freq, DType dt, gpuStream_t stream) {
  if (head_dim % 2 != 0) return gpuErrorInvalidValue;
  const long long n = static_cast<long long>(T_) * n_heads * (head_dim / 2);
  if (n <= 0) return gpuSuccess;
  FFS_DISPATCH_DTYPE(dt, FFS_LAUNCH((rope_kernel<T, false>), rope_blocks(n), 256, 0, stream, static_cast<T *>(x), T_,
                                    row_stride, n_heads, head_dim / 2, positions, inv_freq, n_heads, n_heads, nullptr,
                                    nullptr, nullptr, nullptr, 0));
  return gpuGetLastError();
}

gpuError_t rope_kv_store(void *qkv, int T_, int row_stride, int n_q_heads, int n_kv_heads, int head_dim,
                         const int32_t *positions, const float *inv_freq, const int32_t *slots,
                         const int32_t *cache_pos, void *cache_k, void *cache_v, int max_seq, DType dt,
                         gpuStream_t stream) {
  if (head_dim % 2 != 0 || n_kv_heads <= 0) return gpuErrorInvalidValue;
  const int n_heads = n_q_heads + 2 * n_kv_heads;
  const long long n = static_cast<long long>(T_) * n_heads * (head_dim / 2);
  if (n <= 0) return gpuSuccess;
  FFS_DISPATCH_DTYPE(dt, FFS_LAUNCH((rope_kernel<T, true>), rope_blocks(n), 256, 0, stream, static_cast<T *>(qkv), T_,
                                    row_stride, n_heads, head_dim / 2, positions, inv_freq, n_q_heads,
                                    n_q_heads + n_kv_heads, slots, cache_pos, static_cast<T *>(cache_k),
                                    static_cast<T *>(cache_v), max_seq));
  return gpuGetLastError();
}

}  // namespace ffspec::gpu
