// A small backtracking regex engine over code points, for the Split pre-tokenizer patterns
// of real tokenizer.json files (GPT-2, Llama-3, Qwen2, DeepSeek, ...). Semantics follow
// Oniguruma, which HF `tokenizers` uses: leftmost-first alternation, greedy/lazy/possessive
// quantifiers, (?i:...), (?=...), (?!...), (?>...), \p{..} general categories, \s as the
// White_Space property, ^/$ as line anchors. Anything else (backreferences, lookbehind,
// scripts) is refused at construction with FFS_ERR_UNSUPPORTED naming the pattern.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ffspec {

class Regex {
 public:
  explicit Regex(const std::string &pattern);
  ~Regex();
  Regex(Regex &&) noexcept;

  // Non-overlapping matches in cps, left to right, as [start, end) code point indices.
  std::vector<std::pair<size_t, size_t>> find_all(const std::vector<uint32_t> &cps) const;
  const std::string &pattern() const { return pattern_; }

  struct Program;

 private:
  std::string pattern_;
  std::unique_ptr<Program> prog_;
};

}  // namespace ffspec
