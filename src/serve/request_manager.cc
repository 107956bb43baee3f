#include "serve/request_manager.h"

#include <algorithm>
#include <cmath>

#include "serve/sampling.h"
#include "util/error.h"

namespace ffspec {

RequestManager::RequestManager(int model_id, const ServeLimits &limits, std::function<void()> on_new_work)
    : model_id_(model_id), limits_(limits), on_new_work_(std::move(on_new_work)) {
  for (int s = limits.max_requests_per_batch - 1; s >= 0; s--) free_slots_.push_back(s);
}

void RequestManager::validate(const std::vector<int32_t> &prompt, const RequestParams &p) const {
  const int n = static_cast<int>(prompt.size());
  if (n == 0) fail(FFS_ERR_INVALID_ARGUMENT, "the prompt is empty (give at least one token)");
  if (n >= limits_.max_seq_length)
    fail(FFS_ERR_INVALID_ARGUMENT, "the prompt has " + std::to_string(n) + " tokens but max_seq_length is " +
                                       std::to_string(limits_.max_seq_length) +
                                       " (prompt plus at least one generated token must fit): shorten the prompt "
                                       "or compile with a larger max_seq_length");
  for (int i = 0; i < n; i++)
    if (prompt[i] < 0 || prompt[i] >= limits_.vocab_size)
      fail(FFS_ERR_INVALID_ARGUMENT, "prompt token " + std::to_string(i) + " has id " + std::to_string(prompt[i]) +
                                         ", outside the vocabulary [0, " + std::to_string(limits_.vocab_size) + ")");
  if (p.do_sample) {
    if (!(p.temperature > 0) || !std::isfinite(p.temperature))
      fail(FFS_ERR_INVALID_ARGUMENT, "temperature must be > 0 when sampling, got " + std::to_string(p.temperature));
    if (!(p.topp > 0 && p.topp <= 1))
      fail(FFS_ERR_INVALID_ARGUMENT, "topp must be in (0, 1], got " + std::to_string(p.topp));
    if (p.topk < 0) fail(FFS_ERR_INVALID_ARGUMENT, "topk must be >= 0, got " + std::to_string(p.topk));
  }
  if (p.max_new_tokens < -1) fail(FFS_ERR_INVALID_ARGUMENT, "max_new_tokens must be >= 0 (or -1 for no limit)");
  if (p.max_length != -1 && p.max_length <= n)
    fail(FFS_ERR_INVALID_ARGUMENT, "max_length " + std::to_string(p.max_length) +
                                       " leaves no room after a prompt of " + std::to_string(n) + " tokens");
}

uint64_t RequestManager::submit(const std::vector<int32_t> &prompt, const RequestParams &p) {
  return submit_many({prompt}, {p}).at(0);
}

std::vector<uint64_t> RequestManager::submit_many(const std::vector<std::vector<int32_t>> &prompts,
                                                  const std::vector<RequestParams> &params) {
  if (prompts.size() != params.size()) fail(FFS_ERR_INVALID_ARGUMENT, "one set of parameters per prompt");
  for (size_t i = 0; i < prompts.size(); i++) {
    try {
      validate(prompts[i], params[i]);
    } catch (const Error &e) {
      if (prompts.size() == 1) throw;
      fail(e.status(), "prompt " + std::to_string(i) + ": " + e.what());
    }
  }
  std::vector<uint64_t> guids;
  bool queued = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto now = Request::Clock::now();
    for (size_t i = 0; i < prompts.size(); i++) {
      Request r;
      r.tokens = prompts[i];
      r.prompt_len = static_cast<int>(prompts[i].size());
      r.params = params[i];
      r.submitted = now;
      const uint64_t guid = r.guid = next_guid_++;
      guids.push_back(guid);
      if (params[i].max_new_tokens == 0) {
        r.finish = FinishReason::Length;
        r.finished = r.first_token = r.submitted;
        requests_.emplace(guid, std::move(r));
        continue;
      }
      requests_.emplace(guid, std::move(r));
      waiting_.push_back(guid);
      queued = true;
    }
  }
  done_cv_.notify_all();
  if (queued && on_new_work_) on_new_work_();
  return guids;
}

bool RequestManager::has_work() {
  std::lock_guard<std::mutex> lock(mu_);
  return !waiting_.empty() || !running_.empty();
}

std::vector<StepBatch> RequestManager::next_steps() {
  StepBatch b = schedule();
  if (b.num_tokens() == 0) return {};
  return {std::move(b)};
}

void RequestManager::update(const std::vector<StepBatch> &batches, const std::vector<StepResult> &results) {
  update_from_output(batches.at(0), results.at(0));
}

void RequestManager::fail_steps(const std::vector<StepBatch> &batches, const std::string &why) {
  fail_batch(batches.empty() ? StepBatch() : batches[0], why);
}

void RequestManager::admit_locked() {
  while (!waiting_.empty() && !free_slots_.empty()) {
    Request &r = requests_.at(waiting_.front());
    waiting_.pop_front();
    r.slot = free_slots_.back();
    free_slots_.pop_back();
    running_.push_back(r.guid);
  }
}

SampleSpec RequestManager::sample_spec(const Request &r) const {
  SampleSpec s;
  s.do_sample = r.params.do_sample;
  s.temperature = r.params.temperature;
  s.topp = r.params.topp;
  s.topk = r.params.topk;
  s.seed = r.params.seed;
  s.counter = static_cast<uint64_t>(r.num_generated());
  s.want_logits = r.params.return_logits;
  return s;
}

