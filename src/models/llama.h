// The LLaMA family (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM): config,
// the flat fp32 weight layout that lives in one Legion region, and loading into it.
#pragma once
#include <functional>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "flexflow_spec/c/flexflow_spec.h"
#include "util/json.h"

namespace ffspec {

class Checkpoint;

enum class RopeScaling { None, Linear, Llama3 };

struct LlamaConfig {
  std::string architecture;
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  float rms_norm_eps = 1e-6f;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling = RopeScaling::None;
  double rope_factor = 1.0;
  double rope_low_freq_factor = 1.0, rope_high_freq_factor = 4.0;
  double rope_original_max_position = 8192;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // Qwen2
  int max_position_embeddings = 2048;
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;

  int q_dim() const { return num_heads * head_dim; }
  int kv_dim() const { return num_kv_heads * head_dim; }
  int qkv_dim() const { return q_dim() + 2 * kv_dim(); }

  // Throws ffspec::Error naming the file and key on anything missing or inconsistent.
  static LlamaConfig from_json(const Json &config, const Json &generation_config, const std::string &where);
  // inv_freq[head_dim/2] after rope scaling.
  std::vector<float> rope_inv_freq() const;
};

// Offsets (in floats) into the flat weight buffer. Projections that run together are
// stored together so one GEMM covers them: [q; k; v] rows and [gate; up] rows.
struct LayerLayout {
  size_t attn_norm, wqkv, bqkv, wo, ffn_norm, w_gate_up, w_down;
};

struct LlamaLayout {
  size_t embed = 0, final_norm = 0, lm_head = 0;
  std::vector<LayerLayout> layers;
  size_t total = 0;  // floats

  static LlamaLayout make(const LlamaConfig &cfg);
};

// Check that every tensor the config needs is present with the right shape (no data read).
void validate_checkpoint(const Checkpoint &ck, const LlamaConfig &cfg);
// Fill dst[layout.total]; values rounded to the precision of data_type.
void load_weights(const Checkpoint &ck, const LlamaConfig &cfg, const LlamaLayout &layout,
                  ffs_data_type_t data_type, float *dst);
// The same values a tensor at a time, for a destination that is not host memory (a GPU
// framebuffer): sink(offset, data, n) receives layout positions [offset, offset + n), rounded
// as above. Tensors are read on several threads; sink is called on one at a time.
void load_weights_streamed(const Checkpoint &ck, const LlamaConfig &cfg, const LlamaLayout &layout,
                           ffs_data_type_t data_type,
                           const std::function<void(size_t offset, const float *data, size_t n)> &sink);

}  // namespace ffspec
