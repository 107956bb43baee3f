// llama_forward_cpu (src/ops/llama_forward.cc) step by step on the GPU kernels. The map:
//   commits memcpy loop        -> kv_commit (all layers, K and V, list order)
//   embedding memcpy           -> embedding
//   rms_norm / add_inplace     -> add_rms_norm (the residual add fused into the next norm)
//   linear (QKV, O, gate_up, down, LM head) -> linear (cuBLAS GemmEx, fp32 accumulation;
//                                 linear_small at <= 8 tokens)
//   rope on Q, rope on K, K/V memcpy into the cache
//                              -> rope_kv_store, one launch over the fused QKV rows
//   attention                  -> attention (same prefix_len / tree_base / tree_mask)
//   silu_mul                   -> silu_mul (fused into gate_up at <= 8 tokens)
//   gather logit rows + norm   -> add_rms_norm over all rows, then embedding as a row gather
// Everything is enqueued on one stream; the step's small int arrays travel in one copy.
#include "ops/gpu/llama_forward_gpu.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/gpu/dispatch.cuh"

namespace ffspec::gpu {

namespace {

static_assert(sizeof(KvMove) == 3 * sizeof(int32_t), "kv_commit reads KvMove as int32 triples");

// One device allocation that only grows.
struct DeviceBuffer {
  void *p = nullptr;
  size_t bytes = 0;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer &) = delete;
  DeviceBuffer &operator=(const DeviceBuffer &) = delete;
  ~DeviceBuffer() {
    if (p) (void)gpuFree(p);
  }
  gpuError_t reserve(size_t n) {
    if (n <= bytes) return gpuSuccess;
    if (p) (void)gpuFree(p);
    p = nullptr;
    bytes = 0;
    const gpuError_t e = gpuMalloc(&p, n);
    if (e == gpuSuccess) bytes = n;
    return e;
  }
  template <typename V>
  V *at(size_t byte_offset) const {
    return reinterpret_cast<V *>(static_cast<char *>(p) + byte_offset);
  }
};

// Host -> dtype bits (the weights are converted on the host, a chunk at a time).
void encode(const float *x, size_t n, DType dt, void *dst) {
  if (dt == DType::F32) {
    std::memcpy(dst, x, n * sizeof(float));
  } else if (dt == DType::F16) {
    auto *o = static_cast<gpu_half *>(dst);
    for (size_t i = 0; i < n; i++) o[i] = gpu_float2half(x[i]);
  } else {
    auto *o = static_cast<gpu_bf16 *>(dst);
    for (size_t i = 0; i < n; i++) o[i] = gpu_float2bf16(x[i]);
  }
}
void decode(const void *src, size_t n, DType dt, float *x) {
  if (dt == DType::F32) {
    std::memcpy(x, src, n * sizeof(float));
  } else if (dt == DType::F16) {
    const auto *s = static_cast<const gpu_half *>(src);
    for (size_t i = 0; i < n; i++) x[i] = gpu_half2float(s[i]);
  } else {
    const auto *s = static_cast<const gpu_bf16 *>(src);
    for (size_t i = 0; i < n; i++) x[i] = gpu_bf162float(s[i]);
  }
}

std::string gpu_message(const char *what, gpuError_t e) { return std::string(what) + ": " + gpuGetErrorString(e); }

// Packs the step's small arrays into one host blob (16-byte aligned pieces) for one copy.
struct Packer {
  std::vector<uint8_t> blob;
  template <typename V>
  size_t add(const V *data, size_t n) {
    const size_t at = (blob.size() + 15) / 16 * 16;
    blob.resize(at + n * sizeof(V));
    if (n) std::memcpy(blob.data() + at, data, n * sizeof(V));
    return at;
  }
};

// The launches of a step depend only on these (and on the scratch addresses, which only
// change when a buffer grows: every graph is dropped then).
struct GraphKey {
  int T, R, hint, commits, tree, sample;
  bool operator==(const GraphKey &o) const {
    return T == o.T && R == o.R && hint == o.hint && commits == o.commits && tree == o.tree && sample == o.sample;
  }
};
constexpr int kMaxGraphTokens = 512;  // larger steps (prefill chunks) run uncaptured
constexpr size_t kMaxGraphs = 64;
constexpr size_t kMaxSeenShapes = 256;  // shapes run once, uncaptured, awaiting a second sighting

}  // namespace

