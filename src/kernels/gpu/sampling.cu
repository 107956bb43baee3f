// Argmax and sampling, one block per row (see sampling.cuh for how the kept set is found).
#include "kernels/gpu/sampling.cuh"

namespace ffspec::gpu {

namespace {

template <typename T>
__global__ void __launch_bounds__(kSampleThreads) argmax_kernel(const T *logits, int64_t ld, int vocab, int32_t *out) {
  __shared__ float fs[32];
  __shared__ int is[32];
  const int best = block_argmax(logits + blockIdx.x * ld, vocab, fs, is);
  if (threadIdx.x == 0) out[blockIdx.x] = best;
}

// Draw over the whole row in id order, like the CPU's draw_from: the first token whose
// running mass exceeds u * Z (rounding leaves none: the last token with mass). "Exceeds" is
// tested on each token's own end (before + w), never "before <= target" as well: the fp32
// scan's `before` of one token need not equal the rounded end of the one ahead of it, and a
// target in such a gap would match no token and fall through to the last one.
template <typename T>
__device__ int draw_untruncated(const T *row, int vocab, float inv_t, double u, float mx, PlanSmem &s) {
  float part = 0.0f;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) part += expf((to_f32(row[i]) - mx) * inv_t);
  const float target = static_cast<float>(u * block_sum(part, s.fscratch));
  if (threadIdx.x == 0) s.found = -1;
  float running = 0.0f;
  int last = -1;
  for (int base = 0; base < vocab; base += blockDim.x) {
    const int i = base + threadIdx.x;
    const float w = i < vocab ? expf((to_f32(row[i]) - mx) * inv_t) : 0.0f;
    float tot;
    const float before = running + block_excl_scan(w, s.fscratch, &tot);
    if (w > 0.0f && target < before + w) atomicMin(reinterpret_cast<unsigned *>(&s.found), i);
    if (w > 0.0f) last = i;
    running += tot;
    __syncthreads();
    if (s.found >= 0) return s.found;
  }
  // Nothing crossed (rounding): the last token with mass, as draw_from returns.
  __syncthreads();
  if (threadIdx.x == 0) s.found = -1;
  __syncthreads();
  atomicMax(&s.found, last);
  __syncthreads();
  return max(s.found, 0);
}

template <typename T>
__global__ void __launch_bounds__(kSampleThreads)
    sample_kernel(const T *logits, int64_t ld, int vocab, const SampleParams *params, int32_t *out) {
  FFS_DYNAMIC_SMEM(smem);
  PlanSmem &s = *reinterpret_cast<PlanSmem *>(smem);
  const T *row = logits + blockIdx.x * ld;
  const SampleParams sp = params[blockIdx.x];
  // Greedy: the argmax. Sampling: nothing to draw from a row with NaN or +inf (-1 then).
  int tok = block_argmax(row, vocab, s.fscratch, s.iscratch);
  if (sp.do_sample && tok >= 0) {
    const float inv_t = inv_temperature(sp);
    const double u = uniform01(sp.seed, sp.counter);
    if (untruncated(sp, vocab)) {
      tok = draw_untruncated(row, vocab, inv_t, u, to_f32(row[tok]), s);
    } else {
      // Truncated: draw over the kept candidates in sorted order (same distribution as the
      // CPU's id-order draw; the token for one u may differ).
      plan_truncated(row, vocab, sp, inv_t, s);
      const int n = s.n_keep;
      const float target = static_cast<float>(u * s.cum[n - 1]);
      if (threadIdx.x == 0) s.found = n - 1;
      __syncthreads();
      for (int j = threadIdx.x; j < n; j += blockDim.x)
        if (s.cum[j] > target && (j == 0 || s.cum[j - 1] <= target)) atomicMin(&s.found, j);
      __syncthreads();
      tok = cand_id(s.cand[s.found]);
    }
  }
  if (threadIdx.x == 0) out[blockIdx.x] = tok;
}

}  // namespace

gpuError_t argmax_rows(const void *logits, int64_t ld, int R, int vocab, int32_t *out, DType dt, gpuStream_t stream) {
  if (R <= 0) return gpuSuccess;
  if (vocab <= 0) return gpuErrorInvalidValue;
  FFS_DISPATCH_DTYPE(dt, FFS_LAUNCH(argmax_kernel<T>, R, kSampleThreads, 0, stream, static_cast<const T *>(logits), ld,
                                    vocab, out));
  return gpuGetLastError();
}

gpuError_t sample_rows(const void *logits, int64_t ld, int R, int vocab, const SampleParams *params, int32_t *out,
                       DType dt, gpuStream_t stream) {
  if (R <= 0) return gpuSuccess;
  if (vocab <= 0) return gpuErrorInvalidValue;
  const int bytes = static_cast<int>(sizeof(PlanSmem));
  FFS_DISPATCH_DTYPE(dt, {
    gpuError_t e = gpuFuncSetAttribute(reinterpret_cast<const void *>(&sample_kernel<T>),
                                       gpuFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e != gpuSuccess) return e;
    FFS_LAUNCH(sample_kernel<T>, R, kSampleThreads, bytes, stream, static_cast<const T *>(logits), ld, vocab, params,
               out);
  });
  return gpuGetLastError();
}

}  // namespace ffspec::gpu
