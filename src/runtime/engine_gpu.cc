#include "runtime/engine_gpu.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <utility>

#include "runtime/engine.h"
#include "serve/sampling.h"
#include "util/error.h"
#include "util/log.h"
#include "weights/checkpoint.h"

#ifdef FFS_HAVE_GPU_FORWARD
#include <dlfcn.h>

#include "ops/gpu/llama_forward_gpu.h"
#endif

namespace ffspec::engine_gpu {

size_t storage_bytes(ffs_data_type_t dt) { return dt == FFS_DT_FLOAT ? 4 : 2; }

#ifndef FFS_HAVE_GPU_FORWARD

bool available() { return false; }
Probe probe() {
  Probe p;
  p.why = "this build of flexflow_spec has no GPU backend (built without nvcc or without the cuBLAS headers)";
  return p;
}
void load_weights(ModelHandle *, int, void *, void *) { fail(FFS_ERR_UNSUPPORTED, "no GPU backend in this build"); }
StepResult step(ModelHandle *, int, const StepBatch &, void *, void *, void *) {
  fail(FFS_ERR_UNSUPPORTED, "no GPU backend in this build");
}
std::string unsupported(const ModelHandle *) { return "this build of flexflow_spec has no GPU backend"; }
void release(int) {}
void release_all() {}
void *thread_stream() { fail(FFS_ERR_UNSUPPORTED, "no GPU backend in this build"); }

#else

namespace {

gpu::DType to_dtype(ffs_data_type_t dt) {
  return dt == FFS_DT_HALF ? gpu::DType::F16 : dt == FFS_DT_BFLOAT16 ? gpu::DType::BF16 : gpu::DType::F32;
}

void check(gpuError_t e, const std::string &what) {
  if (e != gpuSuccess) fail(FFS_ERR_INTERNAL, what + ": " + gpuGetErrorString(e));
}

// One GpuLlama per (model, device), bound to the framebuffer instances it was made for. A
// model's steps are serialized by Legion (the KV cache is read-write exclusive), so an entry
// is used by one task at a time; the map itself is shared.
struct Bound {
  std::unique_ptr<gpu::GpuLlama> llama;
  void *weights = nullptr, *kv = nullptr;
  bool graph_error_logged = false;
};
std::mutex g_mu;
// Never destroyed: CUDA objects must not die in a static destructor, after the CUDA runtime's
// and cuBLAS's own exit handlers and Realm's teardown have run. release_all() frees them on
// the driver thread while the runtime still runs.
auto &g_bound = *new std::map<std::pair<int, int>, std::shared_ptr<Bound>>;

std::shared_ptr<Bound> bound_for(ModelHandle *m, int device, void *weights, void *kv, gpuStream_t stream) {
  const auto key = std::make_pair(m->id, device);
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_bound.find(key);
    // The mapper may move an instance (it never does with our launches, but if it did the
    // old addresses would be stale): rebind then.
    if (it != g_bound.end() && it->second->weights == weights && it->second->kv == kv) return it->second;
  }
  gpu::GpuLlamaParams p;
  p.cfg = &m->config;
  p.layout = &m->layout;
  p.inv_freq = m->inv_freq.data();
  p.device_weights = weights;
  p.device_kv = kv;
  p.stream = stream;
  p.dtype = to_dtype(m->data_type);
  p.max_requests = m->limits.max_requests_per_batch;
  p.max_seq = m->limits.max_seq_length;
  p.max_tokens = m->limits.max_tokens_per_batch;
  const char *graphs = std::getenv("FFS_CUDA_GRAPHS");  // "0": launch every kernel, no graphs
  p.cuda_graphs = !(graphs && std::string(graphs) == "0");
  const char *split = std::getenv("FFS_ATTENTION_SPLIT");  // "0": one block per (tokens, KV head)
  p.attention_splits = !(split && std::string(split) == "0");
  const char *decode = std::getenv("FFS_ATTENTION_DECODE");  // "0": decode batches on the tiled kernel
  p.decode_attention = !(decode && std::string(decode) == "0");
  const char *tc = std::getenv("FFS_ATTENTION_TC");  // "0": no tensor cores in attention
  p.attention_tensor_cores = !(tc && std::string(tc) == "0");
  const char *small = std::getenv("FFS_GPU_SMALL_GEMM");  // "0": every projection through cuBLAS
  if (small && std::string(small) == "0") p.blas.small_m_rows = 0;
  std::string error;
  auto b = std::make_shared<Bound>();
  b->llama = gpu::GpuLlama::create(p, &error);
  if (!b->llama) {
    // Scratch, activations, cuBLAS and graphs live outside Legion's framebuffer pool.
    if (error.find("out of memory") != std::string::npos)
      fail(FFS_ERR_OUT_OF_MEMORY, "model " + m->path + " on GPU " + std::to_string(device) + ": " + error +
                                      " (the step's buffers live outside the Legion pool: lower ff.init(memory_per_gpu=...)"
                                      " or max_tokens_per_batch)");
    fail(FFS_ERR_INTERNAL, "model " + m->path + " on GPU " + std::to_string(device) + ": " + error);
  }
  b->weights = weights;
  b->kv = kv;
  std::lock_guard<std::mutex> lock(g_mu);
  g_bound[key] = b;
  return b;
}

}  // namespace

bool available() { return true; }

