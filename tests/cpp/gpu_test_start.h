// Start of the GPU test programs: seeds the generator from argv[1] or the clock (printed, so a
// run can be repeated) and says whether there is a GPU; without one it prints the
// "SKIP: no GPU (...)" line tests/test_gpu.py reads.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "kernels/gpu/gpu_compat.h"

inline bool gpu_test_start(int argc, char **argv, std::mt19937_64 &rng) {
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10)
                                 : static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  rng.seed(seed);
  int devices = 0;
  const gpuError_t e = gpuGetDeviceCount(&devices);
  if (e != gpuSuccess || devices == 0) {
    std::printf("SKIP: no GPU (%s)\n", e != gpuSuccess ? gpuGetErrorString(e) : "no device found");
    return false;
  }
  gpuDeviceProp_t prop{};
  if (gpuGetDeviceProperties(&prop, 0) == gpuSuccess)
    std::printf("device: %s, warp size %d, shared memory per block %d KiB%s\n", prop.name, FFS_WARP_SIZE,
                FFS_MAX_SMEM_BYTES >> 10,
#ifdef FFS_GPU_EMU
                " (src/kernels/gpu/emu; cases scaled down)"
#else
                ""
#endif
    );
  return true;
}