struct GpuLlama::Impl {
  LlamaConfig cfg;
  LlamaLayout layout;
  DType dt = DType::F32;
  size_t es = 4;  // element size
  int max_requests = 0, max_seq = 0;
  DeviceBuffer own_weights, own_kv, inv_freq;  // owned storage (none when external)
  void *weights = nullptr, *kv = nullptr;      // what the kernels use: owned or external
  size_t kv_bytes = 0;
  DeviceBuffer act;   // activations [capacity tokens] (offsets below)
  DeviceBuffer meta;  // the step's int arrays
  int capacity = 0;   // tokens the activation buffer holds
  size_t off_res = 0, off_h = 0, off_h2 = 0, off_qkv = 0, off_attn = 0, off_gu = 0, off_act = 0;
  DeviceBuffer head;  // [R, H] gathered rows + [R, vocab] logits
  DeviceBuffer attn_ws;  // split-KV partial outputs
  bool attention_splits = true;
  bool decode_attention = true;
  bool attention_tensor_cores = true;
  int small_m_rows = 0;  // steps of at most this many tokens fuse gate_up with SwiGLU
  std::vector<uint8_t> logits_host;  // dtype bits of the logits before conversion to fp32
  Blas *blas = nullptr;
  gpuStream_t own_stream = nullptr;  // created by create() when none was given
  gpuStream_t stream = nullptr;      // where step() enqueues

  // CUDA graphs of the step's launches, one per shape, least recently used first.
  bool use_graphs = true;
  gpuStream_t capture_stream = nullptr;
  std::vector<std::pair<GraphKey, gpuGraphExec_t>> graphs;
  std::vector<GraphKey> seen;  // shapes run once without a graph (most recent last)
  std::string graph_error;     // why capturing was given up (empty while graphs work)

  ~Impl() {
    drop_graphs();
    if (capture_stream) (void)gpuStreamDestroy(capture_stream);
    if (blas) blas_destroy(blas);
    if (own_stream) (void)gpuStreamDestroy(own_stream);
  }
  void drop_graphs() {
    for (auto &g : graphs) (void)gpuGraphExecDestroy(g.second);
    graphs.clear();
  }
  gpuGraphExec_t find_graph(const GraphKey &k) {
    for (size_t i = 0; i < graphs.size(); i++)
      if (graphs[i].first == k) {
        auto hit = graphs[i];
        graphs.erase(graphs.begin() + static_cast<std::ptrdiff_t>(i));
        graphs.push_back(hit);  // most recent last
        return hit.second;
      }
    return nullptr;
  }
  // A shape is captured the second time it is seen: its first run goes eagerly, which also
  // lets cuBLAS and the driver's lazy module loading set themselves up outside a capture, and
  // a prompt length seen once costs no capture.
  bool seen_before(const GraphKey &k) {
    for (const GraphKey &x : seen)
      if (x == k) return true;
    if (seen.size() >= kMaxSeenShapes) seen.erase(seen.begin());
    seen.push_back(k);
    return false;
  }
  void add_graph(const GraphKey &k, gpuGraphExec_t g) {
    if (graphs.size() >= kMaxGraphs) {
      (void)gpuGraphExecDestroy(graphs.front().second);
      graphs.erase(graphs.begin());
    }
    graphs.emplace_back(k, g);
  }
  const void *w(size_t offset) const { return static_cast<const char *>(weights) + offset * es; }

