// The few cuBLAS entry points gemm.cu resolves, for the GPU emulator: the library that holds
// them (libffs_gpu_emu_runtime.so) is what FFS_CUBLAS_LIBRARY names in the emulated tests, so
// gemm.cu's loader, its operand mapping (row-major x·wᵀ as column-major OP_T/OP_N) and its
// stream handling run unchanged. GemmEx follows cuBLAS's documented column-major semantics;
// it accumulates in double, rounds once to C's type, and with CUBLAS_COMPUTE_32F_FAST_TF32
// first rounds A and B to TF32 (10 mantissa bits), so a caller that lets TF32 in is caught by
// the same bounds as on the GPU. Work goes on the handle's stream (recorded while captured).
#include <cublas_v2.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/gpu/emu/gpu_emu.h"

struct cublasContext {
  gpuStream_t stream = nullptr;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
};

namespace {

bool known_type(cudaDataType t) { return t == CUDA_R_32F || t == CUDA_R_16F || t == CUDA_R_16BF; }

float tf32(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000) != 0x7f800000) {
    u += 0xfff + ((u >> 13) & 1);
    u &= 0xffffe000u;
  }
  std::memcpy(&x, &u, 4);
  return x;
}

// A column-major operand of `cols` columns with leading dimension ld, as fp32.
std::vector<float> to_f32(const void *p, cudaDataType t, int ld, int cols, bool round_tf32) {
  const size_t n = static_cast<size_t>(ld) * cols;
  std::vector<float> out(n);
  for (size_t i = 0; i < n; i++) {
    float v;
    if (t == CUDA_R_32F)
      v = static_cast<const float *>(p)[i];
    else if (t == CUDA_R_16F)
      v = __half2float(static_cast<const __half *>(p)[i]);
    else
      v = __bfloat162float(static_cast<const __nv_bfloat16 *>(p)[i]);
    out[i] = round_tf32 ? tf32(v) : v;
  }
  return out;
}

}  // namespace

extern "C" {

cublasStatus_t CUBLASWINAPI cublasCreate_v2(cublasHandle_t *handle) {
  if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasDestroy_v2(cublasHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = reinterpret_cast<gpuStream_t>(stream);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasSetWorkspace_v2(cublasHandle_t handle, void *, size_t) {
  return handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

const char *CUBLASWINAPI cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully (emulated cuBLAS)";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized (emulated cuBLAS)";
    case CUBLAS_STATUS_INVALID_VALUE: return "an unsupported value or parameter was passed (emulated cuBLAS)";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported (emulated cuBLAS)";
    default: return "unknown status (emulated cuBLAS)";
  }
}

cublasStatus_t CUBLASWINAPI cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const void *alpha, const void *A, cudaDataType Atype,
                                         int lda, const void *B, cudaDataType Btype, int ldb, const void *beta,
                                         void *C, cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                                         cublasGemmAlgo_t) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (computeType != CUBLAS_COMPUTE_32F && computeType != CUBLAS_COMPUTE_32F_FAST_TF32)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  if (!known_type(Atype) || !known_type(Btype) || !known_type(Ctype)) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (transa == CUBLAS_OP_C || transb == CUBLAS_OP_C) return CUBLAS_STATUS_NOT_SUPPORTED;
  const bool ta = transa == CUBLAS_OP_T, tb = transb == CUBLAS_OP_T;
  if (m < 0 || n < 0 || k < 0 || lda < std::max(1, ta ? k : m) || ldb < std::max(1, tb ? n : k) || ldc < std::max(1, m))
    return CUBLAS_STATUS_INVALID_VALUE;
  const float a = *static_cast<const float *>(alpha), b = *static_cast<const float *>(beta);  // host pointer mode
  const bool t32 = computeType == CUBLAS_COMPUTE_32F_FAST_TF32;
  ffspec::emu::enqueue(handle->stream, [=] {
    const std::vector<float> fa = to_f32(A, Atype, lda, ta ? m : k, t32);
    const std::vector<float> fb = to_f32(B, Btype, ldb, tb ? k : n, t32);
#pragma omp parallel for schedule(static)
    for (int j = 0; j < n; j++)
      for (int i = 0; i < m; i++) {
        double acc = 0;
        if (ta && !tb) {  // the layout gemm.cu uses: both operands contiguous along k
          const float *ar = fa.data() + static_cast<size_t>(i) * lda, *bc = fb.data() + static_cast<size_t>(j) * ldb;
          for (int p = 0; p < k; p++) acc += static_cast<double>(ar[p]) * bc[p];
        } else {
          for (int p = 0; p < k; p++) {
            const float av = ta ? fa[static_cast<size_t>(i) * lda + p] : fa[static_cast<size_t>(p) * lda + i];
            const float bv = tb ? fb[static_cast<size_t>(p) * ldb + j] : fb[static_cast<size_t>(j) * ldb + p];
            acc += static_cast<double>(av) * bv;
          }
        }
        const size_t at = static_cast<size_t>(j) * ldc + i;
        double c = a * acc;
        if (b != 0.0f) {
          if (Ctype == CUDA_R_32F)
            c += static_cast<double>(b) * static_cast<float *>(C)[at];
          else if (Ctype == CUDA_R_16F)
            c += static_cast<double>(b) * __half2float(static_cast<__half *>(C)[at]);
          else
            c += static_cast<double>(b) * __bfloat162float(static_cast<__nv_bfloat16 *>(C)[at]);
        }
        if (Ctype == CUDA_R_32F)
          static_cast<float *>(C)[at] = static_cast<float>(c);
        else if (Ctype == CUDA_R_16F)
          static_cast<__half *>(C)[at] = __float2half_rn(static_cast<float>(c));
        else
          static_cast<__nv_bfloat16 *>(C)[at] = __float2bfloat16_rn(static_cast<float>(c));
      }
  });
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
