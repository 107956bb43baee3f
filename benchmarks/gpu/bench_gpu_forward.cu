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
//     of the two the engine should use at which M;
//   - where a decode step's time goes: each kernel of a layer and of the LM head at the
//     shape, timed alone, summed over the layers, against the step with and without CUDA
//     graphs (the difference is what launches and host work cost); decode attention on the
//     decode kernel and on the tiled one, as GB/s of the K/V cache read.
// Each step is what the engine's GPU task runs: host checks and one upload of the batch,
// every kernel, greedy tokens drawn on the device and copied back, one synchronization.
//
//   bench_gpu_forward [--models 1b,7b] [--dtype f16|bf16|f32] [--batches 1,8,32]
//                     [--trees 1,2,4,8,16,32,64] [--tree-batches 1,4,8] [--ctx 512]
//                     [--steps 64] [--copy-mib 2048] [--json FILE]
// Also built over the GPU emulator (bench_gpu_forward_emu), where tests/test_gpu.py runs it at
// the "tiny" shape to check the harness itself (every table, every record) before a GPU session.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
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
  } else if (name == "tiny") {  // the benchmark's own check, on the GPU emulator (tests/test_gpu.py)
    c.vocab_size = 512, c.hidden_size = 64, c.intermediate_size = 128, c.num_layers = 2, c.num_heads = 4,
    c.num_kv_heads = 2;
  } else if (name == "smollm2") {  // SmolLM2-135M
    c.vocab_size = 49152, c.hidden_size = 576, c.intermediate_size = 1536, c.num_layers = 30, c.num_heads = 9,
    c.num_kv_heads = 3, c.rope_theta = 100000.0, c.tie_word_embeddings = true;
  } else {
    std::fprintf(stderr, "unknown model shape %s (1b, 7b, smollm2, tiny)\n", name.c_str());
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
    else if (dt == DType::F16) static_cast<gpu_half *>(dst)[i] = gpu_float2half(v);
    else static_cast<gpu_bf16 *>(dst)[i] = gpu_float2bf16(v);
  }
}
__global__ void fill_one(void *dst, size_t n, DType dt) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    if (dt == DType::F32) static_cast<float *>(dst)[i] = 1.0f;
    else if (dt == DType::F16) static_cast<gpu_half *>(dst)[i] = gpu_float2half(1.0f);
    else static_cast<gpu_bf16 *>(dst)[i] = gpu_float2bf16(1.0f);
  }
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Mean ms per call of `once` (work enqueued on st) over `reps` back-to-back calls, after 5
// warm-up calls, timed with events on st.
template <typename F>
double ms_per_call(gpuStream_t st, F &&once, int reps) {
  for (int i = 0; i < 5; i++) once();
  gpuEvent_t e0, e1;
  CHECK(gpuEventCreate(&e0));
  CHECK(gpuEventCreate(&e1));
  CHECK(gpuEventRecord(e0, st));
  for (int i = 0; i < reps; i++) once();
  CHECK(gpuEventRecord(e1, st));
  CHECK(gpuEventSynchronize(e1));
  float ms = 0;
  CHECK(gpuEventElapsedTime(&ms, e0, e1));
  CHECK(gpuEventDestroy(e0));
  CHECK(gpuEventDestroy(e1));
  return static_cast<double>(ms) / reps;
}

gpu::Blas *blas_or_exit(const gpu::BlasOptions &opts) {
  std::string error;
  gpu::Blas *blas = gpu::blas_create(opts, &error);
  if (!blas) {
    std::fprintf(stderr, "%s\n", error.c_str());
    std::exit(1);
  }
  return blas;
}