  gpuError_t reserve_tokens(int T) {
    if (T <= capacity) return gpuSuccess;
    const size_t H = cfg.hidden_size, I = cfg.intermediate_size;
    size_t off = 0;
    auto take = [&](size_t elems) {
      const size_t at = off;
      off += (elems * es + 255) / 256 * 256;
      return at;
    };
    const size_t t = static_cast<size_t>(T);
    off_res = take(t * H);                 // residual stream [T, H]
    off_h = take(t * H);                   // normed input of a projection [T, H]
    off_h2 = take(t * H);                  // O / down projection output [T, H]
    off_qkv = take(t * cfg.qkv_dim());     // [T, QKV]
    off_attn = take(t * cfg.q_dim());      // [T, Q]
    off_gu = take(t * 2 * I);              // [T, 2I]
    off_act = take(t * I);                 // [T, I]
    const gpuError_t e = act.reserve(off);
    capacity = e == gpuSuccess ? T : 0;  // a failed allocation leaves no buffer behind
    return e;
  }
  void *a(size_t off) const { return static_cast<char *>(act.p) + off; }
  // The LM head's scratch for R logit rows: the gathered rows [R, H], then the logits [R, vocab].
  size_t head_bytes(int R) const {
    return (static_cast<size_t>(R) * cfg.hidden_size * es + 255) / 256 * 256 +
           static_cast<size_t>(R) * cfg.vocab_size * es;
  }
};

