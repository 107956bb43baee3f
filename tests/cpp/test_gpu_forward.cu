// GpuLlama (src/ops/gpu/llama_forward_gpu.h) end to end against llama_forward_cpu on tiny
// random LLaMA-family models (GQA 4/2, 2 layers, head_dim 64, vocab 512; one plain LLaMA and
// one Qwen2-like with QKV bias and tied embeddings). One scenario per model and dtype, the
// same batches on both backends: a two-request prefill (one request also asking for a middle
// row), three decode steps, a tree-verification step (root + 6-node tree beside a plain
// decode token), then the step that commits the accepted path (KvMoves) and decodes after it.
// Bounds, per logits row with scale s = max|ref| of the row:
//   fp32: |gpu - ref| <= 1e-4 * max(|ref|, s)   (both accumulate in fp32 in other orders);
//         the whole KV cache after the last step likewise against its max;
//   fp16 / bf16 (weights rounded to the dtype on both sides, activations rounded only on the
//         GPU): ||gpu - ref||_2 / ||ref||_2 <= 1e-2 / 5e-2 per step.
// Tokens drawn on the GPU (sample_rows) must equal the CPU sampler on the GPU's own logits.
// Without a GPU: "SKIP: no GPU (...)", exit 0. Prints "N passed, M failed".
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "ops/gpu/llama_forward_gpu.h"
#include "ops/llama_forward.h"
#include "serve/sampling.h"
#include "serve/token_tree.h"

#include "expect.h"
#include "gpu_test_start.h"

using namespace ffspec;
using gpu::DType;

namespace {

std::mt19937_64 rng;
const char *dname(DType dt) { return dt == DType::F32 ? "f32" : dt == DType::F16 ? "f16" : "bf16"; }

float round_to(float x, DType dt) {
  if (dt == DType::F16) return gpu_half2float(gpu_float2half(x));
  if (dt == DType::BF16) return gpu_bf162float(gpu_float2bf16(x));
  return x;
}

struct TinyModel {
  LlamaConfig cfg;
  LlamaLayout layout;
  std::vector<float> inv_freq, weights;
};

// Random weights, rounded to dt: U(-1, 1) embeddings, norms around 1, projections
// U(-1, 1) / sqrt(fan_in) so activations stay O(1) through the layers.
TinyModel make_tiny(bool qwen_like, DType dt) {
  TinyModel m;
  LlamaConfig &c = m.cfg;
  c.architecture = qwen_like ? "Qwen2ForCausalLM" : "LlamaForCausalLM";
  c.vocab_size = 512;
  c.hidden_size = 256;
  c.intermediate_size = 688;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = qwen_like ? 1000000.0 : 10000.0;
  c.qkv_bias = qwen_like;
  c.tie_word_embeddings = qwen_like;
  m.layout = LlamaLayout::make(c);
  m.inv_freq = c.rope_inv_freq();
  m.weights.assign(m.layout.total, 0.f);
  auto fill = [&](size_t off, size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> U(lo, hi);
    for (size_t i = 0; i < n; i++) m.weights[off + i] = round_to(U(rng), dt);
  };
  const size_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const float sh = 1.0f / std::sqrt(static_cast<float>(H)), sq = 1.0f / std::sqrt(static_cast<float>(c.q_dim()));
  const float si = 1.0f / std::sqrt(static_cast<float>(I));
  fill(m.layout.embed, V * H, -1, 1);
  for (const LayerLayout &L : m.layout.layers) {
    fill(L.attn_norm, H, 0.8f, 1.2f);
    fill(L.wqkv, static_cast<size_t>(c.qkv_dim()) * H, -sh, sh);
    if (c.qkv_bias) fill(L.bqkv, c.qkv_dim(), -0.5f, 0.5f);
    fill(L.wo, H * c.q_dim(), -sq, sq);
    fill(L.ffn_norm, H, 0.8f, 1.2f);
    fill(L.w_gate_up, 2 * I * H, -sh, sh);
    fill(L.w_down, H * I, -si, si);
  }
  fill(m.layout.final_norm, H, 0.8f, 1.2f);
  if (!c.tie_word_embeddings) fill(m.layout.lm_head, V * H, -sh * 4, sh * 4);
  return m;
}

// The same model on both backends, fed the same batches.
struct Pair {
  const TinyModel &m;
  DType dt;
  std::string name;
  // max_seq 512: decode steps here have few blocks, so attention splits the keys (up to 4
  // ranges of 128 positions; most of them empty at these lengths).
  int max_requests = 3, max_seq = 512;
  std::vector<float> cpu_kv;
  std::unique_ptr<gpu::GpuLlama> g;

