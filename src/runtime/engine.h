// The Legion side: starts Legion in the background, runs one driver thread that is bound
// as the implicit top-level task and makes every Legion call, keeps each compiled model's
// weights and KV cache in Legion regions, and launches one coarse step task per model step.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "flexflow_spec/c/flexflow_spec.h"
#include "models/llama.h"
#include "serve/request_manager.h"
#include "serve/token_tree.h"

namespace ffspec {

class Checkpoint;

struct ModelHandle {
  int id = -1;
  std::string path;
  ffs_data_type_t data_type = FFS_DT_FLOAT;
  LlamaConfig config;
  LlamaLayout layout;
  std::vector<float> inv_freq;
  std::unique_ptr<Checkpoint> checkpoint;  // kept mapped until compile has copied it
  std::unique_ptr<RequestManager> manager; // set by compile
  ServeLimits limits;
  std::atomic<int> attached_to{-1};        // an SSM serving an LLM's speculation
  // Step timing (driver thread writes, readers take st().mu): microseconds.
  struct Stats {
    int64_t steps = 0;
    double compute_us = 0;  // inside the step tasks
    double wall_us = 0;     // launch to result, as the driver sees it
    double driver_us = 0;   // scheduling and bookkeeping between steps
  } stats;
  bool speculative = false;
};

namespace engine {

void start(const std::vector<std::string> &args);  // throws ffspec::Error
void shutdown();
bool started();
ModelHandle::Stats stats(ModelHandle *m);
// Built with the Legion GPU task variants (the GPU forward pass and a Legion with CUDA).
bool gpu_tasks_built();
// Legion GPU processors of the running runtime.
int num_gpus();

// Registers a loaded model so step tasks can find it by id.
int register_model(ModelHandle *m);
void unregister_model(int id);
// Creates the regions, copies the weights in and starts serving; blocks until done.
void compile(ModelHandle *m, const ServeLimits &limits);
// Like compile, and the LLM speculates with these (already compiled) SSMs.
void compile_speculative(ModelHandle *llm, const ServeLimits &limits, const std::vector<ModelHandle *> &ssms,
                         const TreeShape &shape);

}  // namespace engine
}  // namespace ffspec
