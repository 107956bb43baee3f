// Attention for prefill, incremental decoding and tree verification in one kernel, tiled like
// flash attention: scores live in shared memory one K/V tile at a time and the softmax is
// online (running max m and sum l per query row), so nothing of size [tokens x context]
// ever reaches global memory. fp32 arithmetic whatever the storage type.
//
// Work split (docs/gpu_kernels.md has a picture):
//   block = (a tile of BQ consecutive tokens, one KV head, a chunk of <= kRows query rows);
//   a query row = (token, one of the `group` query heads that share the KV head), so every
//   K/V tile loaded into shared memory serves all GQA/MQA heads of the tile's tokens.
//   Tokens of the tile are cut into segments that share a slot; each segment scans its
//   slot's cache positions [0, kv_end) in tiles of kBkv keys, where kv_end covers the
//   longest prefix and the highest tree position of its rows; each (row, key) pair is
//   masked by the CPU kernel's visibility rule (prefix, or a set bit of the tree mask).
//   Per K/V tile: a group of `keys` lanes per row computes the tile's scores (lane = key) and
//   updates m, l (a warp holds warp size / keys such groups: one on NVIDIA, two or four in a
//   64-lane AMD wavefront); then each thread owns one output column d for rows / (threads / D)
//   rows, in registers.
//   The tile sizes (rows per block, keys per tile) are the largest that fit the vendor's
//   shared memory per block: 32 x 32 everywhere on NVIDIA; on AMD (64 KiB of LDS) 16 x 16 for
//   head dim 256.
#include <algorithm>
#include <type_traits>

#include "kernels/gpu/dispatch.cuh"
#include "kernels/gpu/mma.cuh"