  Pair(const TinyModel &model, DType d, std::string n) : m(model), dt(d), name(std::move(n)) {}

  // Runs b on both; checks logits and GPU tokens; returns the CPU logits [R, vocab].
  std::vector<float> step(const StepBatch &b, const std::string &what) {
    const int R = static_cast<int>(b.num_rows()), V = m.cfg.vocab_size;
    std::vector<float> ref(static_cast<size_t>(R) * V), got(ref.size(), NAN);
    std::vector<int32_t> tokens(R, -1);
    ModelView view{&m.cfg, &m.layout, m.inv_freq.data(), m.weights.data(), cpu_kv.data(), max_requests, max_seq};
    llama_forward_cpu(view, b, ref.data());
    std::string error;
    const bool ok = g->step(b, gpu::GpuStepOutput{got.data(), tokens.data()}, &error);
    if (!ok) std::printf("FAIL %s %s: %s\n", name.c_str(), what.c_str(), error.c_str());
    EXPECT(ok);
    for (int r = 0; r < R; r++) {
      const float *gr = &got[static_cast<size_t>(r) * V], *rr = &ref[static_cast<size_t>(r) * V];
      char label[200];
      std::snprintf(label, sizeof label, "%s %s row %d (token %d)", name.c_str(), what.c_str(), r, b.logit_rows[r]);
      compare_row(label, gr, rr, V);
      // The GPU's draw from its own logits equals the CPU sampler's on them.
      const int32_t want = sample_token(gr, V, b.samples[r]);
      if (tokens[r] != want) std::printf("FAIL %s: gpu token %d, cpu sampler %d\n", label, tokens[r], want);
      EXPECT(tokens[r] == want);
    }
    return ref;
  }