// Device-to-device copy bandwidth in GB/s, counting bytes read and written.
double copy_bandwidth(size_t mib) {
  const size_t bytes = mib << 20;
  void *a = nullptr, *b = nullptr;
  CHECK(gpuMalloc(&a, bytes));
  CHECK(gpuMalloc(&b, bytes));
  CHECK(gpuMemset(a, 1, bytes));
  gpuEvent_t e0, e1;
  CHECK(gpuEventCreate(&e0));
  CHECK(gpuEventCreate(&e1));
  for (int i = 0; i < 3; i++) CHECK(gpuMemcpy(b, a, bytes, gpuMemcpyDeviceToDevice));
  CHECK(gpuEventRecord(e0, 0));
  const int reps = 20;
  for (int i = 0; i < reps; i++) CHECK(gpuMemcpy(b, a, bytes, gpuMemcpyDeviceToDevice));
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
  std::unique_ptr<gpu::GpuLlama> llama_cublas;    // the same weights and cache, cuBLAS at every M
  std::unique_ptr<gpu::GpuLlama> llama_nographs;  // the same, every kernel launched each step
  std::unique_ptr<gpu::GpuLlama> llama_tiled;     // the same, attention never on tensor cores
  int max_requests, max_seq;

  ~Bench() {
    llama.reset();
    llama_cublas.reset();
    llama_nographs.reset();
    llama_tiled.reset();
    if (weights) gpuFree(weights);
    if (kv) gpuFree(kv);
  }
  size_t weight_bytes() const { return layout.total * es; }
  // KV bytes a decode step reads per sequence at context length n (all layers, K and V).
  size_t kv_read_bytes(int n) const { return static_cast<size_t>(n) * cfg.num_layers * 2 * cfg.kv_dim() * es; }

  enum Variant { kDefault, kCublasOnly, kNoGraphs, kTiledAttention };
  void step(const StepBatch &b, std::vector<int32_t> *tokens, Variant v = kDefault) {
    tokens->resize(b.num_rows());
    gpu::GpuStepOutput out;
    out.tokens = tokens->data();
    std::string error;
    gpu::GpuLlama *g = v == kCublasOnly       ? llama_cublas.get()
                       : v == kNoGraphs       ? llama_nographs.get()
                       : v == kTiledAttention ? llama_tiled.get()
                                              : llama.get();
    if (!g->step(b, out, &error)) {
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
  FFS_LAUNCH(fill_random, 1024, 256, 0, nullptr, B.weights, B.layout.total, dt, 0.02f, 0x5EEDull);
  auto one = [&](size_t off, size_t n) { FFS_LAUNCH(fill_one, 64, 256, 0, nullptr, static_cast<char *>(B.weights) + off * B.es, n, dt); };
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
  p.blas.small_m_rows = gpu::kSmallLinearMaxRows;
  p.cuda_graphs = false;
  if (B.llama_cublas) B.llama_nographs = gpu::GpuLlama::create(p, &error);
  p.cuda_graphs = true;
  p.attention_tensor_cores = false;
  if (B.llama_nographs) B.llama_tiled = gpu::GpuLlama::create(p, &error);
  if (!B.llama || !B.llama_cublas || !B.llama_nographs || !B.llama_tiled) {
    std::fprintf(stderr, "%s\n", error.c_str());
    std::exit(1);
  }
}

// A decode step's kernels at batch b (context ctx), each timed alone over 100 back-to-back
// launches: µs per call, and the sum over the layers plus the head, to set against the
// measured step (graphs on and off). The kernels run on scratch buffers and layer 0's weights;
// the cache is the benchmark's (its first b slots hold ctx positions).
template <typename Emit>
void bench_breakdown(const Bench &B, int b, int ctx, double step_ms, double step_ms_nographs, Emit emit,
                     const char *dname, const std::string &model) {
  const LlamaConfig &c = B.cfg;
  const int H = c.hidden_size, I = c.intermediate_size, Q = c.q_dim(), KV = c.kv_dim(), QKV = c.qkv_dim();
  const int V = c.vocab_size;
  const bool small = b <= gpu::kSmallLinearMaxRows;
  const LayerLayout &L = B.layout.layers[0];
  auto w = [&](size_t off) { return static_cast<const char *>(B.weights) + off * B.es; };
  gpu::Blas *blas = blas_or_exit(gpu::BlasOptions{});
  void *res, *h, *h2, *qkv, *attn, *gu, *act, *logits, *ws;
  int32_t *ints, *out;
  const size_t e = B.es;
  CHECK(gpuMalloc(&res, b * H * e));
  CHECK(gpuMalloc(&h, b * H * e));
  CHECK(gpuMalloc(&h2, b * H * e));
  CHECK(gpuMalloc(&qkv, b * QKV * e));
  CHECK(gpuMalloc(&attn, b * Q * e));
  CHECK(gpuMalloc(&gu, b * 2 * I * e));
  CHECK(gpuMalloc(&act, b * I * e));
  CHECK(gpuMalloc(&logits, static_cast<size_t>(b) * V * e));
  CHECK(gpuMalloc(&ints, 4 * b * sizeof(int32_t)));
  CHECK(gpuMalloc(&out, b * sizeof(int32_t)));
  FFS_LAUNCH(fill_random, 64, 256, 0, nullptr, res, b * H, B.dt, 1.0f, 3);
  FFS_LAUNCH(fill_random, 64, 256, 0, nullptr, h2, b * H, B.dt, 1.0f, 4);
  FFS_LAUNCH(fill_random, 64, 256, 0, nullptr, qkv, b * QKV, B.dt, 1.0f, 5);
  FFS_LAUNCH(fill_random, 64, 256, 0, nullptr, h, b * H, B.dt, 1.0f, 6);
  FFS_LAUNCH(fill_random, 64, 256, 0, nullptr, act, b * I, B.dt, 1.0f, 8);
  // slots 0..b-1, position/cache position ctx, prefix length ctx + 1, row index r
  std::vector<int32_t> host(4 * b);
  for (int r = 0; r < b; r++) host[r] = r, host[b + r] = ctx, host[2 * b + r] = ctx + 1, host[3 * b + r] = r;
  CHECK(gpuMemcpy(ints, host.data(), host.size() * sizeof(int32_t), gpuMemcpyHostToDevice));
  const int32_t *d_slot = ints, *d_pos = ints + b, *d_plen = ints + 2 * b, *d_rows = ints + 3 * b;
  float *inv = nullptr;
  CHECK(gpuMalloc(&inv, B.inv_freq.size() * sizeof(float)));
  CHECK(gpuMemcpy(inv, B.inv_freq.data(), B.inv_freq.size() * sizeof(float), gpuMemcpyHostToDevice));
  const size_t half_cache = static_cast<size_t>(B.max_requests) * B.max_seq * KV * e;
  char *ck = static_cast<char *>(B.kv), *cv = ck + half_cache;
  gpu::AttentionArgs aa{qkv, QKV, ck, cv, B.max_seq, c.num_heads, c.num_kv_heads, c.head_dim, d_plen, d_slot,
                        nullptr, nullptr, b, attn, B.dt, 1};
  aa.kv_splits = gpu::attention_auto_splits(aa);
  CHECK(gpuMalloc(&ws, std::max<size_t>(1, gpu::attention_workspace_floats(aa)) * sizeof(float)));
  aa.partial = aa.kv_splits > 1 ? static_cast<float *>(ws) : nullptr;
  gpuStream_t st = nullptr;
  CHECK(gpuStreamCreateWithFlags(&st, gpuStreamNonBlocking));
  auto lin = [&](const void *x, size_t w_off, void *y, int N, int K) {
    if (gpu::linear(blas, x, w(w_off), nullptr, y, b, N, K, B.dt, st) != gpu::BlasStatus::Ok) {
      std::fprintf(stderr, "linear: %s\n", gpu::blas_last_error(blas));
      std::exit(1);
    }
  };
  struct K {
    const char *name;
    bool per_layer;
    std::function<void()> run;
  };
  std::vector<K> kernels = {
      {"add_rms_norm", true, [&] { CHECK(gpu::add_rms_norm(res, h2, w(L.attn_norm), 1e-5f, h, b, H, B.dt, st)); }},
      {"qkv", true, [&] { lin(h, L.wqkv, qkv, QKV, H); }},
      {"rope_kv_store", true,
       [&] {
         CHECK(gpu::rope_kv_store(qkv, b, QKV, c.num_heads, c.num_kv_heads, c.head_dim, d_pos, inv, d_slot, d_pos, ck,
                                  cv, B.max_seq, B.dt, st));
       }},
      {"attention", true, [&] { CHECK(gpu::attention(aa, st)); }},
      {"o", true, [&] { lin(attn, L.wo, h2, H, Q); }},
      {"add_rms_norm", true, [&] { CHECK(gpu::add_rms_norm(res, h2, w(L.ffn_norm), 1e-5f, h, b, H, B.dt, st)); }},
      {small ? "gate_up+silu" : "gate_up", true,
       [&] {
         if (small) CHECK(gpu::linear_swiglu_small(h, w(L.w_gate_up), act, b, I, H, B.dt, st));
         else lin(h, L.w_gate_up, gu, 2 * I, H);
       }},
      {"down", true, [&] { lin(act, L.w_down, h2, H, I); }},
      {"final norm", false,
       [&] { CHECK(gpu::add_rms_norm(res, h2, w(B.layout.final_norm), 1e-5f, h, b, H, B.dt, st)); }},
      {"row gather", false, [&] { CHECK(gpu::embedding(d_rows, h, h2, b, H, b, B.dt, st)); }},
      {"lm_head", false, [&] { lin(h2, B.layout.lm_head, logits, V, H); }},
      {"argmax", false, [&] { CHECK(gpu::argmax_rows(logits, V, b, V, out, B.dt, st)); }},
  };
  if (!small)  // fused into gate_up at small batches
    kernels.insert(kernels.begin() + 7, K{"silu_mul", true, [&] { CHECK(gpu::silu_mul(gu, act, b, I, B.dt, st)); }});
  std::printf("decode step at batch %d, each kernel alone (attention: %d split(s) of the context):\n", b,
              aa.kv_splits);
  double total_us = 0;
  for (const K &k : kernels) {
    const double us = 1e3 * ms_per_call(st, k.run, 100), n = k.per_layer ? c.num_layers : 1;
    total_us += us * n;
    std::printf("  %-14s %9.2f us x %2.0f = %9.1f us\n", k.name, us, n, us * n);
    emit("{\"kind\": \"kernel\", \"model\": \"%s\", \"dtype\": \"%s\", \"batch\": %d, \"ctx\": %d, \"kernel\": \"%s\", "
         "\"us\": %.6g, \"per_step\": %d}",
         model.c_str(), dname, b, ctx, k.name, us, static_cast<int>(n));
  }
  {
    // Decode attention both ways: the decode kernel (what the engine runs) and the tiled one
    // (FFS_ATTENTION_DECODE=0), as GB/s of the K/V cache they read.
    gpu::AttentionArgs tiled = aa;
    tiled.decode_kernel = false;
    const double us_dec = 1e3 * ms_per_call(st, [&] { CHECK(gpu::attention(aa, st)); }, 100);
    const double us_tiled = 1e3 * ms_per_call(st, [&] { CHECK(gpu::attention(tiled, st)); }, 100);
    const double kv_gb = 2.0 * b * (ctx + 1) * KV * e / 1e9;
    std::printf("  attention per layer: decode kernel %.2f us (%.0f GB/s of K/V), tiled kernel %.2f us (%.0f GB/s)\n",
                us_dec, kv_gb / (us_dec * 1e-6), us_tiled, kv_gb / (us_tiled * 1e-6));
    emit("{\"kind\": \"attention\", \"model\": \"%s\", \"dtype\": \"%s\", \"batch\": %d, \"ctx\": %d, "
         "\"decode_us\": %.6g, \"tiled_us\": %.6g, \"kv_gb\": %.6g}",
         model.c_str(), dname, b, ctx, us_dec, us_tiled, kv_gb);
  }
  std::printf("  sum of kernels %.3f ms; the step: %.3f ms with graphs, %.3f ms without (host, launches, "
              "gaps: %.1f%% / %.1f%%)\n",
              total_us / 1e3, step_ms, step_ms_nographs, 100.0 * (step_ms - total_us / 1e3) / step_ms,
              100.0 * (step_ms_nographs - total_us / 1e3) / step_ms_nographs);
  emit("{\"kind\": \"breakdown\", \"model\": \"%s\", \"dtype\": \"%s\", \"batch\": %d, \"ctx\": %d, "
       "\"kernels_ms\": %.6g, \"step_ms\": %.6g, \"step_ms_no_graphs\": %.6g}",
       model.c_str(), dname, b, ctx, total_us / 1e3, step_ms, step_ms_nographs);
  CHECK(gpuStreamDestroy(st));
  for (void *p : {res, h, h2, qkv, attn, gu, act, logits, ws, static_cast<void *>(ints), static_cast<void *>(out),
                  static_cast<void *>(inv)})
    gpuFree(p);
  gpu::blas_destroy(blas);
}

// Each projection of layer 0 (and the LM head) at M rows: ms per call and GB/s of weights read,
// through linear_small / linear_swiglu_small and through cuBLAS (gate_up + silu_mul there).
template <typename Emit>
void bench_projections(const Bench &B, const std::vector<int> &rows, Emit emit, const char *dname,
                       const std::string &model) {
  const LlamaConfig &c = B.cfg;
  const int H = c.hidden_size, I = c.intermediate_size, Q = c.q_dim();
  const LayerLayout &L = B.layout.layers[0];
  struct Proj {
    const char *name;
    size_t w_off;
    int N, K;
    bool swiglu;
  };
  const Proj projs[] = {{"qkv", L.wqkv, c.qkv_dim(), H, false},
                        {"o", L.wo, H, Q, false},
                        {"gate_up+silu", L.w_gate_up, I, H, true},
                        {"down", L.w_down, H, I, false},
                        {"lm_head", B.layout.lm_head, c.vocab_size, H, false}};
  gpu::BlasOptions cublas_only;
  cublas_only.small_m_rows = 0;
  gpu::Blas *blas = blas_or_exit(cublas_only);
  const int max_m = *std::max_element(rows.begin(), rows.end());
  const size_t max_n = static_cast<size_t>(std::max({2 * I, c.vocab_size, c.qkv_dim()}));
  void *x = nullptr, *y = nullptr, *act = nullptr;
  CHECK(gpuMalloc(&x, static_cast<size_t>(max_m) * std::max(H, I) * B.es));
  CHECK(gpuMalloc(&y, static_cast<size_t>(max_m) * max_n * B.es));
  CHECK(gpuMalloc(&act, static_cast<size_t>(max_m) * I * B.es));
  FFS_LAUNCH(fill_random, 256, 256, 0, nullptr, x, static_cast<size_t>(max_m) * std::max(H, I), B.dt, 1.0f, 7);
  gpuStream_t st = nullptr;
  CHECK(gpuStreamCreateWithFlags(&st, gpuStreamNonBlocking));
  std::printf("projections (layer 0, LM head): ms per call and GB/s of weights, small-M kernel vs cuBLAS\n");
  std::printf("%-13s %3s %10s %9s %10s %9s\n", "projection", "M", "small ms", "GB/s", "cuBLAS ms", "GB/s");
  for (const Proj &pr : projs) {
    const void *w = static_cast<const char *>(B.weights) + pr.w_off * B.es;
    const double wbytes = static_cast<double>(pr.swiglu ? 2 * pr.N : pr.N) * pr.K * B.es;
    for (int M : rows) {
      if (M > gpu::kSmallLinearMaxRows) continue;
      const int N = pr.swiglu ? 2 * pr.N : pr.N;  // weight rows
      const double ms_small = ms_per_call(
          st,
          [&] {
            if (pr.swiglu) CHECK(gpu::linear_swiglu_small(x, w, act, M, pr.N, pr.K, B.dt, st));
            else CHECK(gpu::linear_small(x, w, nullptr, y, M, N, pr.K, B.dt, st));
          },
          50);
      const double ms_cublas = ms_per_call(
          st,
          [&] {
            if (gpu::linear(blas, x, w, nullptr, y, M, N, pr.K, B.dt, st) != gpu::BlasStatus::Ok) {
              std::fprintf(stderr, "%s M%d: %s\n", pr.name, M, gpu::blas_last_error(blas));
              std::exit(1);
            }
            if (pr.swiglu) CHECK(gpu::silu_mul(y, act, M, pr.N, B.dt, st));
          },
          50);
      std::printf("%-13s %3d %10.4f %9.0f %10.4f %9.0f\n", pr.name, M, ms_small, wbytes / (ms_small * 1e6), ms_cublas,
                  wbytes / (ms_cublas * 1e6));
      emit("{\"kind\": \"projection\", \"model\": \"%s\", \"dtype\": \"%s\", \"projection\": \"%s\", \"M\": %d, "
           "\"small_ms\": %.5g, \"small_gb_s\": %.5g, \"cublas_ms\": %.5g, \"cublas_gb_s\": %.5g}",
           model.c_str(), dname, pr.name, M, ms_small, wbytes / (ms_small * 1e6), ms_cublas,
           wbytes / (ms_cublas * 1e6));
    }
  }
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
  int ctx = 512, steps = 64, copy_mib = 2048;
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
    } else if (a == "--copy-mib") {
      copy_mib = std::atoi(v);
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
  const double bw = copy_bandwidth(static_cast<size_t>(std::max(1, copy_mib)));
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
    bench_projections(B, {1, 2, 4, 8}, emit, dname, name);
    std::printf("%6s %7s %10s %10s %12s %10s\n", "batch", "gemm", "ms/step", "tokens/s", "roofline ms", "fraction");
    std::vector<std::pair<int, std::pair<double, double>>> step_times;  // batch -> (graphs, no graphs) ms
    for (int b : batches) {
      // The default (small-M kernels at b <= 8, graphs), then cuBLAS only where that differs,
      // then without graphs (for the breakdown below).
      double ms_default = 0;
      for (Bench::Variant var : {Bench::kDefault, Bench::kCublasOnly, Bench::kNoGraphs}) {
        if (var == Bench::kCublasOnly && b > gpu::kSmallLinearMaxRows) continue;
        const char *gemm = var == Bench::kNoGraphs                                      ? "nograph"
                           : var == Bench::kCublasOnly || b > gpu::kSmallLinearMaxRows ? "cublas"
                                                                                         : "small";
        auto decode = [&](int s) {  // one token for each of the b sequences at position ctx + s
          StepBatch d;
          for (int r = 0; r < b; r++) add_chunk(d, r, ctx + s, 1, rnd, B.cfg.vocab_size, true);
          return d;
        };
        for (int s = 0; s < 5; s++) B.step(decode(s), &toks, var);  // warm-up (and the graph's capture)
        // Median of the steps (positions ctx .. ctx+steps-1).
        std::vector<double> ts;
        for (int s = 0; s < steps; s++) {
          const StepBatch d = decode(s);
          const double t0 = now_ms();
          B.step(d, &toks, var);
          ts.push_back(now_ms() - t0);
        }
        std::sort(ts.begin(), ts.end());
        const double ms = ts[ts.size() / 2];
        if (var == Bench::kDefault) ms_default = ms;
        if (var == Bench::kNoGraphs) step_times.push_back({b, {ms_default, ms}});
        const double bytes = B.weight_bytes() + static_cast<double>(b) * B.kv_read_bytes(ctx + steps / 2);
        const double roof = bytes / (bw * 1e9) * 1e3;
        std::printf("%6d %7s %10.3f %10.1f %12.3f %9.1f%%\n", b, gemm, ms, b * 1e3 / ms, roof, 100.0 * roof / ms);
        emit("{\"kind\": \"decode\", \"model\": \"%s\", \"dtype\": \"%s\", \"batch\": %d, \"gemm\": \"%s\", \"ctx\": %d, "
             "\"ms_per_step\": %.6g, \"tokens_per_s\": %.6g, \"roofline_ms\": %.6g, \"roofline_fraction\": %.6g}",
             name.c_str(), dname, b, gemm, ctx, ms, b * 1e3 / ms, roof, roof / ms);
      }
    }
    for (const auto &bt : step_times)
      bench_breakdown(B, bt.first, ctx + steps / 2, bt.second.first, bt.second.second, emit, dname, name);
    std::printf("verify step (chain trees at context %d), ms (in brackets: attention on the tiled kernel, no "
                "tensor cores):\n%6s", ctx, "tree");
    for (int b : tree_batches) std::printf(" %17s%-3d", "batch ", b);
    std::printf("\n");
    for (int n : trees) {
      std::printf("%6d", n);
      for (int b : tree_batches) {
        std::vector<double> ts, ts_tiled;
        for (int rep = 0; rep < 24; rep++) {
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
          const bool tiled = rep % 2;  // alternating, so drift affects both alike
          const double t0 = now_ms();
          B.step(v, &toks, tiled ? Bench::kTiledAttention : Bench::kDefault);
          if (rep >= 4) (tiled ? ts_tiled : ts).push_back(now_ms() - t0);
        }
        std::sort(ts.begin(), ts.end());
        std::sort(ts_tiled.begin(), ts_tiled.end());
        const double ms = ts[ts.size() / 2], ms_tiled = ts_tiled[ts_tiled.size() / 2];
        std::printf(" %9.3f (%7.3f)", ms, ms_tiled);
        emit("{\"kind\": \"verify\", \"model\": \"%s\", \"dtype\": \"%s\", \"batch\": %d, \"tree_tokens\": %d, \"ctx\": %d, "
             "\"ms_per_step\": %.6g, \"ms_per_step_tiled_attention\": %.6g}",
             name.c_str(), dname, b, n, ctx, ms, ms_tiled);
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
