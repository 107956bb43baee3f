// The vendor header: the few runtime names and intrinsics the GPU kernels use, mapped to CUDA
// or HIP, so both builds compile the same .cu sources (no copied twins). Host code includes it
// through kernels.h; device code also gets the conversions and warp reductions below.
#pragma once

#if defined(FFS_GPU_EMU)
// The CPU emulator (kernels/gpu/emu): the same sources compiled as C++ for the tests.
#include "kernels/gpu/emu/gpu_emu.h"
#define FFS_SHFL_XOR(v, m) ::ffspec::emu::shfl_xor((v), (m))
#define FFS_SYNCWARP() ::ffspec::emu::sync_warp()
#define FFS_SHFL_UP(v, d) ::ffspec::emu::shfl_up((v), (d))
#define gpu_float2half __float2half_rn
#define gpu_half2float __half2float
#define gpu_float2bf16 __float2bfloat16_rn
#define gpu_bf162float __bfloat162float
#define FFS_WARP_SIZE FFS_GPU_EMU_WARP_SIZE
#define FFS_MAX_SMEM_BYTES FFS_GPU_EMU_SMEM_MAX
#elif defined(FFS_HIP) || defined(__HIP_PLATFORM_AMD__) || defined(__HIP__)
#include <hip/hip_fp16.h>
#include <hip/hip_runtime.h>
using gpuStream_t = hipStream_t;
using gpuError_t = hipError_t;
using gpu_half = __half;
#define gpu_float2half __float2half_rn
#define gpu_half2float __half2float
#if __has_include(<hip/hip_bf16.h>)  // ROCm >= 5.7: CUDA-like __hip_bfloat16
#include <hip/hip_bf16.h>
using gpu_bf16 = __hip_bfloat16;
#define gpu_float2bf16 __float2bfloat16  // round to nearest even
#define gpu_bf162float __bfloat162float
#else  // older ROCm (Debian 12's 5.2): hip_bfloat16, whose float constructor rounds to nearest even
#include <hip/hip_bfloat16.h>
using gpu_bf16 = hip_bfloat16;
#define gpu_float2bf16(x) hip_bfloat16(static_cast<float>(x))
#define gpu_bf162float(x) static_cast<float>(x)
#endif
#define gpuSuccess hipSuccess
#define gpuErrorInvalidValue hipErrorInvalidValue
#define gpuErrorInsufficientDriver hipErrorInsufficientDriver
#define gpuGetLastError hipGetLastError
#define gpuPeekAtLastError hipPeekAtLastError
#define gpuFuncSetAttribute hipFuncSetAttribute
#define gpuFuncAttributeMaxDynamicSharedMemorySize hipFuncAttributeMaxDynamicSharedMemorySize
#define gpuGetErrorString hipGetErrorString
#define gpuGetDeviceCount hipGetDeviceCount
#define gpuMalloc hipMalloc
#define gpuFree hipFree
#define gpuMemcpy hipMemcpy
#define gpuMemcpyHostToDevice hipMemcpyHostToDevice
#define gpuMemcpyDeviceToDevice hipMemcpyDeviceToDevice
#define gpuMemcpyDeviceToHost hipMemcpyDeviceToHost
#define gpuDeviceSynchronize hipDeviceSynchronize
#define gpuMemcpyAsync hipMemcpyAsync
#define gpuMemsetAsync hipMemsetAsync
#define gpuMemset hipMemset
#define gpuStreamCreateWithFlags hipStreamCreateWithFlags
#define gpuStreamNonBlocking hipStreamNonBlocking
#define gpuStreamSynchronize hipStreamSynchronize
#define gpuStreamDestroy hipStreamDestroy
#define gpuEventCreateWithFlags hipEventCreateWithFlags
#define gpuEventDisableTiming hipEventDisableTiming
#define gpuEventRecord hipEventRecord
#define gpuEventSynchronize hipEventSynchronize
#define gpuEventDestroy hipEventDestroy
#define gpuEventElapsedTime hipEventElapsedTime
#define gpuEventCreate hipEventCreate
#define gpuSetDevice hipSetDevice
#define gpuGetDevice hipGetDevice
#define gpuDeviceGetAttribute hipDeviceGetAttribute
#define gpuDevAttrMultiProcessorCount hipDeviceAttributeMultiprocessorCount
#define gpuDevAttrMaxSharedMemoryPerBlockOptin hipDeviceAttributeSharedMemPerBlockOptin
#define gpuMemGetInfo hipMemGetInfo
#define gpuGetDeviceProperties hipGetDeviceProperties
#define gpuStreamBeginCapture hipStreamBeginCapture
#define gpuStreamEndCapture hipStreamEndCapture
#define gpuStreamCaptureModeThreadLocal hipStreamCaptureModeThreadLocal
#define gpuGraphInstantiate hipGraphInstantiateWithFlags  // CUDA 12's (exec, graph, flags)
#define gpuGraphLaunch hipGraphLaunch
#define gpuGraphExecDestroy hipGraphExecDestroy
#define gpuGraphDestroy hipGraphDestroy
#define gpuMallocHost hipHostMalloc
#define gpuFreeHost hipHostFree
using gpuEvent_t = hipEvent_t;
using gpuGraph_t = hipGraph_t;
using gpuGraphExec_t = hipGraphExec_t;
using gpuDeviceProp_t = hipDeviceProp_t;
#define FFS_SHFL_XOR(v, m) __shfl_xor((v), (m))
#define FFS_SYNCWARP() __builtin_amdgcn_wave_barrier()  // a wavefront runs in lockstep; orders the compiler
#define FFS_SHFL_UP(v, d) __shfl_up((v), (d))
// CDNA (MI200 gfx90a, MI300 gfx942) runs 64-lane wavefronts. RDNA defaults to 32 lanes: build
// for it with -mwavefrontsize64, or this stops the device compilation. (Newer clangs deprecate
// __AMDGCN_WAVEFRONT_SIZE, hence the pragmas; where it is gone the check does nothing.)
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wunknown-warning-option"
#pragma clang diagnostic ignored "-Wdeprecated-pragma"
#if defined(__AMDGCN_WAVEFRONT_SIZE) && __AMDGCN_WAVEFRONT_SIZE != 64
#error "flexflow_spec's HIP kernels assume 64-lane wavefronts (CDNA); compile RDNA targets with -mwavefrontsize64"
#endif
#pragma clang diagnostic pop
#define FFS_WARP_SIZE 64                // CDNA wavefront
#define FFS_MAX_SMEM_BYTES (64 << 10)  // LDS per workgroup on CDNA (MI200/MI300)
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
using gpuStream_t = cudaStream_t;
using gpuError_t = cudaError_t;
using gpu_half = __half;
using gpu_bf16 = __nv_bfloat16;
#define gpu_float2half __float2half_rn
#define gpu_half2float __half2float
#define gpu_float2bf16 __float2bfloat16_rn
#define gpu_bf162float __bfloat162float
#define gpuSuccess cudaSuccess
#define gpuErrorInvalidValue cudaErrorInvalidValue
#define gpuErrorInsufficientDriver cudaErrorInsufficientDriver
#define gpuGetLastError cudaGetLastError
#define gpuPeekAtLastError cudaPeekAtLastError
#define gpuFuncSetAttribute cudaFuncSetAttribute
#define gpuFuncAttributeMaxDynamicSharedMemorySize cudaFuncAttributeMaxDynamicSharedMemorySize
#define gpuGetErrorString cudaGetErrorString
#define gpuGetDeviceCount cudaGetDeviceCount
#define gpuMalloc cudaMalloc
#define gpuFree cudaFree
#define gpuMemcpy cudaMemcpy
#define gpuMemcpyHostToDevice cudaMemcpyHostToDevice
#define gpuMemcpyDeviceToDevice cudaMemcpyDeviceToDevice
#define gpuMemcpyDeviceToHost cudaMemcpyDeviceToHost
#define gpuDeviceSynchronize cudaDeviceSynchronize
#define gpuMemcpyAsync cudaMemcpyAsync
#define gpuMemsetAsync cudaMemsetAsync
#define gpuMemset cudaMemset
#define gpuStreamCreateWithFlags cudaStreamCreateWithFlags
#define gpuStreamNonBlocking cudaStreamNonBlocking
#define gpuStreamSynchronize cudaStreamSynchronize
#define gpuStreamDestroy cudaStreamDestroy
#define gpuEventCreateWithFlags cudaEventCreateWithFlags
#define gpuEventDisableTiming cudaEventDisableTiming
#define gpuEventRecord cudaEventRecord
#define gpuEventSynchronize cudaEventSynchronize
#define gpuEventDestroy cudaEventDestroy
#define gpuEventElapsedTime cudaEventElapsedTime
#define gpuEventCreate cudaEventCreate
#define gpuSetDevice cudaSetDevice
#define gpuGetDevice cudaGetDevice
#define gpuDeviceGetAttribute cudaDeviceGetAttribute
#define gpuDevAttrMultiProcessorCount cudaDevAttrMultiProcessorCount
#define gpuDevAttrMaxSharedMemoryPerBlockOptin cudaDevAttrMaxSharedMemoryPerBlockOptin
#define gpuMemGetInfo cudaMemGetInfo
#define gpuGetDeviceProperties cudaGetDeviceProperties
#define gpuStreamBeginCapture cudaStreamBeginCapture
#define gpuStreamEndCapture cudaStreamEndCapture
#define gpuStreamCaptureModeThreadLocal cudaStreamCaptureModeThreadLocal
#define gpuGraphInstantiate cudaGraphInstantiate
#define gpuGraphLaunch cudaGraphLaunch
#define gpuGraphExecDestroy cudaGraphExecDestroy
#define gpuGraphDestroy cudaGraphDestroy
#define gpuMallocHost cudaMallocHost
#define gpuFreeHost cudaFreeHost
using gpuEvent_t = cudaEvent_t;
using gpuGraph_t = cudaGraph_t;
using gpuGraphExec_t = cudaGraphExec_t;
using gpuDeviceProp_t = cudaDeviceProp;
#define FFS_SHFL_XOR(v, m) __shfl_xor_sync(0xffffffffu, (v), (m))
#define FFS_SYNCWARP() __syncwarp()  // shuffles order no memory: this does, within the warp
#define FFS_SHFL_UP(v, d) __shfl_up_sync(0xffffffffu, (v), (d))
#define FFS_WARP_SIZE 32
// sm_90's (and sm_100's) opt-in maximum per block (gpuFuncSetAttribute); the build targets
// sm_90 + compute_90. A consumer sm_120 has 99 KiB: attention at d = 256 would not launch.
#define FFS_MAX_SMEM_BYTES (227 << 10)
#endif

