// What one decoding step computes, as plain data: the batch travels to the step task as
// its argument, the result comes back in a future. No Legion types here.
#pragma once
#include <cstddef>
#include <cstdint>
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
};

struct StepBatch {
  int32_t model_id = -1;
  std::vector<int32_t> tokens;     // [T] token ids
  std::vector<int32_t> positions;  // [T] position in its sequence
  std::vector<int32_t> slots;      // [T] KV cache slot (one per running request)
  std::vector<int32_t> logit_rows; // [R] indices into tokens whose next token is drawn
  std::vector<SampleSpec> samples; // [R]

  size_t num_tokens() const { return tokens.size(); }
  size_t num_rows() const { return logit_rows.size(); }

  std::vector<uint8_t> serialize() const;
  static StepBatch deserialize(const void *data, size_t size);
};

struct StepResult {
  std::vector<int32_t> tokens;  // [R] drawn tokens
  std::vector<float> logits;    // [rows with want_logits, vocab], in row order

  // Legion's future serialization protocol.
  size_t legion_buffer_size() const;
  void legion_serialize(void *buffer) const;
  void legion_deserialize(const void *buffer);
};

}  // namespace ffspec
