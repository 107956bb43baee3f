// What a tokenizer is built from, whichever file it came from: tokenizer.json is read as is;
// tokenizer.model and GGUF metadata are turned into the pipeline HF would build for them.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tokenizer/bpe.h"
#include "tokenizer/tokenizer.h"
#include "util/json.h"

namespace ffspec {

struct AddedTokenSpec {
  int32_t id = -1;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

struct TokenizerSpec {
  std::string source;  // the file, for messages
  BpeConfig model;
  std::vector<AddedTokenSpec> added;
  Json normalizer, pre_tokenizer, post_processor, decoder;  // null when absent
  std::string bos_token, eos_token;                          // "" when unknown
  int32_t bos_id = -1, eos_id = -1;                          // used when the token strings are unknown
};

// config: the checkpoint's tokenizer_config.json (null if none).
TokenizerSpec spec_from_tokenizer_json(const std::string &file, const Json &config);
TokenizerSpec spec_from_sentencepiece(const std::string &file, const Json &config);
TokenizerSpec spec_from_gguf(const std::string &file);
std::unique_ptr<Tokenizer> build_tokenizer(TokenizerSpec spec);

}  // namespace ffspec
