// The GPU backend's loader against the CPU one: for each checkpoint named on the command line
// and each data type, the pieces load_weights_streamed hands out tile the flat layout exactly
// once (a GPU weights instance is written only through them: a gap would stay uninitialized),
// and put together they are bit-identical to what load_weights writes.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "expect.h"
#include "models/llama.h"
#include "weights/checkpoint.h"

using namespace ffspec;

int main(int argc, char **argv) {
  if (argc < 2) {
    std::printf("usage: test_weights CHECKPOINT...\n");
    return 2;
  }
  for (int a = 1; a < argc; a++) try {
    const std::string path = argv[a];
    auto ck = Checkpoint::open(path);
    const LlamaConfig cfg = LlamaConfig::from_json(ck->config(), ck->generation_config(), path);
    const LlamaLayout layout = LlamaLayout::make(cfg);
    for (ffs_data_type_t dt : {FFS_DT_FLOAT, FFS_DT_HALF, FFS_DT_BFLOAT16}) {
      std::vector<float> ref(layout.total, NAN), got(layout.total, NAN);
      load_weights(*ck, cfg, layout, dt, ref.data());
      std::vector<uint8_t> hits(layout.total, 0);
      size_t calls = 0;
      bool in_range = true;
      load_weights_streamed(*ck, cfg, layout, dt, [&](size_t offset, const float *data, size_t n) {
        calls++;
        if (offset + n > layout.total) {
          in_range = false;
          return;
        }
        std::memcpy(got.data() + offset, data, n * sizeof(float));
        for (size_t i = 0; i < n; i++) hits[offset + i]++;
      });
      size_t gaps = 0, twice = 0, nan = 0;
      for (size_t i = 0; i < layout.total; i++) {
        gaps += hits[i] == 0;
        twice += hits[i] > 1;
        nan += std::isnan(ref[i]);
      }
      const bool same = std::memcmp(ref.data(), got.data(), layout.total * sizeof(float)) == 0;
      std::printf("%s dtype %d: %zu pieces, %zu values, gaps %zu, written twice %zu, NaN in load_weights %zu, %s\n",
                  path.c_str(), static_cast<int>(dt), calls, layout.total, gaps, twice, nan,
                  same ? "identical" : "DIFFERENT");
      EXPECT(in_range);
      EXPECT(calls > 0);
      EXPECT(gaps == 0);
      EXPECT(twice == 0);
      EXPECT(nan == 0);
      EXPECT(same);
    }
  } catch (const std::exception &e) {
    std::printf("FAIL %s: %s\n", argv[a], e.what());
    EXPECT(false);
  }
  return report();
}
