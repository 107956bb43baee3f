// 16 x 16 x 16 tensor-core tiles for the kernels, through shared memory: CUDA's nvcuda::wmma
// (fp16 and bf16 inputs, fp32 accumulation; sm_80+), and a plain loop on the CPU emulator so
// the same kernels run in its tests. Not on HIP (rocWMMA is a separate library): there
// FFS_HAVE_MMA16 is undefined and the callers keep their CUDA-core paths.
#pragma once
#include <type_traits>

#include "kernels/gpu/dispatch.cuh"

#if defined(FFS_GPU_EMU)
#if FFS_GPU_EMU_WARP_SIZE == 32  // the emulated AMD profile (64-lane waves) is the HIP build
#define FFS_HAVE_MMA16 1
#endif
#elif !(defined(FFS_HIP) || defined(__HIP_PLATFORM_AMD__) || defined(__HIP__))
#include <mma.h>
#define FFS_HAVE_MMA16 1
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "mma16 (tensor-core attention) needs sm_80 or newer: set CMAKE_CUDA_ARCHITECTURES to 80 or above"
#endif
#endif

#ifdef FFS_HAVE_MMA16
namespace ffspec::gpu {

// C[16 x 16] = (accumulate ? C : 0) + A[16 x K] . B[K x 16], K a multiple of 16, by one whole
// warp (every lane calls it with the same arguments). C: fp32, row-major, ldc. A: row-major,
// lda. B: element (k, n) at B[n * ldb + k] when B_COL (a row-major [16 x K] matrix used
// transposed, e.g. K rows for Q . K^T), else at B[k * ldb + n]. All in shared memory; tile
// starts 32-byte aligned, ld a multiple of 16 bytes. C is complete for the warp's lanes after
// a __syncwarp (or a block barrier) only: the caller synchronizes.
template <typename T, bool B_COL>
__device__ __forceinline__ void mma16(float *C, int ldc, const T *A, int lda, const T *B, int ldb, int K,
                                      bool accumulate) {
#if defined(FFS_GPU_EMU)
  if (threadIdx.x % FFS_WARP_SIZE != 0) return;  // one lane computes the warp's tile
  for (int i = 0; i < 16; i++)
    for (int j = 0; j < 16; j++) {
      float acc = accumulate ? C[i * ldc + j] : 0.0f;
      for (int k = 0; k < K; k++)
        acc += to_f32(A[i * lda + k]) * to_f32(B_COL ? B[j * ldb + k] : B[k * ldb + j]);
      C[i * ldc + j] = acc;
    }
#else
  namespace wmma = nvcuda::wmma;
  using Layout = typename std::conditional<B_COL, wmma::col_major, wmma::row_major>::type;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
  if (accumulate) wmma::load_matrix_sync(c, C, ldc, wmma::mem_row_major);
  else wmma::fill_fragment(c, 0.0f);
  for (int k = 0; k < K; k += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, Layout> b;
    wmma::load_matrix_sync(a, A + k, lda);
    wmma::load_matrix_sync(b, B_COL ? B + k : B + static_cast<size_t>(k) * ldb, ldb);
    wmma::mma_sync(c, a, b, c);
  }
  wmma::store_matrix_sync(C, c, ldc, wmma::mem_row_major);
#endif
}

}  // namespace ffspec::gpu
#endif
