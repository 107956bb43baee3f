// Embedding gather: one block row per token, columns across threads.
#include "kernels/gpu/dispatch.cuh"

namespace ffspec::gpu {

size_t dtype_size(DType dt) { return dt == DType::F32 ? 4 : 2; }

namespace {
template <typename T>
__global__ void embedding_kernel(const int32_t *tokens, const T *table, T *out, int H, int vocab) {
  const int t = blockIdx.y;
  const int32_t id = tokens[t];
  const bool ok = id >= 0 && id < vocab;
  T *o = out + static_cast<size_t>(t) * H;
  const T *row = table + static_cast<size_t>(ok ? id : 0) * H;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < H; i += gridDim.x * blockDim.x)
    o[i] = ok ? row[i] : from_f32<T>(0.0f);
}
}  // namespace

gpuError_t embedding(const int32_t *tokens, const void *table, void *out, int T_, int H, int vocab, DType dt,
                     gpuStream_t stream) {
  if (T_ <= 0) return gpuSuccess;
  const dim3 grid(ceil_div(H, 256 * 4), T_);
  FFS_DISPATCH_DTYPE(dt, FFS_LAUNCH(embedding_kernel<T>, grid, 256, 0, stream, tokens, static_cast<const T *>(table),
                                    static_cast<T *>(out), H, vocab));
  return gpuGetLastError();
}

}  // namespace ffspec::gpu