namespace ffspec::gpu {

namespace {

constexpr int kMinSplitKeys = 128;  // split-KV: no range shorter than this (of max_seq)
constexpr int kMaxSplits = 32;

// Shared memory of a block with R query rows and K keys per tile, head dim D: masks (u64),
// ints (row metadata, the tile's non-finite-V flags), then floats (q rows, the K tile padded,
// the V tile, the tile's probabilities, m/l/alpha).
constexpr size_t attn_smem_bytes(int D, int R, int K) {
  return R * sizeof(uint64_t) + (4 * R + K) * sizeof(int) +
         (size_t(R) * D + size_t(K) * (D + 1) + size_t(K) * D + size_t(R) * (K + 1) + 3 * size_t(R)) * sizeof(float);
}
constexpr bool attn_fits(int D, int R, int K) { return K <= FFS_WARP_SIZE && attn_smem_bytes(D, R, K) <= FFS_MAX_SMEM_BYTES; }

template <int D>
struct AttnShape {
  static constexpr int threads = D > 128 ? D : 128;
  // Query rows per block and keys per tile: 32 x 32 where it fits, else 16 x 32, else 16 x 16.
  static constexpr int rows = attn_fits(D, 32, 32) ? 32 : 16;
  static constexpr int keys = attn_fits(D, rows, 32) ? 32 : 16;
  static_assert(attn_fits(D, rows, keys), "attention tiles do not fit the vendor's shared memory");
  static constexpr int phases = threads / D;  // row groups in the PV step
  static_assert(threads % D == 0 && rows % phases == 0, "the PV step splits rows evenly over the threads");
  static constexpr int rows_per_thread = rows / phases;
  static constexpr int warps = threads / FFS_WARP_SIZE;
  static constexpr int rows_per_warp = FFS_WARP_SIZE / keys;  // key groups in a warp, one row each
  static constexpr size_t bytes = attn_smem_bytes(D, rows, keys);
};

int attn_rows(int head_dim) {
  switch (head_dim) {
    case 8: return AttnShape<8>::rows;
    case 16: return AttnShape<16>::rows;
    case 32: return AttnShape<32>::rows;
    case 64: return AttnShape<64>::rows;
    case 128: return AttnShape<128>::rows;
    default: return AttnShape<256>::rows;
  }
}

// A V element for a shared-memory tile: a NaN or inf becomes 0 and flags its key. The tile is
// shared by rows that see the key and rows that do not (masked: probability 0), and 0 * NaN is
// NaN: the rows that do not see it must not turn NaN (the CPU skips masked keys), while the
// rows that do must (the CPU's output is non-finite there, and the request fails saying so):
// their score for a flagged key is NaN, which makes their l, and so their output, NaN.
__device__ __forceinline__ float finite_or_flag(float v, int *flag) {
  if (fabsf(v) < INFINITY) return v;
  *flag = 1;
  return 0.0f;
}

__device__ __forceinline__ bool visible(int p, int plen, int base, uint64_t mask) {
  if (p < plen) return true;
  const int j = p - base;
  return mask != 0 && j >= 0 && j < 64 && ((mask >> j) & 1ull);
}

// Element d of output row `row` (of rows_total = T * n_heads): normalized into out, or, when
// the keys are split, the split's partial [split][rows_total][D + 2] (o unnormalized, then m
// and l of the split's keys) for the combine kernel.
template <typename T, int D>
__device__ __forceinline__ void store_output(T *__restrict__ out, float *__restrict__ partial, int kv_splits,
                                             int split, size_t rows_total, size_t row, int d, float o, float m,
                                             float l) {
  if (kv_splits == 1) {
    // l == 0: no visible key (zeros, as the CPU); a NaN l (a NaN score or value) stays NaN,
    // as on the CPU, so the request fails naming it instead of running on with zeros.
    out[row * D + d] = from_f32<T>(l != 0.0f ? o / l : 0.0f);
    return;
  }
  float *dst = partial + (static_cast<size_t>(split) * rows_total + row) * (D + 2);
  dst[d] = o;
  if (d == 0) {
    dst[D] = m;
    dst[D + 1] = l;
  }
}

// A block's query rows (tiled and tensor-core kernels): row r < nrows is (token t0 + (row0 + r)
// / group, query head kvh * group + (row0 + r) % group); its token -1 past the last token.
// Threads 0..rows-1 fill them; the caller synchronizes.
struct RowMeta {
  uint64_t *mask;
  int *tok, *head, *plen, *base;
};
__device__ __forceinline__ void fill_row_meta(const RowMeta &s, int rows, int row0, int nrows, int group, int kvh,
                                              int t0, int t1, const int32_t *__restrict__ prefix_len,
                                              const int32_t *__restrict__ tree_base,
                                              const uint64_t *__restrict__ tree_mask) {
  const int tid = threadIdx.x;
  if (tid >= rows) return;
  const int rg = row0 + tid, t = t0 + rg / group;
  const bool ok = tid < nrows && t < t1;
  s.tok[tid] = ok ? t : -1;
  s.head[tid] = kvh * group + rg % group;
  s.plen[tid] = ok ? prefix_len[t] : 0;
  s.base[tid] = ok && tree_base ? tree_base[t] : 0;
  s.mask[tid] = ok && tree_mask ? tree_mask[t] : 0;
}

// The segment starting at token seg (consecutive tokens of one slot) and the keys this block
// scans for it: [0, kv_end) over the rows of the segment (longest prefix, highest tree
// position), or split `split`'s share of it in whole tiles of `tile` keys.
struct Segment {
  int end, slot, p_begin, p_end;
};
__device__ __forceinline__ Segment segment_keys(int seg, int t1, const int32_t *__restrict__ slots, const RowMeta &s,
                                                int rows, int max_seq, int kv_splits, int split, int tile) {
  Segment g;
  g.slot = slots[seg];
  g.end = seg + 1;
  while (g.end < t1 && slots[g.end] == g.slot) g.end++;
  int kv_end = 0;
  for (int r = 0; r < rows; r++) {
    const int t = s.tok[r];
    if (t < seg || t >= g.end) continue;
    kv_end = max(kv_end, s.plen[r]);
    if (s.mask[r]) kv_end = max(kv_end, s.base[r] + 64 - __clzll(static_cast<long long>(s.mask[r])));
  }
  kv_end = min(kv_end, max_seq);
  g.p_begin = 0;
  g.p_end = kv_end;
  if (kv_splits > 1) {
    const int span = (kv_end + kv_splits * tile - 1) / (kv_splits * tile) * tile;
    g.p_begin = min(kv_end, split * span);
    g.p_end = min(kv_end, g.p_begin + span);
  }
  return g;
}

template <typename T, int D>
__global__ void __launch_bounds__(AttnShape<D>::threads)
    attention_kernel(const T *__restrict__ q, int q_stride, const T *__restrict__ cache_k,
                     const T *__restrict__ cache_v, int max_seq, int n_kv_heads, int group,
                     const int32_t *__restrict__ prefix_len, const int32_t *__restrict__ slots,
                     const int32_t *__restrict__ tree_base, const uint64_t *__restrict__ tree_mask, int T_, int bq,
                     T *__restrict__ out, float scale, int row_chunks, int kv_splits, float *__restrict__ partial) {
  using S = AttnShape<D>;
  constexpr int kRows = S::rows, kBkv = S::keys;
  FFS_DYNAMIC_SMEM(smem);
  uint64_t *s_mask = reinterpret_cast<uint64_t *>(smem);
  int *s_tok = reinterpret_cast<int *>(s_mask + kRows);
  int *s_head = s_tok + kRows, *s_plen = s_head + kRows, *s_base = s_plen + kRows;
  int *s_badv = s_base + kRows;                             // [kBkv]: the key's V holds NaN / inf
  float *s_q = reinterpret_cast<float *>(s_badv + kBkv);   // [kRows][D], pre-scaled
  float *s_k = s_q + kRows * D;                             // [kBkv][D + 1] (padded: no bank conflicts)
  float *s_v = s_k + kBkv * (D + 1);                        // [kBkv][D]
  float *s_p = s_v + kBkv * D;                              // [kRows][kBkv + 1] probabilities of the tile
  float *s_m = s_p + kRows * (kBkv + 1), *s_l = s_m + kRows, *s_alpha = s_l + kRows;

  const int tid = threadIdx.x, lane = tid % FFS_WARP_SIZE, warp = tid / FFS_WARP_SIZE;
  const int kvh = blockIdx.y;
  const int t0 = blockIdx.x * bq, t1 = min(T_, t0 + bq);
  const int row0 = (blockIdx.z % row_chunks) * kRows;
  const int split = blockIdx.z / row_chunks;
  const int nrows = min(kRows, bq * group - row0);  // rows of this block (some may be past T)
  const int kv_dim = n_kv_heads * D;

  const RowMeta meta{s_mask, s_tok, s_head, s_plen, s_base};
  fill_row_meta(meta, kRows, row0, nrows, group, kvh, t0, t1, prefix_len, tree_base, tree_mask);
  if (tid < kRows) {
    s_m[tid] = -INFINITY;
    s_l[tid] = 0.0f;
  }
  if (tid < kBkv) s_badv[tid] = 0;
  __syncthreads();
  for (int idx = tid; idx < kRows * D; idx += S::threads) {
    const int r = idx / D, i = idx % D, t = s_tok[r];
    s_q[idx] = t >= 0 ? to_f32(q[static_cast<size_t>(t) * q_stride + static_cast<size_t>(s_head[r]) * D + i]) * scale
                      : 0.0f;
  }

  float o[S::rows_per_thread];
#pragma unroll
  for (int k = 0; k < S::rows_per_thread; k++) o[k] = 0.0f;
  const int d = tid % D, phase = tid / D;

  for (int seg = t0; seg < t1;) {
    // Segment [seg, seg_end): consecutive tokens of one slot; this block's keys for it.
    const Segment sg = segment_keys(seg, t1, slots, meta, kRows, max_seq, kv_splits, split, kBkv);
    const int seg_end = sg.end, p_begin = sg.p_begin, p_end = sg.p_end;
    const size_t cache_off = static_cast<size_t>(sg.slot) * max_seq * kv_dim + static_cast<size_t>(kvh) * D;

    for (int p0 = p_begin; p0 < p_end; p0 += kBkv) {
      __syncthreads();  // the previous tile's s_k / s_v / s_p are consumed
      for (int idx = tid; idx < kBkv * D; idx += S::threads) {
        const int j = idx / D, i = idx % D, p = p0 + j;
        const bool in = p < p_end;
        const size_t at = cache_off + static_cast<size_t>(in ? p : 0) * kv_dim + i;
        s_k[j * (D + 1) + i] = in ? to_f32(cache_k[at]) : 0.0f;
        s_v[j * D + i] = in ? finite_or_flag(to_f32(cache_v[at]), s_badv + j) : 0.0f;
      }
      __syncthreads();
      // Scores and the online-softmax update: a group of kBkv lanes per row, one key per lane.
      // The loop bound is the same for the whole warp (its shuffles need every lane); a group
      // past the last row computes nothing and stores nothing.
      for (int rw = warp * S::rows_per_warp; rw < nrows; rw += S::warps * S::rows_per_warp) {
        const int r = rw + lane / kBkv, key = lane % kBkv;
        const bool row_ok = r < nrows;
        const int t = row_ok ? s_tok[r] : -1;
        const int p = p0 + key;
        float s = -INFINITY;
        if (row_ok && t >= seg && t < seg_end && p < p_end && visible(p, s_plen[r], s_base[r], s_mask[r])) {
          const float *qr = s_q + r * D, *kr = s_k + key * (D + 1);
          float acc = 0.0f;
#pragma unroll 8
          for (int i = 0; i < D; i++) acc += qr[i] * kr[i];
          s = s_badv[key] ? NAN : acc;  // a non-finite V this row sees makes the row NaN (see finite_or_flag)
        }
        const float m_old = row_ok ? s_m[r] : -INFINITY;
        const float m_new = fmaxf(m_old, warp_max<kBkv>(s));
        // s == -inf (masked): 0, also when every score so far is -inf; a NaN s (a NaN key, or a
        // flagged value) gives a NaN pj even then, so l turns NaN (a poisoned row, see merge).
        const float pj = s == -INFINITY ? 0.0f : expf(s - m_new);
        const float alpha = m_new == -INFINITY ? 1.0f : expf(m_old - m_new);
        const float psum = warp_sum<kBkv>(pj);
        FFS_SYNCWARP();  // every lane of the group has read s_m[r] before key 0 writes it
        if (row_ok) {
          s_p[r * (kBkv + 1) + key] = pj;
          if (key == 0) {
            s_m[r] = m_new;
            s_l[r] = s_l[r] * alpha + psum;
            s_alpha[r] = alpha;
          }
        }
      }
      __syncthreads();
      if (tid < kBkv) s_badv[tid] = 0;  // read above only; the next tile's loads come after a barrier
      // o[r][d] = o[r][d] * alpha[r] + sum_j p[r][j] * v[j][d]
#pragma unroll
      for (int k = 0; k < S::rows_per_thread; k++) {
        const int r = phase + S::phases * k;
        if (r < nrows) {
          const float *pr = s_p + r * (kBkv + 1);
          float acc = o[k] * s_alpha[r];
#pragma unroll 8
          for (int j = 0; j < kBkv; j++) acc += pr[j] * s_v[j * D + d];
          o[k] = acc;
        }
      }
    }
    seg = seg_end;
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < S::rows_per_thread; k++) {
    const int r = phase + S::phases * k;
    if (r < nrows && s_tok[r] >= 0) {
      const int n_heads = n_kv_heads * group;
      const size_t row = static_cast<size_t>(s_tok[r]) * n_heads + s_head[r];
      store_output<T, D>(out, partial, kv_splits, split, static_cast<size_t>(T_) * n_heads, row, d, o[k], s_m[r],
                         s_l[r]);
    }
  }
}

// n partial results of one output row, each (o[0..D) unnormalized, m, l) at p + i * stride:
// M = max m_i, L = sum l_i e^(m_i - M), acc = sum o_i[d] e^(m_i - M). A part with m = -inf saw
// no visible key and adds nothing. A part with a NaN l saw a NaN score or value (its m may
// still be -inf): the row is poisoned, and comes out NaN (then so do its logits, and the
// request fails saying so, as on the CPU).
struct Merged {
  float M, L, acc;
};
template <int D>
__device__ __forceinline__ Merged merge_partials(const float *p, size_t stride, int n, int d) {
  Merged r{-INFINITY, 0.0f, 0.0f};
  bool poisoned = false;
  for (int i = 0; i < n; i++) {
    r.M = fmaxf(r.M, p[i * stride + D]);
    poisoned |= isnan(p[i * stride + D + 1]);
  }
  if (poisoned) return {INFINITY, NAN, NAN};
  if (r.M == -INFINITY) return r;
  for (int i = 0; i < n; i++) {
    const float *e = p + i * stride;
    if (e[D] == -INFINITY) continue;
    const float w = expf(e[D] - r.M);
    r.L += e[D + 1] * w;
    r.acc += e[d] * w;
  }
  return r;
}

// Merges the splits of one output row: o = sum_s o_s e^(m_s - M) / sum_s l_s e^(m_s - M).
template <typename T, int D>
__global__ void attention_combine_kernel(const float *__restrict__ partial, int splits, size_t rows,
                                         T *__restrict__ out) {
  const size_t row = blockIdx.x;
  const int d = threadIdx.x;
  const Merged m = merge_partials<D>(partial + row * (D + 2), rows * (D + 2), splits, d);
  store_output<T, D>(out, nullptr, 1, 0, rows, row, d, m.acc, m.M, m.L);
}

// Decoding: one block per (token, KV head, split) for a batch with no tree tokens whose tokens
// do not share slots (tokens_per_slot_hint 1), so there is no K/V tile for several tokens to
// share and the tiled kernel's shared-memory staging only adds barriers. Each warp takes every
// kWarps-th key of the block's range, kUnroll keys' K and V rows loaded before any is used
// (loads in flight); a lane holds D / warp-size consecutive elements of the q rows, of each
// K/V row (coalesced: a warp reads a whole row) and of its output rows, in registers. Per key:
// the group's scores by warp reductions, then the online-softmax update of every row. The
// warps' (m, l, o) merge through shared memory at the end; the result is written like the
// tiled kernel's (normalized, or the split's partial for the combine kernel).
constexpr int kDecodeWarps = 4, kDecodeUnroll = 4, kDecodeMaxGroup = 8;

template <typename T, int D, int G>
__global__ void __launch_bounds__(kDecodeWarps *FFS_WARP_SIZE)
    attention_decode_kernel(const T *__restrict__ q, int q_stride, const T *__restrict__ cache_k,
                            const T *__restrict__ cache_v, int max_seq, int n_kv_heads, int group,
                            const int32_t *__restrict__ prefix_len, const int32_t *__restrict__ slots, int T_,
                            T *__restrict__ out, float scale, int kv_splits, float *__restrict__ partial) {
  constexpr int E = D / FFS_WARP_SIZE;
  static_assert(E >= 1 && D % FFS_WARP_SIZE == 0, "a lane holds whole elements of a row");
  FFS_DYNAMIC_SMEM(smem);
  float *s_red = reinterpret_cast<float *>(smem);  // [kDecodeWarps][G][D + 2]: o, then m and l
  const int lane = threadIdx.x % FFS_WARP_SIZE, warp = threadIdx.x / FFS_WARP_SIZE;
  const int t = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int kv_dim = n_kv_heads * D, n_heads = n_kv_heads * group;
  const int kv_end = min(prefix_len[t], max_seq);
  const int span = (kv_end + kv_splits - 1) / kv_splits;
  const int p_begin = min(kv_end, split * span), p_end = min(kv_end, p_begin + span);
  const size_t cache_off = static_cast<size_t>(slots[t]) * max_seq * kv_dim + static_cast<size_t>(kvh) * D + lane * E;

  float qr[G][E], o[G][E], m[G], l[G];
#pragma unroll
  for (int g = 0; g < G; g++) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < E; e++) o[g][e] = 0.0f;
    if (g < group) {
      load_f32<T, E>(q + static_cast<size_t>(t) * q_stride + static_cast<size_t>(kvh * group + g) * D + lane * E,
                     qr[g]);
#pragma unroll
      for (int e = 0; e < E; e++) qr[g][e] *= scale;
    }
  }
  // The loop bound is the same for the whole warp, so every lane reaches every shuffle.
  for (int p0 = p_begin + warp * kDecodeUnroll; p0 < p_end; p0 += kDecodeWarps * kDecodeUnroll) {
    float k[kDecodeUnroll][E], v[kDecodeUnroll][E];
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; u++) {
      const size_t at = cache_off + static_cast<size_t>(min(p0 + u, p_end - 1)) * kv_dim;
      load_f32<T, E>(cache_k + at, k[u]);
      load_f32<T, E>(cache_v + at, v[u]);
    }
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; u++) {
#pragma unroll
      for (int g = 0; g < G; g++) {
        if (p0 + u < p_end && g < group) {  // uniform over the warp
          float acc = 0.0f;
#pragma unroll
          for (int e = 0; e < E; e++) acc += qr[g][e] * k[u][e];
          const float sc = warp_sum(acc);
          const float m_new = fmaxf(m[g], sc);
          const float alpha = expf(m[g] - m_new), pj = expf(sc - m_new);  // m[g] = -inf: alpha 0
          l[g] = l[g] * alpha + pj;
#pragma unroll
          for (int e = 0; e < E; e++) o[g][e] = o[g][e] * alpha + pj * v[u][e];
          m[g] = m_new;
        }
      }
    }
  }
  // Merge the warps: each row's (m, l, o) of every warp, rescaled to the common max.
