// Drawing the next token from a row of logits: greedy (argmax, first maximum like
// torch.argmax) or sampling with temperature, top-k and top-p. Randomness is a pure
// function of (seed, counter), so a seeded request repeats exactly however it is batched.
#pragma once
#include <cstdint>
#include <vector>

#include "serve/batch.h"

namespace ffspec {

// The token a row draws when its logits hold a NaN or +inf (an overflow, or NaN weights): no
// token is right then, and the request fails with an error that says so (RequestManager).
// -inf is an ordinary logit (a token that can never be drawn).
constexpr int32_t kNonFiniteToken = -1;
// Whether every logit is a number below +inf.
bool finite_row(const float *logits, int vocab);

// First maximum; kNonFiniteToken when !finite_row.
int32_t argmax(const float *logits, int vocab);
// uniform double in [0, 1) from (seed, counter)
double uniform01(uint64_t seed, uint64_t counter);
// kNonFiniteToken when !finite_row.
int32_t sample_token(const float *logits, int vocab, const SampleSpec &spec);
// The distribution sample_token draws from: softmax(logits / temperature) restricted to the
// top-k, then to the smallest top-p prefix, renormalised. [vocab], zeros outside. The logits
// must be finite_row (callers check: NaN has no order to sort by).
std::vector<double> warped_probs(const float *logits, int vocab, float temperature, float topp, int topk);
// Index drawn from probabilities p (need not sum exactly to 1) with uniform u in [0, 1).
int32_t draw_from(const std::vector<double> &p, double u);
// The k most likely tokens (descending; ties: lower id first) and their softmax(logits / T)
// probabilities; when !finite_row, k tokens kNonFiniteToken with probability NaN.
void top_k_probs(const float *logits, int vocab, float temperature, int k, int32_t *tokens, float *probs);

// A step's result from its logits rows [R, vocab] (R = b.num_rows()), on the host: each row's
// drawn token, its logits if it asked for them, and its num_topk most likely tokens. Every
// backend builds its StepResult here (the GPU one only when some row needs the logits).
void result_from_logits(const float *logits, int vocab, const StepBatch &b, StepResult *r);
// Whether some row of b needs its logits on the host (want_logits or num_topk).
bool needs_host_logits(const StepBatch &b);

}  // namespace ffspec
