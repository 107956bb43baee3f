// Unit tests of the serving core without Legion: scheduling, chunked prefill, slots,
// finishing, sampling, batch serialization. Prints "N passed, M failed".
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "serve/batch.h"
#include "serve/request_manager.h"
#include "serve/sampling.h"
#include "util/error.h"

static int g_pass = 0, g_fail = 0;
#define EXPECT(cond)                                                        \
  do {                                                                      \
    if (cond) {                                                             \
      g_pass++;                                                             \
    } else {                                                                \
      g_fail++;                                                             \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);           \
    }                                                                       \
  } while (0)

using namespace ffspec;

static StepResult fake_output(const StepBatch &b, int32_t token) {
  StepResult r;
  r.tokens.assign(b.num_rows(), token);
  return r;
}

static void test_chunked_prefill_and_decode() {
  ServeLimits lim{2, 64, 8, 100};
  RequestManager rm(1, lim, nullptr);
  RequestParams p;
  p.max_new_tokens = 3;
  std::vector<int32_t> long_prompt(20, 5), short_prompt = {1, 2, 3};
  uint64_t a = rm.submit(long_prompt, p);
  uint64_t b = rm.submit(short_prompt, p);
  // Step 1: a gets 8 prompt tokens (no draw); b nothing yet (budget spent).
  StepBatch s1 = rm.schedule();
  EXPECT(s1.num_tokens() == 8);
  EXPECT(s1.num_rows() == 0);
  EXPECT(s1.positions[7] == 7);
  rm.update_from_output(s1, fake_output(s1, 9));
  StepBatch s2 = rm.schedule();
  EXPECT(s2.num_tokens() == 8 && s2.num_rows() == 0);
  rm.update_from_output(s2, fake_output(s2, 9));
  // Step 3: a's last 4 prompt tokens (draws), then b's 3 prompt tokens (draws).
  StepBatch s3 = rm.schedule();
  EXPECT(s3.num_tokens() == 7);
  EXPECT(s3.num_rows() == 2);
  EXPECT(s3.positions[3] == 19 && s3.slots[0] != s3.slots[4]);
  rm.update_from_output(s3, fake_output(s3, 42));
  // Step 4: both decode one token each.
  StepBatch s4 = rm.schedule();
  EXPECT(s4.num_tokens() == 2 && s4.num_rows() == 2);
  EXPECT(s4.tokens[0] == 42 && s4.positions[0] == 20);
  rm.update_from_output(s4, fake_output(s4, 43));
  StepBatch s5 = rm.schedule();
  rm.update_from_output(s5, fake_output(s5, 44));
  Request ra, rb;
  EXPECT(rm.wait(a, 0, &ra));
  EXPECT(rm.wait(b, 0, &rb));
  EXPECT(ra.finish == FinishReason::Length && ra.num_generated() == 3);
  EXPECT((std::vector<int32_t>(ra.tokens.begin() + 20, ra.tokens.end()) == std::vector<int32_t>{42, 43, 44}));
  EXPECT(ra.decoding_steps == 3);
  EXPECT(!rm.has_work());
}

static void test_slots_and_eos() {
  ServeLimits lim{1, 32, 16, 100};
  RequestManager rm(1, lim, nullptr);
  RequestParams p;
  p.max_new_tokens = 10;
  p.eos_ids = {7};
  uint64_t a = rm.submit({1, 2}, p), b = rm.submit({3}, p);
  StepBatch s = rm.schedule();
  EXPECT(s.num_tokens() == 2);  // only one slot: b waits
  rm.update_from_output(s, fake_output(s, 7));  // a hits EOS
  Request ra;
  EXPECT(rm.wait(a, 0, &ra) && ra.finish == FinishReason::Eos && ra.num_generated() == 1);
  s = rm.schedule();
  EXPECT(s.num_tokens() == 1 && s.tokens[0] == 3);  // b took the freed slot
  rm.update_from_output(s, fake_output(s, 8));
  Request rb;
  EXPECT(!rm.wait(b, 0, &rb));  // still running
}

