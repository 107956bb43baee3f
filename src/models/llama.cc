#include "models/llama.h"

#include <cmath>
#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>

#include "util/error.h"
#include "weights/checkpoint.h"

namespace ffspec {

namespace {

const std::vector<std::string> kSupported = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"};

int get_int(const Json &j, const std::string &key, const std::string &where, int dflt, bool required) {
  const Json *v = j.get(key);
  if (!v || v->is_null()) {
    if (required) fail(FFS_ERR_BAD_CHECKPOINT, where + ": missing required key '" + key + "'");
    return dflt;
  }
  if (!v->is_number() || v->number() != std::floor(v->number()) || v->number() < 0)
    fail(FFS_ERR_BAD_CHECKPOINT, where + ": '" + key + "' must be a non-negative integer");
  return static_cast<int>(v->number());
}

double get_num(const Json &j, const std::string &key, const std::string &where, double dflt) {
  const Json *v = j.get(key);
  if (!v || v->is_null()) return dflt;
  if (!v->is_number()) fail(FFS_ERR_BAD_CHECKPOINT, where + ": '" + key + "' must be a number");
  return v->number();
}

void add_ids(const Json *v, std::vector<int> &ids) {
  if (!v) return;
  if (v->is_number()) ids.push_back(static_cast<int>(v->number()));
  if (v->is_array())
    for (auto &x : v->array())
      if (x.is_number()) ids.push_back(static_cast<int>(x.number()));
}

}  // namespace

LlamaConfig LlamaConfig::from_json(const Json &j, const Json &gen, const std::string &where) {
  LlamaConfig c;
  const Json *arch = j.get("architectures");
  if (!arch || !arch->is_array() || arch->array().empty() || !arch->array()[0].is_string())
    fail(FFS_ERR_BAD_CHECKPOINT, where + ": 'architectures' must be a non-empty list of names");
  c.architecture = arch->array()[0].str();
  if (std::find(kSupported.begin(), kSupported.end(), c.architecture) == kSupported.end())
    fail(FFS_ERR_UNSUPPORTED, where + ": architecture '" + c.architecture +
                                  "' is not supported (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)");
  c.vocab_size = get_int(j, "vocab_size", where, 0, true);
  c.hidden_size = get_int(j, "hidden_size", where, 0, true);
  c.intermediate_size = get_int(j, "intermediate_size", where, 0, true);
  c.num_layers = get_int(j, "num_hidden_layers", where, 0, true);
  c.num_heads = get_int(j, "num_attention_heads", where, 0, true);
  c.num_kv_heads = get_int(j, "num_key_value_heads", where, c.num_heads, false);
  if (c.vocab_size <= 0 || c.hidden_size <= 0 || c.intermediate_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 ||
      c.num_kv_heads <= 0)
    fail(FFS_ERR_BAD_CHECKPOINT, where + ": model sizes must be positive");
  c.head_dim = get_int(j, "head_dim", where, c.hidden_size / c.num_heads, false);
  if (c.head_dim <= 0 || c.head_dim % 2)
    fail(FFS_ERR_BAD_CHECKPOINT, where + ": head_dim must be a positive even number");
  if (!j.get("head_dim") && c.hidden_size % c.num_heads)
    fail(FFS_ERR_BAD_CHECKPOINT, where + ": hidden_size is not a multiple of num_attention_heads");
  if (c.num_heads % c.num_kv_heads)
    fail(FFS_ERR_BAD_CHECKPOINT, where + ": num_attention_heads is not a multiple of num_key_value_heads");
  c.rms_norm_eps = static_cast<float>(get_num(j, "rms_norm_eps", where, 1e-6));
  c.rope_theta = get_num(j, "rope_theta", where, 10000.0);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", where, 2048, false);
  const Json *tie = j.get("tie_word_embeddings");
  c.tie_word_embeddings = tie && tie->is_bool() ? tie->boolean() : false;
  c.qkv_bias = c.architecture == "Qwen2ForCausalLM";
  if (const Json *ab = j.get("attention_bias"); ab && ab->is_bool()) c.qkv_bias = c.qkv_bias || ab->boolean();
  if (const Json *rp = j.get("rope_parameters"); rp && rp->is_object()) {
    // transformers >= 5 keeps rope_theta and scaling together here.
    c.rope_theta = get_num(*rp, "rope_theta", where, c.rope_theta);
  }
  const Json *rs = j.get("rope_scaling");
  if (!rs || rs->is_null()) {
    if (const Json *rp = j.get("rope_parameters"); rp && rp->is_object() && rp->get("rope_type")) rs = rp;
  }
  if (rs && rs->is_object()) {
    const Json *t = rs->get("rope_type");
    if (!t) t = rs->get("type");
    std::string type = t && t->is_string() ? t->str() : "default";
    if (type == "default") {
      c.rope_scaling = RopeScaling::None;
    } else if (type == "linear") {
      c.rope_scaling = RopeScaling::Linear;
      c.rope_factor = get_num(*rs, "factor", where, 1.0);
    } else if (type == "llama3") {
      c.rope_scaling = RopeScaling::Llama3;
      c.rope_factor = get_num(*rs, "factor", where, 8.0);
      c.rope_low_freq_factor = get_num(*rs, "low_freq_factor", where, 1.0);
      c.rope_high_freq_factor = get_num(*rs, "high_freq_factor", where, 4.0);
      c.rope_original_max_position = get_num(*rs, "original_max_position_embeddings", where, 8192);
    } else {
      fail(FFS_ERR_UNSUPPORTED, where + ": rope scaling type '" + type + "' is not supported (linear, llama3)");
    }
    if (c.rope_factor <= 0) fail(FFS_ERR_BAD_CHECKPOINT, where + ": rope scaling factor must be positive");
  }
  if (const Json *b = j.get("bos_token_id"); b && b->is_number()) c.bos_token_id = static_cast<int>(b->number());
  add_ids(j.get("eos_token_id"), c.eos_token_ids);
  if (gen.is_object()) add_ids(gen.get("eos_token_id"), c.eos_token_ids);
  std::sort(c.eos_token_ids.begin(), c.eos_token_ids.end());
  c.eos_token_ids.erase(std::unique(c.eos_token_ids.begin(), c.eos_token_ids.end()), c.eos_token_ids.end());
  if (c.eos_token_ids.size() > 8) c.eos_token_ids.resize(8);
  return c;
}

std::vector<float> LlamaConfig::rope_inv_freq() const {
  const int half = head_dim / 2;
  std::vector<float> inv(half);
  for (int i = 0; i < half; i++) {
    // Same float32 arithmetic as transformers: base ** (arange(0, dim, 2) / dim).
    float expo = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    float f = 1.0f / std::pow(static_cast<float>(rope_theta), expo);
    if (rope_scaling == RopeScaling::Linear) {
      f = f / static_cast<float>(rope_factor);
    } else if (rope_scaling == RopeScaling::Llama3) {
      const double low_wavelen = rope_original_max_position / rope_low_freq_factor;
      const double high_wavelen = rope_original_max_position / rope_high_freq_factor;
      const double wavelen = 2.0 * M_PI / f;
      if (wavelen > low_wavelen) {
        f = f / static_cast<float>(rope_factor);
      } else if (wavelen >= high_wavelen) {
        double smooth = (rope_original_max_position / wavelen - rope_low_freq_factor) /
                        (rope_high_freq_factor - rope_low_freq_factor);
        f = static_cast<float>((1 - smooth) * f / rope_factor + smooth * f);
      }
    }
    inv[i] = f;
  }
  return inv;
}

LlamaLayout LlamaLayout::make(const LlamaConfig &c) {
  LlamaLayout l;
  size_t off = 0;
  auto take = [&](size_t n) {
    size_t o = off;
    off += (n + 15) / 16 * 16;  // 64-byte aligned tensors
    return o;
  };
  const size_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  l.embed = take(V * H);
  for (int i = 0; i < c.num_layers; i++) {
    LayerLayout ll;
    ll.attn_norm = take(H);
    ll.wqkv = take(static_cast<size_t>(c.qkv_dim()) * H);
    ll.bqkv = c.qkv_bias ? take(c.qkv_dim()) : 0;
    ll.wo = take(H * c.q_dim());
    ll.ffn_norm = take(H);
    ll.w_gate_up = take(2 * I * H);
    ll.w_down = take(H * I);
    l.layers.push_back(ll);
  }
  l.final_norm = take(H);
  l.lm_head = c.tie_word_embeddings ? l.embed : take(V * H);
  l.total = off;
  return l;
}

namespace {

struct Piece {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset;  // floats
};

std::vector<Piece> pieces(const LlamaConfig &c, const LlamaLayout &l) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size, Q = c.q_dim(), K = c.kv_dim();
  std::vector<Piece> p;
  p.push_back({"model.embed_tokens.weight", {V, H}, l.embed});
  for (int i = 0; i < c.num_layers; i++) {
    const std::string pre = "model.layers." + std::to_string(i) + ".";
    const LayerLayout &ll = l.layers[i];
    p.push_back({pre + "input_layernorm.weight", {H}, ll.attn_norm});
    p.push_back({pre + "self_attn.q_proj.weight", {Q, H}, ll.wqkv});
    p.push_back({pre + "self_attn.k_proj.weight", {K, H}, ll.wqkv + Q * H});
    p.push_back({pre + "self_attn.v_proj.weight", {K, H}, ll.wqkv + (Q + K) * H});
    if (c.qkv_bias) {
      p.push_back({pre + "self_attn.q_proj.bias", {Q}, ll.bqkv});
      p.push_back({pre + "self_attn.k_proj.bias", {K}, ll.bqkv + Q});
      p.push_back({pre + "self_attn.v_proj.bias", {K}, ll.bqkv + Q + K});
    }
    p.push_back({pre + "self_attn.o_proj.weight", {H, Q}, ll.wo});
    p.push_back({pre + "post_attention_layernorm.weight", {H}, ll.ffn_norm});
    p.push_back({pre + "mlp.gate_proj.weight", {I, H}, ll.w_gate_up});
    p.push_back({pre + "mlp.up_proj.weight", {I, H}, ll.w_gate_up + I * H});
    p.push_back({pre + "mlp.down_proj.weight", {H, I}, ll.w_down});
  }
  p.push_back({"model.norm.weight", {H}, l.final_norm});
  if (!c.tie_word_embeddings) p.push_back({"lm_head.weight", {V, H}, l.lm_head});
  return p;
}

std::string shape_str(const std::vector<int64_t> &s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); i++) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

}  // namespace

