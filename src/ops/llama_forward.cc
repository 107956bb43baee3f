#include "ops/llama_forward.h"

#include <cstring>

#include "kernels/cpu/kernels.h"

namespace ffspec {

void llama_forward_cpu(const ModelView &m, const StepBatch &b, float *logits) {
  const LlamaConfig &c = *m.cfg;
  const int T = static_cast<int>(b.num_tokens()), H = c.hidden_size, I = c.intermediate_size;
  const int Q = c.q_dim(), KV = c.kv_dim(), QKV = c.qkv_dim();
  const size_t slot_stride = static_cast<size_t>(m.max_seq) * KV;
  const size_t half_cache = static_cast<size_t>(m.max_requests) * slot_stride;  // K or V of one layer
  // Per-thread scratch, reused across steps.
  thread_local std::vector<float> x, h, qkv, attn, gu, act;
  x.resize(static_cast<size_t>(T) * H);
  h.resize(static_cast<size_t>(T) * H);
  qkv.resize(static_cast<size_t>(T) * QKV);
  attn.resize(static_cast<size_t>(T) * Q);
  gu.resize(static_cast<size_t>(T) * 2 * I);
  act.resize(static_cast<size_t>(T) * I);
  const float *W = m.weights;
  // Plain causal tokens unless the batch carries tree attention.
  const bool tree = !b.cache_pos.empty();
  thread_local std::vector<int32_t> cache_pos, prefix_len;
  if (tree) {
    cache_pos = b.cache_pos;
    prefix_len = b.prefix_len;
  } else {
    cache_pos = b.positions;
    prefix_len.resize(T);
    for (int t = 0; t < T; t++) prefix_len[t] = b.positions[t] + 1;
  }
  // Accepted tree tokens' K/V move to their final positions before anything reads them.
  for (const KvMove &mv : b.commits) {
    if (mv.src == mv.dst) continue;
    for (int l = 0; l < c.num_layers; l++)
      for (int kvi = 0; kvi < 2; kvi++) {
        float *cache = m.kv + (static_cast<size_t>(l) * 2 + kvi) * half_cache + static_cast<size_t>(mv.slot) * slot_stride;
        std::memcpy(cache + static_cast<size_t>(mv.dst) * KV, cache + static_cast<size_t>(mv.src) * KV, KV * sizeof(float));
      }
  }
  for (int t = 0; t < T; t++)
    std::memcpy(&x[static_cast<size_t>(t) * H], W + m.layout->embed + static_cast<size_t>(b.tokens[t]) * H,
                H * sizeof(float));
  for (int l = 0; l < c.num_layers; l++) {
    const LayerLayout &L = m.layout->layers[l];
    float *ck = m.kv + static_cast<size_t>(l) * 2 * half_cache, *cv = ck + half_cache;
    cpu::rms_norm(x.data(), W + L.attn_norm, c.rms_norm_eps, h.data(), T, H);
    cpu::linear(h.data(), W + L.wqkv, c.qkv_bias ? W + L.bqkv : nullptr, qkv.data(), T, QKV, H);
    cpu::rope(qkv.data(), T, QKV, c.num_heads, c.head_dim, b.positions.data(), m.inv_freq);
    cpu::rope(qkv.data() + Q, T, QKV, c.num_kv_heads, c.head_dim, b.positions.data(), m.inv_freq);
    for (int t = 0; t < T; t++) {
      const size_t dst = static_cast<size_t>(b.slots[t]) * slot_stride + static_cast<size_t>(cache_pos[t]) * KV;
      std::memcpy(ck + dst, &qkv[static_cast<size_t>(t) * QKV + Q], KV * sizeof(float));
      std::memcpy(cv + dst, &qkv[static_cast<size_t>(t) * QKV + Q + KV], KV * sizeof(float));
    }
    cpu::AttentionArgs a{qkv.data(), QKV, ck, cv, m.max_seq, c.num_heads, c.num_kv_heads, c.head_dim,
                         prefix_len.data(), b.slots.data(), tree ? b.tree_base.data() : nullptr,
                         tree ? b.tree_mask.data() : nullptr, T, attn.data()};
    cpu::attention(a);
    cpu::linear(attn.data(), W + L.wo, nullptr, h.data(), T, H, Q);
    cpu::add_inplace(x.data(), h.data(), static_cast<size_t>(T) * H);
    cpu::rms_norm(x.data(), W + L.ffn_norm, c.rms_norm_eps, h.data(), T, H);
    cpu::linear(h.data(), W + L.w_gate_up, nullptr, gu.data(), T, 2 * I, H);
    cpu::silu_mul(gu.data(), act.data(), T, I);
    cpu::linear(act.data(), W + L.w_down, nullptr, h.data(), T, H, I);
    cpu::add_inplace(x.data(), h.data(), static_cast<size_t>(T) * H);
  }
  const int R = static_cast<int>(b.num_rows());
  if (R == 0) return;
  // Only the rows that draw a token go through the final norm and the LM head.
  std::vector<float> last(static_cast<size_t>(R) * H);
  for (int r = 0; r < R; r++)
    std::memcpy(&last[static_cast<size_t>(r) * H], &x[static_cast<size_t>(b.logit_rows[r]) * H], H * sizeof(float));
  cpu::rms_norm(last.data(), W + m.layout->final_norm, c.rms_norm_eps, last.data(), R, H);
  cpu::linear(last.data(), W + m.layout->lm_head, nullptr, logits, R, c.vocab_size, H);
}

}  // namespace ffspec