static void test_max_seq_length_and_errors() {
  ServeLimits lim{1, 8, 16, 100};
  RequestManager rm(1, lim, nullptr);
  RequestParams p;
  bool threw = false;
  try {
    rm.submit(std::vector<int32_t>(8, 1), p);
  } catch (const Error &e) {
    threw = e.status() == FFS_ERR_INVALID_ARGUMENT && std::string(e.what()).find("max_seq_length") != std::string::npos;
  }
  EXPECT(threw);
  threw = false;
  try {
    rm.submit({1, 200}, p);
  } catch (const Error &e) {
    threw = std::string(e.what()).find("vocabulary") != std::string::npos;
  }
  EXPECT(threw);
  RequestParams bad;
  bad.do_sample = true;
  bad.temperature = 0;
  threw = false;
  try {
    rm.submit({1}, bad);
  } catch (const Error &e) {
    threw = std::string(e.what()).find("temperature") != std::string::npos;
  }
  EXPECT(threw);
  uint64_t g = rm.submit({1, 2, 3, 4, 5}, p);  // runs until the cache is full: 8 tokens in all
  for (int i = 0; i < 10 && rm.has_work(); i++) {
    StepBatch s = rm.schedule();
    rm.update_from_output(s, fake_output(s, 9));
  }
  Request r;
  EXPECT(rm.wait(g, 0, &r) && r.tokens.size() == 8 && r.finish == FinishReason::Length);
}

static void test_sampling() {
  std::vector<float> logits = {0.1f, 2.0f, 2.0f, -1.0f};
  EXPECT(argmax(logits.data(), 4) == 1);  // first maximum, like torch.argmax
  SampleSpec s;
  s.do_sample = 1;
  s.seed = 123;
  // Same (seed, counter) gives the same draw; the draws follow softmax within a loose bound.
  std::map<int, int> counts;
  const int N = 20000;
  for (int i = 0; i < N; i++) {
    s.counter = i;
    counts[sample_token(logits.data(), 4, s)]++;
  }
  double z = std::exp(0.1) + 2 * std::exp(2.0) + std::exp(-1.0);
  double p1 = std::exp(2.0) / z;
  // 5 sigma bound for a binomial proportion
  EXPECT(std::fabs(counts[1] / double(N) - p1) < 5 * std::sqrt(p1 * (1 - p1) / N));
  s.counter = 77;
  EXPECT(sample_token(logits.data(), 4, s) == sample_token(logits.data(), 4, s));
  s.topk = 1;
  EXPECT(sample_token(logits.data(), 4, s) == 1);
  s.topk = 0;
  s.topp = 0.5f;  // keeps only token 1 (mass 0.47 < 0.5, so token 2 joins): never 0 or 3
  bool only_top = true;
  for (int i = 0; i < 1000; i++) {
    s.counter = i;
    int t = sample_token(logits.data(), 4, s);
    only_top = only_top && (t == 1 || t == 2);
  }
  EXPECT(only_top);
}

static void test_serialization() {
  StepBatch b;
  b.model_id = 3;
  b.tokens = {1, 2, 3};
  b.positions = {0, 1, 2};
  b.slots = {0, 0, 0};
  b.logit_rows = {2};
  b.samples.resize(1);
  b.samples[0].seed = 99;
  std::vector<uint8_t> bytes = b.serialize();
  StepBatch c = StepBatch::deserialize(bytes.data(), bytes.size());
  EXPECT(c.model_id == 3 && c.tokens == b.tokens && c.logit_rows == b.logit_rows && c.samples[0].seed == 99);
  StepResult r;
  r.tokens = {5, 6};
  r.logits = {0.5f, 1.5f};
  std::vector<uint8_t> buf(r.legion_buffer_size());
  r.legion_serialize(buf.data());
  StepResult q;
  q.legion_deserialize(buf.data());
  EXPECT(q.tokens == r.tokens && q.logits == r.logits);
}

int main() {
  test_chunked_prefill_and_decode();
  test_slots_and_eos();
  test_max_seq_length_and_errors();
  test_sampling();
  test_serialization();
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail == 0 ? 0 : 1;
}
