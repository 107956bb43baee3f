// Token trees for speculative inference: what the SSMs propose for one request and what
// the LLM verifies in one pass. Plain C++ (no Legion), unit-tested in tests/cpp.
//
// Node indices double as tree slots: node j's K/V sits at cache position base + j and its
// attention mask is path_mask(j) (itself and its ancestors). The root is the request's
// pending token (its last committed-but-not-cached token); depth-1 nodes are its children.
#pragma once
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

namespace ffspec {

constexpr int kMaxTreeTokens = 64;  // one uint64_t mask per token

// How sampled requests are verified. ArgmaxMatch (accept a draft when it is the LLM's most
// likely token) is deliberately wrong: it exists so the tests can show that the
// distribution test catches a biased verifier.
enum class Verifier { Mss = 0, ArgmaxMatch = 1 };

struct TreeShape {
  int max_depth = 8;
  std::vector<int> widths = {1, 1, 3};  // nodes at depth 1, 2, ...; the last repeats
  int max_tree_tokens = kMaxTreeTokens;
  Verifier verifier = Verifier::Mss;
  // Per request, the next round drafts accepted + 1 levels after a rejection and twice as
  // many after a round accepted in full (at most max_depth): a poor SSM costs little, a good
  // one keeps the full depth. Depends only on past rounds, so outputs stay exact.
  bool adaptive_depth = true;

  int width_at(int depth) const;  // depth >= 1
  static TreeShape chain(int depth);
};

struct TreeNode {
  int32_t token = 0;
  int32_t parent = -1;  // node index; -1 = child of the root
  int32_t depth = 1;
  float prob = 0;       // draft probability q(token | path) of the proposing SSM
  double logp = 0;      // sum of log draft probabilities along the path
  int32_t ssm = 0;      // which SSM proposed it first
};

class TokenTree {
 public:
  const std::vector<TreeNode> &nodes() const { return nodes_; }
  int size() const { return static_cast<int>(nodes_.size()); }
  bool empty() const { return nodes_.empty(); }
  // Index of parent's child with this token, or -1.
  int find_child(int parent, int32_t token) const;
  // Adds a node (parent must already be in the tree); returns the existing node's index for
  // a duplicate (same parent, same token).
  int add(const TreeNode &n);
  uint64_t path_mask(int j) const;
  std::vector<int32_t> path_tokens(int j) const;
  // Keep the first n nodes (ancestors always precede descendants, so this stays a tree).
  void truncate(int n);

 private:
  std::vector<TreeNode> nodes_;
  std::vector<uint64_t> masks_;
};

struct Candidate {
  int32_t token;
  float prob;
};

// One beam step of an SSM's tree: among the children proposed for each frontier node
// (candidates[i] for frontier[i]; frontier id -1 = the root), keep the `width` with the
// highest path probability, at most `room` new nodes. Returns the new frontier.
std::vector<int> expand_beam(TokenTree &tree, const std::vector<int> &frontier,
                             const std::vector<std::vector<Candidate>> &candidates, int width, int depth, int ssm,
                             int room);

// Union of several SSMs' trees by shared prefix (duplicates removed), at most budget nodes:
// shallower first, then more probable, so what is kept stays a tree.
// where (optional): where[t][j] = merged index of trees[t]'s node j, or -2 if dropped.
TokenTree merge_trees(const std::vector<TokenTree> &trees, int budget,
                      std::vector<std::vector<int>> *where = nullptr);

// Greedy verification: llm_argmax[0] is the LLM's choice after the root, llm_argmax[1 + j]
// after node j. Follows the LLM's choices down the tree; returns the accepted nodes and the
// emitted tokens (the accepted tokens, then the LLM's bonus token, which is kNonFiniteToken
// where that row's logits held NaN or +inf).
struct Verdict {
  std::vector<int> accepted;
  std::vector<int32_t> emitted;
};
Verdict verify_greedy(const TokenTree &tree, const std::vector<int32_t> &llm_argmax);

// One speculated child of a node: drawn i.i.d. from the proposing SSM's distribution q at
// that node (after temperature / top-k / top-p).
struct Attempt {
  int child;
  const std::vector<double> *q;  // [vocab]
};

// SpecInfer's multi-step speculative sampling. p[u + 1] is the LLM's (warped) distribution
// after node u (u = -1: the root); attempts[u + 1] the children drafted there, in order. At a
// node each child x is accepted with probability min(1, p(x) / q(x)); on rejection
// p <- normalize(max(0, p - q)) and the next child is tried; when none is accepted a token
// is drawn from p and ends the step. The emitted tokens are distributed exactly as the LLM
// sampling them one by one. An empty p[u + 1] (its logits held NaN or +inf) ends the step
// with kNonFiniteToken when the walk reaches u.
Verdict verify_sampling(const TokenTree &tree, const std::vector<std::vector<Attempt>> &attempts,
                        const std::vector<std::vector<double>> &p, const std::function<double()> &uniform,
                        Verifier verifier = Verifier::Mss);

}  // namespace ffspec
