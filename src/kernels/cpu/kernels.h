// CPU kernels. Row-major fp32; shapes in comments. BLAS does the matrix products,
// OpenMP threads the rest. This backend is the reference the GPU backends are tested against.
#pragma once
#include <cstddef>
#include <cstdint>

namespace ffspec::cpu {

// out[T, N] = x[T, K] · w[N, K]^T (+ bias[N])
void linear(const float *x, const float *w, const float *bias, float *out, int T, int N, int K);
// out[T, H] = x * rsqrt(mean(x^2) + eps) * w, as transformers' LlamaRMSNorm computes it
void rms_norm(const float *x, const float *w, float eps, float *out, int T, int H);
// Rotate the first n_heads heads of each row in place (non-interleaved halves).
// x[T, row_stride], heads of head_dim starting at column 0; inv_freq[head_dim/2].
void rope(float *x, int T, int row_stride, int n_heads, int head_dim, const int32_t *positions,
          const float *inv_freq);
// out[T, I] = silu(gu[:, :I]) * gu[:, I:]   (gu [T, 2I])
void silu_mul(const float *gu, float *out, int T, int I);
void add_inplace(float *x, const float *y, size_t n);

// Attention of each token against its own slot's cache: positions [0, prefix_len[t]) plus,
// for tree tokens, tree_base[t] + j for each set bit j of tree_mask[t] (its ancestors and
// itself). q[T, q_stride] (heads first), cache_k/v: [slots, max_seq, kv_dim],
// out[T, n_heads*head_dim]. tree_mask == nullptr: no tree tokens.
struct AttentionArgs {
  const float *q;
  int q_stride;
  const float *cache_k, *cache_v;
  int max_seq;
  int n_heads, n_kv_heads, head_dim;
  const int32_t *prefix_len, *slots;
  const int32_t *tree_base;
  const uint64_t *tree_mask;
  int T;
  float *out;
};
void attention(const AttentionArgs &a);

}  // namespace ffspec::cpu