GpuLlama::GpuLlama(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuLlama::~GpuLlama() = default;
void *GpuLlama::kv_cache() const { return impl_->kv; }
size_t GpuLlama::kv_cache_bytes() const { return impl_->kv_bytes; }
DType GpuLlama::dtype() const { return impl_->dt; }
gpuStream_t GpuLlama::stream() const { return impl_->stream; }
void GpuLlama::set_stream(gpuStream_t stream) { impl_->stream = stream ? stream : impl_->own_stream; }

GpuLlama::Staging::~Staging() {
  if (p) (void)gpuFreeHost(p);
}

bool GpuLlama::upload(const float *host, size_t n, DType dt, void *device, gpuStream_t stream, std::string *error,
                      Staging *reuse) {
  const size_t es = dtype_size(dt);
  const size_t chunk = std::min(n, size_t(1) << 24);
  if (n == 0) return true;
  // Two pinned halves: the host converts one chunk while the other is being copied.
  Staging own;
  Staging &st = reuse ? *reuse : own;
  gpuError_t e = gpuSuccess;
  if (st.bytes < 2 * chunk * es) {
    if (st.p) (void)gpuFreeHost(st.p);
    st.p = nullptr;
    st.bytes = 0;
    if ((e = gpuMallocHost(&st.p, 2 * chunk * es)) != gpuSuccess) {
      if (error) *error = gpu_message("pinned staging buffer", e);
      return false;
    }
    st.bytes = 2 * chunk * es;
  }
  void *staging = st.p;
  gpuEvent_t done[2] = {nullptr, nullptr};
  for (int i = 0; i < 2 && e == gpuSuccess; i++) e = gpuEventCreateWithFlags(&done[i], gpuEventDisableTiming);
  size_t k = 0;
  for (size_t at = 0; at < n && e == gpuSuccess; at += chunk, k++) {
    const size_t m = std::min(chunk, n - at);
    char *half = static_cast<char *>(staging) + (k % 2) * chunk * es;
    if (k >= 2 && (e = gpuEventSynchronize(done[k % 2])) != gpuSuccess) break;  // that half is free again
    encode(host + at, m, dt, half);
    if ((e = gpuMemcpyAsync(static_cast<char *>(device) + at * es, half, m * es, gpuMemcpyHostToDevice, stream)) !=
        gpuSuccess)
      break;
    e = gpuEventRecord(done[k % 2], stream);
  }
  if (e == gpuSuccess) e = gpuStreamSynchronize(stream);
  for (gpuEvent_t ev : done)
    if (ev) (void)gpuEventDestroy(ev);
  if (e != gpuSuccess && error) *error = gpu_message("weights upload", e);
  return e == gpuSuccess;
}

std::unique_ptr<GpuLlama> GpuLlama::create(const GpuLlamaParams &p, std::string *error) {
  auto fail = [&](const std::string &m) {
    if (error) *error = "GpuLlama: " + m;
    return std::unique_ptr<GpuLlama>();
  };
  const bool external = p.device_weights != nullptr;
  if (!p.cfg || !p.layout || !p.inv_freq || (!p.weights && !external))
    return fail("cfg, layout, inv_freq and weights (host or device) are required");
  if (external != (p.device_kv != nullptr)) return fail("device_weights and device_kv go together");
  const LlamaConfig &c = *p.cfg;
  if (p.max_requests <= 0 || p.max_seq <= 0) return fail("max_requests and max_seq must be positive");
  if (p.max_tokens > kMaxStepTokens)
    return fail("max_tokens " + std::to_string(p.max_tokens) + " exceeds " + std::to_string(kMaxStepTokens));
  if (c.num_heads <= 0 || c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0)
    return fail("num_heads must be a positive multiple of num_kv_heads");
  if (!attention_supports_head_dim(c.head_dim))
    return fail("head_dim " + std::to_string(c.head_dim) + " unsupported (attention: 8, 16, 32, 64, 128, 256)");
  if (p.layout->layers.size() != static_cast<size_t>(c.num_layers)) return fail("layout does not match the config");
  if (p.dtype != DType::F32 && p.dtype != DType::F16 && p.dtype != DType::BF16) return fail("unknown dtype");
  auto impl = std::make_unique<Impl>();
  Impl &m = *impl;
  m.cfg = c;
  m.layout = *p.layout;
  m.dt = p.dtype;
  m.es = dtype_size(p.dtype);
  m.max_requests = p.max_requests;
  m.max_seq = p.max_seq;
  m.use_graphs = p.cuda_graphs;
  m.attention_splits = p.attention_splits;
  m.decode_attention = p.decode_attention;
  m.attention_tensor_cores = p.attention_tensor_cores;
  m.small_m_rows = std::min(p.blas.small_m_rows, kSmallLinearMaxRows);
  gpuError_t e = gpuSuccess;
  if (p.stream) {
    m.stream = p.stream;
  } else {
    if ((e = gpuStreamCreateWithFlags(&m.own_stream, gpuStreamNonBlocking)) != gpuSuccess)
      return fail(gpu_message("stream", e));
    m.stream = m.own_stream;
  }
  std::string blas_error;
  m.blas = blas_create(p.blas, &blas_error);
  if (!m.blas) return fail(blas_error);

  m.kv_bytes = static_cast<size_t>(c.num_layers) * 2 * p.max_requests * p.max_seq * c.kv_dim() * m.es;
  if (external) {
    m.weights = p.device_weights;
    m.kv = p.device_kv;
  } else {
    // Weights: converted on the host in chunks (no second full-size host copy).
    const size_t total = m.layout.total;
    if ((e = m.own_weights.reserve(total * m.es)) != gpuSuccess) return fail(gpu_message("weights", e));
    m.weights = m.own_weights.p;
    std::string up_error;
    if (!upload(p.weights, total, m.dt, m.weights, m.stream, &up_error)) return fail(up_error);
    // Zeroed: attention reads whole K/V tiles up to kv_end and multiplies the hidden ones by
    // 0, so a never-written position must not hold NaN bits. (A Legion KV region is filled
    // with zeros by the engine.)
    if ((e = m.own_kv.reserve(m.kv_bytes)) != gpuSuccess ||
        (e = gpuMemsetAsync(m.own_kv.p, 0, m.kv_bytes, m.stream)) != gpuSuccess)
      return fail(gpu_message("KV cache", e));
    m.kv = m.own_kv.p;
  }
  // On the step stream (non-blocking, so not ordered with the legacy stream's memset/memcpy),
  // finished before create() returns: p.inv_freq is the caller's.
  if ((e = m.inv_freq.reserve(c.head_dim / 2 * sizeof(float))) != gpuSuccess ||
      (e = gpuMemcpyAsync(m.inv_freq.p, p.inv_freq, c.head_dim / 2 * sizeof(float), gpuMemcpyHostToDevice,
                          m.stream)) != gpuSuccess ||
      (e = gpuStreamSynchronize(m.stream)) != gpuSuccess)
    return fail(gpu_message("inv_freq", e));
  if ((e = m.reserve_tokens(std::max(p.max_tokens, 1))) != gpuSuccess) return fail(gpu_message("activations", e));
  // Logit rows are at most the step's tokens: sized once for max_tokens, so a batch that
  // grows during warm-up does not reallocate it (and drop every graph) at each new size.
  if ((e = m.head.reserve(m.head_bytes(std::max(p.max_tokens, 1)))) != gpuSuccess)
    return fail(gpu_message("LM head scratch", e));
  return std::unique_ptr<GpuLlama>(new GpuLlama(std::move(impl)));
}

bool GpuLlama::step(const StepBatch &b, const GpuStepOutput &out, std::string *error) {
  Impl &m = *impl_;
  const LlamaConfig &c = m.cfg;
  auto fail = [&](const std::string &msg) {
    if (error) *error = "GpuLlama::step: " + msg;
    return false;
  };
  const int T = static_cast<int>(b.num_tokens()), R = static_cast<int>(b.num_rows());
  const int H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int Q = c.q_dim(), KV = c.kv_dim(), QKV = c.qkv_dim();
  const bool tree = !b.cache_pos.empty();

  // ---- validate on the host: the kernels index with these values unchecked ----
  const size_t t = b.tokens.size();
  if (T > kMaxStepTokens) return fail(std::to_string(T) + " tokens in one step (at most " +
                                     std::to_string(kMaxStepTokens) + ")");
  if (b.positions.size() != t || b.slots.size() != t) return fail("positions and slots must have one entry per token");
  if (tree && (b.cache_pos.size() != t || b.prefix_len.size() != t || b.tree_base.size() != t ||
               b.tree_mask.size() != t))
    return fail("tree batch: cache_pos, prefix_len, tree_base, tree_mask need one entry per token");
  if (out.tokens && b.samples.size() != b.logit_rows.size()) return fail("samples must have one entry per logit row");
  std::vector<int32_t> cache_pos(T), prefix_len(T);
  for (int i = 0; i < T; i++) {
    cache_pos[i] = tree ? b.cache_pos[i] : b.positions[i];
    prefix_len[i] = tree ? b.prefix_len[i] : b.positions[i] + 1;
    if (b.tokens[i] < 0 || b.tokens[i] >= V) return fail("token " + std::to_string(i) + " id out of range");
    if (b.slots[i] < 0 || b.slots[i] >= m.max_requests)
      return fail("token " + std::to_string(i) + " slot out of range");
    if (b.positions[i] < 0 || cache_pos[i] < 0 || cache_pos[i] >= m.max_seq || prefix_len[i] < 0 ||
        prefix_len[i] > m.max_seq)
      return fail("token " + std::to_string(i) + " position out of range of max_seq " + std::to_string(m.max_seq));
    if (tree && b.tree_mask[i] &&
        (b.tree_base[i] < 0 || b.tree_base[i] + 64 - __builtin_clzll(b.tree_mask[i]) > m.max_seq))
      return fail("token " + std::to_string(i) + " tree mask reaches past max_seq");
  }
  for (const KvMove &mv : b.commits)
    if (mv.slot < 0 || mv.slot >= m.max_requests || mv.src < 0 || mv.src >= m.max_seq || mv.dst < 0 ||
        mv.dst >= m.max_seq)
      return fail("KvMove out of range");
  for (int r : b.logit_rows)
    if (r < 0 || r >= T) return fail("logit row out of range");

  // ---- the step's int arrays, in one copy ----
  std::vector<SampleParams> params;
  if (out.tokens)
    for (const SampleSpec &s : b.samples)
      params.push_back({s.do_sample, s.temperature, s.topp, s.topk, s.seed, s.counter});
  Packer pk;
  const size_t o_tok = pk.add(b.tokens.data(), T), o_pos = pk.add(b.positions.data(), T);
  const size_t o_slot = pk.add(b.slots.data(), T), o_cpos = pk.add(cache_pos.data(), T);
  const size_t o_plen = pk.add(prefix_len.data(), T);
  const size_t o_base = pk.add(tree ? b.tree_base.data() : nullptr, tree ? T : 0);
  const size_t o_mask = pk.add(tree ? b.tree_mask.data() : nullptr, tree ? T : 0);
  const size_t o_moves = pk.add(b.commits.data(), b.commits.size());
  const size_t o_rows = pk.add(b.logit_rows.data(), R);
  const size_t o_params = pk.add(params.data(), params.size());
  const size_t o_out = pk.add(static_cast<const int32_t *>(nullptr), 0);
  const size_t meta_bytes = o_out + static_cast<size_t>(R) * sizeof(int32_t);

  gpuError_t e;
  const size_t head_bytes = m.head_bytes(R);
  // Consecutive tokens sharing a slot (the chunk or tree size): attention's tile hint.
  int hint = 1;
  for (int i = 1, run = 1; i < T; i++) {
    run = b.slots[i] == b.slots[i - 1] ? run + 1 : 1;
    hint = std::max(hint, run);
  }
  // Attention's shape for every layer (the addresses are filled in per layer); split-KV when
  // the step has too few blocks to fill the device.
  AttentionArgs attn_shape{nullptr, QKV, nullptr, nullptr, m.max_seq, c.num_heads, c.num_kv_heads, c.head_dim,
                           nullptr, nullptr, nullptr, nullptr, T, nullptr, m.dt, hint};
  attn_shape.decode_kernel = m.decode_attention;
  attn_shape.tensor_cores = m.attention_tensor_cores;
  attn_shape.kv_splits = m.attention_splits && T > 0 ? attention_auto_splits(attn_shape) : 1;
  {
    void *before[4] = {m.meta.p, m.act.p, m.head.p, m.attn_ws.p};
    const int capacity_before = m.capacity;  // the activation offsets follow the capacity
    if ((e = m.meta.reserve(meta_bytes)) != gpuSuccess || (e = m.reserve_tokens(T)) != gpuSuccess)
      return fail(gpu_message("scratch", e));
    if ((e = m.head.reserve(head_bytes)) != gpuSuccess) return fail(gpu_message("LM head scratch", e));
    // Grown geometrically: each growth drops every graph, so the warm-up's growing batches
    // cost a few recaptures, not one per new size.
    const size_t ws = attention_workspace_floats(attn_shape) * sizeof(float);
    if (ws > m.attn_ws.bytes && (e = m.attn_ws.reserve(std::max(ws, 2 * m.attn_ws.bytes))) != gpuSuccess)
      return fail(gpu_message("attention split-KV scratch", e));
    // A captured graph holds these addresses: one that moved makes every graph stale.
    if (before[0] != m.meta.p || before[1] != m.act.p || before[2] != m.head.p || before[3] != m.attn_ws.p ||
        capacity_before != m.capacity)
      m.drop_graphs();
  }
  gpuStream_t s = m.stream;
  // pk.blob (pageable) outlives the copy: step() synchronizes before returning.
  if (!pk.blob.empty() &&
      (e = gpuMemcpyAsync(m.meta.p, pk.blob.data(), pk.blob.size(), gpuMemcpyHostToDevice, s)) != gpuSuccess)
    return fail(gpu_message("batch upload", e));
  const int32_t *d_tok = m.meta.at<int32_t>(o_tok), *d_pos = m.meta.at<int32_t>(o_pos);
  const int32_t *d_slot = m.meta.at<int32_t>(o_slot), *d_cpos = m.meta.at<int32_t>(o_cpos);
  const int32_t *d_plen = m.meta.at<int32_t>(o_plen);
  void *logits = static_cast<char *>(m.head.p) + (static_cast<size_t>(R) * H * m.es + 255) / 256 * 256;
  int32_t *d_out = m.meta.at<int32_t>(o_out);

  auto check = [&](gpuError_t err, const char *what) {
    if (err != gpuSuccess && error) *error = gpu_message((std::string("GpuLlama::step: ") + what).c_str(), err);
    return err == gpuSuccess;
  };
  // Everything between the batch upload and the result copies: the same launches for the
  // same shape (T, R, hint, commits, tree, sampling), reading the step's values from meta,
  // so it can be captured once into a CUDA graph and replayed.
  auto enqueue = [&](gpuStream_t st) -> bool {
    auto gemm = [&](const void *x, size_t w_off, const void *bias, void *y, int M, int N, int K) {
      const BlasStatus bs = linear(m.blas, x, m.w(w_off), bias, y, M, N, K, m.dt, st);
      if (bs != BlasStatus::Ok && error) *error = std::string("GpuLlama::step: linear: ") + blas_last_error(m.blas);
      return bs == BlasStatus::Ok;
    };
    // Accepted tree tokens' K/V move to their final positions before anything reads them.
    if (!b.commits.empty() &&
        !check(kv_commit(m.kv, m.meta.at<int32_t>(o_moves), static_cast<int>(b.commits.size()), c.num_layers,
                         m.max_requests, m.max_seq, KV, m.dt, st),
               "kv_commit"))
      return false;
    if (T == 0) return true;
    void *res = m.a(m.off_res), *h = m.a(m.off_h), *h2 = m.a(m.off_h2), *qkv = m.a(m.off_qkv);
    void *attn = m.a(m.off_attn), *gu = m.a(m.off_gu), *act = m.a(m.off_act);
    const size_t slot_stride = static_cast<size_t>(m.max_seq) * KV;
    const size_t half_cache = static_cast<size_t>(m.max_requests) * slot_stride * m.es;  // bytes
    if (!check(embedding(d_tok, m.w(m.layout.embed), res, T, H, V, m.dt, st), "embedding")) return false;
    for (int l = 0; l < c.num_layers; l++) {
      const LayerLayout &L = m.layout.layers[l];
      char *ck = static_cast<char *>(m.kv) + static_cast<size_t>(l) * 2 * half_cache, *cv = ck + half_cache;
      // residual += previous layer's down projection (none before layer 0); h = norm(residual)
      if (!check(add_rms_norm(res, l == 0 ? nullptr : h2, m.w(L.attn_norm), c.rms_norm_eps, h, T, H, m.dt, st),
                 "attn norm"))
        return false;
      if (!gemm(h, L.wqkv, c.qkv_bias ? m.w(L.bqkv) : nullptr, qkv, T, QKV, H)) return false;
      if (!check(rope_kv_store(qkv, T, QKV, c.num_heads, c.num_kv_heads, c.head_dim, d_pos,
                               m.inv_freq.at<float>(0), d_slot, d_cpos, ck, cv, m.max_seq, m.dt, st),
                 "rope + kv_store"))
        return false;
      AttentionArgs aa = attn_shape;
      aa.q = qkv;
      aa.cache_k = ck;
      aa.cache_v = cv;
      aa.prefix_len = d_plen;
      aa.slots = d_slot;
      aa.tree_base = tree ? m.meta.at<int32_t>(o_base) : nullptr;
      aa.tree_mask = tree ? m.meta.at<uint64_t>(o_mask) : nullptr;
      aa.out = attn;
      aa.partial = aa.kv_splits > 1 ? m.attn_ws.at<float>(0) : nullptr;
      if (!check(attention(aa, st), "attention")) return false;
      if (!gemm(attn, L.wo, nullptr, h2, T, H, Q)) return false;
      if (!check(add_rms_norm(res, h2, m.w(L.ffn_norm), c.rms_norm_eps, h, T, H, m.dt, st), "ffn norm"))
        return false;
      if (T <= m.small_m_rows) {  // gate_up and SwiGLU in one pass over the weights
        if (!check(linear_swiglu_small(h, m.w(L.w_gate_up), act, T, I, H, m.dt, st), "gate_up + silu_mul"))
          return false;
      } else {
        if (!gemm(h, L.w_gate_up, nullptr, gu, T, 2 * I, H)) return false;
        if (!check(silu_mul(gu, act, T, I, m.dt, st), "silu_mul")) return false;
      }
      if (!gemm(act, L.w_down, nullptr, h2, T, H, I)) return false;
    }
    if (R == 0) return true;
    // Row-wise norm, so norming every token and gathering R rows equals the CPU's gather
    // then norm. The gather is embedding() over the normed rows ("vocab" = T).
    void *last = m.head.p;
    if (!check(add_rms_norm(res, h2, m.w(m.layout.final_norm), c.rms_norm_eps, h, T, H, m.dt, st), "final norm") ||
        !check(embedding(m.meta.at<int32_t>(o_rows), h, last, R, H, T, m.dt, st), "row gather") ||
        !gemm(last, m.layout.lm_head, nullptr, logits, R, V, H))
      return false;
    if (out.tokens &&
        !check(sample_rows(logits, V, R, V, m.meta.at<SampleParams>(o_params), d_out, m.dt, st), "sample_rows"))
      return false;
    return true;
  };

  // Small steps (decoding, tree verification) replay a CUDA graph per shape. A shape is run
  // eagerly the first time, captured on a private stream the second, then replayed on s.
  // Capturing is an optimisation: if it fails (or a launch fails only under capture), the
  // error is cleared, recorded in graph_error, graphs are off for this model, and the step
  // runs eagerly; an error that the eager run repeats is the step's error.
  const GraphKey key{T, R, hint, static_cast<int>(b.commits.size()), tree ? 1 : 0, out.tokens ? 1 : 0};
  gpuGraphExec_t exec = nullptr;
  if (m.use_graphs && T > 0 && T <= kMaxGraphTokens) {
    exec = m.find_graph(key);
    if (!exec && m.seen_before(key)) {
      std::string why;
      if (!m.capture_stream && (e = gpuStreamCreateWithFlags(&m.capture_stream, gpuStreamNonBlocking)) != gpuSuccess)
        why = gpu_message("capture stream", e);
      else if ((e = gpuStreamBeginCapture(m.capture_stream, gpuStreamCaptureModeThreadLocal)) != gpuSuccess)
        why = gpu_message("begin capture", e);
      if (why.empty()) {
        const bool ok = enqueue(m.capture_stream);
        if (!ok) why = error ? *error : "a launch failed under capture";
        gpuGraph_t graph = nullptr;
        e = gpuStreamEndCapture(m.capture_stream, &graph);
        if (why.empty() && e != gpuSuccess) why = gpu_message("end capture", e);
        if (why.empty() && (e = gpuGraphInstantiate(&exec, graph, 0)) != gpuSuccess) {
          exec = nullptr;
          why = gpu_message("instantiate", e);
        }
        if (graph) (void)gpuGraphDestroy(graph);
      }
      if (!why.empty()) {
        (void)gpuGetLastError();  // the capture's error must not fail the next launch
        m.graph_error = "CUDA graph capture of a " + std::to_string(T) + "-token step failed (" + why +
                        "); graphs are off for this model";
        m.use_graphs = false;
        m.drop_graphs();
        if (error) error->clear();
      } else {
        m.add_graph(key, exec);
      }
    }
  }
  if (exec) {
    if ((e = gpuGraphLaunch(exec, s)) != gpuSuccess) return fail(gpu_message("graph launch", e));
  } else if (!enqueue(s)) {
    return false;
  }
  if (T > 0 && R > 0) {
    if (out.tokens && !check(gpuMemcpyAsync(out.tokens, d_out, R * sizeof(int32_t), gpuMemcpyDeviceToHost, s),
                             "tokens copy"))
      return false;
    if (out.logits) {
      const size_t n = static_cast<size_t>(R) * V;
      void *dst = out.logits;
      if (m.dt != DType::F32) {
        m.logits_host.resize(n * m.es);
        dst = m.logits_host.data();
      }
      if (!check(gpuMemcpyAsync(dst, logits, n * m.es, gpuMemcpyDeviceToHost, s), "logits copy")) return false;
    }
  }
  if (!check(gpuStreamSynchronize(s), "step")) return false;
  if (out.logits && T > 0 && R > 0 && m.dt != DType::F32)
    decode(m.logits_host.data(), static_cast<size_t>(R) * V, m.dt, out.logits);
  return true;
}

size_t GpuLlama::num_graphs() const { return impl_->graphs.size(); }
const std::string &GpuLlama::graph_error() const { return impl_->graph_error; }

}  // namespace ffspec::gpu
