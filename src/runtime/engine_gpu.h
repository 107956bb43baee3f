// The GPU half of the engine's tasks: plain CUDA host code (no Legion types), called by the
// Legion GPU task variants in engine.cc with their framebuffer instances' addresses and the
// task's stream. Built only with the GPU forward pass (FFS_HAVE_GPU_FORWARD); without it,
// available() is false and the rest is never called.
#pragma once
#include <cstddef>
#include <string>

#include "flexflow_spec/c/flexflow_spec.h"
#include "serve/batch.h"

namespace ffspec {
struct ModelHandle;
}

namespace ffspec::engine_gpu {

// Built with the GPU forward pass (the CUDA kernels and cuBLAS headers).
bool available();

// What the CUDA runtime sees, before Legion starts: the device count (0 with *why when the
// driver or devices are missing) and device 0's name and memory.
struct Probe {
  int devices = 0;
  std::string why;  // set when devices == 0
  std::string name;
  size_t free_bytes = 0, total_bytes = 0;
  // The default framebuffer pool: free memory less max(2 GiB, 1/12 of the device) for what
  // the step allocates outside Legion (context, cuBLAS and its workspace, scratch, graphs);
  // 0 when that leaves less than 256 MiB.
  size_t default_pool_bytes = 0;
};
Probe probe();

// Why model m cannot run on the GPU backend ("" when it can): a shape the kernels do not
// cover. Checked when the model is compiled, before anything is placed.
std::string unsupported(const ModelHandle *m);

// Bytes per stored element on the GPU: fp32 4, fp16 and bf16 2 (the CPU backend keeps fp32).
size_t storage_bytes(ffs_data_type_t dt);

// Fills device_weights (layout.total elements of storage_bytes(dt)) from m's checkpoint, a
// tensor at a time (converted on the host, copied on `stream`). Throws ffspec::Error.
void load_weights(ModelHandle *m, int device, void *device_weights, void *stream);

// One step of model m on `device`, its weights and KV cache at these device addresses. The
// drawn tokens come from the GPU sampler, unless some row needs its logits on the host
// (want_logits, num_topk): then every row is finished on the host like the CPU backend.
// Throws ffspec::Error.
StepResult step(ModelHandle *m, int device, const StepBatch &b, void *device_weights, void *device_kv,
                void *stream);

// A stream of the calling thread's own, made on first use: the emulated engine's tasks
// (FFS_GPU_EMU_ENGINE) use it where a real GPU task is given Realm's stream for the task.
void *thread_stream();

// Frees what step() keeps for model_id (scratch, cuBLAS handle, graphs) on every device.
void release(int model_id);
// The same for every model: the driver thread calls it before the runtime stops.
void release_all();

}  // namespace ffspec::engine_gpu
