// Internal to sampling.cu and draft_probs.cu: one block (kSampleThreads threads) works on one
// row of logits and finds the set of tokens a draw keeps, with the semantics of
// serve/sampling.cc's warped_probs:
//   - no truncation (top-k off, top-p off): every token, weight exp((l - max) / T);
//   - otherwise the candidates: the top-k tokens (or the top kMaxCandidates when only top-p
//     is on), found by a 4-pass radix select on the logits' order-preserving 32-bit keys
//     (integer histograms: deterministic), gathered in id order, sorted by (logit desc, id
//     asc) with a bitonic sort in shared memory, then cut to the smallest prefix whose mass
//     reaches top-p of the (top-k) total.
// Everything is deterministic for a given row: no floating-point atomics.
#pragma once
#include "kernels/gpu/dispatch.cuh"

namespace ffspec::gpu {

constexpr int kSampleThreads = 512;  // 1024 spills (64 registers a thread)

// The CPU sampler's generator (serve/sampling.cc uniform01): splitmix64 of the seed, mixed
// with the counter by an odd multiplier, splitmix64 again; top 53 bits -> [0, 1).
// Counter-based: the draw for (seed, counter) depends on nothing else.
__device__ __forceinline__ uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
__device__ __forceinline__ double uniform01(uint64_t seed, uint64_t counter) {
  const uint64_t x = splitmix64(splitmix64(seed) ^ (counter * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull));
  return static_cast<double>(x >> 11) * (1.0 / 9007199254740992.0);
}

// Order-preserving key: a > b as floats <=> key(a) > key(b) as unsigned; -0 and +0 are one
// key (equal logits: the tie goes to the lower id, as on the CPU).
__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f == 0.0f ? 0.0f : f);
  return u ^ ((u >> 31) ? 0xFFFFFFFFu : 0x80000000u);
}

// Exclusive prefix sum over the block (thread order); *total gets the block's sum.
// scratch: >= 32 elements.
template <typename V>
__device__ __forceinline__ V block_excl_scan(V v, V *scratch, V *total) {
  const int lane = threadIdx.x % FFS_WARP_SIZE, warp = threadIdx.x / FFS_WARP_SIZE;
  const int nwarps = (blockDim.x + FFS_WARP_SIZE - 1) / FFS_WARP_SIZE;
  V x = v;
  for (int o = 1; o < FFS_WARP_SIZE; o <<= 1) {
    const V y = FFS_SHFL_UP(x, o);
    if (lane >= o) x += y;
  }
  __syncthreads();
  if (lane == FFS_WARP_SIZE - 1) scratch[warp] = x;
  __syncthreads();
  V off = 0, tot = 0;
  for (int w = 0; w < nwarps; w++) {
    if (w < warp) off += scratch[w];
    tot += scratch[w];
  }
  *total = tot;
  return x - v + off;
}

// First maximum of the row (lowest id among equal maxima), every thread gets it; -1 (the CPU
// sampler's kNonFiniteToken) when the row holds a NaN or +inf: no token is right then.
constexpr int kNonFiniteToken = -1;
template <typename T>
__device__ int block_argmax(const T *row, int vocab, float *fscratch, int *iscratch) {
  float bv = -INFINITY;
  int bi = 0x7fffffff;
  bool finite = true;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = to_f32(row[i]);
    finite &= v < INFINITY;  // false for NaN and +inf
    if (v > bv || bi == 0x7fffffff) {  // strided ids increase: '>' keeps the first maximum
      bv = v;
      bi = i;
    }
  }
  if (!finite) bi = kNonFiniteToken;  // sticky through both reductions
  for (int m = FFS_WARP_SIZE / 2; m > 0; m >>= 1) {
    const float ov = FFS_SHFL_XOR(bv, m);
    const int oi = FFS_SHFL_XOR(bi, m);
    if (bi < 0 || oi < 0) {
      bi = kNonFiniteToken;
    } else if (ov > bv || (ov == bv && oi < bi)) {
      bv = ov;
      bi = oi;
    }
  }
  const int lane = threadIdx.x % FFS_WARP_SIZE, warp = threadIdx.x / FFS_WARP_SIZE;
  __syncthreads();
  if (lane == 0) {
    fscratch[warp] = bv;
    iscratch[warp] = bi;
  }
  __syncthreads();
  const int nwarps = (blockDim.x + FFS_WARP_SIZE - 1) / FFS_WARP_SIZE;
  float v = fscratch[0];
  int best = iscratch[0];
  for (int w = 1; w < nwarps && best >= 0; w++)
    if (iscratch[w] < 0) {
      best = kNonFiniteToken;
    } else if (fscratch[w] > v || (fscratch[w] == v && iscratch[w] < best)) {
      v = fscratch[w];
      best = iscratch[w];
    }
  return best;
}

// Shared memory of one row's plan (dynamic).
struct PlanSmem {
  uint64_t cand[kMaxCandidates];  // (key << 32) | (0xFFFFFFFF - id): sorts by logit desc, id asc
  float cum[kMaxCandidates];      // inclusive prefix mass of the sorted candidates
  uint32_t hist[256];
  float fscratch[32];
  int iscratch[32];
  int count, n_keep;  // candidates; kept prefix (after top-p)
  uint32_t prefix, mask;
  int remaining;
  int found;
  float max_logit, total;  // row max; Z (the normaliser top-p is measured against)
};

