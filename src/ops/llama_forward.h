// One decoding step of a LLaMA-family model on the CPU: embeddings, the layers, the final
// norm and the LM head for the rows that draw a token. KV of every batch token is written
// to its slot's cache at its position before attention reads the cache.
#pragma once
#include <vector>

#include "models/llama.h"
#include "serve/batch.h"

namespace ffspec {

struct ModelView {
  const LlamaConfig *cfg;
  const LlamaLayout *layout;
  const float *inv_freq;  // [head_dim/2]
  const float *weights;   // [layout.total]
  float *kv;              // [layers, 2, max_requests, max_seq, kv_dim]
  int max_requests, max_seq;
};

// logits[R, vocab] for batch.logit_rows
void llama_forward_cpu(const ModelView &m, const StepBatch &batch, float *logits);

}  // namespace ffspec
