// The HF pipeline: added tokens are cut out of the raw text, each remaining piece is
// normalized (and cut again at normalized added tokens), pre-tokenized and run through the
// BPE model; the post-processor adds special tokens. Also: Tokenizer::load and StreamDecoder.
#include "tokenizer/tokenizer.h"

#include <fstream>

#include <filesystem>
#include <unordered_map>

#include "tokenizer/pipeline.h"
#include "tokenizer/spec.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

namespace ffspec {

namespace {

// Leftmost-longest matcher over the added tokens' contents (what aho-corasick does in HF).
class TokenTrie {
 public:
  TokenTrie() : nodes_(1) {}
  void insert(const std::string &key, int value) {
    if (key.empty()) return;
    int n = 0;
    for (unsigned char c : key) {
      int next = child(n, c);
      if (next < 0) {
        next = static_cast<int>(nodes_.size());
        nodes_[n].kids.emplace_back(c, next);
        nodes_.emplace_back();
      }
      n = next;
    }
    if (nodes_[n].value < 0) nodes_[n].value = value;
    first_[static_cast<unsigned char>(key[0])] = true;
  }
  bool empty() const { return nodes_.size() == 1; }
  // Longest key starting at pos: its length, or 0.
  size_t longest(const std::string &s, size_t pos, int *value) const {
    if (!first_[static_cast<unsigned char>(s[pos])]) return 0;
    int n = 0;
    size_t best = 0;
    for (size_t i = pos; i < s.size(); i++) {
      n = child(n, static_cast<unsigned char>(s[i]));
      if (n < 0) break;
      if (nodes_[n].value >= 0) best = i + 1 - pos, *value = nodes_[n].value;
    }
    return best;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int>> kids;
    int value = -1;
  };
  int child(int n, unsigned char c) const {
    for (auto &k : nodes_[n].kids)
      if (k.first == c) return k.second;
    return -1;
  }
  std::vector<Node> nodes_;
  bool first_[256] = {};
};

struct Segment {
  std::string text;
  bool at_origin;
  int32_t added = -1;  // index into the added tokens, or -1 for ordinary text
};

bool last_is_word(const std::string &s, size_t end) {
  if (end == 0) return false;
  size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) i--;
  size_t j = i;
  return is_word_char(decode_utf8(s, j));
}
bool first_is_word(const std::string &s, size_t start) {
  if (start >= s.size()) return false;
  return is_word_char(decode_utf8(s, start));
}

class HfTokenizer : public Tokenizer {
 public:
  explicit HfTokenizer(TokenizerSpec spec) : source_(spec.source), model_(std::move(spec.model), spec.source) {
    added_ = std::move(spec.added);
    for (size_t k = 0; k < added_.size(); k++) {
      added_by_content_.emplace(added_[k].content, added_[k].id);
      added_by_id_[added_[k].id] = k;
    }
    normalizer_ = make_normalizer(spec.normalizer, source_);
    pre_tokenizer_ = make_pre_tokenizer(spec.pre_tokenizer, source_);
    decoder_ = make_decoder(spec.decoder, source_);
    post_processor_ = make_post_processor(
        spec.post_processor, source_,
        [](const void *ctx, const std::string &t) { return static_cast<const HfTokenizer *>(ctx)->token_to_id(t); },
        this);
    // HF matches special tokens first in order, then the others (the trie keeps the first).
    for (int pass = 0; pass < 2; pass++)
      for (size_t k = 0; k < added_.size(); k++) {
        const AddedTokenSpec &a = added_[k];
        if (a.special != (pass == 0)) continue;
        if (a.normalized) norm_trie_.insert(normalizer_ ? normalizer_->apply(a.content) : a.content, static_cast<int>(k));
        else raw_trie_.insert(a.content, static_cast<int>(k));
      }
    int64_t size = static_cast<int64_t>(model_.max_id()) + 1;
    for (auto &a : added_) {
      if (a.id < 0 || a.id > size + 4 * static_cast<int64_t>(added_.size()) + 1024)
        fail(FFS_ERR_BAD_CHECKPOINT, source_ + ": added token '" + a.content + "' has id " + std::to_string(a.id) +
                                         ", outside the vocabulary");
      size = std::max(size, static_cast<int64_t>(a.id) + 1);
    }
    vocab_size_ = static_cast<int32_t>(size);
    bos_id_ = spec.bos_token.empty() ? spec.bos_id : token_to_id(spec.bos_token);
    eos_id_ = spec.eos_token.empty() ? spec.eos_id : token_to_id(spec.eos_token);
  }

