#include "weights/checkpoint.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <algorithm>
#include <filesystem>

#include "util/error.h"
#include "util/log.h"

namespace fs = std::filesystem;

namespace ffspec {

const char *tensor_type_name(TensorType t) {
  switch (t) {
    case TensorType::F32: return "F32";
    case TensorType::F16: return "F16";
    case TensorType::BF16: return "BF16";
    case TensorType::Q8_0: return "Q8_0";
    case TensorType::Q4_0: return "Q4_0";
    case TensorType::Q4_1: return "Q4_1";
  }
  return "?";
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

MappedFile::MappedFile(const std::string &path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail(FFS_ERR_NOT_FOUND, "cannot open " + path + ": " + std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    fail(FFS_ERR_BAD_CHECKPOINT, "cannot stat " + path);
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void *p = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      fail(FFS_ERR_BAD_CHECKPOINT, "cannot mmap " + path + ": " + std::strerror(errno));
    }
    data_ = static_cast<const uint8_t *>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) munmap(const_cast<uint8_t *>(data_), size_);
}

// ---- fp16 / bf16 ---------------------------------------------------------------------

float half_to_float(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalize
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) { mant <<= 1; exp--; }
      mant &= 0x3FF;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float bf16_to_float(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

static uint16_t float_to_half_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  int32_t exp = static_cast<int32_t>((x >> 23) & 0xFF) - 127 + 15;
  uint32_t mant = x & 0x7FFFFF;
  if (((x >> 23) & 0xFF) == 0xFF) return sign | 0x7C00u | (mant ? 0x200u : 0);
  if (exp >= 31) return sign | 0x7C00u;
  if (exp <= 0) {
    if (exp < -10) return sign;
    mant |= 0x800000;
    uint32_t shift = 14 - exp;
    uint32_t half_mant = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half_mant & 1))) half_mant++;
    return sign | half_mant;
  }
  uint32_t h = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1FFF;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
  return static_cast<uint16_t>(h);
}

float round_to_half(float f) { return half_to_float(float_to_half_bits(f)); }

float round_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7F800000u) == 0x7F800000u) return f;
  x += 0x7FFF + ((x >> 16) & 1);
  x &= 0xFFFF0000u;
  float r;
  std::memcpy(&r, &x, 4);
  return r;
}

// ---- opening ---------------------------------------------------------------------------

std::unique_ptr<Checkpoint> Checkpoint::open(const std::string &path) {
  auto ck = std::unique_ptr<Checkpoint>(new Checkpoint());
  ck->path_ = path;
  std::error_code ec;
  if (!fs::exists(path, ec))
    fail(FFS_ERR_NOT_FOUND, "model path does not exist: " + path +
                                " (give a checkpoint directory with config.json or a .gguf file)");
  if (fs::is_directory(path, ec)) {
    ck->open_hf_dir(path);
  } else if (path.size() > 5 && path.substr(path.size() - 5) == ".gguf") {
    ck->open_gguf(path);
  } else {
    fail(FFS_ERR_BAD_CHECKPOINT,
         "model path " + path + " is neither a checkpoint directory nor a .gguf file");
  }
  return ck;
}