  void compare_row(const char *label, const float *got, const float *ref, int n) {
    double scale = 0, err2 = 0, ref2 = 0, worst = 0;
    int at = 0;
    for (int i = 0; i < n; i++) scale = std::max(scale, std::fabs(static_cast<double>(ref[i])));
    bool ok = scale > 0;
    for (int i = 0; i < n; i++) {
      const double e = std::fabs(static_cast<double>(got[i]) - ref[i]);
      err2 += e * e;
      ref2 += static_cast<double>(ref[i]) * ref[i];
      if (!(e <= worst)) {
        worst = e;
        at = i;
      }
      if (dt == DType::F32 && !(e <= 1e-4 * std::max(std::fabs(static_cast<double>(ref[i])), scale))) ok = false;
    }
    const double rel = std::sqrt(err2 / std::max(ref2, 1e-30));
    if (dt != DType::F32) ok = ok && rel <= (dt == DType::F16 ? 1e-2 : 5e-2);
    if (!ok)
      std::printf("FAIL %s: max abs error %.3g at %d (gpu %.7g, ref %.7g; row scale %.3g), rel L2 %.3g\n", label,
                  worst, at, got[at], ref[at], scale, rel);
    EXPECT(ok);
  }
};

SampleSpec greedy() { return SampleSpec{}; }
SampleSpec sampled(uint64_t counter) {
  SampleSpec s;
  s.do_sample = 1;
  s.temperature = 0.8f;  // untruncated: the GPU draws in token-id order like the CPU
  s.seed = 1234;
  s.counter = counter;
  return s;
}
void push(StepBatch &b, int32_t tok, int pos, int slot) {
  b.tokens.push_back(tok);
  b.positions.push_back(pos);
  b.slots.push_back(slot);
}
void push_plain_tree(StepBatch &b, int32_t tok, int pos, int slot) {  // a causal token in a tree batch
  push(b, tok, pos, slot);
  b.cache_pos.push_back(pos);
  b.prefix_len.push_back(pos + 1);
  b.tree_base.push_back(0);
  b.tree_mask.push_back(0);
}
void row(StepBatch &b, int index, const SampleSpec &s) {
  b.logit_rows.push_back(index);
  b.samples.push_back(s);
}
int32_t argmax_of(const std::vector<float> &logits, int r, int V) {
  return argmax(&logits[static_cast<size_t>(r) * V], V);
}

// small: steps of <= 8 tokens (decode, the verify step) run the small-M projections and the
// fused gate_up + SwiGLU; otherwise every projection goes through cuBLAS.
// capture_fails (emulator only): the first capture's first launch fails, as one can only
// under capture on a GPU; the step must still be right (run eagerly), and graphs go off with
// the reason in graph_error().
void run_scenario(bool qwen_like, DType dt, bool graphs, bool small = true, bool capture_fails = false) {
  const TinyModel m = make_tiny(qwen_like, dt);
  Pair p(m, dt,
         std::string(qwen_like ? "qwen2-like " : "llama ") + dname(dt) + (graphs ? " graphs" : " no-graphs") +
             (small ? "" : " cublas-only") + (capture_fails ? " capture-fails" : ""));
  const int V = m.cfg.vocab_size;
  p.cpu_kv.assign(static_cast<size_t>(m.cfg.num_layers) * 2 * p.max_requests * p.max_seq * m.cfg.kv_dim(), 0.f);
  gpu::GpuLlamaParams gp;
  gp.cfg = &m.cfg;
  gp.layout = &m.layout;
  gp.inv_freq = m.inv_freq.data();
  gp.weights = m.weights.data();
  gp.dtype = dt;
  gp.max_requests = p.max_requests;
  gp.max_seq = p.max_seq;
  gp.max_tokens = 4;  // the prefill grows the scratch
  gp.cuda_graphs = graphs;
  if (!small) gp.blas.small_m_rows = 0;
  std::string error;
  p.g = gpu::GpuLlama::create(gp, &error);
  if (!p.g) std::printf("FAIL %s create: %s\n", p.name.c_str(), error.c_str());
  EXPECT(p.g != nullptr);
  if (!p.g) return;
#ifdef FFS_GPU_EMU
  if (capture_fails) emu::fail_next_captured_launch();
#endif
  std::uniform_int_distribution<int> tok(0, V - 1);

  // Prefill: slot 0 (20 tokens) and slot 2 (13 tokens); rows: a middle token of slot 0, the
  // last of each (one of them sampled).
  StepBatch b;
  for (int i = 0; i < 20; i++) push(b, tok(rng), i, 0);
  for (int i = 0; i < 13; i++) push(b, tok(rng), i, 2);
  row(b, 7, greedy());
  row(b, 19, greedy());
  row(b, 32, sampled(0));
  std::vector<float> logits = p.step(b, "prefill");
  int32_t next0 = argmax_of(logits, 1, V), next2 = argmax_of(logits, 2, V);
  int len0 = 20, len2 = 13;  // cached positions per slot

  for (int s = 0; s < 3; s++) {
    StepBatch d;
    push(d, next0, len0, 0);
    push(d, next2, len2, 2);
    row(d, 0, greedy());
    row(d, 1, sampled(1 + s));
    logits = p.step(d, "decode " + std::to_string(s));
    next0 = argmax_of(logits, 0, V);
    next2 = argmax_of(logits, 1, V);
    len0++;
    len2++;
  }
  // The three decode steps share one shape: with graphs, the first ran eagerly, the second
  // was captured, the third replayed it (each step above was still compared with the CPU).
  if (capture_fails) {
    if (p.g->num_graphs() != 0 || p.g->graph_error().find("capture") == std::string::npos)
      std::printf("FAIL %s: %zu graphs after a failed capture, graph_error \"%s\"\n", p.name.c_str(),
                  p.g->num_graphs(), p.g->graph_error().c_str());
    EXPECT(p.g->num_graphs() == 0 && p.g->graph_error().find("capture") != std::string::npos);
  } else {
    if (graphs && p.g->num_graphs() < 1) std::printf("FAIL %s: no CUDA graph captured\n", p.name.c_str());
    EXPECT(!graphs || p.g->num_graphs() >= 1);
    EXPECT(graphs || p.g->num_graphs() == 0);
    EXPECT(p.g->graph_error().empty());
  }

  // Verification: slot 0's pending token (the root, at L = len0) and a 6-node tree after it
  // at cache positions L+1+j; slot 2 decodes a plain token in the same batch.
  TokenTree tree;
  const int parents[6] = {-1, -1, 0, 0, 2, 1};
  for (int j = 0; j < 6; j++) {
    TreeNode n;
    n.token = tok(rng);
    n.parent = parents[j];
    n.depth = n.parent < 0 ? 1 : tree.nodes()[n.parent].depth + 1;
    tree.add(n);
  }
  const int L = len0;
  StepBatch v;
  push_plain_tree(v, next0, L, 0);
  row(v, 0, greedy());
  for (int j = 0; j < tree.size(); j++) {
    push(v, tree.nodes()[j].token, L + tree.nodes()[j].depth, 0);
    v.cache_pos.push_back(L + 1 + j);
    v.prefix_len.push_back(L + 1);
    v.tree_base.push_back(L + 1);
    v.tree_mask.push_back(tree.path_mask(j));
    row(v, static_cast<int>(v.tokens.size()) - 1, greedy());
  }
  push_plain_tree(v, next2, len2, 2);
  row(v, static_cast<int>(v.tokens.size()) - 1, sampled(10));
  logits = p.step(v, "tree verify");
  next2 = argmax_of(logits, static_cast<int>(v.num_rows()) - 1, V);
  len2++;

  // Accept the path 0 -> 2 -> 4: their K/V move from L+1+{0,2,4} to L+1+{0,1,2}; the next
  // step decodes after them (position L+4), with slot 2's next token.
  const int accepted[3] = {0, 2, 4};
  StepBatch n;
  for (int k = 0; k < 3; k++) n.commits.push_back({0, L + 1 + accepted[k], L + 1 + k});
  push(n, argmax_of(logits, 1 + accepted[2], V), L + 4, 0);
  push(n, next2, len2, 2);
  row(n, 0, greedy());
  row(n, 1, greedy());
  p.step(n, "after commit");

  // The whole cache (fp32): every written position, moved or not, as the CPU has it.
  if (dt == DType::F32) {
    std::vector<float> gkv(p.cpu_kv.size());
    EXPECT(p.g->kv_cache_bytes() == gkv.size() * sizeof(float));
    EXPECT(gpuMemcpy(gkv.data(), p.g->kv_cache(), gkv.size() * sizeof(float), gpuMemcpyDeviceToHost) == gpuSuccess);
    double scale = 0, worst = 0;
    for (float x : p.cpu_kv) scale = std::max(scale, std::fabs(static_cast<double>(x)));
    for (size_t i = 0; i < gkv.size(); i++)
      worst = std::max(worst, std::fabs(static_cast<double>(gkv[i]) - p.cpu_kv[i]));
    if (!(worst <= 1e-4 * scale))
      std::printf("FAIL %s KV cache: max abs error %.3g (scale %.3g)\n", p.name.c_str(), worst, scale);
    EXPECT(worst <= 1e-4 * scale);
  }

  // A malformed batch is refused before anything runs, and the model keeps working.
  StepBatch bad;
  push(bad, 1, 0, p.max_requests);  // slot out of range
  row(bad, 0, greedy());
  std::vector<float> sink(V);
  error.clear();
  EXPECT(!p.g->step(bad, gpu::GpuStepOutput{sink.data(), nullptr}, &error));
  EXPECT(error.find("slot out of range") != std::string::npos);
  StepBatch again;
  push(again, 5, len2 + 1, 2);
  row(again, 0, greedy());
  p.step(again, "after a refused batch");
}

}  // namespace

int main(int argc, char **argv) {
  if (!gpu_test_start(argc, argv, rng)) return report();
  for (DType dt : {DType::F32, DType::F16, DType::BF16})
    for (bool qwen_like : {false, true})
      for (bool graphs : {false, true}) run_scenario(qwen_like, dt, graphs);
  for (bool qwen_like : {false, true}) run_scenario(qwen_like, DType::F16, true, false);
#ifdef FFS_GPU_EMU
  run_scenario(false, DType::F16, true, true, true);
#endif
  return report();
}