std::string unsupported(const ModelHandle *m) {
  const LlamaConfig &c = m->config;
  if (!gpu::attention_supports_head_dim(c.head_dim))
    return "model " + m->path + " has head_dim " + std::to_string(c.head_dim) +
           ", which the GPU attention kernel does not support (8, 16, 32, 64, 128, 256); run it on the CPU "
           "(ff.init(num_gpus=0))";
  if (m->limits.max_tokens_per_batch > gpu::kMaxStepTokens)
    return "max_tokens_per_batch " + std::to_string(m->limits.max_tokens_per_batch) + " exceeds " +
           std::to_string(gpu::kMaxStepTokens) + ", the most tokens a GPU step takes";
  return "";
}

Probe probe() {
  Probe p;
  int n = 0;
  gpuError_t e = gpuGetDeviceCount(&n);
  if (e != gpuSuccess || n <= 0) {
    if (e == gpuErrorInsufficientDriver && !dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD) &&
        !dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL))
      p.why = "no NVIDIA GPU driver on this machine (libcuda.so.1 not found)";
    else if (e != gpuSuccess)
      p.why = std::string("the CUDA runtime found no usable GPU (") + gpuGetErrorString(e) + ")";
    else
      p.why = "the CUDA runtime sees no GPU";
    gpuGetLastError();  // clear the error state
    return p;
  }
  p.devices = n;
  gpuDeviceProp_t prop;
  if (gpuGetDeviceProperties(&prop, 0) == gpuSuccess) p.name = prop.name;
  if ((e = gpuSetDevice(0)) != gpuSuccess || (e = gpuMemGetInfo(&p.free_bytes, &p.total_bytes)) != gpuSuccess) {
    p.devices = 0;
    p.why = std::string("GPU 0 cannot be used: ") + gpuGetErrorString(e);
    return p;
  }
  const size_t reserve = std::max<size_t>(size_t(2048) << 20, p.total_bytes / 12);
  if (p.free_bytes >= reserve + (size_t(256) << 20)) p.default_pool_bytes = p.free_bytes - reserve;
  return p;
}

void load_weights(ModelHandle *m, int device, void *device_weights, void *stream) {
  check(gpuSetDevice(device), "cudaSetDevice");
  const gpu::DType dt = to_dtype(m->data_type);
  const size_t es = gpu::dtype_size(dt);
  const auto s = static_cast<gpuStream_t>(stream);
  std::string error;
  gpu::GpuLlama::Staging staging;  // one pinned buffer for every tensor
  load_weights_streamed(*m->checkpoint, m->config, m->layout, m->data_type,
                        [&](size_t offset, const float *data, size_t n) {
                          // Called from the loader's worker threads: the device is per thread.
                          check(gpuSetDevice(device), "cudaSetDevice");
                          if (!gpu::GpuLlama::upload(data, n, dt, static_cast<char *>(device_weights) + offset * es,
                                                     s, &error, &staging))
                            fail(FFS_ERR_INTERNAL, "model " + m->path + ": " + error);
                        });
}

StepResult step(ModelHandle *m, int device, const StepBatch &b, void *device_weights, void *device_kv,
                void *stream) {
  const auto t0 = std::chrono::steady_clock::now();
  check(gpuSetDevice(device), "cudaSetDevice");
  const auto s = static_cast<gpuStream_t>(stream);
  std::shared_ptr<Bound> bd = bound_for(m, device, device_weights, device_kv, s);
  bd->llama->set_stream(s);
  StepResult r;
  std::string error;
  const int V = m->config.vocab_size;
  if (needs_host_logits(b)) {
    thread_local std::vector<float> logits;
    logits.resize(b.num_rows() * static_cast<size_t>(V));
    gpu::GpuStepOutput out;
    out.logits = logits.data();
    if (!bd->llama->step(b, out, &error)) fail(FFS_ERR_INTERNAL, error);
    result_from_logits(logits.data(), V, b, &r);
  } else {
    r.tokens.resize(b.num_rows());
    gpu::GpuStepOutput out;
    out.tokens = r.tokens.data();
    if (!bd->llama->step(b, out, &error)) fail(FFS_ERR_INTERNAL, error);
  }
  if (!bd->graph_error_logged && !bd->llama->graph_error().empty()) {
    bd->graph_error_logged = true;
    FFS_WARN("gpu", "model " << m->path << " on GPU " << device << ": " << bd->llama->graph_error());
  }
  r.compute_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  r.ok = 1;
  return r;
}

void *thread_stream() {
  thread_local gpuStream_t s = [] {
    gpuStream_t made = nullptr;
    check(gpuStreamCreateWithFlags(&made, gpuStreamNonBlocking), "cudaStreamCreateWithFlags");
    return made;
  }();
  return s;
}

namespace {
void release_where(const std::function<bool(int)> &which) {
  std::vector<std::pair<int, std::shared_ptr<Bound>>> drop;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    for (auto it = g_bound.begin(); it != g_bound.end();) {
      if (which(it->first.first)) {
        drop.emplace_back(it->first.second, it->second);
        it = g_bound.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto &d : drop) {
    gpuSetDevice(d.first);
    d.second.reset();  // frees the scratch and the cuBLAS handle on that device
  }
}
}  // namespace

void release(int model_id) { release_where([model_id](int id) { return id == model_id; }); }
void release_all() { release_where([](int) { return true; }); }

#endif

}  // namespace ffspec::engine_gpu