#pragma unroll
  for (int g = 0; g < G; g++) {
    if (g < group) {
      float *r = s_red + (warp * G + g) * (D + 2);
#pragma unroll
      for (int e = 0; e < E; e++) r[lane * E + e] = o[g][e];
      if (lane == 0) {
        r[D] = m[g];
        r[D + 1] = l[g];
      }
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < group * D; idx += blockDim.x) {
    const int g = idx / D, d = idx % D;
    const Merged mg = merge_partials<D>(s_red + g * (D + 2), static_cast<size_t>(G) * (D + 2), kDecodeWarps, d);
    const size_t row = static_cast<size_t>(t) * n_heads + kvh * group + g;
    store_output<T, D>(out, partial, kv_splits, split, static_cast<size_t>(T_) * n_heads, row, d, mg.acc, mg.M, mg.L);
  }
}

// Whether the decode kernel takes this step (see above); FFS_ATTENTION_DECODE=0 in the engine
// (AttentionArgs::decode_kernel) keeps every step on the tiled kernel.
template <typename T>
bool use_decode_kernel(const AttentionArgs &a) {
  const int group = a.n_heads / a.n_kv_heads;
  const size_t row_bytes = static_cast<size_t>(a.head_dim / FFS_WARP_SIZE) * sizeof(T);
  const auto aligned = [&](const void *p, size_t stride_elems) {
    return reinterpret_cast<uintptr_t>(p) % (row_bytes < 16 ? row_bytes : 16) == 0 &&
           stride_elems * sizeof(T) % (row_bytes < 16 ? row_bytes : 16) == 0;
  };
  return a.decode_kernel && !a.tree_mask && a.tokens_per_slot_hint <= 1 && group <= kDecodeMaxGroup &&
         a.head_dim >= FFS_WARP_SIZE && row_bytes > 0 && aligned(a.cache_k, static_cast<size_t>(a.n_kv_heads) * a.head_dim) &&
         aligned(a.cache_v, 0) && aligned(a.q, static_cast<size_t>(a.q_stride));
}

