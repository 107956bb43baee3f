// The GPU forward pass (GpuLlama, no Legion) at LLaMA shapes with random weights made on the
// device (none can be downloaded there), in one run:
//   - the device's copy bandwidth (cudaMemcpy device-to-device, bytes read + written), which
//     sets the roofline: a decode step must read every weight and each sequence's KV cache;
//   - incremental decoding ms/step and tokens/s at several batch sizes, as a fraction of that
//     roofline;
//   - tree-verification step latency against tree size (1..64 tokens) and batch size: the
//     cost curve the speculation's tree shapes must respect;
//   - each projection of the shape at 1..8 rows through the small-M kernels (linear_small,
//     the fused gate_up + SwiGLU) and through cuBLAS, as GB/s of weights read, and decoding
//     at batch <= 8 both ways (GpuLlamaParams::blas.small_m_rows = 0: cuBLAS only): which
//     of the two the engine should use at which M.
// Each step is what the engine's GPU task runs: host checks and one upload of the batch,
// every kernel, greedy tokens drawn on the device and copied back, one synchronization.
//
//   bench_gpu_forward [--models 1b,7b] [--dtype f16|bf16|f32] [--batches 1,8,32]
//                     [--trees 1,2,4,8,16,32,64] [--tree-batches 1,4,8] [--ctx 512]
//                     [--steps 64] [--json FILE]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/gpu/gpu_compat.h"
#include "kernels/gpu/kernels.h"
#include "models/llama.h"
#include "ops/gpu/llama_forward_gpu.h"
#include "serve/batch.h"

using namespace ffspec;
using ffspec::gpu::DType;

