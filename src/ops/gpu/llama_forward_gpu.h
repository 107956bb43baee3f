// One decoding step of a LLaMA-family model on the GPU: llama_forward_cpu's contract
// (src/ops/llama_forward.h) as plain CUDA host code over src/kernels/gpu, no Legion.
// A GpuLlama holds the weights (uploaded once from the same flat fp32 host buffer the CPU
// path reads, stored as fp32, fp16 or bf16), the KV cache [layers, 2, max_requests, max_seq,
// kv_dim] in device memory, a cuBLAS handle and one stream; step() runs one StepBatch on it.
// The engine's Legion GPU tasks give it their framebuffer instances and task stream instead
// (device_weights / device_kv / stream): it then owns only its scratch and cuBLAS handle.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "kernels/gpu/kernels.h"
#include "models/llama.h"
#include "serve/batch.h"

namespace ffspec::gpu {

struct GpuLlamaParams {
  const LlamaConfig *cfg = nullptr;
  const LlamaLayout *layout = nullptr;
  const float *inv_freq = nullptr;  // host [head_dim/2], LlamaConfig::rope_inv_freq()
  const float *weights = nullptr;   // host [layout.total]: read once by create(), not kept
  // External device buffers (not owned, already in dtype): with these create() neither
  // uploads the weights nor allocates or zeroes the cache, and `weights` may be null.
  void *device_weights = nullptr;   // [layout.total]
  void *device_kv = nullptr;        // [layers, 2, max_requests, max_seq, kv_dim]
  gpuStream_t stream = nullptr;     // work goes on this stream (not owned); null: create one
  DType dtype = DType::F32;         // storage and activations; every kernel accumulates in fp32
  int max_requests = 0;             // KV cache slots
  int max_seq = 0;                  // positions per slot
  int max_tokens = 0;               // scratch sized for this many tokens per step (grown on demand)
  BlasOptions blas;                 // allow_tf32 off by default: fp32 stays within ~1e-5 of the CPU
  // Replay steps of up to 512 tokens from CUDA graphs, one captured per step shape (tokens,
  // logit rows, tokens per slot, commits, tree or not, sampling or not); a shape's first step
  // is captured, later ones launch the graph: one launch instead of ~10 per layer.
  bool cuda_graphs = true;
  // Split-KV attention for steps with too few blocks to fill the device (attention_auto_splits).
  bool attention_splits = true;
  bool decode_attention = true;  // decode batches on the decode attention kernel (AttentionArgs)
  bool attention_tensor_cores = true;  // prefill chunks and trees on tensor cores (fp16/bf16, CUDA)
};

// What step() hands back; any pointer may be null (that output is not produced).
struct GpuStepOutput {
  float *logits = nullptr;   // host [R, vocab] fp32: exactly what llama_forward_cpu writes
  int32_t *tokens = nullptr; // host [R]: drawn on the GPU with batch.samples (sample_rows:
                             // argmax rows, or temperature / top-k / top-p from (seed, counter))
};

class GpuLlama {
 public:
  // Uploads the weights and allocates the (zeroed) KV cache; null with *error on failure
  // (bad parameters, out of device memory, cuBLAS not loadable).
  static std::unique_ptr<GpuLlama> create(const GpuLlamaParams &p, std::string *error);
  ~GpuLlama();
  GpuLlama(const GpuLlama &) = delete;
  GpuLlama &operator=(const GpuLlama &) = delete;

  // llama_forward_cpu on the device, in its order: batch.commits (KvMoves) first, then the
  // embeddings, every layer (each token's K/V written at its slot's cache_pos before
  // attention reads the cache; tree masks when batch.cache_pos is set), the final norm and
  // the LM head for batch.logit_rows. Enqueued on stream(); returns once the outputs are on
  // the host. False with *error on a malformed batch (ids, slots or positions out of range;
  // nothing is run then) or a failed launch.
  bool step(const StepBatch &batch, const GpuStepOutput &out, std::string *error);

  // Later steps go on this stream (not owned), e.g. the Legion task's stream; null goes
  // back to the GpuLlama's own stream, if it made one.
  void set_stream(gpuStream_t stream);

  // CUDA graphs held (one per step shape seen at least twice, at most 64).
  size_t num_graphs() const;
  // Why CUDA graphs were turned off for this model (a capture failed); empty while they work.
  const std::string &graph_error() const;

  // The device KV cache [layers, 2, max_requests, max_seq, kv_dim] of dtype(), for tests and
  // for copying a slot out.
  void *kv_cache() const;
  size_t kv_cache_bytes() const;
  DType dtype() const;
  gpuStream_t stream() const;

  struct Impl;

  // Pinned host memory for upload(), kept across calls (one allocation for a whole model).
  struct Staging {
    void *p = nullptr;
    size_t bytes = 0;
    Staging() = default;
    Staging(const Staging &) = delete;
    Staging &operator=(const Staging &) = delete;
    ~Staging();
  };
  // Host fp32 -> dtype -> device: n values from `host` to `device` (a byte address of n
  // dtype elements), converted a chunk at a time through pinned staging (two halves: one
  // converting while the other copies) on `stream`; returns once the copy is done. False with
  // *error on a CUDA error. staging: reused and grown if given, else allocated for this call.
  static bool upload(const float *host, size_t n, DType dt, void *device, gpuStream_t stream, std::string *error,
                     Staging *staging = nullptr);

 private:
  explicit GpuLlama(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ffspec::gpu
