// The MSS verifier's inputs: the warped distributions of selected rows (one block per row;
// the kept set as in sampling.cuh) and per-node gathers of a token's probability.
#include "kernels/gpu/sampling.cuh"

namespace ffspec::gpu {

namespace {

template <typename T>
__global__ void __launch_bounds__(kSampleThreads)
    warped_probs_kernel(const T *logits, int64_t ld, const int32_t *rows, int vocab, const SampleParams *params,
                        float *probs) {
  FFS_DYNAMIC_SMEM(smem);
  PlanSmem &s = *reinterpret_cast<PlanSmem *>(smem);
  const T *row = logits + static_cast<int64_t>(rows[blockIdx.x]) * ld;
  const SampleParams sp = params[blockIdx.x];
  float *p = probs + static_cast<size_t>(blockIdx.x) * vocab;
  const float inv_t = inv_temperature(sp);
  const int amax = block_argmax(row, vocab, s.fscratch, s.iscratch);
  if (amax < 0) {  // NaN or +inf in the row: no distribution; a row of NaN says so
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) p[i] = NAN;
    return;
  }
  if (untruncated(sp, vocab)) {
    float part = 0.0f;
    const float mx = to_f32(row[amax]);
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) part += expf((to_f32(row[i]) - mx) * inv_t);
    const float inv_z = 1.0f / block_sum(part, s.fscratch);
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) p[i] = expf((to_f32(row[i]) - mx) * inv_t) * inv_z;
    return;
  }
  plan_truncated(row, vocab, sp, inv_t, s);
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) p[i] = 0.0f;
  __syncthreads();  // global writes of one block: zeros land before the kept values below
  const int n = s.n_keep;
  const float inv_w = 1.0f / s.cum[n - 1], mx = s.max_logit;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    const int id = cand_id(s.cand[j]);
    p[id] = expf((to_f32(row[id]) - mx) * inv_t) * inv_w;
  }
}

__global__ void gather_token_probs_kernel(const float *probs, int vocab, const int32_t *row_of, const int32_t *tokens,
                                          int n, float *q) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) q[i] = probs[static_cast<size_t>(row_of[i]) * vocab + tokens[i]];
}

}  // namespace

gpuError_t warped_probs_rows(const void *logits, int64_t ld, const int32_t *rows, int n, int vocab,
                             const SampleParams *params, float *probs, DType dt, gpuStream_t stream) {
  if (n <= 0) return gpuSuccess;
  if (vocab <= 0) return gpuErrorInvalidValue;
  const int bytes = static_cast<int>(sizeof(PlanSmem));
  FFS_DISPATCH_DTYPE(dt, {
    gpuError_t e = gpuFuncSetAttribute(reinterpret_cast<const void *>(&warped_probs_kernel<T>),
                                       gpuFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e != gpuSuccess) return e;
    FFS_LAUNCH(warped_probs_kernel<T>, n, kSampleThreads, bytes, stream, static_cast<const T *>(logits), ld, rows,
               vocab, params, probs);
  });
  return gpuGetLastError();
}

gpuError_t gather_token_probs(const float *probs, int vocab, const int32_t *row_of, const int32_t *tokens, int n,
                              float *q, gpuStream_t stream) {
  if (n <= 0) return gpuSuccess;
  FFS_LAUNCH(gather_token_probs_kernel, ceil_div(n, 256), 256, 0, stream, probs, vocab, row_of, tokens, n, q);
  return gpuGetLastError();
}

}  // namespace ffspec::gpu