template <typename T, int D, int G>
gpuError_t launch_decode(const AttentionArgs &a, int splits, gpuStream_t stream) {
  const int group = a.n_heads / a.n_kv_heads;
  const dim3 grid(a.T, a.n_kv_heads, splits);
  const size_t smem = static_cast<size_t>(kDecodeWarps) * G * (D + 2) * sizeof(float);
  FFS_LAUNCH((attention_decode_kernel<T, D, G>), grid, kDecodeWarps * FFS_WARP_SIZE, smem, stream,
             static_cast<const T *>(a.q), a.q_stride, static_cast<const T *>(a.cache_k),
             static_cast<const T *>(a.cache_v), a.max_seq, a.n_kv_heads, group, a.prefix_len, a.slots, a.T,
             static_cast<T *>(a.out), 1.0f / sqrtf(static_cast<float>(D)), splits, a.partial);
  return gpuGetLastError();
}

template <typename T, int D>
gpuError_t launch_decode(const AttentionArgs &a, int splits, gpuStream_t stream) {
  const int group = a.n_heads / a.n_kv_heads;
  if (group <= 1) return launch_decode<T, D, 1>(a, splits, stream);
  if (group <= 2) return launch_decode<T, D, 2>(a, splits, stream);
  if (group <= 4) return launch_decode<T, D, 4>(a, splits, stream);
  return launch_decode<T, D, 8>(a, splits, stream);
}