void Checkpoint::open_hf_dir(const std::string &dir) {
  std::string cfg_path = (fs::path(dir) / "config.json").string();
  if (!fs::exists(cfg_path)) {
    // A directory holding exactly one .gguf is fine too.
    std::vector<std::string> ggufs;
    for (auto &e : fs::directory_iterator(dir))
      if (e.path().extension() == ".gguf") ggufs.push_back(e.path().string());
    if (ggufs.size() == 1) {
      path_ = ggufs[0];
      open_gguf(ggufs[0]);
      return;
    }
    fail(FFS_ERR_NOT_FOUND, "no config.json in checkpoint directory " + dir);
  }
  config_ = Json::parse(read_text_file(cfg_path), cfg_path);
  if (!config_.is_object()) fail(FFS_ERR_BAD_CHECKPOINT, cfg_path + ": expected a JSON object");
  std::string gen_path = (fs::path(dir) / "generation_config.json").string();
  if (fs::exists(gen_path)) {
    try {
      gen_config_ = Json::parse(read_text_file(gen_path), gen_path);
    } catch (const Error &e) {
      FFS_WARN("weights", "ignoring unreadable " << gen_path << ": " << e.what());
    }
  }
  std::string index_path = (fs::path(dir) / "model.safetensors.index.json").string();
  std::vector<std::string> files;
  if (fs::exists(index_path)) {
    Json index = Json::parse(read_text_file(index_path), index_path);
    const Json *wm = index.get("weight_map");
    if (!wm || !wm->is_object()) fail(FFS_ERR_BAD_CHECKPOINT, index_path + ": no weight_map object");
    for (auto &kv : wm->object()) {
      if (!kv.second.is_string()) fail(FFS_ERR_BAD_CHECKPOINT, index_path + ": bad weight_map entry " + kv.first);
      std::string f = (fs::path(dir) / kv.second.str()).string();
      if (std::find(files.begin(), files.end(), f) == files.end()) files.push_back(f);
    }
  } else {
    for (auto &e : fs::directory_iterator(dir))
      if (e.path().extension() == ".safetensors") files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
  }
  if (files.empty())
    fail(FFS_ERR_BAD_CHECKPOINT, "no .safetensors weights in " + dir +
                                     " (PyTorch .bin checkpoints are not read; save with safe_serialization=True)");
  for (auto &f : files) open_safetensors(f);
}

void Checkpoint::open_safetensors(const std::string &file) {
  files_.push_back(std::make_unique<MappedFile>(file));
  const MappedFile &mf = *files_.back();
  if (mf.size() < 8) fail(FFS_ERR_BAD_CHECKPOINT, file + ": too short to be a safetensors file");
  uint64_t hlen;
  std::memcpy(&hlen, mf.data(), 8);
  if (hlen > mf.size() - 8) fail(FFS_ERR_BAD_CHECKPOINT, file + ": header length exceeds file size");
  Json header = Json::parse(std::string(reinterpret_cast<const char *>(mf.data() + 8), hlen), file);
  if (!header.is_object()) fail(FFS_ERR_BAD_CHECKPOINT, file + ": header is not an object");
  const uint8_t *base = mf.data() + 8 + hlen;
  size_t avail = mf.size() - 8 - hlen;
  for (auto &kv : header.object()) {
    if (kv.first == "__metadata__") continue;
    const Json &e = kv.second;
    const Json *dt = e.get("dtype"), *shape = e.get("shape"), *off = e.get("data_offsets");
    if (!dt || !dt->is_string() || !shape || !shape->is_array() || !off || !off->is_array() ||
        off->array().size() != 2)
      fail(FFS_ERR_BAD_CHECKPOINT, file + ": malformed entry for tensor " + kv.first);
    TensorInfo t;
    t.name = kv.first;
    t.source = file;
    size_t elem;
    if (dt->str() == "F32") { t.type = TensorType::F32; elem = 4; }
    else if (dt->str() == "F16") { t.type = TensorType::F16; elem = 2; }
    else if (dt->str() == "BF16") { t.type = TensorType::BF16; elem = 2; }
    else {
      // Recorded but unreadable: an error only if the model needs it.
      t.type = TensorType::F32;
      elem = 0;
    }
    for (auto &d : shape->array()) t.shape.push_back(static_cast<int64_t>(d.number()));
    size_t b = static_cast<size_t>(off->array()[0].number()), en = static_cast<size_t>(off->array()[1].number());
    if (en < b || en > avail) fail(FFS_ERR_BAD_CHECKPOINT, file + ": tensor " + kv.first + " lies outside the file");
    if (elem == 0) {
      t.nbytes = 0;
      t.data = nullptr;
      t.source = file + " (unsupported dtype " + dt->str() + ")";
    } else {
      if (static_cast<size_t>(t.numel()) * elem != en - b)
        fail(FFS_ERR_BAD_CHECKPOINT, file + ": tensor " + kv.first + " byte size does not match its shape");
      t.data = base + b;
      t.nbytes = en - b;
    }
    tensors_[t.name] = t;
  }
}

