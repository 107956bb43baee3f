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
#include "serve/spec_manager.h"
#include "serve/token_tree.h"
#include "util/error.h"

#include "expect.h"

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

static void test_submit_many() {
  ServeLimits lim{4, 16, 32, 100};
  int wakeups = 0;
  RequestManager rm(1, lim, [&] { wakeups++; });
  RequestParams p;
  p.max_new_tokens = 2;
  // One bad prompt: nothing is queued, and the message names it.
  bool threw = false;
  try {
    rm.submit_many({{1, 2}, {3, 500}, {4}}, {p, p, p});
  } catch (const Error &e) {
    threw = std::string(e.what()).rfind("prompt 1: ", 0) == 0 && std::string(e.what()).find("vocabulary") != std::string::npos;
  }
  EXPECT(threw);
  EXPECT(!rm.has_work() && wakeups == 0);
  // All good: queued together, one wake-up, and the first step takes every prompt.
  std::vector<uint64_t> g = rm.submit_many({{1, 2}, {3, 4, 5}, {6}}, {p, p, p});
  EXPECT(g.size() == 3 && g[1] == g[0] + 1 && g[2] == g[1] + 1 && wakeups == 1);
  StepBatch s = rm.schedule();
  EXPECT(s.num_tokens() == 6 && s.num_rows() == 3);
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

static void test_token_trees() {
  // Two SSMs propose overlapping trees; the merge keeps shared prefixes once.
  TokenTree a, b;
  std::vector<int> fa = expand_beam(a, {-1}, {{{10, 0.6f}, {11, 0.3f}}}, 2, 1, 0, 64);
  EXPECT(fa.size() == 2 && a.size() == 2);
  fa = expand_beam(a, fa, {{{20, 0.9f}}, {{21, 0.9f}}}, 1, 2, 0, 64);  // beam keeps the better path
  EXPECT(fa.size() == 1 && a.nodes()[fa[0]].token == 20 && a.nodes()[fa[0]].parent == 0);
  std::vector<int> fb = expand_beam(b, {-1}, {{{10, 0.5f}}}, 1, 1, 1, 64);
  fb = expand_beam(b, fb, {{{22, 0.8f}}}, 1, 2, 1, 64);
  TokenTree m = merge_trees({a, b}, 64);
  EXPECT(m.size() == 4);  // 10, 11, 10->20, 10->22 (10 once)
  int n10 = m.find_child(-1, 10), n11 = m.find_child(-1, 11);
  EXPECT(n10 >= 0 && n11 >= 0);
  int n20 = m.find_child(n10, 20), n22 = m.find_child(n10, 22);
  EXPECT(n20 >= 0 && n22 >= 0);
  // Masks: a node sees itself and its ancestors only.
  EXPECT(m.path_mask(n22) == ((uint64_t{1} << n22) | (uint64_t{1} << n10)));
  EXPECT(!(m.path_mask(n22) & (uint64_t{1} << n11)));
  EXPECT((m.path_tokens(n20) == std::vector<int32_t>{10, 20}));
  // Budget: shallower, more probable nodes first; what is kept is still a tree.
  TokenTree small = merge_trees({a, b}, 2);
  EXPECT(small.size() == 2 && small.nodes()[0].depth == 1 && small.nodes()[1].depth == 1);
  TokenTree three = merge_trees({a, b}, 3);
  EXPECT(three.size() == 3 && three.nodes()[2].parent == three.find_child(-1, 10));
  // Greedy verification: LLM picks 10, then 22, then 7 (not in the tree) -> bonus 7.
  std::vector<int32_t> choice(1 + m.size(), -1);
  choice[0] = 10;
  choice[1 + n10] = 22;
  choice[1 + n22] = 7;
  Verdict v = verify_greedy(m, choice);
  EXPECT((v.accepted == std::vector<int>{n10, n22}));
  EXPECT((v.emitted == std::vector<int32_t>{10, 22, 7}));
  choice[0] = 99;  // first guess wrong: only the LLM's own token
  v = verify_greedy(m, choice);
  EXPECT(v.accepted.empty() && (v.emitted == std::vector<int32_t>{99}));
  // Beam step honours the room left in the token budget.
  TokenTree c;
  EXPECT(expand_beam(c, {-1}, {{{1, .5f}, {2, .3f}, {3, .2f}}}, 3, 1, 0, 2).size() == 2);
}

// Drives a SpecManager with hand-made outputs: one SSM that proposes [5, 6, 7] along a chain,
// an LLM that agrees with 5 and 6 and then says 9. Checks the batches' tree layout.
static void test_spec_round() {
  ServeLimits lim{2, 64, 64, 100};
  TreeShape shape = TreeShape::chain(3);
  SpecManager sm({1, lim}, {{2, lim}}, shape, nullptr);
  RequestParams p;
  p.max_new_tokens = 20;
  uint64_t g = sm.submit({1, 2, 3}, p);
  // Round 0: SSM and LLM prefill [1, 2]; the prompt's last token 3 stays pending.
  std::vector<StepBatch> steps = sm.next_steps();
  EXPECT(steps.size() == 1 && steps[0].model_id == 2 && steps[0].num_tokens() == 2 && steps[0].num_rows() == 0);
  sm.update(steps, {StepResult()});
  steps = sm.next_steps();
  EXPECT(steps.size() == 1 && steps[0].model_id == 1 && steps[0].num_tokens() == 2 && steps[0].num_rows() == 0);
  sm.update(steps, {StepResult()});
  // Round 1: draft depth 0 (the SSM reads the pending token 3 at position 2, proposes 5).
  steps = sm.next_steps();
  EXPECT(steps.size() == 1 && steps[0].model_id == 2 && steps[0].tokens == std::vector<int32_t>{3});
  EXPECT(steps[0].positions[0] == 2 && steps[0].samples[0].num_topk == 1);
  StepResult d;
  d.tokens = {0};
  d.topk_tokens = {5};
  d.topk_probs = {0.9f};
  sm.update(steps, {d});
  for (int32_t t : {6, 7}) {  // depths 1 and 2: one tree token each, at cache 3 + node
    steps = sm.next_steps();
    EXPECT(steps.size() == 1 && steps[0].model_id == 2 && steps[0].num_tokens() == 1);
    EXPECT(steps[0].prefix_len[0] == 3 && steps[0].tree_base[0] == 3);
    d.topk_tokens = {t};
    sm.update(steps, {d});
  }
  // Verify: pending 3 + tree [5, 6, 7] at positions 3, 4, 5 and cache 3, 4, 5.
  steps = sm.next_steps();
  EXPECT(steps.size() == 1 && steps[0].model_id == 1);
  EXPECT((steps[0].tokens == std::vector<int32_t>{3, 5, 6, 7}));
  EXPECT((steps[0].positions == std::vector<int32_t>{2, 3, 4, 5}));
  EXPECT((steps[0].cache_pos == std::vector<int32_t>{2, 3, 4, 5}));
  EXPECT(steps[0].tree_mask[3] == 0b111 && steps[0].num_rows() == 4);
  StepResult r;
  r.tokens = {5, 6, 9, 0};  // agrees with 5, 6; after 6 the LLM says 9
  sm.update(steps, {r});
  Request out;
  EXPECT(!sm.wait(g, 0, &out));  // still running: 3 of 20 tokens
  // Next round's SSM catch-up reads 5, 6, 9 at positions 3..5.
  steps = sm.next_steps();
  EXPECT((steps[0].tokens == std::vector<int32_t>{5, 6, 9}) && steps[0].positions[0] == 3);
}

// Width 2 at depth 1: the LLM accepts the second child (node 1, cache 4), then its child
// (node 2, cache 5). Their K/V must move to 3 and 4, in the next LLM step.
static void test_spec_commit_positions() {
  ServeLimits lim{1, 64, 64, 100};
  TreeShape shape;
  shape.max_depth = 2;
  shape.widths = {2, 1};
  SpecManager sm({1, lim}, {{2, lim}}, shape, nullptr);
  RequestParams p;
  p.max_new_tokens = 20;
  sm.submit({1, 2, 3}, p);
  std::vector<StepBatch> steps = sm.next_steps();  // SSM prefill
  sm.update(steps, {StepResult()});
  steps = sm.next_steps();  // LLM prefill
  sm.update(steps, {StepResult()});
  steps = sm.next_steps();  // SSM depth 0 -> two children
  StepResult d;
  d.tokens = {0};
  d.topk_tokens = {5, 8};
  d.topk_probs = {0.6f, 0.4f};
  sm.update(steps, {d});
  steps = sm.next_steps();  // depth 1 -> width 1: the best path
  EXPECT(steps[0].num_tokens() == 2);
  d.tokens = {0, 0};
  d.topk_tokens = {6, 9};
  d.topk_probs = {0.5f, 0.9f};  // 8 -> 9 has path prob .36 > 5 -> 6 at .30
  sm.update(steps, {d});
  steps = sm.next_steps();  // verify: 3 + [5, 8, 9]
  EXPECT((steps[0].tokens == std::vector<int32_t>{3, 5, 8, 9}));
  EXPECT(steps[0].tree_mask[3] == 0b110 && steps[0].positions[3] == 4 && steps[0].cache_pos[3] == 5);
  StepResult r;
  r.tokens = {8, 1, 9, 11};  // after 3: 8 (node 1); after 8: 9 (node 2); after 9: bonus 11
  sm.update(steps, {r});
  // Next round: the SSM re-reads 8, 9, 11; then the LLM step carries the moves.
  steps = sm.next_steps();
  EXPECT((steps[0].tokens == std::vector<int32_t>{8, 9, 11}));
  while (!steps.empty() && steps[0].model_id == 2) {
    StepResult any;
    any.tokens.assign(steps[0].num_rows(), 0);
    for (size_t i = 0; i < steps[0].num_rows(); i++)
      for (int k = 0; k < steps[0].samples[i].num_topk; k++) {
        any.topk_tokens.push_back(50 + k);
        any.topk_probs.push_back(0.1f);
      }
    sm.update(steps, {any});
    steps = sm.next_steps();
  }
  EXPECT(steps.size() == 1 && steps[0].model_id == 1);
  EXPECT(steps[0].commits.size() == 2);
  EXPECT(steps[0].commits.size() == 2 && steps[0].commits[0].src == 4 && steps[0].commits[0].dst == 3);
  EXPECT(steps[0].commits.size() == 2 && steps[0].commits[1].src == 5 && steps[0].commits[1].dst == 4);
  EXPECT(steps[0].tokens[0] == 11 && steps[0].positions[0] == 5);
}

// A sampled request whose SSM had no token budget left this round (another request's
// prompt took it) must decode by sampling, not by the greedy path a tree would use.
static void test_spec_sampled_without_tree_still_samples() {
  ServeLimits llm_lim{2, 64, 64, 100}, ssm_lim{2, 64, 4, 100};
  SpecManager sm({1, llm_lim}, {{2, ssm_lim}}, TreeShape(), nullptr);
  RequestParams greedy, sampled;
  greedy.max_new_tokens = sampled.max_new_tokens = 5;
  sampled.do_sample = true;
  sampled.temperature = 0.8f;
  sm.submit(std::vector<int32_t>(20, 7), greedy);  // prefilling: its SSM catch-up takes all 4 tokens
  sm.submit({9}, sampled);                         // one-token prompt: decoding from the start
  std::vector<StepBatch> steps = sm.next_steps();
  EXPECT(steps.size() == 1 && steps[0].model_id == 2 && steps[0].num_tokens() == 4 && steps[0].num_rows() == 0);
  sm.update(steps, {StepResult()});
  steps = sm.next_steps();  // verify
  EXPECT(steps.size() == 1 && steps[0].model_id == 1);
  bool found = false;
  for (size_t i = 0; i < steps[0].num_rows(); i++)
    if (steps[0].tokens[steps[0].logit_rows[i]] == 9) {
      found = true;
      EXPECT(steps[0].samples[i].do_sample == 1 && steps[0].samples[i].want_logits == 0);
    }
  EXPECT(found);
}

// MSS on a one-node tree with known p and q: the emitted token's distribution is p.
static void test_mss_exact_on_a_small_case() {
  TokenTree t;
  TreeNode n;
  n.token = 0;
  t.add(n);
  std::vector<double> q = {0.7, 0.2, 0.1}, p_root = {0.2, 0.5, 0.3}, p_child = {1.0, 0.0, 0.0};
  std::vector<std::vector<Attempt>> attempts = {{{0, &q}}, {}};
  std::vector<std::vector<double>> p = {p_root, p_child};
  uint64_t c = 0;
  auto u = [&] { return uniform01(7, c++); };
  const int N = 200000;
  std::vector<int> counts(3, 0), wrong(3, 0);
  for (int i = 0; i < N; i++) {
    // The draft itself is drawn from q, as the SSM would.
    TokenTree ti;
    TreeNode d;
    d.token = draw_from(q, u());
    ti.add(d);
    std::vector<std::vector<Attempt>> at = {{{0, &q}}, {}};
    counts[verify_sampling(ti, at, p, u).emitted[0]]++;
    wrong[verify_sampling(ti, at, p, u, Verifier::ArgmaxMatch).emitted[0]]++;
  }
  double chi = 0, chi_wrong = 0;
  for (int k = 0; k < 3; k++) {
    const double e = N * p_root[k];
    chi += (counts[k] - e) * (counts[k] - e) / e;
    chi_wrong += (wrong[k] - e) * (wrong[k] - e) / e;
  }
  EXPECT(chi < 13.8);        // chi-square, 2 degrees of freedom, p = 0.001
  EXPECT(chi_wrong > 13.8);  // the argmax-match verifier is biased and caught
}

int main() {
  test_token_trees();
  test_spec_round();
  test_spec_commit_positions();
  test_mss_exact_on_a_small_case();
  test_spec_sampled_without_tree_still_samples();
  test_chunked_prefill_and_decode();
  test_slots_and_eos();
  test_max_seq_length_and_errors();
  test_submit_many();
  test_sampling();
  test_serialization();
  return report();
}
