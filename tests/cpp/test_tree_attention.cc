// Tree attention (the CPU kernel with tree masks) against a naive reference that gathers each
// token's visible keys explicitly (prefix + ancestors + itself) and computes softmax
// attention in double. Random trees, MHA and GQA. Prints "N passed, M failed".
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "kernels/cpu/kernels.h"
#include "serve/token_tree.h"

using namespace ffspec;

#include "expect.h"

static double run_case(std::mt19937 &rng, int n_heads, int n_kv_heads, int head_dim, int prefix, int n_nodes) {
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  const int kv_dim = n_kv_heads * head_dim, max_seq = prefix + n_nodes + 4, slots = 2, slot = 1;
  std::vector<float> ck((size_t)slots * max_seq * kv_dim), cv(ck.size());
  for (auto &x : ck) x = U(rng);
  for (auto &x : cv) x = U(rng);
  // A random tree: each node's parent is an earlier node or the root.
  TokenTree tree;
  for (int j = 0; j < n_nodes; j++) {
    TreeNode n;
    n.parent = j == 0 ? -1 : static_cast<int>(rng() % (j + 1)) - 1;
    n.depth = n.parent < 0 ? 1 : tree.nodes()[n.parent].depth + 1;
    n.token = j;  // distinct: no deduplication
    tree.add(n);
  }
  const int T = n_nodes, q_stride = n_heads * head_dim + 7;  // padded rows like the fused QKV buffer
  std::vector<float> q((size_t)T * q_stride);
  for (auto &x : q) x = U(rng);
  std::vector<int32_t> prefix_len(T, prefix), slots_v(T, slot), base(T, prefix);
  std::vector<uint64_t> mask(T);
  for (int j = 0; j < T; j++) mask[j] = tree.path_mask(j);
  std::vector<float> out((size_t)T * n_heads * head_dim);
  cpu::AttentionArgs a{q.data(), q_stride, ck.data(), cv.data(), max_seq, n_heads, n_kv_heads, head_dim,
                       prefix_len.data(), slots_v.data(), base.data(), mask.data(), T, out.data()};
  cpu::attention(a);
  double worst = 0;
  for (int j = 0; j < T; j++) {
    std::vector<int> visible;
    for (int p = 0; p < prefix; p++) visible.push_back(p);
    std::vector<int> path;
    for (int k = j; k >= 0; k = tree.nodes()[k].parent) path.push_back(prefix + k);
    visible.insert(visible.end(), path.rbegin(), path.rend());
    for (int h = 0; h < n_heads; h++) {
      const int kvh = h / (n_heads / n_kv_heads);
      std::vector<double> s;
      double mx = -1e300;
      for (int p : visible) {
        const float *k = &ck[((size_t)slot * max_seq + p) * kv_dim + kvh * head_dim];
        double d = 0;
        for (int i = 0; i < head_dim; i++) d += (double)q[(size_t)j * q_stride + h * head_dim + i] * k[i];
        s.push_back(d / std::sqrt((double)head_dim));
        mx = std::max(mx, s.back());
      }
      double z = 0;
      for (double &x : s) z += (x = std::exp(x - mx));
      for (int i = 0; i < head_dim; i++) {
        double o = 0;
        for (size_t v = 0; v < visible.size(); v++)
          o += s[v] / z * cv[((size_t)slot * max_seq + visible[v]) * kv_dim + kvh * head_dim + i];
        worst = std::max(worst, std::fabs(o - out[(size_t)j * n_heads * head_dim + h * head_dim + i]));
      }
    }
  }
  return worst;
}

int main() {
  std::mt19937 rng(1234);
  struct Shape {
    int heads, kv_heads, dim, prefix, nodes;
  } shapes[] = {{4, 4, 16, 5, 12}, {8, 2, 32, 17, 64}, {9, 3, 64, 40, 20}, {4, 1, 64, 1, 64}, {2, 2, 8, 0, 30}};
  for (const Shape &s : shapes)
    for (int rep = 0; rep < 4; rep++) {
      double err = run_case(rng, s.heads, s.kv_heads, s.dim, s.prefix, s.nodes);
      if (err < 1e-5) {
        g_pass++;
      } else {
        g_fail++;
        std::printf("FAIL heads=%d kv=%d dim=%d prefix=%d nodes=%d: max abs error %.3g\n", s.heads, s.kv_heads, s.dim,
                    s.prefix, s.nodes, err);
      }
    }
  return report();
}
