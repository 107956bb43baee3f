// Projections with few rows (decoding at batch <= 8, small trees) without cuBLAS: a batched
// GEMV. At M <= 8 a projection does M multiply-adds per weight it reads, so it is bound by how
// fast the weights stream from memory; the kernel reads each weight once, with 16-byte loads,
// and applies it to all M rows of x (which stay in L1/L2: a few KiB to a few hundred KiB).
//
// One warp per output column (a weight row, contiguous in HF's [out, in] layout), or per two
// at M >= 4 so each x load serves two weight rows. Lanes stride along K; each accumulates in
// fp32, the warp sums the partials, and lane 0 rounds once on store: the semantics of
// linear()'s cuBLAS path (fp32 accumulation, the bias added in fp32, one rounding) in another
// summation order. The SwiGLU variant reads the gate row c and the up row I + c of the fused
// gate_up weight in the same pass and writes silu(g) * u, with g and u rounded to the element
// type first: bit for bit what linear() then silu_mul() compute from the same dot products,
// without the [M, 2I] round trip through memory and one launch fewer per layer.
#include "kernels/gpu/dispatch.cuh"

namespace ffspec::gpu {

namespace {

constexpr int kWarpsPerBlock = 4;

// 16 bytes of elements, as fp32.
template <typename T>
constexpr int kPack = 16 / static_cast<int>(sizeof(T));

// Warp `gw` computes outputs [gw * OUTS, gw * OUTS + OUTS) for every row m < M (<= MAXM).
// Plain: OUTS = ROWS, output c reads weight row c; y [M, N] (+ bias[c]).
// SWIGLU: OUTS = 1, ROWS = 2: output c reads rows c (gate) and I + c (up) of w [2I, K]; y [M, I].
// VEC: 16-byte loads (K a multiple of the pack, x and w 16-byte aligned); else one element.
template <typename T, int MAXM, int ROWS, bool SWIGLU, bool VEC>
__global__ void __launch_bounds__(kWarpsPerBlock *FFS_WARP_SIZE)
    linear_small_kernel(const T *__restrict__ x, const T *__restrict__ w, const T *__restrict__ bias,
                        T *__restrict__ y, int M, int n_out, int K) {
  static_assert(!SWIGLU || ROWS == 2, "SwiGLU reads a gate row and an up row per output");
  constexpr int OUTS = SWIGLU ? 1 : ROWS;
  constexpr int E = VEC ? kPack<T> : 1;
  const int lane = threadIdx.x % FFS_WARP_SIZE;
  const int c0 = (blockIdx.x * kWarpsPerBlock + threadIdx.x / FFS_WARP_SIZE) * OUTS;
  if (c0 >= n_out) return;  // the whole warp: no shuffle is left waiting
  // Weight rows; a plain warp's rows past the end re-read the last one (no divergence) and
  // are not stored.
  const T *wr[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; r++) {
    const int row = SWIGLU ? r * n_out + c0 : min(c0 + r, n_out - 1);
    wr[r] = w + static_cast<size_t>(row) * K;
  }
  float acc[ROWS][MAXM];
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int m = 0; m < MAXM; m++) acc[r][m] = 0.0f;
#pragma unroll 4
  for (int k = lane * E; k < K; k += FFS_WARP_SIZE * E) {
    float wf[ROWS][E];
#pragma unroll
    for (int r = 0; r < ROWS; r++) load_f32<T, E>(wr[r] + k, wf[r]);
#pragma unroll
    for (int m = 0; m < MAXM; m++) {
      if (m < M) {
        float xf[E];
        load_f32<T, E>(x + static_cast<size_t>(m) * K + k, xf);
#pragma unroll
        for (int r = 0; r < ROWS; r++)
#pragma unroll
          for (int e = 0; e < E; e++) acc[r][m] = fmaf(wf[r][e], xf[e], acc[r][m]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < MAXM; m++) {
    if (m < M) {  // M is the same for the whole warp
#pragma unroll
      for (int r = 0; r < ROWS; r++) acc[r][m] = warp_sum(acc[r][m]);
    }
  }
  if (lane != 0) return;
  for (int m = 0; m < MAXM && m < M; m++) {
    T *ym = y + static_cast<size_t>(m) * n_out;
    if constexpr (SWIGLU) {
      // As linear() stores gate_up in T and silu_mul reads it back (expf, as silu_mul).
      const float g = to_f32(from_f32<T>(acc[0][m])), u = to_f32(from_f32<T>(acc[1][m]));
      ym[c0] = from_f32<T>(g / (1.0f + expf(-g)) * u);
    } else {
#pragma unroll
      for (int r = 0; r < ROWS; r++)
        if (c0 + r < n_out) ym[c0 + r] = from_f32<T>(acc[r][m] + (bias ? to_f32(bias[c0 + r]) : 0.0f));
    }
  }
}

template <typename T, int MAXM, bool SWIGLU, bool VEC>
void launch_small(const void *x, const void *w, const void *bias, void *y, int M, int n_out, int K,
                  gpuStream_t stream) {
  constexpr int ROWS = SWIGLU || MAXM >= 4 ? 2 : 1;
  constexpr int OUTS = SWIGLU ? 1 : ROWS;
  const unsigned blocks = ceil_div(ceil_div(n_out, OUTS), kWarpsPerBlock);
  FFS_LAUNCH((linear_small_kernel<T, MAXM, ROWS, SWIGLU, VEC>), blocks, kWarpsPerBlock * FFS_WARP_SIZE, 0, stream,
             static_cast<const T *>(x), static_cast<const T *>(w), static_cast<const T *>(bias), static_cast<T *>(y),
             M, n_out, K);
}

bool aligned16(const void *p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T, bool SWIGLU>
gpuError_t dispatch_small(const void *x, const void *w, const void *bias, void *y, int M, int n_out, int K,
                          gpuStream_t stream) {
  if (K % kPack<T> == 0 && aligned16(x) && aligned16(w)) {
    if (M == 1)
      launch_small<T, 1, SWIGLU, true>(x, w, bias, y, M, n_out, K, stream);
    else if (M == 2)
      launch_small<T, 2, SWIGLU, true>(x, w, bias, y, M, n_out, K, stream);
    else if (M <= 4)
      launch_small<T, 4, SWIGLU, true>(x, w, bias, y, M, n_out, K, stream);
    else
      launch_small<T, kSmallLinearMaxRows, SWIGLU, true>(x, w, bias, y, M, n_out, K, stream);
  } else {  // odd shapes (tiny test models, unaligned views): one element per lane and step
    launch_small<T, kSmallLinearMaxRows, SWIGLU, false>(x, w, bias, y, M, n_out, K, stream);
  }
  return gpuGetLastError();
}

}  // namespace

gpuError_t linear_small(const void *x, const void *w, const void *bias, void *y, int M, int N, int K, DType dt,
                        gpuStream_t stream) {
  if (M == 0) return gpuSuccess;
  if (M < 0 || M > kSmallLinearMaxRows || N <= 0 || K <= 0) return gpuErrorInvalidValue;
  FFS_DISPATCH_DTYPE(dt, return (dispatch_small<T, false>(x, w, bias, y, M, N, K, stream)));
}

gpuError_t linear_swiglu_small(const void *x, const void *w_gate_up, void *out, int M, int I, int K, DType dt,
                               gpuStream_t stream) {
  if (M == 0) return gpuSuccess;
  if (M < 0 || M > kSmallLinearMaxRows || I <= 0 || K <= 0) return gpuErrorInvalidValue;
  FFS_DISPATCH_DTYPE(dt, return (dispatch_small<T, true>(x, w_gate_up, nullptr, out, M, I, K, stream)));
}

}  // namespace ffspec::gpu
