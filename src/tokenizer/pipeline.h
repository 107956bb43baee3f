// The stages of an HF tokenizer pipeline around the model, built from tokenizer.json's
// "normalizer", "pre_tokenizer", "decoder" and "post_processor" objects.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "util/json.h"

namespace ffspec {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual std::string apply(const std::string &s) const = 0;
};

// A piece of text between pre-tokenizer stages. at_origin: it starts at offset 0 of the
// original text (Metaspace's prepend_scheme "first" looks at this).
struct PreSplit {
  std::string text;
  bool at_origin;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void apply(std::vector<PreSplit> &splits) const = 0;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void apply(std::vector<std::string> &tokens) const = 0;
};

// Adds special tokens around one sequence (add_special_tokens=True).
class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void apply(std::vector<int32_t> &ids) const = 0;
};

// token_id: looks up a token string in the full vocabulary (-1 if absent).
using TokenLookup = int32_t (*)(const void *ctx, const std::string &token);

// what: the file, for error messages. A null Json gives nullptr.
std::unique_ptr<Normalizer> make_normalizer(const Json &j, const std::string &what);
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json &j, const std::string &what);
std::unique_ptr<Decoder> make_decoder(const Json &j, const std::string &what);
std::unique_ptr<PostProcessor> make_post_processor(const Json &j, const std::string &what, TokenLookup lookup,
                                                   const void *ctx);

// GPT-2's byte <-> printable code point mapping used by ByteLevel stages.
// A whole number from a tokenizer file within [lo, hi]; anything else is a broken file.
int64_t json_int(const Json &j, int64_t lo, int64_t hi, const std::string &what);

const std::vector<uint32_t> &byte_to_unicode();
int byte_from_unicode(uint32_t cp);  // -1 if cp is not one of the 256
std::string byte_level_encode(const std::string &s);

}  // namespace ffspec
