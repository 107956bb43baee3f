// A CPU emulation of the part of CUDA that our kernels, the GPU forward pass and their tests
// use, so the same .cu sources compile as C++ (-DFFS_GPU_EMU, through gpu_compat.h) and run
// where there is no GPU: CI runs test_gpu_kernels and test_gpu_forward on it against the CPU
// backend, which checks the kernels' logic (indexing, tiling, masks, barriers, reductions,
// split-KV, graphs) long before a GPU is at hand. It says nothing about speed, and it is no
// substitute for the runs on a GPU (no hardware arithmetic quirks, no memory model beyond
// barriers).
//
// What it keeps of CUDA's semantics:
// - A block's threads are fibers run one at a time on one OS thread, blocks one after another.
//   __syncthreads() and warp shuffles are barriers: a thread yields there and resumes once
//   every live thread of its block (warp) has arrived. So code that assumes lockstep warps
//   without a barrier breaks here as on a real GPU, and a barrier that some threads skip while
//   others wait (divergence) aborts with the kernel's launch site.
// - Kernel arguments are converted and copied at launch. A stream capture records launches,
//   async copies and cuBLAS calls, and a graph launch replays them with those arguments and
//   addresses; the calls CUDA forbids while a thread-local capture is open (allocation,
//   synchronous copies, synchronization) fail and invalidate the capture, as in CUDA.
// - Launch checks: 1..1024 threads per block, a non-empty grid, dynamic shared memory above
//   the profile's default (48 KiB) only after gpuFuncSetAttribute raised the kernel's limit
//   (at most the profile's maximum: 227 KiB; wave64: 64 KiB, the default too).
// - Fresh device memory and dynamic shared memory are filled with 0xFF bytes (NaN as floats),
//   so reading what was never written shows up.
// - One device, with one of two profiles fixed when the emulator is compiled:
//   - default, an H100: 32-lane warps, 48 KiB of dynamic shared memory without opting in and
//     227 KiB with it, 132 multiprocessors (so split-KV decisions are the real ones);
//   - FFS_GPU_EMU_WAVE64, an AMD CDNA3 GPU (MI300X) as a HIP build sees it: 64-lane
//     wavefronts, 64 KiB of LDS per workgroup (the most a kernel can have), 304 compute units.
//   The kernels see the profile through FFS_WARP_SIZE and FFS_MAX_SMEM_BYTES (gpu_compat.h),
//   as they do in the CUDA and HIP builds, so the wave64 build runs the HIP code paths.
#pragma once
#include <cuda_bf16.h>  // CUDA's own host+device headers: __half, __nv_bfloat16 and their conversions
#include <cuda_fp16.h>
#include <math.h>
#include <vector_types.h>  // dim3

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#if defined(FFS_GPU_EMU_WAVE64)
#define FFS_GPU_EMU_WARP_SIZE 64
#define FFS_GPU_EMU_SMEM_DEFAULT (64 << 10)
#define FFS_GPU_EMU_SMEM_MAX (64 << 10)
#define FFS_GPU_EMU_SMS 304
#else
#define FFS_GPU_EMU_WARP_SIZE 32
#define FFS_GPU_EMU_SMEM_DEFAULT (48 << 10)
#define FFS_GPU_EMU_SMEM_MAX (227 << 10)
#define FFS_GPU_EMU_SMS 132
#endif

// ---- host API ---------------------------------------------------------------------------

struct FfsEmuStream;
struct FfsEmuEvent;
struct FfsEmuGraph;

