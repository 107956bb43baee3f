#include "serve/token_tree.h"

#include <algorithm>
#include <cmath>

#include "serve/sampling.h"
#include "util/error.h"

namespace ffspec {

int TreeShape::width_at(int depth) const {
  if (widths.empty()) return 1;
  return widths[std::min<size_t>(static_cast<size_t>(depth - 1), widths.size() - 1)];
}

TreeShape TreeShape::chain(int depth) {
  TreeShape s;
  s.max_depth = depth;
  s.widths = {1};
  return s;
}

int TokenTree::find_child(int parent, int32_t token) const {
  for (int j = 0; j < size(); j++)
    if (nodes_[j].parent == parent && nodes_[j].token == token) return j;
  return -1;
}

int TokenTree::add(const TreeNode &n) {
  FFS_CHECK(n.parent < size(), FFS_ERR_INTERNAL, "tree node added before its parent");
  int dup = find_child(n.parent, n.token);
  if (dup >= 0) return dup;
  FFS_CHECK(size() < kMaxTreeTokens, FFS_ERR_INTERNAL, "token tree over 64 nodes");
  const int j = size();
  nodes_.push_back(n);
  masks_.push_back((n.parent >= 0 ? masks_[n.parent] : 0) | (uint64_t{1} << j));
  return j;
}

uint64_t TokenTree::path_mask(int j) const { return masks_.at(j); }

std::vector<int32_t> TokenTree::path_tokens(int j) const {
  std::vector<int32_t> out;
  for (; j >= 0; j = nodes_[j].parent) out.push_back(nodes_[j].token);
  std::reverse(out.begin(), out.end());
  return out;
}

void TokenTree::truncate(int n) {
  if (n < size()) {
    nodes_.resize(n);
    masks_.resize(n);
  }
}

std::vector<int> expand_beam(TokenTree &tree, const std::vector<int> &frontier,
                             const std::vector<std::vector<Candidate>> &candidates, int width, int depth, int ssm,
                             int room) {
  struct Option {
    double logp;
    int parent;
    Candidate c;
    int order;
  };
  std::vector<Option> opts;
  int order = 0;
  for (size_t i = 0; i < frontier.size(); i++) {
    const double base = frontier[i] >= 0 ? tree.nodes()[frontier[i]].logp : 0.0;
    for (const Candidate &c : candidates[i])
      if (c.prob > 0) opts.push_back({base + std::log(static_cast<double>(c.prob)), frontier[i], c, order++});
  }
  std::stable_sort(opts.begin(), opts.end(), [](const Option &a, const Option &b) { return a.logp > b.logp; });
  std::vector<int> next;
  for (const Option &o : opts) {
    if (static_cast<int>(next.size()) >= std::min(width, room)) break;
    TreeNode n;
    n.token = o.c.token;
    n.parent = o.parent;
    n.depth = depth;
    n.prob = o.c.prob;
    n.logp = o.logp;
    n.ssm = ssm;
    const int before = tree.size();
    const int j = tree.add(n);
    if (j == before) next.push_back(j);
  }
  return next;
}

TokenTree merge_trees(const std::vector<TokenTree> &trees, int budget, std::vector<std::vector<int>> *where_out) {
  struct Ref {
    int tree, node;
  };
  std::vector<Ref> all;
  for (int t = 0; t < static_cast<int>(trees.size()); t++)
    for (int j = 0; j < trees[t].size(); j++) all.push_back({t, j});
  std::stable_sort(all.begin(), all.end(), [&](const Ref &a, const Ref &b) {
    const TreeNode &x = trees[a.tree].nodes()[a.node], &y = trees[b.tree].nodes()[b.node];
    if (x.depth != y.depth) return x.depth < y.depth;
    return x.logp > y.logp;
  });
  TokenTree out;
  std::vector<std::vector<int>> where(trees.size());  // source node -> merged node (-2 = dropped)
  for (size_t t = 0; t < trees.size(); t++) where[t].assign(trees[t].size(), -2);
  for (const Ref &r : all) {
    const TreeNode &n = trees[r.tree].nodes()[r.node];
    const int parent = n.parent < 0 ? -1 : where[r.tree][n.parent];
    if (parent == -2) continue;  // its parent did not fit
    int j = out.find_child(parent, n.token);
    if (j < 0) {
      if (out.size() >= budget) continue;
      TreeNode m = n;
      m.parent = parent;
      j = out.add(m);
    }
    where[r.tree][r.node] = j;
  }
  if (where_out) *where_out = std::move(where);
  return out;
}

Verdict verify_greedy(const TokenTree &tree, const std::vector<int32_t> &llm_argmax) {
  Verdict v;
  int at = -1;  // the root
  for (;;) {
    const int32_t want = llm_argmax.at(static_cast<size_t>(at + 1));
    const int child = tree.find_child(at, want);
    if (child < 0) {
      v.emitted.push_back(want);  // the bonus token
      return v;
    }
    v.accepted.push_back(child);
    v.emitted.push_back(want);
    at = child;
  }
}

Verdict verify_sampling(const TokenTree &tree, const std::vector<std::vector<Attempt>> &attempts,
                        const std::vector<std::vector<double>> &p, const std::function<double()> &uniform,
                        Verifier verifier) {
  Verdict v;
  int at = -1;
  for (;;) {
    std::vector<double> target = p.at(static_cast<size_t>(at + 1));
    if (target.empty()) {  // that node's logits held NaN or +inf
      v.emitted.push_back(kNonFiniteToken);
      return v;
    }
    int accepted = -1;
    if (verifier == Verifier::ArgmaxMatch) {
      const int32_t best = static_cast<int32_t>(std::max_element(target.begin(), target.end()) - target.begin());
      for (const Attempt &a : attempts[at + 1])
        if (tree.nodes()[a.child].token == best) accepted = a.child;
    } else {
      for (const Attempt &a : attempts[at + 1]) {
        const int32_t x = tree.nodes()[a.child].token;
        const double qx = (*a.q)[x], px = target[x];
        if (qx > 0 && uniform() * qx < px) {  // u < p(x) / q(x), without dividing
          accepted = a.child;
          break;
        }
        // Rejected: the rest of the mass is p - q where p exceeds q.
        double sum = 0;
        for (size_t i = 0; i < target.size(); i++) sum += (target[i] = std::max(0.0, target[i] - (*a.q)[i]));
        if (sum <= 0) {
          target = p.at(static_cast<size_t>(at + 1));  // p == q: nothing is ever rejected (numerical guard)
        } else {
          for (double &t : target) t /= sum;
        }
      }
    }
    if (accepted < 0) {
      v.emitted.push_back(draw_from(target, uniform()));
      return v;
    }
    v.accepted.push_back(accepted);
    v.emitted.push_back(tree.nodes()[accepted].token);
    at = accepted;
  }
}

}  // namespace ffspec
