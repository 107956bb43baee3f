// Continuous batching for one model: requests join running ones as KV slots free up;
// each step serves every running request's pending tokens (decodes first, then prefill
// chunks) within max_tokens_per_batch. One rule covers prefill, chunked prefill and
// decoding: a request's num_computed catches up with its token count. Plain C++, no Legion.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "flexflow_spec/c/flexflow_spec.h"
#include "serve/batch.h"

namespace ffspec {

struct ServeLimits {
  int max_requests_per_batch = 1;
  int max_seq_length = 256;
  int max_tokens_per_batch = 64;
  int vocab_size = 0;
};

struct RequestParams {
  int max_new_tokens = -1;
  int max_length = -1;
  bool do_sample = false;
  float temperature = 1.0f;
  float topp = 1.0f;
  int topk = 0;
  uint64_t seed = 0;
  bool return_logits = false;
  std::vector<int> eos_ids;
};

enum class FinishReason { Running = 0, Eos = 1, Length = 2, Error = 3 };

struct Request {
  using Clock = std::chrono::steady_clock;
  uint64_t guid = 0;
  std::vector<int32_t> tokens;  // prompt, then generated
  int prompt_len = 0;
  int num_computed = 0;         // tokens whose K/V are in the cache
  int slot = -1;
  RequestParams params;
  FinishReason finish = FinishReason::Running;
  std::string error;
  ffs_status_t error_code = FFS_ERR_INTERNAL;  // what a failed request reports
  int decoding_steps = 0;       // LLM steps that emitted tokens for it
  std::vector<int> accepted_per_step;  // tokens emitted at each of those steps
  std::vector<int> ssm_computed;       // speculative mode: tokens in each SSM's cache
  uint64_t spec_draws = 0;             // speculative sampling: uniforms used so far
  int spec_depth = -1;                 // adaptive speculation: depth of the next tree (-1: max)
  std::vector<float> logits;    // [generated, vocab] when return_logits
  Clock::time_point submitted, first_token, finished;

  int num_generated() const { return static_cast<int>(tokens.size()) - prompt_len; }
};

class RequestManager {
 public:
  RequestManager(int model_id, const ServeLimits &limits, std::function<void()> on_new_work);
  virtual ~RequestManager() = default;

  // The engine's view: the batches of the next step (one per model that runs in it; they
  // may run concurrently), then their results in the same order.
  virtual std::vector<StepBatch> next_steps();
  virtual void update(const std::vector<StepBatch> &batches, const std::vector<StepResult> &results);
  virtual void fail_steps(const std::vector<StepBatch> &batches, const std::string &why);
  // Every model whose batches next_steps() may return (this one first).
  virtual std::vector<int> model_ids() const { return {model_id_}; }

  // Validates and queues; throws ffspec::Error(FFS_ERR_INVALID_ARGUMENT) naming the problem.
  uint64_t submit(const std::vector<int32_t> &prompt, const RequestParams &params);
  // Validates every request first (nothing is queued when one is bad; the message names its
  // index), then queues them together, so the next step can take them all.
  std::vector<uint64_t> submit_many(const std::vector<std::vector<int32_t>> &prompts,
                                    const std::vector<RequestParams> &params);
  bool has_work();
  // Builds the next step; an empty batch (no tokens) when there is nothing to do.
  StepBatch schedule();
  void update_from_output(const StepBatch &batch, const StepResult &result);
  // Fails every request in the batch (the step itself failed).
  void fail_batch(const StepBatch &batch, const std::string &why);

  // Fails every request not finished yet (shutdown).
  void fail_all(const std::string &why);
  // Blocks until done; false on timeout. Copies the request out.
  bool wait(uint64_t guid, int64_t timeout_ms, Request *out);
  bool release(uint64_t guid);
  const ServeLimits &limits() const { return limits_; }

 protected:
  void finish_locked(Request &r, FinishReason why);
  // Appends a generated token and applies EOS / length limits; true if the request finished.
  // kNonFiniteToken (its logits held NaN or +inf) fails the request instead.
  bool append_token_locked(Request &r, int32_t tok);
  void admit_locked();
  void validate(const std::vector<int32_t> &prompt, const RequestParams &params) const;
  SampleSpec sample_spec(const Request &r) const;

  int model_id_;
  ServeLimits limits_;
  std::function<void()> on_new_work_;
  std::mutex mu_;
  std::condition_variable done_cv_;
  uint64_t next_guid_ = 1000000;
  std::map<uint64_t, Request> requests_;
  std::deque<uint64_t> waiting_;
  std::vector<uint64_t> running_;  // admission order
  std::vector<int> free_slots_;
  // What the step in flight covers: (guid, number of tokens, draws a token)
  struct Scheduled {
    uint64_t guid;
    int num_tokens;
    bool samples;
  };
  std::vector<Scheduled> in_flight_;
};

}  // namespace ffspec