  std::vector<int32_t> encode(std::string_view input, bool add_special_tokens) const override {
    std::string text = utf8_lossy(input);
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 4);
    std::vector<Segment> raw, norm;
    split_added(raw_trie_, text, true, raw);
    std::vector<PreSplit> splits;
    for (Segment &seg : raw) {
      if (seg.added >= 0) {
        ids.push_back(added_[seg.added].id);
        continue;
      }
      std::string n = normalizer_ ? normalizer_->apply(seg.text) : std::move(seg.text);
      norm.clear();
      split_added(norm_trie_, n, seg.at_origin, norm);
      for (Segment &s : norm) {
        if (s.added >= 0) {
          ids.push_back(added_[s.added].id);
          continue;
        }
        splits.clear();
        splits.push_back({std::move(s.text), s.at_origin});
        if (pre_tokenizer_) pre_tokenizer_->apply(splits);
        for (const PreSplit &p : splits) model_.tokenize(p.text, ids);
      }
    }
    if (add_special_tokens && post_processor_) post_processor_->apply(ids);
    return ids;
  }

  std::string decode(const std::vector<int32_t> &ids, bool skip_special_tokens) const override {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int32_t id : ids) {
      auto it = added_by_id_.find(id);
      if (it != added_by_id_.end()) {
        if (!(skip_special_tokens && added_[it->second].special)) tokens.push_back(added_[it->second].content);
        continue;
      }
      // An id with no token (a model's embedding rows often outnumber its tokens) is skipped,
      // as Hugging Face's decode does.
      const std::string *t = model_.id_to_token(id);
      if (t) tokens.push_back(*t);
    }
    if (!decoder_) {
      std::string out;
      for (size_t k = 0; k < tokens.size(); k++) out += (k ? " " : "") + tokens[k];
      return out;
    }
    decoder_->apply(tokens);
    std::string out;
    for (auto &t : tokens) out += t;
    return out;
  }

  int32_t vocab_size() const override { return vocab_size_; }
  int32_t token_to_id(std::string_view token) const override {
    std::string t(token);
    auto it = added_by_content_.find(t);
    if (it != added_by_content_.end()) return it->second;
    return model_.token_to_id(t);
  }
  std::string id_to_token(int32_t id) const override {
    auto it = added_by_id_.find(id);
    if (it != added_by_id_.end()) return added_[it->second].content;
    const std::string *t = model_.id_to_token(id);
    return t ? *t : std::string();
  }
  bool is_special(int32_t id) const override {
    auto it = added_by_id_.find(id);
    return it != added_by_id_.end() && added_[it->second].special;
  }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }

 private:
  // HF's AddedVocabulary::find_matches: non-overlapping leftmost-longest matches, with the
  // single_word / lstrip / rstrip rules; empty pieces dropped.
  void split_added(const TokenTrie &trie, std::string &s, bool at_origin, std::vector<Segment> &out) const {
    if (trie.empty()) {
      if (!s.empty()) out.push_back({std::move(s), at_origin, -1});
      return;
    }
    size_t start_offset = 0;
    auto push_text = [&](size_t a, size_t b) {
      if (b > a) out.push_back({s.substr(a, b - a), at_origin && a == 0, -1});
    };
    for (size_t pos = 0; pos < s.size();) {
      int k = -1;
      size_t len = trie.longest(s, pos, &k);
      if (!len) {
        pos++;
        continue;
      }
      size_t start = pos, stop = pos + len;
      pos = stop;
      const AddedTokenSpec &a = added_[k];
      if (a.single_word && ((start > 0 && last_is_word(s, start)) || (stop < s.size() && first_is_word(s, stop))))
        continue;
      if (a.lstrip) {
        size_t ns = start;
        while (ns > 0) {
          size_t i = ns - 1;
          while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) i--;
          size_t j = i;
          if (!is_white_space(decode_utf8(s, j))) break;
          ns = i;
        }
        start = std::max(ns, start_offset);
      }
      if (a.rstrip) {
        while (stop < s.size()) {
          size_t j = stop;
          if (!is_white_space(decode_utf8(s, j))) break;
          stop = j;
        }
        pos = stop;
      }
      push_text(start_offset, start);
      out.push_back({std::string(), false, k});
      start_offset = stop;
    }
    push_text(start_offset, s.size());
  }

  std::string source_;
  BpeModel model_;
  std::vector<AddedTokenSpec> added_;
  std::unordered_map<std::string, int32_t> added_by_content_;
  std::unordered_map<int32_t, size_t> added_by_id_;
  TokenTrie raw_trie_, norm_trie_;
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<Decoder> decoder_;
  std::unique_ptr<PostProcessor> post_processor_;
  int32_t vocab_size_ = 0, bos_id_ = -1, eos_id_ = -1;
};