__device__ __forceinline__ int cand_id(uint64_t c) { return static_cast<int>(0xFFFFFFFFu - static_cast<uint32_t>(c)); }

// True when the row keeps every token (no top-k, no top-p).
// 1 / T (T <= 0: 1), finite: a subnormal T would give inf and (max - max) * inf = NaN; the
// clamp still sends every lower logit's weight to 0, as the CPU's division does.
__device__ __forceinline__ float inv_temperature(const SampleParams &sp) {
  return fminf(1.0f / (sp.temperature > 0.0f ? sp.temperature : 1.0f), 3.0e38f);
}

__device__ __forceinline__ bool untruncated(const SampleParams &sp, int vocab) {
  return !(sp.topk > 0 && sp.topk < vocab) && !(sp.topp > 0.0f && sp.topp < 1.0f);
}

// Truncated plan: fills s.cand[0, count) sorted, s.cum, s.n_keep, s.max_logit. inv_t = 1/T.
template <typename T>
__device__ void plan_truncated(const T *row, int vocab, const SampleParams &sp, float inv_t, PlanSmem &s) {
  const bool use_topk = sp.topk > 0 && sp.topk < vocab;
  const int k = min(use_topk ? sp.topk : vocab, min(vocab, kMaxCandidates));
  // 1. Radix select: the key of the k-th largest logit, and how many of its ties to keep.
  if (threadIdx.x == 0) {
    s.prefix = 0;
    s.mask = 0;
    s.remaining = k;
  }
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) s.hist[b] = 0;
    __syncthreads();
    const uint32_t prefix = s.prefix, mask = s.mask;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const uint32_t key = order_key(to_f32(row[i]));
      if ((key & mask) == prefix) atomicAdd(&s.hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int rem = s.remaining, b = 255;
      for (; b > 0; b--) {
        if (static_cast<int>(s.hist[b]) >= rem) break;
        rem -= static_cast<int>(s.hist[b]);
      }
      s.prefix = prefix | (static_cast<uint32_t>(b) << shift);
      s.mask = mask | (255u << shift);
      s.remaining = rem;
    }
    __syncthreads();
  }
  const uint32_t tau = s.prefix;
  const int n_tie = s.remaining;  // ties at tau kept, lowest ids first
  // 2. Gather the candidates in id order (ties ranked by id).
  int seen_ties = 0, taken = 0;
  for (int base = 0; base < vocab; base += blockDim.x) {
    const int i = base + threadIdx.x;
    const uint32_t key = i < vocab ? order_key(to_f32(row[i])) : 0u;
    const int tie = i < vocab && key == tau;
    int tot;
    const int tie_rank = seen_ties + block_excl_scan(tie, s.iscratch, &tot);
    seen_ties += tot;
    const int take = i < vocab && (key > tau || (tie && tie_rank < n_tie));
    const int pos = taken + block_excl_scan(take, s.iscratch, &tot);
    taken += tot;
    if (take) s.cand[pos] = (static_cast<uint64_t>(key) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(i));
  }
  const int count = taken;  // == k
  int n2 = 1;
  while (n2 < count) n2 <<= 1;
  for (int j = count + threadIdx.x; j < n2; j += blockDim.x) s.cand[j] = 0;
  __syncthreads();
  // 3. Bitonic sort, descending.
  for (int size = 2; size <= n2; size <<= 1)
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < n2; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const uint64_t a = s.cand[i], b = s.cand[j];
          const bool desc = (i & size) == 0;
          if (desc ? a < b : a > b) {
            s.cand[i] = b;
            s.cand[j] = a;
          }
        }
      }
      __syncthreads();
    }
  // 4. Weights and their inclusive prefix sums (each thread: a run of consecutive candidates).
  const float mx = to_f32(row[cand_id(s.cand[0])]);
  constexpr int kPer = kMaxCandidates / kSampleThreads;
  float w[kPer], run = 0.0f;
  const int j0 = threadIdx.x * kPer;
#pragma unroll
  for (int e = 0; e < kPer; e++) {
    const int j = j0 + e;
    w[e] = j < count ? expf((to_f32(row[cand_id(s.cand[j])]) - mx) * inv_t) : 0.0f;
    run += w[e];
  }
  float cand_total;
  float acc = block_excl_scan(run, s.fscratch, &cand_total);
#pragma unroll
  for (int e = 0; e < kPer; e++) {
    acc += w[e];
    if (j0 + e < kMaxCandidates) s.cum[j0 + e] = acc;
  }
  // Z: the top-k mass, or the whole row's when top-k is off (top-p alone).
  float z = cand_total;
  if (!use_topk) {
    float part = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) part += expf((to_f32(row[i]) - mx) * inv_t);
    z = block_sum(part, s.fscratch);
  }
  if (threadIdx.x == 0) {
    s.count = count;
    s.n_keep = count;
    s.max_logit = mx;
    s.total = z;
  }
  __syncthreads();
  // 5. Top-p: the smallest prefix whose mass reaches topp * Z (the first token always stays).
  if (sp.topp > 0.0f && sp.topp < 1.0f) {
    const float target = sp.topp * z;
    for (int j = threadIdx.x; j < count; j += blockDim.x)
      // fp32 cum may dip by an ulp where one thread's run meets the next, so two j can
      // qualify: the first one wins.
      if (s.cum[j] >= target && (j == 0 || s.cum[j - 1] < target)) atomicMin(&s.n_keep, j + 1);
    __syncthreads();
  }
}

}  // namespace ffspec::gpu
