// Checkpoint readers: a HF directory (config.json + safetensors, single or sharded) or a
// GGUF file. Tensors are memory-mapped and named with HF names; read_f32() converts or
// dequantizes one tensor into fp32 in HF layout ([out_features, in_features] row-major).
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "util/json.h"

namespace ffspec {

enum class TensorType { F32, F16, BF16, Q8_0, Q4_0, Q4_1 };
const char *tensor_type_name(TensorType t);

struct TensorInfo {
  std::string name;             // HF name, e.g. model.layers.0.self_attn.q_proj.weight
  std::string source;           // file (and original name) for error messages
  std::vector<int64_t> shape;   // HF order, outermost first
  TensorType type = TensorType::F32;
  const uint8_t *data = nullptr;
  size_t nbytes = 0;
  // GGUF stores llama's q/k rows permuted for interleaved rotary; >0 = number of heads
  // whose rows must be put back in HF order after dequantization.
  int unpermute_heads = 0;

  int64_t numel() const;
};

class MappedFile {
 public:
  explicit MappedFile(const std::string &path);
  ~MappedFile();
  MappedFile(const MappedFile &) = delete;
  MappedFile &operator=(const MappedFile &) = delete;
  const uint8_t *data() const { return data_; }
  size_t size() const { return size_; }
  const std::string &path() const { return path_; }

 private:
  std::string path_;
  const uint8_t *data_ = nullptr;
  size_t size_ = 0;
};

class Checkpoint {
 public:
  // path: a directory with config.json, or a .gguf file. Throws ffspec::Error.
  static std::unique_ptr<Checkpoint> open(const std::string &path);

  const std::string &path() const { return path_; }
  const Json &config() const { return config_; }                 // HF config.json (synthesized for GGUF)
  const Json &generation_config() const { return gen_config_; }  // may be null
  bool is_gguf() const { return is_gguf_; }

  const TensorInfo *find(const std::string &name) const;
  // Converts/dequantizes into out[numel] (HF layout). Throws on unsupported types.
  void read_f32(const TensorInfo &t, float *out) const;

 private:
  void open_hf_dir(const std::string &dir);
  void open_safetensors(const std::string &file);
  void open_gguf(const std::string &file);

  std::string path_;
  bool is_gguf_ = false;
  Json config_;
  Json gen_config_;
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::map<std::string, TensorInfo> tensors_;
};

float half_to_float(uint16_t h);
float bf16_to_float(uint16_t h);
// Round an fp32 value to the nearest fp16 / bf16 value (returned as fp32).
float round_to_half(float f);
float round_to_bf16(float f);

}  // namespace ffspec
