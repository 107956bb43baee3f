#include "tokenizer/bpe.h"

#include <cstdio>
#include <queue>

#include "tokenizer/unicode.h"
#include "util/error.h"

namespace ffspec {

namespace {
uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }
constexpr size_t kCacheCapacity = 10000;  // words; the cache is cleared when full
constexpr size_t kMaxCachedWord = 256;    // bytes
}  // namespace

BpeModel::BpeModel(BpeConfig cfg, const std::string &what) : cfg_(std::move(cfg)) {
  vocab_.reserve(cfg_.vocab.size() * 2);
  int32_t max_id = -1;
  for (auto &v : cfg_.vocab) {
    if (v.second < 0) fail(FFS_ERR_BAD_CHECKPOINT, what + ": negative token id for '" + v.first + "'");
    // Ids index a table: a sparse id far above the vocabulary's size is a broken file.
    if (static_cast<int64_t>(v.second) > 4 * static_cast<int64_t>(cfg_.vocab.size()) + 1024)
      fail(FFS_ERR_BAD_CHECKPOINT, what + ": token id " + std::to_string(v.second) + " of '" + v.first +
                                       "' is far above the vocabulary's " + std::to_string(cfg_.vocab.size()) + " entries");
    vocab_[v.first] = v.second;
    max_id = std::max(max_id, v.second);
  }
  id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
  has_id_.assign(static_cast<size_t>(max_id + 1), false);
  for (auto &v : cfg_.vocab) {
    id_to_token_[v.second] = v.first;
    has_id_[v.second] = true;
  }
  prefix_len_ = cfg_.continuing_subword_prefix.size();
  merges_.reserve(cfg_.merges.size() * 2);
  for (size_t r = 0; r < cfg_.merges.size(); r++) {
    const auto &m = cfg_.merges[r];
    int32_t a = token_to_id(m.first), b = token_to_id(m.second);
    if (a < 0 || b < 0)
      fail(FFS_ERR_BAD_CHECKPOINT, what + ": merge '" + m.first + " " + m.second + "' uses a token not in the vocabulary");
    std::string merged = m.first + m.second.substr(std::min(prefix_len_, m.second.size()));
    if (prefix_len_ && m.second.compare(0, prefix_len_, cfg_.continuing_subword_prefix) != 0) merged = m.first + m.second;
    int32_t id = token_to_id(merged);
    if (id < 0) fail(FFS_ERR_BAD_CHECKPOINT, what + ": merge result '" + merged + "' is not in the vocabulary");
    merges_[pair_key(a, b)] = std::make_pair(static_cast<int32_t>(r), id);  // a repeated pair: the last wins, as in HF
  }
  if (!cfg_.unk_token.empty()) unk_id_ = token_to_id(cfg_.unk_token);
  all_bytes_ = true;
  for (int b = 0; b < 256; b++) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    byte_ids_[b] = token_to_id(name);
  }
}

void BpeModel::tokenize(const std::string &word, std::vector<int32_t> &out) const {
  if (word.empty()) return;
  if (cfg_.ignore_merges) {
    int32_t id = token_to_id(word);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  if (word.size() <= kMaxCachedWord) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  merge_word(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (word.size() <= kMaxCachedWord) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.size() >= kCacheCapacity) cache_.clear();
    cache_.emplace(word, std::move(ids));
  }
}

void BpeModel::merge_word(const std::string &w, std::vector<int32_t> &out) const {
  struct Sym {
    int32_t id;
    int prev, next;
    bool alive;
  };
  std::vector<Sym> syms;
  syms.reserve(w.size());
  int32_t unk_pending = -1;  // a fused unknown waiting to be added
  auto add = [&](int32_t id) {
    int n = static_cast<int>(syms.size());
    syms.push_back({id, n - 1, -1, true});
    if (n > 0) syms[n - 1].next = n;
  };
  std::string s;
  for (size_t i = 0; i < w.size();) {
    size_t a = i;
    decode_utf8(w, i);
    bool first = a == 0, last = i == w.size();
    s.clear();
    if (!first) s += cfg_.continuing_subword_prefix;
    s.append(w, a, i - a);
    if (last) s += cfg_.end_of_word_suffix;
    int32_t id = token_to_id(s);
    if (id >= 0) {
      if (unk_pending >= 0) add(unk_pending), unk_pending = -1;
      add(id);
      continue;
    }
    if (cfg_.byte_fallback) {
      bool ok = true;
      for (unsigned char c : s) ok &= byte_ids_[c] >= 0;
      if (ok) {
        // HF leaves a pending unknown in place here (it is added after the next known char).
        for (unsigned char c : s) add(byte_ids_[c]);
        continue;
      }
    }
    if (unk_id_ >= 0) {
      if (unk_pending >= 0 && !cfg_.fuse_unk) add(unk_pending);
      unk_pending = unk_id_;
    } else if (!cfg_.unk_token.empty()) {
      fail(FFS_ERR_BAD_CHECKPOINT, "unk token '" + cfg_.unk_token + "' is not in the vocabulary");
    }
  }
  if (unk_pending >= 0) add(unk_pending);

  struct Cand {
    int32_t rank;
    int pos;
    int32_t new_id;
    bool operator<(const Cand &o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand> q;
  auto lookup = [&](int l, int r, Cand *c) {
    auto it = merges_.find(pair_key(syms[l].id, syms[r].id));
    if (it == merges_.end()) return false;
    *c = {it->second.first, l, it->second.second};
    return true;
  };
  for (size_t k = 0; k + 1 < syms.size(); k++) {
    Cand c;
    if (lookup(static_cast<int>(k), static_cast<int>(k + 1), &c)) q.push(c);
  }
  while (!q.empty()) {
    Cand top = q.top();
    q.pop();
    Sym &left = syms[top.pos];
    if (!left.alive || left.next < 0) continue;
    int r = left.next;
    auto it = merges_.find(pair_key(left.id, syms[r].id));
    if (it == merges_.end() || it->second.second != top.new_id) continue;
    left.id = top.new_id;
    syms[r].alive = false;
    left.next = syms[r].next;
    if (left.next >= 0) syms[left.next].prev = top.pos;
    Cand c;
    if (left.prev >= 0 && lookup(left.prev, top.pos, &c)) q.push(c);
    if (left.next >= 0 && lookup(top.pos, left.next, &c)) q.push(c);
  }
  for (const Sym &y : syms)
    if (y.alive) out.push_back(y.id);
}

}  // namespace ffspec