void validate_checkpoint(const Checkpoint &ck, const LlamaConfig &cfg) {
  LlamaLayout l = LlamaLayout::make(cfg);
  for (const Piece &p : pieces(cfg, l)) {
    const TensorInfo *t = ck.find(p.name);
    if (!t) fail(FFS_ERR_BAD_CHECKPOINT, ck.path() + ": missing tensor " + p.name);
    if (t->shape != p.shape)
      fail(FFS_ERR_BAD_CHECKPOINT, ck.path() + ": tensor " + p.name + " has shape " + shape_str(t->shape) +
                                       ", expected " + shape_str(p.shape) + " from config.json");
    if (!t->data) fail(FFS_ERR_UNSUPPORTED, ck.path() + ": tensor " + p.name + " has an unsupported dtype (" + t->source + ")");
  }
}

namespace {

// Reads every piece of the layout on up to 8 threads: fill(piece, out) gets the buffer to
// read into, done(piece, out) is called after rounding.
void for_each_piece(const Checkpoint &ck, const LlamaConfig &cfg, const LlamaLayout &layout, ffs_data_type_t dt,
                    const std::function<float *(const Piece &, std::vector<float> &)> &buffer,
                    const std::function<void(const Piece &, const float *, size_t)> &done) {
  std::vector<Piece> ps = pieces(cfg, layout);
  // Conversion is independent per tensor: spread it over the cores.
  unsigned nthreads = std::max(1u, std::min(8u, std::thread::hardware_concurrency()));
  std::vector<std::thread> workers;
  std::exception_ptr err;
  std::mutex err_mu;
  std::atomic<size_t> next{0};
  for (unsigned w = 0; w < nthreads; w++) {
    workers.emplace_back([&] {
      std::vector<float> own;
      for (size_t i = next++; i < ps.size(); i = next++) {
        try {
          {
            std::lock_guard<std::mutex> lock(err_mu);
            if (err) return;
          }
          const TensorInfo *t = ck.find(ps[i].name);
          const int64_t n = t->numel();
          float *out = buffer(ps[i], own);
          ck.read_f32(*t, out);
          if (dt == FFS_DT_HALF)
            for (int64_t k = 0; k < n; k++) out[k] = round_to_half(out[k]);
          else if (dt == FFS_DT_BFLOAT16)
            for (int64_t k = 0; k < n; k++) out[k] = round_to_bf16(out[k]);
          done(ps[i], out, static_cast<size_t>(n));
        } catch (...) {
          std::lock_guard<std::mutex> lock(err_mu);
          if (!err) err = std::current_exception();
        }
      }
    });
  }
  for (auto &w : workers) w.join();
  if (err) std::rethrow_exception(err);
}

}  // namespace

void load_weights(const Checkpoint &ck, const LlamaConfig &cfg, const LlamaLayout &layout, ffs_data_type_t dt,
                  float *dst) {
  for_each_piece(
      ck, cfg, layout, dt, [dst](const Piece &p, std::vector<float> &) { return dst + p.offset; },
      [](const Piece &, const float *, size_t) {});
}

void load_weights_streamed(const Checkpoint &ck, const LlamaConfig &cfg, const LlamaLayout &layout,
                           ffs_data_type_t dt,
                           const std::function<void(size_t offset, const float *data, size_t n)> &sink) {
  std::mutex sink_mu;
  for_each_piece(
      ck, cfg, layout, dt,
      [&ck](const Piece &p, std::vector<float> &own) {
        own.resize(static_cast<size_t>(ck.find(p.name)->numel()));
        return own.data();
      },
      [&](const Piece &p, const float *data, size_t n) {
        std::lock_guard<std::mutex> lock(sink_mu);
        sink(p.offset, data, n);
      });
}

}  // namespace ffspec
