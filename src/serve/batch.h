// What one decoding step computes, as plain data: the batch travels to the step task as
// its argument, the result comes back in a future. No Legion types here.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ffspec {

struct SampleSpec {
  int32_t do_sample = 0;
  float temperature = 1.0f;
  float topp = 1.0f;
  int32_t topk = 0;
  uint64_t seed = 0;
  uint64_t counter = 0;     // index of the token being drawn: randomness = f(seed, counter)
  int32_t want_logits = 0;  // copy this row's logits into the result
  int32_t num_topk = 0;     // also return the row's num_topk most likely tokens and their probabilities
};

// Move one token's K/V (all layers) inside a slot: accepted tree tokens go to their final
// positions before the step's forward pass reads the cache.
struct KvMove {
  int32_t slot, src, dst;
};

struct StepBatch {
  int32_t model_id = -1;
  std::vector<int32_t> tokens;     // [T] token ids
  std::vector<int32_t> positions;  // [T] position in its sequence
  std::vector<int32_t> slots;      // [T] KV cache slot (one per running request)
  // Tree attention. A token writes its K/V at cache_pos and attends to cache positions
  // [0, prefix_len) plus tree_base + j for each bit j of tree_mask. A plain causal token has
  // cache_pos = position, prefix_len = position + 1, tree_mask = 0. Empty = all plain.
  std::vector<int32_t> cache_pos;  // [T]
  std::vector<int32_t> prefix_len; // [T]
  std::vector<int32_t> tree_base;  // [T]
  std::vector<uint64_t> tree_mask; // [T]
  std::vector<KvMove> commits;     // applied before the forward pass
  std::vector<int32_t> logit_rows; // [R] indices into tokens whose next token is drawn
  std::vector<SampleSpec> samples; // [R]

  size_t num_tokens() const { return tokens.size(); }
  size_t num_rows() const { return logit_rows.size(); }

  std::vector<uint8_t> serialize() const;
  static StepBatch deserialize(const void *data, size_t size);
  // A serialized batch's model and token count, read from its header (no full deserialization).
  static int32_t serialized_model_id(const void *data, size_t size);
  static size_t serialized_num_tokens(const void *data, size_t size);
};

// The batches of one step (one per model that runs in it: a plain model, or a speculative
// LLM or its SSMs drafting), travelling as a future's value: the pipelined driver's prepare
// task makes it, and each of the step tasks launched before it ran (one per model of the
// chain) takes its own batch from it.
struct StepPlan {
  std::vector<std::vector<uint8_t>> batches;  // StepBatch::serialize() each, in next_steps() order

  // Model model_id's serialized batch, or nullptr when this step does not run that model.
  const std::vector<uint8_t> *find(int32_t model_id) const;
  size_t num_tokens() const;  // over all batches, read from their headers

  size_t legion_buffer_size() const;
  void legion_serialize(void *buffer) const;
  void legion_deserialize(const void *buffer);
};

struct StepResult {
  std::vector<int32_t> tokens;  // [R] drawn tokens
  std::vector<float> logits;    // [rows with want_logits, vocab], in row order
  std::vector<int32_t> topk_tokens;  // concatenated num_topk entries of each row asking for them
  std::vector<float> topk_probs;     // softmax probabilities (after the row's temperature) of those
  double compute_us = 0;             // time the step task spent computing
  double start_us = 0, end_us = 0;   // when it started and ended (steady clock, microseconds)
  int32_t ok = 0;                    // set only by a step that completed
  std::string error;                 // why a step failed (ok == 0), at most kMaxError bytes
  static constexpr size_t kMaxError = 1024;

  // Legion's future serialization protocol.
  size_t legion_buffer_size() const;
  void legion_serialize(void *buffer) const;
  void legion_deserialize(const void *buffer);
};

}  // namespace ffspec