// Tensor cores (fp16/bf16, CUDA): the tiled kernel's work split with 64 query rows per block
// (16 per warp) and 64 keys per tile, S = Q . K^T and O += P . V as 16 x 16 x 16 mma tiles
// (mma.cuh) through shared memory. Per tile: K and V rows land in shared memory (16-byte
// loads); each warp computes its 16 rows' scores S (fp32); two threads per row apply the
// scale and the visibility rule, update m and l, write P rounded to the element type (l sums
// the rounded P, so O and l agree) and rescale their row of O by alpha; each warp then adds
// P . V to its rows of O (fp32, in shared memory). For prefill chunks and verify trees, where a
// K/V tile serves many rows: the tiled kernel does those 64 x 64 x d products on CUDA cores.
constexpr int kMmaRows = 64, kMmaKeys = 64;
static_assert(kMmaKeys == kMmaRows, "the K and V tiles are sized by kMmaRows");
[[maybe_unused]] constexpr int kMmaThreads = 128;  // unused where there is no mma16 (HIP)

template <int D>
struct MmaShape {
  static constexpr int ldt = D + 8;         // rows of Q, K, V (elements): 16-byte pad, no bank conflicts
  static constexpr int lds = kMmaKeys + 4;  // S (fp32)
  static constexpr int ldp = kMmaKeys + 8;  // P (elements)
  static constexpr int ldo = D + 4;         // O (fp32)
  __host__ __device__ static constexpr size_t al(size_t b) { return (b + 127) / 128 * 128; }
  // RowMeta, then the tile's non-finite-V flags
  static constexpr size_t meta = al(kMmaRows * (4 * sizeof(int) + sizeof(uint64_t)) + kMmaKeys * sizeof(int));
  static constexpr size_t bytes(size_t es) {
    return meta + 3 * al(kMmaRows * ldt * es) + al(kMmaRows * lds * sizeof(float)) + al(kMmaRows * ldp * es) +
           al(kMmaRows * ldo * sizeof(float));
  }
};

