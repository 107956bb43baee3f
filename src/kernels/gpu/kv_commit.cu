// KV commit. Moves must apply in list order (an accepted path [0, 2, 3] moves 2->1 then 3->2:
// the second writes what the first reads), but columns are independent. So each thread owns
// one column of one (layer, K|V) and applies every move to it in order: the sequential
// semantics of the CPU loop with no barrier.
#include "kernels/gpu/dispatch.cuh"

namespace ffspec::gpu {

namespace {
template <typename E>  // raw element of the dtype's size: a copy needs no arithmetic
__global__ void kv_commit_kernel(E *kv, const int32_t *moves, int n, size_t half_cache, size_t slot_stride,
                                 int kv_dim) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= kv_dim) return;
  E *cache = kv + static_cast<size_t>(blockIdx.y) * half_cache;  // blockIdx.y = layer * 2 + (K|V)
  for (int m = 0; m < n; m++) {
    const int32_t slot = moves[3 * m], src = moves[3 * m + 1], dst = moves[3 * m + 2];
    if (src == dst) continue;
    E *s = cache + static_cast<size_t>(slot) * slot_stride;
    s[static_cast<size_t>(dst) * kv_dim + c] = s[static_cast<size_t>(src) * kv_dim + c];
  }
}
}  // namespace

gpuError_t kv_commit(void *kv, const int32_t *moves, int n, int layers, int max_requests, int max_seq, int kv_dim,
                     DType dt, gpuStream_t stream) {
  if (n <= 0 || layers <= 0) return gpuSuccess;
  const size_t slot_stride = static_cast<size_t>(max_seq) * kv_dim;
  const size_t half_cache = static_cast<size_t>(max_requests) * slot_stride;
  const dim3 grid(ceil_div(kv_dim, 128), 2 * layers);
  if (dtype_size(dt) == 4) {
    FFS_LAUNCH(kv_commit_kernel<uint32_t>, grid, 128, 0, stream, static_cast<uint32_t *>(kv), moves, n, half_cache,
               slot_stride, kv_dim);
  } else {
    FFS_LAUNCH(kv_commit_kernel<uint16_t>, grid, 128, 0, stream, static_cast<uint16_t *>(kv), moves, n, half_cache,
               slot_stride, kv_dim);
  }
  return gpuGetLastError();
}

}  // namespace ffspec::gpu
