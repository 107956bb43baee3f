#include "serve/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace ffspec {

bool finite_row(const float *logits, int vocab) {
  bool ok = true;
  for (int i = 0; i < vocab; i++) ok &= logits[i] < HUGE_VALF;  // false for NaN and +inf
  return ok;
}

int32_t argmax(const float *logits, int vocab) {
  int32_t best = 0;
  float bv = logits[0];
  bool ok = logits[0] < HUGE_VALF;
  for (int i = 1; i < vocab; i++) {
    ok &= logits[i] < HUGE_VALF;
    if (logits[i] > bv) {
      bv = logits[i];
      best = i;
    }
  }
  return ok ? best : kNonFiniteToken;
}

static uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

double uniform01(uint64_t seed, uint64_t counter) {
  uint64_t x = splitmix64(splitmix64(seed) ^ (counter * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull));
  return static_cast<double>(x >> 11) * (1.0 / 9007199254740992.0);
}

void top_k_probs(const float *logits, int vocab, float temperature, int k, int32_t *tokens, float *probs) {
  const double t = temperature > 0 ? temperature : 1.0;
  k = std::min(k, vocab);
  if (!finite_row(logits, vocab)) {  // the sort below needs an order, and NaN has none
    std::fill(tokens, tokens + k, kNonFiniteToken);
    std::fill(probs, probs + k, std::numeric_limits<float>::quiet_NaN());
    return;
  }
  std::vector<int32_t> idx(vocab);
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  const double mx = logits[idx[0]];
  double sum = 0;
  for (int i = 0; i < vocab; i++) sum += std::exp((logits[i] - mx) / t);
  for (int i = 0; i < k; i++) {
    tokens[i] = idx[i];
    probs[i] = static_cast<float>(std::exp((logits[idx[i]] - mx) / t) / sum);
  }
}

std::vector<double> warped_probs(const float *logits, int vocab, float temperature, float topp, int topk) {
  const double t = temperature > 0 ? temperature : 1.0;
  // Candidates sorted by logit (descending); ties keep the lower id first.
  std::vector<int32_t> idx(vocab);
  std::iota(idx.begin(), idx.end(), 0);
  int keep = vocab;
  if (topk > 0 && topk < vocab) keep = topk;
  auto cmp = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  std::partial_sort(idx.begin(), idx.begin() + keep, idx.end(), cmp);
  std::vector<double> p(keep);
  const double mx = logits[idx[0]];
  double sum = 0;
  for (int i = 0; i < keep; i++) sum += (p[i] = std::exp((logits[idx[i]] - mx) / t));
  for (double &x : p) x /= sum;
  if (topp > 0 && topp < 1) {
    // Smallest prefix whose mass reaches topp (the first token always stays).
    double cum = 0;
    int n = 0;
    while (n < keep) {
      cum += p[n++];
      if (cum >= topp) break;
    }
    keep = n;
    double s = 0;
    for (int i = 0; i < keep; i++) s += p[i];
    for (int i = 0; i < keep; i++) p[i] /= s;
  }
  std::vector<double> full(vocab, 0.0);
  for (int i = 0; i < keep; i++) full[idx[i]] = p[i];
  return full;
}

int32_t draw_from(const std::vector<double> &p, double u) {
  double total = 0;
  for (double x : p) total += x;
  double cum = 0, target = u * total;
  int32_t last = 0;
  for (size_t i = 0; i < p.size(); i++) {
    if (p[i] <= 0) continue;
    cum += p[i];
    last = static_cast<int32_t>(i);
    if (target < cum) return last;
  }
  return last;
}

int32_t sample_token(const float *logits, int vocab, const SampleSpec &spec) {
  if (!spec.do_sample) return argmax(logits, vocab);
  if (!finite_row(logits, vocab)) return kNonFiniteToken;
  return draw_from(warped_probs(logits, vocab, spec.temperature, spec.topp, spec.topk), uniform01(spec.seed, spec.counter));
}

void result_from_logits(const float *logits, int vocab, const StepBatch &b, StepResult *r) {
  r->tokens.resize(b.num_rows());
  for (size_t i = 0; i < b.num_rows(); i++) {
    const float *row = logits + i * static_cast<size_t>(vocab);
    const SampleSpec &s = b.samples[i];
    r->tokens[i] = sample_token(row, vocab, s);
    if (s.want_logits) r->logits.insert(r->logits.end(), row, row + vocab);
    if (const int k = std::min(s.num_topk, vocab); k > 0) {
      const size_t at = r->topk_tokens.size();
      r->topk_tokens.resize(at + k);
      r->topk_probs.resize(at + k);
      top_k_probs(row, vocab, s.do_sample ? s.temperature : 1.0f, k, &r->topk_tokens[at], &r->topk_probs[at]);
    }
  }
}

bool needs_host_logits(const StepBatch &b) {
  for (const SampleSpec &s : b.samples)
    if (s.want_logits || s.num_topk > 0) return true;
  return false;
}

}  // namespace ffspec
