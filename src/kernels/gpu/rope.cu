// Rotary embedding in place: one thread per (token, head, i < head_dim/2) rotates the pair
// (i, i + half). The angle is float(position) * inv_freq[i] in fp32 with precise sinf/cosf
// (no fast-math intrinsics: angles reach thousands of radians at long contexts).
#include "kernels/gpu/dispatch.cuh"

namespace ffspec::gpu {

namespace {
template <typename T>
__global__ void rope_kernel(T *x, int T_, int row_stride, int n_heads, int half, const int32_t *positions,
                            const float *inv_freq) {
  const long long n = static_cast<long long>(T_) * n_heads * half;
  for (long long g = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; g < n;
       g += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(g % half);
    const int h = static_cast<int>((g / half) % n_heads);
    const int t = static_cast<int>(g / (static_cast<long long>(half) * n_heads));
    const float f = static_cast<float>(positions[t]) * inv_freq[i];
    float s, c;
    sincosf(f, &s, &c);
    T *v = x + static_cast<size_t>(t) * row_stride + static_cast<size_t>(h) * 2 * half;
    const float a = to_f32(v[i]), b = to_f32(v[i + half]);
    v[i] = from_f32<T>(a * c - b * s);
    v[i + half] = from_f32<T>(b * c + a * s);
  }
}
}  // namespace

gpuError_t rope(void *x, int T_, int row_stride, int n_heads, int head_dim, const int32_t *positions,
                const float *inv_freq, DType dt, gpuStream_t stream) {
  if (head_dim % 2 != 0) return gpuErrorInvalidValue;
  const long long n = static_cast<long long>(T_) * n_heads * (head_dim / 2);
  if (n <= 0) return gpuSuccess;
  const unsigned blocks = static_cast<unsigned>(n / 256 + 1 < 65535 * 8 ? n / 256 + 1 : 65535 * 8);
  FFS_DISPATCH_DTYPE(dt, FFS_LAUNCH(rope_kernel<T>, blocks, 256, 0, stream, static_cast<T *>(x), T_, row_stride,
                                    n_heads, head_dim / 2, positions, inv_freq));
  return gpuGetLastError();
}

}  // namespace ffspec::gpu