#ifdef FFS_HAVE_MMA16
template <typename T, int D>
__global__ void __launch_bounds__(kMmaThreads)
    attention_mma_kernel(const T *__restrict__ q, int q_stride, const T *__restrict__ cache_k,
                         const T *__restrict__ cache_v, int max_seq, int n_kv_heads, int group,
                         const int32_t *__restrict__ prefix_len, const int32_t *__restrict__ slots,
                         const int32_t *__restrict__ tree_base, const uint64_t *__restrict__ tree_mask, int T_,
                         int bq, T *__restrict__ out, float scale, int row_chunks, int kv_splits,
                         float *__restrict__ partial) {
  static_assert(kMmaThreads / FFS_WARP_SIZE * 16 == kMmaRows, "a warp owns 16 query rows");
  using S = MmaShape<D>;
  constexpr int LDT = S::ldt, LDS = S::lds, LDP = S::ldp, LDO = S::ldo, kRows = kMmaRows, kKeys = kMmaKeys;
#if defined(FFS_GPU_EMU)
  FFS_DYNAMIC_SMEM(smem);
#else
  extern __shared__ __align__(128) unsigned char ffs_mma_smem[];  // wmma: 32-byte aligned tiles
  unsigned char *const smem = ffs_mma_smem;
#endif
  uint64_t *s_mask = reinterpret_cast<uint64_t *>(smem);
  int *s_tok = reinterpret_cast<int *>(s_mask + kRows);
  int *s_head = s_tok + kRows, *s_plen = s_head + kRows, *s_base = s_plen + kRows;
  int *s_badv = s_base + kRows;  // [kKeys]: the key's V holds NaN / inf (finite_or_flag)
  T *s_q = reinterpret_cast<T *>(smem + S::meta);
  T *s_k = s_q + S::al(kRows * LDT * sizeof(T)) / sizeof(T);
  T *s_v = s_k + S::al(kRows * LDT * sizeof(T)) / sizeof(T);
  float *s_s = reinterpret_cast<float *>(s_v + S::al(kRows * LDT * sizeof(T)) / sizeof(T));
  T *s_p = reinterpret_cast<T *>(s_s + S::al(kRows * LDS * sizeof(float)) / sizeof(float));
  float *s_o = reinterpret_cast<float *>(s_p + S::al(kRows * LDP * sizeof(T)) / sizeof(T));

  const int tid = threadIdx.x, warp = tid / FFS_WARP_SIZE;
  const int kvh = blockIdx.y;
  const int t0 = blockIdx.x * bq, t1 = min(T_, t0 + bq);
  const int row0 = (blockIdx.z % row_chunks) * kRows;
  const int split = blockIdx.z / row_chunks;
  const int nrows = min(kRows, bq * group - row0);
  const int kv_dim = n_kv_heads * D;
  constexpr int kChunk = 16 / static_cast<int>(sizeof(T)), kChunksPerRow = D / kChunk;  // 16-byte pieces

  const RowMeta meta{s_mask, s_tok, s_head, s_plen, s_base};
  fill_row_meta(meta, kRows, row0, nrows, group, kvh, t0, t1, prefix_len, tree_base, tree_mask);
  if (tid < kKeys) s_badv[tid] = 0;
  __syncthreads();
  for (int idx = tid; idx < kRows * D; idx += kMmaThreads) {
    const int r = idx / D, i = idx % D, t = s_tok[r];
    s_q[r * LDT + i] = t >= 0 ? q[static_cast<size_t>(t) * q_stride + static_cast<size_t>(s_head[r]) * D + i]
                              : from_f32<T>(0.0f);
    s_o[r * LDO + i] = 0.0f;
  }
  // Two threads per row in the softmax step: row r = tid / 2 keeps keys [32 side, 32 side + 32).
  // Both hold the row's running max m and sum l in registers: after the two shuffles they
  // compute the same values (a row is one token, so one segment).
  const int my_row = tid / 2, side = tid % 2;
  float row_m = -INFINITY, row_l = 0.0f;

  for (int seg = t0; seg < t1;) {
    const Segment sg = segment_keys(seg, t1, slots, meta, kRows, max_seq, kv_splits, split, kKeys);
    const int seg_end = sg.end, p_begin = sg.p_begin, p_end = sg.p_end;
    const size_t cache_off = static_cast<size_t>(sg.slot) * max_seq * kv_dim + static_cast<size_t>(kvh) * D;
    for (int p0 = p_begin; p0 < p_end; p0 += kKeys) {
      __syncthreads();  // the previous tile's K, V, S, P are consumed
#pragma unroll
      for (int c = tid; c < kKeys * kChunksPerRow; c += kMmaThreads) {
        const int j = c / kChunksPerRow, i = (c % kChunksPerRow) * kChunk, p = p0 + j;
        uint4 kk = {0, 0, 0, 0}, vv = {0, 0, 0, 0};
        if (p < p_end) {
          const size_t at = cache_off + static_cast<size_t>(p) * kv_dim + i;
          kk = *reinterpret_cast<const uint4 *>(cache_k + at);
          vv = *reinterpret_cast<const uint4 *>(cache_v + at);
          T *ve = reinterpret_cast<T *>(&vv);
#pragma unroll
          for (int e = 0; e < kChunk; e++) {
            const float x = to_f32(ve[e]);
            if (!(fabsf(x) < INFINITY)) ve[e] = from_f32<T>(finite_or_flag(x, s_badv + j));  // rare: re-store only then
          }
        }
        *reinterpret_cast<uint4 *>(s_k + j * LDT + i) = kk;
        *reinterpret_cast<uint4 *>(s_v + j * LDT + i) = vv;
      }
      __syncthreads();
      if (warp * 16 < nrows)  // S[16 x 64] of this warp's rows: Q . K^T
        for (int n = 0; n < kKeys / 16; n++)
          mma16<T, true>(s_s + warp * 16 * LDS + n * 16, LDS, s_q + warp * 16 * LDT, LDT, s_k + n * 16 * LDT, LDT,
                         D, false);
      __syncthreads();
      {
        const int r = my_row, t = s_tok[r];
        const bool row_ok = r < nrows && t >= seg && t < seg_end;
        float sc[kKeys / 2];
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < kKeys / 2; j++) {
          const int key = side * (kKeys / 2) + j, p = p0 + key;
          const bool vis = row_ok && p < p_end && visible(p, s_plen[r], s_base[r], s_mask[r]);
          sc[j] = vis ? (s_badv[key] ? NAN : s_s[r * LDS + key] * scale) : -INFINITY;
          mx = fmaxf(mx, sc[j]);
        }
        mx = fmaxf(mx, FFS_SHFL_XOR(mx, 1));
        const float m_old = row_m, m_new = fmaxf(m_old, mx);
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < kKeys / 2; j++) {
          const T pt = from_f32<T>(sc[j] == -INFINITY ? 0.0f : expf(sc[j] - m_new));  // NaN: as the tiled kernel
          s_p[r * LDP + side * (kKeys / 2) + j] = pt;
          sum += to_f32(pt);
        }
        sum += FFS_SHFL_XOR(sum, 1);
        const float alpha = m_new == -INFINITY ? 1.0f : expf(m_old - m_new);
        for (int d = side * (D / 2); d < (side + 1) * (D / 2); d++) s_o[r * LDO + d] *= alpha;
        row_m = m_new;
        row_l = row_l * alpha + sum;
      }
      __syncthreads();
      if (tid < kKeys) s_badv[tid] = 0;  // read above only; the next tile's loads come after a barrier
      if (warp * 16 < nrows)  // O[16 x D] += P[16 x 64] . V[64 x D]
        for (int n = 0; n < D / 16; n++)
          mma16<T, false>(s_o + warp * 16 * LDO + n * 16, LDO, s_p + warp * 16 * LDP, LDP, s_v + n * 16, LDT, kKeys,
                          true);
    }
    seg = seg_end;
  }
  __syncthreads();
  const int r = my_row;
  if (r < nrows && s_tok[r] >= 0) {
    const int n_heads = n_kv_heads * group;
    const size_t row = static_cast<size_t>(s_tok[r]) * n_heads + s_head[r];
    for (int d = side * (D / 2); d < (side + 1) * (D / 2); d++)
      store_output<T, D>(out, partial, kv_splits, split, static_cast<size_t>(T_) * n_heads, row, d, s_o[r * LDO + d],
                         row_m, row_l);
  }
}
#endif

