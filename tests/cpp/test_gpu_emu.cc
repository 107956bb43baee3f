// The GPU emulator's own checks (src/kernels/gpu/emu): that it finds what it claims to find.
// Run by tests/test_gpu.py once in order and once with FFS_GPU_EMU_SCHEDULE=shuffled; prints
// "N passed, M failed".
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "expect.h"
#include "kernels/gpu/gpu_compat.h"

namespace {

constexpr int kThreads = 256;

// A shared-memory race: each thread reads its left neighbour's slot in the phase it is
// written, with no barrier between. Run in thread order it reads the value written; run any
// other way it may read the poison the emulator fills shared memory with.
__global__ void neighbour_race_kernel(int *out) {
  FFS_DYNAMIC_SMEM(smem);
  int *s = reinterpret_cast<int *>(smem);
  const int t = threadIdx.x;
  s[t] = t;
  out[t] = t > 0 ? s[t - 1] : -1;
}

// The same with the barrier: every schedule must give t - 1.
__global__ void neighbour_synced_kernel(int *out) {
  FFS_DYNAMIC_SMEM(smem);
  int *s = reinterpret_cast<int *>(smem);
  const int t = threadIdx.x;
  s[t] = t;
  __syncthreads();
  out[t] = t > 0 ? s[t - 1] : -1;
}

// A warp-wide sum by shuffles: lanes must all arrive whatever the order they run in.
__global__ void warp_sum_kernel(float *out) {
  const float v = ffspec::gpu::warp_sum(static_cast<float>(threadIdx.x % FFS_WARP_SIZE));
  out[threadIdx.x] = v;
}

std::vector<int> run(void (*k)(int *)) {
  int *d = nullptr;
  gpuMalloc(&d, kThreads * sizeof(int));
  FFS_LAUNCH(k, 1, kThreads, kThreads * sizeof(int), nullptr, d);
  std::vector<int> h(kThreads);
  gpuMemcpy(h.data(), d, kThreads * sizeof(int), gpuMemcpyDeviceToHost);
  gpuFree(d);
  return h;
}

__global__ void big_smem_kernel(int *out) {
  FFS_DYNAMIC_SMEM(smem);
  out[0] = smem[0];
}

}  // namespace

int main() {
  const char *sched = std::getenv("FFS_GPU_EMU_SCHEDULE");
  const bool shuffled = sched && std::strncmp(sched, "shuffled", 8) == 0;
  std::printf("schedule: %s, warp size %d\n", shuffled ? "shuffled" : "in order", FFS_WARP_SIZE);

  // The synced version is right under every schedule.
  const auto ok = run(neighbour_synced_kernel);
  int right = 0;
  for (int t = 0; t < kThreads; t++) right += ok[t] == (t > 0 ? t - 1 : -1);
  EXPECT(right == kThreads);

  // The racy one: right in order (the emulator runs threads sequentially), and wrong for some
  // threads when shuffled: the shuffled schedule is what exposes such races.
  const auto racy = run(neighbour_race_kernel);
  int same = 0;
  for (int t = 0; t < kThreads; t++) same += racy[t] == (t > 0 ? t - 1 : -1);
  std::printf("race kernel: %d of %d threads read the in-order value\n", same, kThreads);
  if (shuffled) {
    EXPECT(same < kThreads);
  } else {
    EXPECT(same == kThreads);
  }

  // Shuffles: every lane gets the warp's sum under any schedule.
  {
    float *d = nullptr;
    gpuMalloc(&d, kThreads * sizeof(float));
    FFS_LAUNCH(warp_sum_kernel, 1, kThreads, 0, nullptr, d);
    std::vector<float> h(kThreads);
    gpuMemcpy(h.data(), d, kThreads * sizeof(float), gpuMemcpyDeviceToHost);
    gpuFree(d);
    const float want = FFS_WARP_SIZE * (FFS_WARP_SIZE - 1) / 2.0f;
    int good = 0;
    for (float v : h) good += v == want;
    EXPECT(good == kThreads);
  }

  // Launch checks: dynamic shared memory above the default limit needs the attribute, and is
  // capped at the device's maximum.
  {
    int *d = nullptr;
    gpuMalloc(&d, sizeof(int));
    (void)gpuGetLastError();
    const size_t over = FFS_GPU_EMU_SMEM_DEFAULT + 16;
    FFS_LAUNCH(big_smem_kernel, 1, 32, over, nullptr, d);
    EXPECT(gpuGetLastError() != gpuSuccess);
    const gpuError_t e = gpuFuncSetAttribute(reinterpret_cast<const void *>(&big_smem_kernel),
                                             gpuFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(over));
    if (over <= FFS_GPU_EMU_SMEM_MAX) {  // H100: opt in up to 227 KiB
      EXPECT(e == gpuSuccess);
      FFS_LAUNCH(big_smem_kernel, 1, 32, over, nullptr, d);
      EXPECT(gpuGetLastError() == gpuSuccess);
    } else {  // wave64: 64 KiB is both the default and the most
      EXPECT(e != gpuSuccess);
    }
    (void)gpuGetLastError();
    // The device's maximum is a cap the attribute cannot raise.
    EXPECT(gpuFuncSetAttribute(reinterpret_cast<const void *>(&big_smem_kernel),
                               gpuFuncAttributeMaxDynamicSharedMemorySize, FFS_GPU_EMU_SMEM_MAX + 16) != gpuSuccess);
    (void)gpuGetLastError();
    FFS_LAUNCH(big_smem_kernel, 1, 32, static_cast<size_t>(FFS_GPU_EMU_SMEM_MAX) + 16, nullptr, d);
    EXPECT(gpuGetLastError() != gpuSuccess);
    FFS_LAUNCH(big_smem_kernel, 1, 1025, 0, nullptr, d);  // more than 1024 threads
    EXPECT(gpuGetLastError() != gpuSuccess);
    gpuFree(d);
  }
  return report();
}