bool ends_with(const std::string &s, const std::string &suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

Json read_config(const std::filesystem::path &dir) {
  std::filesystem::path p = dir / "tokenizer_config.json";
  if (!std::filesystem::exists(p)) return Json();
  return Json::parse(read_text_file(p.string()), p.string());
}

}  // namespace

std::unique_ptr<Tokenizer> build_tokenizer(TokenizerSpec spec) { return std::make_unique<HfTokenizer>(std::move(spec)); }

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string &path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) fail(FFS_ERR_NOT_FOUND, "tokenizer path " + path + " does not exist");
  if (fs::is_directory(path, ec)) {
    fs::path dir(path);
    Json config = read_config(dir);
    if (fs::exists(dir / "tokenizer.json")) return build_tokenizer(spec_from_tokenizer_json((dir / "tokenizer.json").string(), config));
    if (fs::exists(dir / "tokenizer.model")) return build_tokenizer(spec_from_sentencepiece((dir / "tokenizer.model").string(), config));
    std::vector<std::string> ggufs;
    for (auto &e : fs::directory_iterator(dir, ec))
      if (e.path().extension() == ".gguf") ggufs.push_back(e.path().string());
    if (ggufs.size() == 1) return build_tokenizer(spec_from_gguf(ggufs[0]));
    fail(FFS_ERR_NOT_FOUND, "no tokenizer in " + path + " (looked for tokenizer.json, tokenizer.model, one .gguf file)");
  }
  fs::path p(path);
  if (ends_with(path, ".gguf")) return build_tokenizer(spec_from_gguf(path));
  Json config = read_config(p.parent_path());
  if (ends_with(path, ".json")) return build_tokenizer(spec_from_tokenizer_json(path, config));
  if (ends_with(path, ".model")) return build_tokenizer(spec_from_sentencepiece(path, config));
  std::string head(4, '\0');
  {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail(FFS_ERR_NOT_FOUND, "cannot read tokenizer file " + path);
    f.read(head.data(), 4);
    head.resize(static_cast<size_t>(f.gcount()));
  }
  if (head == "GGUF") return build_tokenizer(spec_from_gguf(path));
  if (!head.empty() && head[0] == '{') return build_tokenizer(spec_from_tokenizer_json(path, config));
  return build_tokenizer(spec_from_sentencepiece(path, config));
}

StreamDecoder::StreamDecoder(const Tokenizer &tok, bool skip_special_tokens) : tok_(tok), skip_special_(skip_special_tokens) {}

namespace {
bool ends_incomplete(const std::string &text) {
  // The decoders turn the bytes of a character not yet complete into U+FFFD.
  return text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}
}  // namespace

std::string StreamDecoder::decode_range(size_t from, size_t to) const {
  return tok_.decode(std::vector<int32_t>(ids_.begin() + from, ids_.begin() + to), skip_special_);
}

std::string StreamDecoder::put(int32_t id) {
  ids_.push_back(id);
  std::string before, now;
  try {
    before = decode_range(prefix_, read_);
    now = decode_range(prefix_, ids_.size());
  } catch (...) {
    ids_.pop_back();  // the stream stays usable
    throw;
  }
  if (now.size() <= before.size() || ends_incomplete(now) || now.compare(0, before.size(), before) != 0)
    return std::string();
  prefix_ = read_;
  read_ = ids_.size();
  return now.substr(before.size());
}

std::string StreamDecoder::flush() {
  const std::string before = decode_range(prefix_, read_);
  const std::string now = decode_range(prefix_, ids_.size());
  prefix_ = read_ = ids_.size();
  if (now.size() <= before.size() || now.compare(0, before.size(), before) != 0) return std::string();
  return now.substr(before.size());
}

}  // namespace ffspec
