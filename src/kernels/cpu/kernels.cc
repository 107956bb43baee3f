#include "kernels/cpu/kernels.h"

#include <immintrin.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/cblas_compat.h"

namespace ffspec::cpu {

namespace {

// out[M, N] = x[M, K] · w[N, K]^T for M <= 8: each weight row is streamed once for all M
// inputs. OpenBLAS's sgemm repacks the whole weight matrix on every call at small M and
// runs 2-3x slower than this for M = 2..4 (benchmarks/README: measured on the CI machine);
// from M = 8 on, sgemm wins and is used.
__attribute__((target("avx2,fma"))) void linear_small_m_avx2(const float *x, const float *w, float *out, int M, int N,
                                                             int K) {
  const int K8 = K & ~7;
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const float *wr = w + static_cast<size_t>(n) * K;
    __m256 acc[8];
    for (int m = 0; m < 8; m++) acc[m] = _mm256_setzero_ps();
    for (int k = 0; k < K8; k += 8) {
      const __m256 wv = _mm256_loadu_ps(wr + k);
      for (int m = 0; m < M; m++)
        acc[m] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + static_cast<size_t>(m) * K + k), acc[m]);
    }
    for (int m = 0; m < M; m++) {
      __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[m]), _mm256_extractf128_ps(acc[m], 1));
      s = _mm_add_ps(s, _mm_movehl_ps(s, s));
      s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
      float r = _mm_cvtss_f32(s);
      for (int k = K8; k < K; k++) r += wr[k] * x[static_cast<size_t>(m) * K + k];
      out[static_cast<size_t>(m) * N + n] = r;
    }
  }
}

bool has_avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}

}  // namespace

void linear(const float *x, const float *w, const float *bias, float *out, int T, int N, int K) {
  if (T == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.0f, w, K, x, 1, 0.0f, out, 1);
  } else if (T <= 4 && has_avx2_fma()) {
    linear_small_m_avx2(x, w, out, T, N, K);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0f, x, K, w, K, 0.0f, out, N);
  }
  if (bias) {
    for (int t = 0; t < T; t++)
      for (int n = 0; n < N; n++) out[static_cast<size_t>(t) * N + n] += bias[n];
  }
}

void rms_norm(const float *x, const float *w, float eps, float *out, int T, int H) {
#pragma omp parallel for if (T > 4)
  for (int t = 0; t < T; t++) {
    const float *xr = x + static_cast<size_t>(t) * H;
    float *o = out + static_cast<size_t>(t) * H;
    float ss = 0.0f;
    for (int i = 0; i < H; i++) ss += xr[i] * xr[i];
    const float r = 1.0f / std::sqrt(ss / static_cast<float>(H) + eps);
    for (int i = 0; i < H; i++) o[i] = w[i] * (xr[i] * r);
  }
}

void rope(float *x, int T, int row_stride, int n_heads, int head_dim, const int32_t *positions,
          const float *inv_freq) {
  const int half = head_dim / 2;
#pragma omp parallel for if (T > 4)
  for (int t = 0; t < T; t++) {
    std::vector<float> c(half), s(half);
    const float pos = static_cast<float>(positions[t]);
    for (int i = 0; i < half; i++) {
      const float f = pos * inv_freq[i];
      c[i] = std::cos(f);
      s[i] = std::sin(f);
    }
    for (int h = 0; h < n_heads; h++) {
      float *v = x + static_cast<size_t>(t) * row_stride + static_cast<size_t>(h) * head_dim;
      for (int i = 0; i < half; i++) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
      }
    }
  }
}

void silu_mul(const float *gu, float *out, int T, int I) {
#pragma omp parallel for if (T > 4)
  for (int t = 0; t < T; t++) {
    const float *g = gu + static_cast<size_t>(t) * 2 * I, *u = g + I;
    float *o = out + static_cast<size_t>(t) * I;
    for (int i = 0; i < I; i++) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }
}

void add_inplace(float *x, const float *y, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] += y[i];
}

void attention(const AttentionArgs &a) {
  const int group = a.n_heads / a.n_kv_heads;
  const int kv_dim = a.n_kv_heads * a.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(a.head_dim));
  const int work = a.T * a.n_heads;
#pragma omp parallel for schedule(dynamic, 1) if (work > 1)
  for (int w = 0; w < work; w++) {
    const int t = w / a.n_heads, h = w % a.n_heads, kvh = h / group;
    // Visible cache positions: the prefix, then the tree positions in the mask.
    thread_local std::vector<int32_t> pos;
    pos.clear();
    const int plen = a.prefix_len[t];
    const uint64_t mask = a.tree_mask ? a.tree_mask[t] : 0;
    for (uint64_t m = mask; m; m &= m - 1) pos.push_back(a.tree_base[t] + __builtin_ctzll(m));
    const int ntree = static_cast<int>(pos.size()), len = plen + ntree;
    const float *q = a.q + static_cast<size_t>(t) * a.q_stride + static_cast<size_t>(h) * a.head_dim;
    const size_t base = static_cast<size_t>(a.slots[t]) * a.max_seq * kv_dim + static_cast<size_t>(kvh) * a.head_dim;
    auto at = [&](int j) { return static_cast<size_t>(j < plen ? j : pos[j - plen]) * kv_dim; };
    thread_local std::vector<float> sc;
    sc.resize(len);
    float mx = -INFINITY;
    for (int j = 0; j < len; j++) {
      const float *k = a.cache_k + base + at(j);
      float d = 0.0f;
      for (int i = 0; i < a.head_dim; i++) d += q[i] * k[i];
      sc[j] = d * scale;
      mx = std::max(mx, sc[j]);
    }
    float sum = 0.0f;
    for (int j = 0; j < len; j++) sum += (sc[j] = std::exp(sc[j] - mx));
    const float inv = 1.0f / sum;
    float *o = a.out + static_cast<size_t>(t) * a.n_heads * a.head_dim + static_cast<size_t>(h) * a.head_dim;
    for (int i = 0; i < a.head_dim; i++) o[i] = 0.0f;
    for (int j = 0; j < len; j++) {
      const float p = sc[j] * inv;
      const float *v = a.cache_v + base + at(j);
      for (int i = 0; i < a.head_dim; i++) o[i] += p * v[i];
    }
  }
}

}  // namespace ffspec::cpu