const TensorInfo *Checkpoint::find(const std::string &name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

// ---- GGUF ------------------------------------------------------------------------------

namespace {

enum GgufType : uint32_t {
  G_U8 = 0, G_I8, G_U16, G_I16, G_U32, G_I32, G_F32, G_BOOL, G_STRING, G_ARRAY, G_U64, G_I64, G_F64
};

struct GgufReader {
  const uint8_t *p, *end;
  std::string file;
  [[noreturn]] void truncated() { fail(FFS_ERR_BAD_CHECKPOINT, file + ": truncated or malformed GGUF"); }
  template <typename T>
  T get() {
    if (static_cast<size_t>(end - p) < sizeof(T)) truncated();
    T v;
    std::memcpy(&v, p, sizeof(T));
    p += sizeof(T);
    return v;
  }
  std::string str() {
    uint64_t n = get<uint64_t>();
    if (static_cast<uint64_t>(end - p) < n) truncated();
    std::string s(reinterpret_cast<const char *>(p), n);
    p += n;
    return s;
  }
  size_t scalar_size(uint32_t t) {
    switch (t) {
      case G_U8: case G_I8: case G_BOOL: return 1;
      case G_U16: case G_I16: return 2;
      case G_U32: case G_I32: case G_F32: return 4;
      case G_U64: case G_I64: case G_F64: return 8;
      default: truncated();
    }
  }
  double scalar(uint32_t t) {
    switch (t) {
      case G_U8: return get<uint8_t>();
      case G_I8: return get<int8_t>();
      case G_BOOL: return get<uint8_t>();
      case G_U16: return get<uint16_t>();
      case G_I16: return get<int16_t>();
      case G_U32: return get<uint32_t>();
      case G_I32: return get<int32_t>();
      case G_F32: return get<float>();
      case G_U64: return static_cast<double>(get<uint64_t>());
      case G_I64: return static_cast<double>(get<int64_t>());
      case G_F64: return get<double>();
      default: truncated();
    }
  }
};

struct GgufValue {
  uint32_t type = 0;
  double num = 0;
  std::string s;
  uint64_t array_len = 0;
  uint32_t array_type = 0;
  std::vector<double> nums;  // small numeric arrays only
};

std::string hf_name_from_gguf(const std::string &g, int *layer_out) {
  *layer_out = -1;
  if (g == "token_embd.weight") return "model.embed_tokens.weight";
  if (g == "output_norm.weight") return "model.norm.weight";
  if (g == "output.weight") return "lm_head.weight";
  if (g.rfind("blk.", 0) != 0) return "";
  size_t dot = g.find('.', 4);
  int layer = std::stoi(g.substr(4, dot - 4));
  *layer_out = layer;
  std::string rest = g.substr(dot + 1);
  std::string pre = "model.layers." + std::to_string(layer) + ".";
  static const std::map<std::string, std::string> m = {
      {"attn_norm.weight", "input_layernorm.weight"},
      {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"attn_q.weight", "self_attn.q_proj.weight"},
      {"attn_k.weight", "self_attn.k_proj.weight"},
      {"attn_v.weight", "self_attn.v_proj.weight"},
      {"attn_output.weight", "self_attn.o_proj.weight"},
      {"attn_q.bias", "self_attn.q_proj.bias"},
      {"attn_k.bias", "self_attn.k_proj.bias"},
      {"attn_v.bias", "self_attn.v_proj.bias"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},
      {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"},
  };
  auto it = m.find(rest);
  return it == m.end() ? "" : pre + it->second;
}

}  // namespace

void Checkpoint::open_gguf(const std::string &file) {
  is_gguf_ = true;
  files_.push_back(std::make_unique<MappedFile>(file));
  const MappedFile &mf = *files_.back();
  GgufReader r{mf.data(), mf.data() + mf.size(), file};
  if (mf.size() < 4 || std::memcmp(mf.data(), "GGUF", 4) != 0)
    fail(FFS_ERR_BAD_CHECKPOINT, file + ": not a GGUF file (bad magic)");
  r.p += 4;
  uint32_t version = r.get<uint32_t>();
  if (version < 2 || version > 3) fail(FFS_ERR_UNSUPPORTED, file + ": GGUF version " + std::to_string(version) + " (2 or 3 supported)");
  uint64_t n_tensors = r.get<uint64_t>(), n_kv = r.get<uint64_t>();
  std::map<std::string, GgufValue> kv;
  for (uint64_t i = 0; i < n_kv; i++) {
    std::string key = r.str();
    GgufValue v;
    v.type = r.get<uint32_t>();
    if (v.type == G_STRING) {
      v.s = r.str();
    } else if (v.type == G_ARRAY) {
      v.array_type = r.get<uint32_t>();
      v.array_len = r.get<uint64_t>();
      for (uint64_t j = 0; j < v.array_len; j++) {
        if (v.array_type == G_STRING) {
          uint64_t n = r.get<uint64_t>();
          if (static_cast<uint64_t>(r.end - r.p) < n) r.truncated();
          r.p += n;
        } else if (v.array_type == G_ARRAY) {
          fail(FFS_ERR_UNSUPPORTED, file + ": nested GGUF arrays in " + key);
        } else if (v.array_len <= 64) {
          v.nums.push_back(r.scalar(v.array_type));
        } else {
          size_t sz = r.scalar_size(v.array_type);
          if (static_cast<uint64_t>(r.end - r.p) < sz) r.truncated();
          r.p += sz;
        }
      }
    } else {
      v.num = r.scalar(v.type);
    }
    kv[key] = std::move(v);
  }
  auto num = [&](const std::string &k, double dflt, bool required) {
    auto it = kv.find(k);
    if (it == kv.end()) {
      if (required) fail(FFS_ERR_BAD_CHECKPOINT, file + ": GGUF metadata lacks " + k);
      return dflt;
    }
    return it->second.num;
  };
  std::string arch = kv.count("general.architecture") ? kv["general.architecture"].s : "";
  if (arch != "llama" && arch != "qwen2")
    fail(FFS_ERR_UNSUPPORTED, file + ": GGUF architecture '" + arch + "' is not supported (llama, qwen2)");
  // Synthesize the HF config the model builder reads.
  std::string cfg = "{";
  auto add = [&](const std::string &k, const std::string &v) {
    if (cfg.size() > 1) cfg += ",";
    cfg += "\"" + k + "\":" + v;
  };
  auto n2s = [](double d) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", d);
    return std::string(buf);
  };
  add("architectures", arch == "llama" ? "[\"LlamaForCausalLM\"]" : "[\"Qwen2ForCausalLM\"]");
  add("hidden_size", n2s(num(arch + ".embedding_length", 0, true)));
  add("intermediate_size", n2s(num(arch + ".feed_forward_length", 0, true)));
  add("num_hidden_layers", n2s(num(arch + ".block_count", 0, true)));
  double heads = num(arch + ".attention.head_count", 0, true);
  double kv_heads = num(arch + ".attention.head_count_kv", heads, false);
  add("num_attention_heads", n2s(heads));
  add("num_key_value_heads", n2s(kv_heads));
  add("rms_norm_eps", n2s(num(arch + ".attention.layer_norm_rms_epsilon", 1e-6, false)));
  add("rope_theta", n2s(num(arch + ".rope.freq_base", 10000.0, false)));
  add("max_position_embeddings", n2s(num(arch + ".context_length", 2048, false)));
  double vocab = num(arch + ".vocab_size", -1, false);
  if (vocab < 0 && kv.count("tokenizer.ggml.tokens")) vocab = static_cast<double>(kv["tokenizer.ggml.tokens"].array_len);
  if (vocab > 0) add("vocab_size", n2s(vocab));
  if (kv.count("tokenizer.ggml.bos_token_id")) add("bos_token_id", n2s(kv["tokenizer.ggml.bos_token_id"].num));
  if (kv.count("tokenizer.ggml.eos_token_id")) add("eos_token_id", n2s(kv["tokenizer.ggml.eos_token_id"].num));
  if (kv.count(arch + ".rope.scaling.type") && kv[arch + ".rope.scaling.type"].s != "none") {
    const std::string &st = kv[arch + ".rope.scaling.type"].s;
    if (st != "linear") fail(FFS_ERR_UNSUPPORTED, file + ": GGUF rope scaling '" + st + "' is not supported");
    add("rope_scaling", "{\"rope_type\":\"linear\",\"factor\":" + n2s(num(arch + ".rope.scaling.factor", 1, true)) + "}");
  }
  uint32_t alignment = static_cast<uint32_t>(num("general.alignment", 32, false));

  struct Raw { std::string name; std::vector<int64_t> ne; uint32_t type; uint64_t offset; };
  std::vector<Raw> raws;
  bool has_output = false;
  for (uint64_t i = 0; i < n_tensors; i++) {
    Raw t;
    t.name = r.str();
    uint32_t nd = r.get<uint32_t>();
    if (nd > 4) fail(FFS_ERR_BAD_CHECKPOINT, file + ": tensor " + t.name + " has " + std::to_string(nd) + " dims");
    for (uint32_t d = 0; d < nd; d++) t.ne.push_back(static_cast<int64_t>(r.get<uint64_t>()));
    t.type = r.get<uint32_t>();
    t.offset = r.get<uint64_t>();
    if (t.name == "output.weight") has_output = true;
    raws.push_back(t);
  }
  add("tie_word_embeddings", has_output ? "false" : "true");
  cfg += "}";
  config_ = Json::parse(cfg, file + " (metadata)");

  size_t header = static_cast<size_t>(r.p - mf.data());
  size_t data_start = (header + alignment - 1) / alignment * alignment;
  for (auto &raw : raws) {
    TensorInfo t;
    int layer;
    t.name = hf_name_from_gguf(raw.name, &layer);
    if (t.name.empty()) continue;  // e.g. rope_freqs: not needed
    t.source = file + " tensor " + raw.name;
    for (auto it = raw.ne.rbegin(); it != raw.ne.rend(); ++it) t.shape.push_back(*it);
    int64_t n = t.numel();
    size_t bytes;
    switch (raw.type) {
      case 0: t.type = TensorType::F32; bytes = n * 4; break;
      case 1: t.type = TensorType::F16; bytes = n * 2; break;
      case 30: t.type = TensorType::BF16; bytes = n * 2; break;
      case 8: t.type = TensorType::Q8_0; bytes = n / 32 * 34; break;
      case 2: t.type = TensorType::Q4_0; bytes = n / 32 * 18; break;
      case 3: t.type = TensorType::Q4_1; bytes = n / 32 * 20; break;
      default:
        fail(FFS_ERR_UNSUPPORTED, file + ": tensor " + raw.name + " has GGML type " + std::to_string(raw.type) +
                                      " (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)");
    }
    if (raw.type != 0 && raw.type != 1 && raw.type != 30 && n % 32 != 0)
      fail(FFS_ERR_BAD_CHECKPOINT, file + ": quantized tensor " + raw.name + " size is not a multiple of 32");
    if (data_start + raw.offset + bytes > mf.size())
      fail(FFS_ERR_BAD_CHECKPOINT, file + ": tensor " + raw.name + " lies outside the file");
    t.data = mf.data() + data_start + raw.offset;
    t.nbytes = bytes;
    if (arch == "llama") {
      if (raw.name.find("attn_q.") != std::string::npos) t.unpermute_heads = static_cast<int>(heads);
      if (raw.name.find("attn_k.") != std::string::npos) t.unpermute_heads = static_cast<int>(kv_heads);
    }
    tensors_[t.name] = t;
  }
}

// ---- conversion ------------------------------------------------------------------------

void Checkpoint::read_f32(const TensorInfo &t, float *out) const {
  const int64_t n = t.numel();
  if (!t.data) fail(FFS_ERR_UNSUPPORTED, "tensor " + t.name + " in " + t.source + " has an unsupported dtype");
  const uint8_t *p = t.data;
  switch (t.type) {
    case TensorType::F32: std::memcpy(out, p, n * 4); break;
    case TensorType::F16:
      for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = half_to_float(h);
      }
      break;
    case TensorType::BF16:
      for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = bf16_to_float(h);
      }
      break;
    case TensorType::Q8_0:  // blocks of 32: fp16 scale, 32 x int8
      for (int64_t b = 0; b < n / 32; b++) {
        const uint8_t *blk = p + b * 34;
        uint16_t dh;
        std::memcpy(&dh, blk, 2);
        float d = half_to_float(dh);
        const int8_t *q = reinterpret_cast<const int8_t *>(blk + 2);
        for (int j = 0; j < 32; j++) out[b * 32 + j] = d * static_cast<float>(q[j]);
      }
      break;
    case TensorType::Q4_0:  // fp16 scale, 16 bytes of nibbles; value = (q - 8) * d
      for (int64_t b = 0; b < n / 32; b++) {
        const uint8_t *blk = p + b * 18;
        uint16_t dh;
        std::memcpy(&dh, blk, 2);
        float d = half_to_float(dh);
        for (int j = 0; j < 16; j++) {
          out[b * 32 + j] = (static_cast<float>(blk[2 + j] & 0xF) - 8.0f) * d;
          out[b * 32 + j + 16] = (static_cast<float>(blk[2 + j] >> 4) - 8.0f) * d;
        }
      }
      break;
    case TensorType::Q4_1:  // fp16 scale, fp16 min, 16 bytes of nibbles; value = q * d + m
      for (int64_t b = 0; b < n / 32; b++) {
        const uint8_t *blk = p + b * 20;
        uint16_t dh, mh;
        std::memcpy(&dh, blk, 2);
        std::memcpy(&mh, blk + 2, 2);
        float d = half_to_float(dh), m = half_to_float(mh);
        for (int j = 0; j < 16; j++) {
          float lo = d * static_cast<float>(blk[4 + j] & 0xF);
          float hi = d * static_cast<float>(blk[4 + j] >> 4);
          out[b * 32 + j] = lo + m;
          out[b * 32 + j + 16] = hi + m;
        }
      }
      break;
  }
  if (t.unpermute_heads > 0) {
    // GGUF row order per head is (half, pair) -> HF's (pair, half): rows r = h*D + i*2 + s
    // hold HF row h*D + s*(D/2) + i.
    const int64_t rows = t.shape[0], cols = n / rows, heads = t.unpermute_heads, D = rows / heads;
    std::vector<float> tmp(out, out + n);
    for (int64_t h = 0; h < heads; h++)
      for (int64_t i = 0; i < D / 2; i++)
        for (int64_t s = 0; s < 2; s++)
          std::memcpy(out + (h * D + s * (D / 2) + i) * cols, tmp.data() + (h * D + i * 2 + s) * cols,
                      cols * sizeof(float));
  }
}

}  // namespace ffspec
