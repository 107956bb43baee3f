// The BPE model of HF `tokenizers`: a word (one pre-token) -> ids by applying merges in rank
// order, with byte fallback, unknown-token fusing, ignore_merges and subword affixes.
#pragma once
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ffspec {

struct BpeConfig {
  std::vector<std::pair<std::string, int32_t>> vocab;
  std::vector<std::pair<std::string, std::string>> merges;  // rank order
  std::string unk_token;                                    // "" = none
  std::string continuing_subword_prefix, end_of_word_suffix;
  bool byte_fallback = false, fuse_unk = false, ignore_merges = false;
};

class BpeModel {
 public:
  BpeModel(BpeConfig cfg, const std::string &what);
  void tokenize(const std::string &word, std::vector<int32_t> &out) const;
  int32_t token_to_id(const std::string &t) const {
    auto it = vocab_.find(t);
    return it == vocab_.end() ? -1 : it->second;
  }
  const std::string *id_to_token(int32_t id) const {
    return id >= 0 && static_cast<size_t>(id) < id_to_token_.size() && has_id_[id] ? &id_to_token_[id] : nullptr;
  }
  int32_t max_id() const { return static_cast<int32_t>(id_to_token_.size()) - 1; }

 private:
  void merge_word(const std::string &word, std::vector<int32_t> &out) const;

  BpeConfig cfg_;
  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (left, right) -> (rank, new id)
  int32_t unk_id_ = -1;
  int32_t byte_ids_[256];
  bool all_bytes_ = false;
  size_t prefix_len_ = 0;

  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace ffspec