// Kernel launches go through this macro so the syntax lives in one place. The kernel's dynamic
// shared memory is declared with FFS_DYNAMIC_SMEM(name): 16-byte aligned bytes.
#if defined(FFS_GPU_EMU)
#define FFS_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::ffspec::emu::launch(kernel, #kernel " (" __FILE__ ")", (grid), (block), (smem), (stream), __VA_ARGS__)
#define FFS_DYNAMIC_SMEM(name) unsigned char *const name = ::ffspec::emu::dynamic_smem()
#else
#define FFS_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#define FFS_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

#if defined(__CUDACC__) || defined(__HIPCC__) || defined(FFS_GPU_EMU)
namespace ffspec::gpu {

// Element type <-> fp32. Every kernel computes in fp32 and rounds once on store.
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(gpu_half x) { return gpu_half2float(x); }
__device__ __forceinline__ float to_f32(gpu_bf16 x) { return gpu_bf162float(x); }
template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ gpu_half from_f32<gpu_half>(float x) {
  return gpu_float2half(x);
}
template <>
__device__ __forceinline__ gpu_bf16 from_f32<gpu_bf16>(float x) {
  return gpu_float2bf16(x);
}

// Sum / max over each aligned group of W lanes (default: the whole warp); every lane gets its
// group's result. Every lane of the warp must call it (the shuffles are warp-wide).
template <int W = FFS_WARP_SIZE>
__device__ __forceinline__ float warp_sum(float v) {
  static_assert(W > 0 && W <= FFS_WARP_SIZE && (W & (W - 1)) == 0, "a power-of-two part of a warp");
  for (int m = W / 2; m > 0; m >>= 1) v += FFS_SHFL_XOR(v, m);
  return v;
}
template <int W = FFS_WARP_SIZE>
__device__ __forceinline__ float warp_max(float v) {
  static_assert(W > 0 && W <= FFS_WARP_SIZE && (W & (W - 1)) == 0, "a power-of-two part of a warp");
  for (int m = W / 2; m > 0; m >>= 1) v = fmaxf(v, FFS_SHFL_XOR(v, m));
  return v;
}

// Sum over the block; every thread gets the result. scratch: >= blockDim/warp floats.
// Fixed reduction order for a given launch shape, so results repeat run to run.
__device__ __forceinline__ float block_sum(float v, float *scratch) {
  const int lane = threadIdx.x % FFS_WARP_SIZE, warp = threadIdx.x / FFS_WARP_SIZE;
  const int nwarps = (blockDim.x + FFS_WARP_SIZE - 1) / FFS_WARP_SIZE;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = 0.0f;
  for (int w = 0; w < nwarps; w++) r += scratch[w];
  return r;
}
__device__ __forceinline__ float block_max(float v, float *scratch) {
  const int lane = threadIdx.x % FFS_WARP_SIZE, warp = threadIdx.x / FFS_WARP_SIZE;
  const int nwarps = (blockDim.x + FFS_WARP_SIZE - 1) / FFS_WARP_SIZE;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = -INFINITY;
  for (int w = 0; w < nwarps; w++) r = fmaxf(r, scratch[w]);
  return r;
}

}  // namespace ffspec::gpu
#endif
