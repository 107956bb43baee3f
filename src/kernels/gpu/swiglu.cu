// SwiGLU over the fused gate_up rows: out[t, i] = silu(gu[t, i]) * gu[t, I + i].
#include "kernels/gpu/dispatch.cuh"

namespace ffspec::gpu {

namespace {
template <typename T>
__global__ void silu_mul_kernel(const T *gu, T *out, int I) {
  const int t = blockIdx.y;
  const T *g = gu + static_cast<size_t>(t) * 2 * I, *u = g + I;
  T *o = out + static_cast<size_t>(t) * I;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < I; i += gridDim.x * blockDim.x) {
    const float gv = to_f32(g[i]);
    // expf, not __expf: matches the CPU's std::exp to an ulp or two.
    o[i] = from_f32<T>(gv / (1.0f + expf(-gv)) * to_f32(u[i]));
  }
}
}  // namespace

gpuError_t silu_mul(const void *gu, void *out, int T_, int I, DType dt, gpuStream_t stream) {
  if (T_ <= 0) return gpuSuccess;
  const dim3 grid(ceil_div(I, 256 * 4), T_);
  FFS_DISPATCH_DTYPE(dt, FFS_LAUNCH(silu_mul_kernel<T>, grid, 256, 0, stream, static_cast<const T *>(gu),
                                    static_cast<T *>(out), I));
  return gpuGetLastError();
}

}  // namespace ffspec::gpu