bool RequestManager::append_token_locked(Request &r, int32_t tok) {
  if (tok == kNonFiniteToken) {
    r.error = "the model's logits for generated token " + std::to_string(r.num_generated()) +
              " hold NaN or +inf, so no token can be chosen (an activation overflowed, e.g. with fp16 "
              "weights, or the checkpoint holds NaN/inf weights; try DT_BFLOAT16 or DT_FLOAT)";
    r.error_code = FFS_ERR_NUMERICAL;
    finish_locked(r, FinishReason::Error);
    return true;
  }
  r.tokens.push_back(tok);
  if (r.num_generated() == 1) r.first_token = Request::Clock::now();
  const int total = static_cast<int>(r.tokens.size());
  const std::vector<int> &eos = r.params.eos_ids;
  if (std::find(eos.begin(), eos.end(), tok) != eos.end()) {
    finish_locked(r, FinishReason::Eos);
    return true;
  }
  if ((r.params.max_new_tokens >= 0 && r.num_generated() >= r.params.max_new_tokens) ||
      (r.params.max_length >= 0 && total >= r.params.max_length) || total >= limits_.max_seq_length) {
    finish_locked(r, FinishReason::Length);
    return true;
  }
  return false;
}

StepBatch RequestManager::schedule() {
  std::lock_guard<std::mutex> lock(mu_);
  StepBatch b;
  b.model_id = model_id_;
  in_flight_.clear();
  admit_locked();
  int budget = limits_.max_tokens_per_batch;
  auto take = [&](Request &r) {
    const int pending = static_cast<int>(r.tokens.size()) - r.num_computed;
    const int n = std::min(pending, budget);
    if (n <= 0) return;
    for (int i = 0; i < n; i++) {
      b.tokens.push_back(r.tokens[r.num_computed + i]);
      b.positions.push_back(r.num_computed + i);
      b.slots.push_back(r.slot);
    }
    budget -= n;
    const bool samples = n == pending;
    if (samples) {
      b.logit_rows.push_back(static_cast<int32_t>(b.tokens.size()) - 1);
      b.samples.push_back(sample_spec(r));
    }
    in_flight_.push_back({r.guid, n, samples});
  };
  // Decoding requests first (one token each, latency-bound), then prefill chunks.
  int decoding = 0;
  for (uint64_t g : running_) {
    Request &r = requests_.at(g);
    if (static_cast<int>(r.tokens.size()) - r.num_computed == 1) {
      take(r);
      decoding++;
    }
  }
  // More decoders than tokens per batch: they take turns.
  if (decoding > limits_.max_tokens_per_batch && !running_.empty())
    std::rotate(running_.begin(), running_.begin() + 1, running_.end());
  for (uint64_t g : running_) {
    Request &r = requests_.at(g);
    if (static_cast<int>(r.tokens.size()) - r.num_computed > 1) take(r);
  }
  return b;
}

void RequestManager::finish_locked(Request &r, FinishReason why) {
  r.finish = why;
  r.finished = Request::Clock::now();
  if (r.slot >= 0) {
    free_slots_.push_back(r.slot);
    r.slot = -1;
  }
  running_.erase(std::remove(running_.begin(), running_.end(), r.guid), running_.end());
}

void RequestManager::update_from_output(const StepBatch &b, const StepResult &res) {
  std::lock_guard<std::mutex> lock(mu_);
  const int V = limits_.vocab_size;
  size_t row = 0, logit_row = 0;
  for (const Scheduled &s : in_flight_) {
    Request &r = requests_.at(s.guid);
    r.num_computed += s.num_tokens;
    if (!s.samples) continue;
    const int32_t tok = res.tokens.at(row);
    if (b.samples[row].want_logits) {
      r.logits.insert(r.logits.end(), res.logits.begin() + logit_row * V, res.logits.begin() + (logit_row + 1) * V);
      logit_row++;
    }
    row++;
    r.decoding_steps++;
    r.accepted_per_step.push_back(1);
    append_token_locked(r, tok);
  }
  in_flight_.clear();
  done_cv_.notify_all();
}

void RequestManager::fail_batch(const StepBatch &, const std::string &why) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const Scheduled &s : in_flight_) {
    Request &r = requests_.at(s.guid);
    if (r.finish != FinishReason::Running) continue;
    r.error = why;
    finish_locked(r, FinishReason::Error);
  }
  in_flight_.clear();
  done_cv_.notify_all();
}

bool RequestManager::wait(uint64_t guid, int64_t timeout_ms, Request *out) {
  std::unique_lock<std::mutex> lock(mu_);
  // Looked up after every wake-up: another thread may release the request meanwhile.
  bool gone = false;
  auto done = [&] {
    auto it = requests_.find(guid);
    gone = it == requests_.end();
    return gone || it->second.finish != FinishReason::Running;
  };
  if (timeout_ms < 0)
    done_cv_.wait(lock, done);
  else if (!done_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), done))
    return false;
  if (gone) fail(FFS_ERR_INVALID_ARGUMENT, "unknown or released request guid " + std::to_string(guid));
  *out = requests_.at(guid);
  return true;
}

void RequestManager::fail_all(const std::string &why) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto &kv : requests_) {
    Request &r = kv.second;
    if (r.finish != FinishReason::Running) continue;
    r.error = why;
    finish_locked(r, FinishReason::Error);
  }
  waiting_.clear();
  done_cv_.notify_all();
}

bool RequestManager::release(uint64_t guid) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = requests_.find(guid);
  if (it == requests_.end() || it->second.finish == FinishReason::Running) return false;
  requests_.erase(it);
  return true;
}

}  // namespace ffspec