// Whether the tensor-core kernel takes this step: fp16/bf16 on CUDA (and the emulator), head
// dim a multiple of 16, 16-byte aligned caches, not a decode batch, and at least half a
// block's rows from consecutive tokens of a slot (prefill chunks, verify trees).
bool use_mma_kernel(const AttentionArgs &a) {
#ifdef FFS_HAVE_MMA16
  if (!a.tensor_cores || a.dtype == DType::F32 || a.head_dim % 16 != 0 || a.head_dim < 16) return false;
  const size_t es = 2;
  if (reinterpret_cast<uintptr_t>(a.cache_k) % 16 || reinterpret_cast<uintptr_t>(a.cache_v) % 16 ||
      static_cast<size_t>(a.n_kv_heads) * a.head_dim * es % 16)
    return false;
  const int group = a.n_heads / a.n_kv_heads;
  const int bq = group >= kMmaRows ? 1 : max(1, min(a.tokens_per_slot_hint, kMmaRows / group));
  if (min(bq * group, kMmaRows) < kMmaRows / 2) return false;
  size_t bytes = 0;
  switch (a.head_dim) {
    case 16: bytes = MmaShape<16>::bytes(es); break;
    case 32: bytes = MmaShape<32>::bytes(es); break;
    case 64: bytes = MmaShape<64>::bytes(es); break;
    case 128: bytes = MmaShape<128>::bytes(es); break;
    case 256: bytes = MmaShape<256>::bytes(es); break;
    default: return false;
  }
  // What this device lets a block opt into (less than the build's FFS_MAX_SMEM_BYTES on GPUs
  // other than Hopper that run the PTX, e.g. 99 KiB on sm_120).
  static const int optin = [] {
    int dev = 0, n = 0;
    if (gpuGetDevice(&dev) != gpuSuccess ||
        gpuDeviceGetAttribute(&n, gpuDevAttrMaxSharedMemoryPerBlockOptin, dev) != gpuSuccess)
      n = 0;
    (void)gpuGetLastError();  // clear the error the failed query set
    return n > 0 ? n : FFS_MAX_SMEM_BYTES;
  }();
  return bytes <= static_cast<size_t>(std::min<int>(optin, FFS_MAX_SMEM_BYTES));
#else
  (void)a;
  return false;
#endif
}

// Blocks of the unsplit grid: (token tiles, KV heads, row chunks).
struct AttnGrid {
  int bq, row_chunks;
  long long blocks;
};
AttnGrid attn_grid(const AttentionArgs &a) {
  const int group = a.n_heads / a.n_kv_heads, rows = use_mma_kernel(a) ? kMmaRows : attn_rows(a.head_dim);
  int bq = 1;
  if (group < rows) bq = max(1, min(a.tokens_per_slot_hint, rows / group));
  const int chunks = static_cast<int>(ceil_div(static_cast<long long>(bq) * group, rows));
  return {bq, chunks, static_cast<long long>(ceil_div(a.T, bq)) * a.n_kv_heads * chunks};
}

template <typename T, int D>
gpuError_t launch_combine(const AttentionArgs &a, int splits, gpuStream_t stream) {
  const size_t rows = static_cast<size_t>(a.T) * a.n_heads;
  FFS_LAUNCH((attention_combine_kernel<T, D>), static_cast<unsigned>(rows), D, 0, stream, a.partial, splits, rows,
             static_cast<T *>(a.out));
  return gpuGetLastError();
}