enum gpuError_t : int {
  gpuSuccess = 0,
  gpuErrorInvalidValue = 1,
  gpuErrorMemoryAllocation = 2,
  gpuErrorInvalidConfiguration = 9,
  gpuErrorInsufficientDriver = 35,  // never returned: the emulator is its own driver
  gpuErrorNotSupported = 801,
  gpuErrorStreamCaptureUnsupported = 900,
  gpuErrorStreamCaptureInvalidated = 901,
};
enum gpuMemcpyKind : int {
  gpuMemcpyHostToHost = 0,
  gpuMemcpyHostToDevice = 1,
  gpuMemcpyDeviceToHost = 2,
  gpuMemcpyDeviceToDevice = 3,
  gpuMemcpyDefault = 4
};
enum gpuFuncAttribute : int { gpuFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum gpuDeviceAttr : int { gpuDevAttrMultiProcessorCount = 16, gpuDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum gpuStreamCaptureMode : int { gpuStreamCaptureModeThreadLocal = 1 };
constexpr unsigned gpuStreamNonBlocking = 1;
constexpr unsigned gpuEventDisableTiming = 2;

using gpuStream_t = FfsEmuStream *;
using gpuEvent_t = FfsEmuEvent *;
using gpuGraph_t = FfsEmuGraph *;
using gpuGraphExec_t = FfsEmuGraph *;

struct gpuDeviceProp_t {
  char name[256];
  int multiProcessorCount;
  size_t totalGlobalMem;
  size_t sharedMemPerBlockOptin;
  int major, minor;
};

const char *gpuGetErrorString(gpuError_t e);
gpuError_t gpuGetLastError();
gpuError_t gpuPeekAtLastError();
gpuError_t gpuGetDeviceCount(int *n);
gpuError_t gpuSetDevice(int d);
gpuError_t gpuGetDevice(int *d);
gpuError_t gpuDeviceGetAttribute(int *v, gpuDeviceAttr a, int d);
gpuError_t gpuGetDeviceProperties(gpuDeviceProp_t *p, int d);
gpuError_t gpuMemGetInfo(size_t *free_bytes, size_t *total_bytes);
gpuError_t gpuDeviceSynchronize();
gpuError_t gpuMalloc(void **p, size_t n);
template <typename T>
inline gpuError_t gpuMalloc(T **p, size_t n) {
  return gpuMalloc(reinterpret_cast<void **>(p), n);
}
gpuError_t gpuFree(void *p);
gpuError_t gpuMallocHost(void **p, size_t n);
template <typename T>
inline gpuError_t gpuMallocHost(T **p, size_t n) {
  return gpuMallocHost(reinterpret_cast<void **>(p), n);
}
gpuError_t gpuFreeHost(void *p);
gpuError_t gpuMemcpy(void *dst, const void *src, size_t n, gpuMemcpyKind k);
gpuError_t gpuMemcpyAsync(void *dst, const void *src, size_t n, gpuMemcpyKind k, gpuStream_t s = nullptr);
gpuError_t gpuMemset(void *p, int v, size_t n);
gpuError_t gpuMemsetAsync(void *p, int v, size_t n, gpuStream_t s = nullptr);
gpuError_t gpuStreamCreateWithFlags(gpuStream_t *s, unsigned flags);
gpuError_t gpuStreamDestroy(gpuStream_t s);
gpuError_t gpuStreamSynchronize(gpuStream_t s);
gpuError_t gpuEventCreate(gpuEvent_t *e);
gpuError_t gpuEventCreateWithFlags(gpuEvent_t *e, unsigned flags);
gpuError_t gpuEventRecord(gpuEvent_t e, gpuStream_t s = nullptr);
gpuError_t gpuEventSynchronize(gpuEvent_t e);
gpuError_t gpuEventElapsedTime(float *ms, gpuEvent_t a, gpuEvent_t b);
gpuError_t gpuEventDestroy(gpuEvent_t e);
gpuError_t gpuStreamBeginCapture(gpuStream_t s, gpuStreamCaptureMode m);
gpuError_t gpuStreamEndCapture(gpuStream_t s, gpuGraph_t *g);
gpuError_t gpuGraphInstantiate(gpuGraphExec_t *x, gpuGraph_t g, unsigned long long flags = 0);
gpuError_t gpuGraphLaunch(gpuGraphExec_t x, gpuStream_t s);
gpuError_t gpuGraphExecDestroy(gpuGraphExec_t x);
gpuError_t gpuGraphDestroy(gpuGraph_t g);
gpuError_t gpuFuncSetAttribute(const void *kernel, gpuFuncAttribute a, int v);

// ---- 16-bit floating-point types: the toolkit's, whose conversions also run on the host ----
using gpu_half = __half;
using gpu_bf16 = __nv_bfloat16;

namespace ffspec::emu {

using Dim3 = ::dim3;

// Runs (or, while s is being captured, records) work in stream order.
void enqueue(gpuStream_t s, std::function<void()> work);
// Test hook: the next kernel launched into a stream capture fails as a launch can on a GPU
// only under capture (e.g. a module the driver loads lazily): the launch returns
// gpuErrorStreamCaptureInvalidated, and the capture ends invalidated.
void fail_next_captured_launch();
// Checks the configuration (setting the launch error on failure) and enqueues the grid.
void launch_grid(const void *kernel, const char *where, Dim3 grid, Dim3 block, size_t smem, gpuStream_t s,
                 std::function<void()> body);

template <typename... P, typename... A>
void launch(void (*kernel)(P...), const char *where, Dim3 grid, Dim3 block, size_t smem, gpuStream_t s,
            A &&...args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  // Converted to the parameter types and copied now, as a CUDA launch does.
  auto copied = std::tuple<std::decay_t<P>...>(static_cast<std::decay_t<P>>(std::forward<A>(args))...);
  launch_grid(reinterpret_cast<const void *>(kernel), where, grid, block, smem, s,
              [kernel, copied] { std::apply(kernel, copied); });
}

// ---- inside a kernel ---------------------------------------------------------------------
const Dim3 &thread_idx();
const Dim3 &block_idx();
const Dim3 &block_dim();
const Dim3 &grid_dim();
unsigned char *dynamic_smem();
void sync_threads();
void sync_warp();  // every live lane of the warp arrives before any goes on
// Warp exchange: every live lane of the calling warp passes v; returns lane src's value.
uint64_t warp_exchange(uint64_t v, int src_lane_xor, int src_lane_up);

template <typename T>
T shfl_xor(T v, int mask) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  b = warp_exchange(b, mask, 0);
  T r;
  std::memcpy(&r, &b, sizeof(T));
  return r;
}
template <typename T>
T shfl_up(T v, int delta) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  b = warp_exchange(b, 0, delta);
  T r;
  std::memcpy(&r, &b, sizeof(T));
  return r;
}

}  // namespace ffspec::emu

// CUDA's headers above defined these for their host compiler; kernels compiled here mean ours.
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#undef __align__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define threadIdx (::ffspec::emu::thread_idx())
#define blockIdx (::ffspec::emu::block_idx())
#define blockDim (::ffspec::emu::block_dim())
#define gridDim (::ffspec::emu::grid_dim())
#define __syncthreads() ::ffspec::emu::sync_threads()

// Device functions the kernels call.
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
// Fibers never run at the same time: a plain read-modify-write is atomic here.
template <typename T, typename U>
inline T atomicAdd(T *p, U v) {  // v converted as CUDA's overloads do
  const T old = *p;
  *p = old + static_cast<T>(v);
  return old;
}
template <typename T, typename U>
inline T atomicMin(T *p, U v) {  // v converted as CUDA's overloads do
  const T old = *p;
  *p = std::min(old, static_cast<T>(v));
  return old;
}
template <typename T, typename U>
inline T atomicMax(T *p, U v) {  // v converted as CUDA's overloads do
  const T old = *p;
  *p = std::max(old, static_cast<T>(v));
  return old;
}
using std::max;
using std::min;