namespace {

#define CHECK(call)                                                                        \
  do {                                                                                     \
    const gpuError_t e_ = (call);                                                          \
    if (e_ != gpuSuccess) {                                                                \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, gpuGetErrorString(e_)); \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

std::vector<int> parse_list(const char *s) {
  std::vector<int> v;
  for (const char *p = s; *p;) {
    v.push_back(std::atoi(p));
    while (*p && *p != ',') p++;
    if (*p == ',') p++;
  }
  return v;
}

// LLaMA-shaped configurations: TinyLlama-1.1B's and Llama-2-7B's dimensions.
LlamaConfig shape(const std::string &name) {
  LlamaConfig c;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 32000;
  c.rms_norm_eps = 1e-5f;
  c.max_position_embeddings = 4096;
  if (name == "1b") {
    c.hidden_size = 2048, c.intermediate_size = 5632, c.num_layers = 22, c.num_heads = 32, c.num_kv_heads = 4;
  } else if (name == "7b") {
    c.hidden_size = 4096, c.intermediate_size = 11008, c.num_layers = 32, c.num_heads = 32, c.num_kv_heads = 32;
  } else if (name == "smollm2") {  // SmolLM2-135M
    c.vocab_size = 49152, c.hidden_size = 576, c.intermediate_size = 1536, c.num_layers = 30, c.num_heads = 9,
    c.num_kv_heads = 3, c.rope_theta = 100000.0, c.tie_word_embeddings = true;
  } else {
    std::fprintf(stderr, "unknown model shape %s (1b, 7b, smollm2)\n", name.c_str());
    std::exit(2);
  }
  c.head_dim = c.hidden_size / c.num_heads;
  return c;
}

// U(-scale, scale) from a hash of the index, stored in the dtype; norms are set to 1 after.
__global__ void fill_random(void *dst, size_t n, DType dt, float scale, uint64_t seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
    x ^= x >> 31, x *= 0xBF58476D1CE4E5B9ull, x ^= x >> 29;
    const float v = scale * (2.0f * static_cast<float>(x >> 40) / 16777216.0f - 1.0f);
    if (dt == DType::F32) static_cast<float *>(dst)[i] = v;
    else if (dt == DType::F16) static_cast<gpu_half *>(dst)[i] = __float2half_rn(v);
    else static_cast<gpu_bf16 *>(dst)[i] = __float2bfloat16_rn(v);
  }
}
__global__ void fill_one(void *dst, size_t n, DType dt) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    if (dt == DType::F32) static_cast<float *>(dst)[i] = 1.0f;
    else if (dt == DType::F16) static_cast<gpu_half *>(dst)[i] = __float2half_rn(1.0f);
    else static_cast<gpu_bf16 *>(dst)[i] = __float2bfloat16_rn(1.0f);
  }
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Device-to-device copy bandwidth in GB/s, counting bytes read and written.
double copy_bandwidth() {
  const size_t bytes = size_t(2) << 30;
  void *a = nullptr, *b = nullptr;
  CHECK(gpuMalloc(&a, bytes));
  CHECK(gpuMalloc(&b, bytes));
  CHECK(gpuMemset(a, 1, bytes));
  gpuEvent_t e0, e1;
  CHECK(gpuEventCreate(&e0));
  CHECK(gpuEventCreate(&e1));
  for (int i = 0; i < 3; i++) CHECK(gpuMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
  CHECK(gpuEventRecord(e0, 0));
  const int reps = 20;
  for (int i = 0; i < reps; i++) CHECK(gpuMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
  CHECK(gpuEventRecord(e1, 0));
  CHECK(gpuEventSynchronize(e1));
  float ms = 0;
  CHECK(gpuEventElapsedTime(&ms, e0, e1));
  gpuFree(a);
  gpuFree(b);
  return 2.0 * bytes * reps / (ms * 1e-3) / 1e9;
}

struct Bench {
  LlamaConfig cfg;
  LlamaLayout layout;
  std::vector<float> inv_freq;
  DType dt;
  size_t es;
  void *weights = nullptr, *kv = nullptr;
  std::unique_ptr<gpu::GpuLlama> llama;
  std::unique_ptr<gpu::GpuLlama> llama_cublas;  // the same weights and cache, cuBLAS at every M
  int max_requests, max_seq;

  ~Bench() {
    llama.reset();
    llama_cublas.reset();
    if (weights) gpuFree(weights);
    if (kv) gpuFree(kv);
  }
  size_t weight_bytes() const { return layout.total * es; }
  // KV bytes a decode step reads per sequence at context length n (all layers, K and V).
  size_t kv_read_bytes(int n) const { return static_cast<size_t>(n) * cfg.num_layers * 2 * cfg.kv_dim() * es; }

  void step(const StepBatch &b, std::vector<int32_t> *tokens, bool cublas_only = false) {
    tokens->resize(b.num_rows());
    gpu::GpuStepOutput out;
    out.tokens = tokens->data();
    std::string error;
    if (!(cublas_only ? llama_cublas : llama)->step(b, out, &error)) {
      std::fprintf(stderr, "step failed: %s\n", error.c_str());
      std::exit(1);
    }
  }
};

void setup(Bench &B, const std::string &name, DType dt, int max_requests, int max_seq, int max_tokens) {
  B.cfg = shape(name);
  B.layout = LlamaLayout::make(B.cfg);
  B.inv_freq = B.cfg.rope_inv_freq();
  B.dt = dt;
  B.es = gpu::dtype_size(dt);
  B.max_requests = max_requests;
  B.max_seq = max_seq;
  CHECK(gpuMalloc(&B.weights, B.weight_bytes()));
  fill_random<<<1024, 256>>>(B.weights, B.layout.total, dt, 0.02f, 0x5EEDull);
  auto one = [&](size_t off, size_t n) { fill_one<<<64, 256>>>(static_cast<char *>(B.weights) + off * B.es, n, dt); };
  for (const LayerLayout &L : B.layout.layers) {
    one(L.attn_norm, B.cfg.hidden_size);
    one(L.ffn_norm, B.cfg.hidden_size);
  }
  one(B.layout.final_norm, B.cfg.hidden_size);
  const size_t kv_bytes =
      static_cast<size_t>(B.cfg.num_layers) * 2 * max_requests * static_cast<size_t>(max_seq) * B.cfg.kv_dim() * B.es;
  CHECK(gpuMalloc(&B.kv, kv_bytes));
  CHECK(gpuMemset(B.kv, 0, kv_bytes));
  CHECK(gpuDeviceSynchronize());
  gpu::GpuLlamaParams p;
  p.cfg = &B.cfg;
  p.layout = &B.layout;
  p.inv_freq = B.inv_freq.data();
  p.device_weights = B.weights;
  p.device_kv = B.kv;
  p.dtype = dt;
  p.max_requests = max_requests;
  p.max_seq = max_seq;
  p.max_tokens = max_tokens;
  std::string error;
  B.llama = gpu::GpuLlama::create(p, &error);
  p.blas.small_m_rows = 0;
  if (B.llama) B.llama_cublas = gpu::GpuLlama::create(p, &error);
  if (!B.llama || !B.llama_cublas) {
    std::fprintf(stderr, "%s\n", error.c_str());
    std::exit(1);
  }
}

// Each projection of layer 0 (and the LM head) at M rows: ms per call and GB/s of weights read,
// through linear_small / linear_swiglu_small and through cuBLAS (gate_up + silu_mul there).
template <typename Emit>
void bench_projections(const Bench &B, const std::vector<int> &rows, Emit emit, const char *dname,
                       const std::string &model) {
  const LlamaConfig &c = B.cfg;
  const int H = c.hidden_size, I = c.intermediate_size, Q = c.num_heads * c.head_dim, KV = c.kv_dim();
  const LayerLayout &L = B.layout.layers[0];
  struct Proj {
    const char *name;
    size_t w_off;
    int N, K;
    bool swiglu;
  };
  const Proj projs[] = {{"qkv", L.wqkv, Q + 2 * KV, H, false},
                        {"o", L.wo, H, Q, false},
                        {"gate_up+silu", L.w_gate_up, I, H, true},
                        {"down", L.w_down, H, I, false},
                        {"lm_head", B.layout.lm_head, c.vocab_size, H, false}};
  std::string error;
  gpu::BlasOptions cublas_opts;
  cublas_opts.small_m_rows = 0;
  gpu::Blas *blas = gpu::blas_create(cublas_opts, &error);
  if (!blas) {
    std::fprintf(stderr, "%s\n", error.c_str());
    std::exit(1);
  }
  const int max_m = *std::max_element(rows.begin(), rows.end());
  const size_t max_n = static_cast<size_t>(std::max({2 * I, c.vocab_size, Q + 2 * KV}));
  void *x = nullptr, *y = nullptr, *act = nullptr;
  CHECK(gpuMalloc(&x, static_cast<size_t>(max_m) * std::max(H, I) * B.es));
  CHECK(gpuMalloc(&y, static_cast<size_t>(max_m) * max_n * B.es));
  CHECK(gpuMalloc(&act, static_cast<size_t>(max_m) * I * B.es));
  fill_random<<<256, 256>>>(x, static_cast<size_t>(max_m) * std::max(H, I), B.dt, 1.0f, 7);
  gpuStream_t st = nullptr;
  CHECK(gpuStreamCreateWithFlags(&st, gpuStreamNonBlocking));
  gpuEvent_t e0, e1;
  CHECK(gpuEventCreate(&e0));
  CHECK(gpuEventCreate(&e1));
  std::printf("projections (layer 0, LM head): ms per call and GB/s of weights, small-M kernel vs cuBLAS\n");
  std::printf("%-13s %3s %10s %9s %10s %9s\n", "projection", "M", "small ms", "GB/s", "cuBLAS ms", "GB/s");
  for (const Proj &pr : projs) {
    const void *w = static_cast<const char *>(B.weights) + pr.w_off * B.es;
    const double wbytes = static_cast<double>(pr.swiglu ? 2 * pr.N : pr.N) * pr.K * B.es;
    for (int M : rows) {
      if (M > gpu::kSmallLinearMaxRows) continue;
      auto time = [&](bool small) {
        auto once = [&] {
          if (pr.swiglu && small) {
            CHECK(gpu::linear_swiglu_small(x, w, act, M, pr.N, pr.K, B.dt, st));
            return;
          }
          const int N = pr.swiglu ? 2 * pr.N : pr.N;
          const gpu::BlasStatus bs = small ? (gpu::linear_small(x, w, nullptr, y, M, N, pr.K, B.dt, st) == gpuSuccess
                                                  ? gpu::BlasStatus::Ok
                                                  : gpu::BlasStatus::LaunchFailed)
                                           : gpu::linear(blas, x, w, nullptr, y, M, N, pr.K, B.dt, st);
          if (bs != gpu::BlasStatus::Ok) {
            std::fprintf(stderr, "%s M%d: %s\n", pr.name, M, gpu::blas_last_error(blas));
            std::exit(1);
          }
          if (pr.swiglu) CHECK(gpu::silu_mul(y, act, M, pr.N, B.dt, st));
        };
        for (int i = 0; i < 5; i++) once();
        const int reps = 50;
        CHECK(gpuEventRecord(e0, st));
        for (int i = 0; i < reps; i++) once();
        CHECK(gpuEventRecord(e1, st));
        CHECK(gpuEventSynchronize(e1));
        float ms = 0;
        CHECK(gpuEventElapsedTime(&ms, e0, e1));
        return static_cast<double>(ms) / reps;
      };
      const double ms_small = time(true), ms_cublas = time(false);
      std::printf("%-13s %3d %10.4f %9.0f %10.4f %9.0f\n", pr.name, M, ms_small, wbytes / (ms_small * 1e6), ms_cublas,
                  wbytes / (ms_cublas * 1e6));
      emit("{\"kind\": \"projection\", \"model\": \"%s\", \"dtype\": \"%s\", \"projection\": \"%s\", \"M\": %d, "
           "\"small_ms\": %.5f, \"small_gb_s\": %.1f, \"cublas_ms\": %.5f, \"cublas_gb_s\": %.1f}",
           model.c_str(), dname, pr.name, M, ms_small, wbytes / (ms_small * 1e6), ms_cublas,
           wbytes / (ms_cublas * 1e6));
    }
  }
  CHECK(gpuEventDestroy(e0));
  CHECK(gpuEventDestroy(e1));
  CHECK(gpuStreamDestroy(st));
  gpuFree(x);
  gpuFree(y);
  gpuFree(act);
  gpu::blas_destroy(blas);
}

// Plain causal tokens: n tokens of `slot` at positions [pos, pos + n), the last one's logits.
void add_chunk(StepBatch &b, int slot, int pos, int n, uint32_t &rnd, int vocab, bool all_rows) {
  for (int i = 0; i < n; i++) {
    rnd = rnd * 1664525u + 1013904223u;
    if (all_rows || i == n - 1) {
      b.logit_rows.push_back(static_cast<int32_t>(b.tokens.size()));
      b.samples.push_back(SampleSpec{});
    }
    b.tokens.push_back(static_cast<int32_t>(rnd % vocab));
    b.positions.push_back(pos + i);
    b.slots.push_back(slot);
  }
}

}  // namespace

int main(int argc, char **argv) {
  std::vector<std::string> models = {"1b", "7b"};
  DType dt = DType::F16;
  std::vector<int> batches = {1, 8, 32}, trees = {1, 2, 4, 8, 16, 32, 64}, tree_batches = {1, 4, 8};
  int ctx = 512, steps = 64;
  const char *json_path = nullptr;
  for (int i = 1; i < argc; i++) {
    const std::string a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : "";
    if (a == "--models") {
      models.clear();
      for (const char *p = v; *p;) {
        const char *q = std::strchr(p, ',');
        models.emplace_back(p, q ? q - p : std::strlen(p));
        p = q ? q + 1 : p + std::strlen(p);
      }
    } else if (a == "--dtype") {
      dt = !std::strcmp(v, "f32") ? DType::F32 : !std::strcmp(v, "bf16") ? DType::BF16 : DType::F16;
    } else if (a == "--batches") {
      batches = parse_list(v);
    } else if (a == "--trees") {
      trees = parse_list(v);
    } else if (a == "--tree-batches") {
      tree_batches = parse_list(v);
    } else if (a == "--ctx") {
      ctx = std::atoi(v);
    } else if (a == "--steps") {
      steps = std::atoi(v);
    } else if (a == "--json") {
      json_path = v;
    } else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
    i++;
  }
  int devices = 0;
  if (gpuGetDeviceCount(&devices) != gpuSuccess || devices == 0) {
    std::printf("SKIP: no GPU\n");
    return 0;
  }
  gpuDeviceProp_t prop;
  CHECK(gpuGetDeviceProperties(&prop, 0));
  const double bw = copy_bandwidth();
  std::printf("device %s, %d SMs; copy bandwidth %.0f GB/s (read + write)\n", prop.name, prop.multiProcessorCount, bw);
  FILE *js = json_path ? std::fopen(json_path, "w") : nullptr;
  if (js) std::fprintf(js, "{\"device\": \"%s\", \"copy_gb_s\": %.1f, \"results\": [\n", prop.name, bw);
  bool first = true;
  auto emit = [&](const char *fmt, auto... args) {
    if (!js) return;
    std::fprintf(js, "%s", first ? "  " : ",\n  ");
    std::fprintf(js, fmt, args...);
    first = false;
  };
  std::vector<int> batches_small;  // the projection table's row counts
  for (int m : {1, 2, 4, 8})
    if (m <= gpu::kSmallLinearMaxRows) batches_small.push_back(m);
  const int max_b = std::max(*std::max_element(batches.begin(), batches.end()),
                             *std::max_element(tree_batches.begin(), tree_batches.end()));
  const int max_tree = *std::max_element(trees.begin(), trees.end());
  const char *dname = dt == DType::F32 ? "fp32" : dt == DType::F16 ? "fp16" : "bf16";
  for (const std::string &name : models) {
    Bench B;
    const int max_seq = ctx + std::max(steps, max_tree) + 8;
    setup(B, name, dt, max_b, max_seq, std::max(ctx, max_b * max_tree));
    const double params = static_cast<double>(B.layout.total);
    std::printf("\n== %s-shaped (%.2fB parameters, %s, %.2f GB of weights), context %d ==\n", name.c_str(),
                params / 1e9, dname, B.weight_bytes() / 1e9, ctx);
    uint32_t rnd = 12345;
    std::vector<int32_t> toks;
    // Prefill every slot once (the cache then holds ctx positions per slot).
    for (int s = 0; s < max_b; s++) {
      StepBatch pre;
      add_chunk(pre, s, 0, ctx, rnd, B.cfg.vocab_size, false);
      const double t0 = now_ms();
      B.step(pre, &toks);
      if (s == 0) std::printf("prefill of %d tokens: %.2f ms\n", ctx, now_ms() - t0);
    }
    bench_projections(B, batches_small, emit, dname, name);
    std::printf("%6s %7s %10s %10s %12s %10s\n", "batch", "gemm", "ms/step", "tokens/s", "roofline ms", "fraction");
    for (int b : batches) {
      // The default (small-M kernels at b <= 8), then cuBLAS only where that differs.
      for (bool cublas_only : {false, true}) {
        if (cublas_only && b > gpu::kSmallLinearMaxRows) continue;
        const char *gemm = b > gpu::kSmallLinearMaxRows ? "cublas" : cublas_only ? "cublas" : "small";
        for (int s = 0; s < 5; s++) {  // warm-up (and the graph's capture)
          StepBatch d;
          for (int r = 0; r < b; r++) add_chunk(d, r, ctx + s, 1, rnd, B.cfg.vocab_size, true);
          B.step(d, &toks, cublas_only);
        }
        // Median of the steps (positions ctx .. ctx+steps-1).
        std::vector<double> ts;
        for (int s = 0; s < steps; s++) {
          StepBatch d;
          for (int r = 0; r < b; r++) add_chunk(d, r, ctx + s, 1, rnd, B.cfg.vocab_size, true);
          const double t0 = now_ms();
          B.step(d, &toks, cublas_only);
          ts.push_back(now_ms() - t0);
        }
        std::sort(ts.begin(), ts.end());
        const double ms = ts[ts.size() / 2];
        const double bytes = B.weight_bytes() + static_cast<double>(b) * B.kv_read_bytes(ctx + steps / 2);
        const double roof = bytes / (bw * 1e9) * 1e3;
        std::printf("%6d %7s %10.3f %10.1f %12.3f %9.1f%%\n", b, gemm, ms, b * 1e3 / ms, roof, 100.0 * roof / ms);
        emit("{\"kind\": \"decode\", \"model\": \"%s\", \"dtype\": \"%s\", \"batch\": %d, \"gemm\": \"%s\", \"ctx\": %d, "
             "\"ms_per_step\": %.4f, \"tokens_per_s\": %.2f, \"roofline_ms\": %.4f, \"roofline_fraction\": %.4f}",
             name.c_str(), dname, b, gemm, ctx, ms, b * 1e3 / ms, roof, roof / ms);
      }
    }
    std::printf("verify step (chain trees at context %d), ms:\n%6s", ctx, "tree");
    for (int b : tree_batches) std::printf(" %9s%-3d", "batch ", b);
    std::printf("\n");
    for (int n : trees) {
      std::printf("%6d", n);
      for (int b : tree_batches) {
        std::vector<double> ts;
        for (int rep = 0; rep < 12; rep++) {
          StepBatch v;
          for (int r = 0; r < b; r++) {
            for (int j = 0; j < n; j++) {
              rnd = rnd * 1664525u + 1013904223u;
              v.logit_rows.push_back(static_cast<int32_t>(v.tokens.size()));
              v.samples.push_back(SampleSpec{});
              v.tokens.push_back(static_cast<int32_t>(rnd % B.cfg.vocab_size));
              v.positions.push_back(ctx + j);
              v.slots.push_back(r);
              v.cache_pos.push_back(ctx + j);
              v.prefix_len.push_back(ctx);
              v.tree_base.push_back(ctx);
              v.tree_mask.push_back(j == 63 ? ~0ull : (1ull << (j + 1)) - 1);
            }
          }
          const double t0 = now_ms();
          B.step(v, &toks);
          if (rep >= 2) ts.push_back(now_ms() - t0);
        }
        std::sort(ts.begin(), ts.end());
        const double ms = ts[ts.size() / 2];
        std::printf(" %12.3f", ms);
        emit("{\"kind\": \"verify\", \"model\": \"%s\", \"dtype\": \"%s\", \"batch\": %d, \"tree_tokens\": %d, \"ctx\": %d, "
             "\"ms_per_step\": %.4f}",
             name.c_str(), dname, b, n, ctx, ms);
      }
      std::printf("\n");
    }
  }
  if (js) {
    std::fprintf(js, "\n]}\n");
    std::fclose(js);
  }
  return 0;
}