template <typename T, int D>
gpuError_t launch_attention(const AttentionArgs &a, AttentionKernel kernel, gpuStream_t stream) {
  using S = AttnShape<D>;
  const int group = a.n_heads / a.n_kv_heads;
  const AttnGrid g = attn_grid(a);
  const int splits = a.partial ? max(1, a.kv_splits) : 1;
  gpuError_t e;
  if constexpr (D >= FFS_WARP_SIZE) {
    if (kernel == AttentionKernel::Decode) {
      if ((e = launch_decode<T, D>(a, splits, stream)) != gpuSuccess || splits == 1) return e;
      return launch_combine<T, D>(a, splits, stream);
    }
  }
  const dim3 grid(ceil_div(a.T, g.bq), a.n_kv_heads, g.row_chunks * splits);
#ifdef FFS_HAVE_MMA16
  if constexpr (!std::is_same<T, float>::value && D % 16 == 0) {
    if (kernel == AttentionKernel::TensorCores) {
      const size_t bytes = MmaShape<D>::bytes(sizeof(T));
      e = gpuFuncSetAttribute(reinterpret_cast<const void *>(&attention_mma_kernel<T, D>),
                              gpuFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
      if (e != gpuSuccess) return e;
      FFS_LAUNCH((attention_mma_kernel<T, D>), grid, kMmaThreads, bytes, stream, static_cast<const T *>(a.q),
                 a.q_stride, static_cast<const T *>(a.cache_k), static_cast<const T *>(a.cache_v), a.max_seq,
                 a.n_kv_heads, group, a.prefix_len, a.slots, a.tree_base, a.tree_mask, a.T, g.bq,
                 static_cast<T *>(a.out), 1.0f / sqrtf(static_cast<float>(D)), g.row_chunks, splits, a.partial);
      if ((e = gpuGetLastError()) != gpuSuccess || splits == 1) return e;
      return launch_combine<T, D>(a, splits, stream);
    }
  }
#endif
  e = gpuFuncSetAttribute(reinterpret_cast<const void *>(&attention_kernel<T, D>),
                                     gpuFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(S::bytes));
  if (e != gpuSuccess) return e;
  FFS_LAUNCH((attention_kernel<T, D>), grid, S::threads, S::bytes, stream, static_cast<const T *>(a.q), a.q_stride,
             static_cast<const T *>(a.cache_k), static_cast<const T *>(a.cache_v), a.max_seq, a.n_kv_heads, group,
             a.prefix_len, a.slots, a.tree_base, a.tree_mask, a.T, g.bq, static_cast<T *>(a.out),
             1.0f / sqrtf(static_cast<float>(D)), g.row_chunks, splits, a.partial);
  if ((e = gpuGetLastError()) != gpuSuccess || splits == 1) return e;
  return launch_combine<T, D>(a, splits, stream);
}

}  // namespace

int attention_auto_splits(const AttentionArgs &a) {
  if (a.T <= 0 || a.n_kv_heads <= 0 || a.n_heads % a.n_kv_heads != 0) return 1;
  static const int sms = [] {
    int dev = 0, n = 0;
    if (gpuGetDevice(&dev) != gpuSuccess || gpuDeviceGetAttribute(&n, gpuDevAttrMultiProcessorCount, dev) != gpuSuccess)
      n = 0;
    (void)gpuGetLastError();  // clear the error the failed query set
    return n > 0 ? n : 108;
  }();
  const long long blocks = attn_grid(a).blocks;
  if (blocks >= sms || a.max_seq < 2 * kMinSplitKeys) return 1;
  // About two blocks per multiprocessor, no range shorter than kMinSplitKeys of max_seq.
  const long long want = (2LL * sms + blocks - 1) / blocks;
  return static_cast<int>(std::max<long long>(1, std::min<long long>({want, a.max_seq / kMinSplitKeys, kMaxSplits})));
}

size_t attention_workspace_floats(const AttentionArgs &a) {
  return a.kv_splits > 1 ? static_cast<size_t>(a.kv_splits) * a.T * a.n_heads * (a.head_dim + 2) : 0;
}

bool attention_supports_head_dim(int head_dim) {
  return head_dim == 8 || head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128 || head_dim == 256;
}

AttentionKernel attention_kernel_for(const AttentionArgs &a) {
  if (a.T <= 0 || a.n_kv_heads <= 0 || a.n_heads % a.n_kv_heads != 0 || !attention_supports_head_dim(a.head_dim))
    return AttentionKernel::Tiled;
  bool decode = false;
  switch (a.dtype) {
    case DType::F32: decode = use_decode_kernel<float>(a); break;
    case DType::F16: decode = use_decode_kernel<gpu_half>(a); break;
    case DType::BF16: decode = use_decode_kernel<gpu_bf16>(a); break;
  }
  if (decode) return AttentionKernel::Decode;
  return use_mma_kernel(a) ? AttentionKernel::TensorCores : AttentionKernel::Tiled;
}

const char *attention_kernel_name(AttentionKernel k) {
  switch (k) {
    case AttentionKernel::Decode: return "decode";
    case AttentionKernel::TensorCores: return "tensor-core";
    default: return "tiled";
  }
}

bool attention_has_tensor_cores() {
#ifdef FFS_HAVE_MMA16
  return true;
#else
  return false;
#endif
}

gpuError_t attention(const AttentionArgs &a, gpuStream_t stream) {
  if (a.T <= 0) return gpuSuccess;
  if (a.n_kv_heads <= 0 || a.n_heads % a.n_kv_heads != 0) return gpuErrorInvalidValue;
  const AttentionKernel kernel = attention_kernel_for(a);  // the one place that decides
  FFS_DISPATCH_DTYPE(a.dtype, switch (a.head_dim) {
    case 8:
      return launch_attention<T, 8>(a, kernel, stream);
    case 16:
      return launch_attention<T, 16>(a, kernel, stream);
    case 32:
      return launch_attention<T, 32>(a, kernel, stream);
    case 64:
      return launch_attention<T, 64>(a, kernel, stream);
    case 128:
      return launch_attention<T, 128>(a, kernel, stream);
    case 256:
      return launch_attention<T, 256>(a, kernel, stream);
    default:
      return gpuErrorInvalidValue;
  });
  return gpuSuccess;
}

}  // namespace ffspec::gpu
