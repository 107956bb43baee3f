// Tokenizers of Hugging Face checkpoints, in C++ (no tokenizer library): byte-level BPE
// (GPT-2, OPT, Qwen2, StarCoder, Llama-3, SmolLM2) and SentencePiece-style BPE with byte
// fallback (LLaMA-2, Mistral), read from tokenizer.json, tokenizer.model or a GGUF file's
// metadata. Encoding and decoding are identical to HF `tokenizers` for the files it reads.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ffspec {

class Tokenizer {
 public:
  // path: a checkpoint directory (tokenizer.json, else tokenizer.model; tokenizer_config.json
  // read where present), a tokenizer.json or tokenizer.model file, or a .gguf file.
  // Throws ffspec::Error naming the file and what is wrong with it (FFS_ERR_NOT_FOUND,
  // FFS_ERR_BAD_CHECKPOINT, FFS_ERR_UNSUPPORTED for a model type we do not implement).
  static std::unique_ptr<Tokenizer> load(const std::string &path);
  virtual ~Tokenizer() = default;

  // UTF-8 text (invalid bytes are taken as HF takes them) -> ids. add_special_tokens: apply
  // the post-processor (e.g. LLaMA's BOS), as HF's encode(text, add_special_tokens=...).
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const = 0;
  // ids -> text, as HF's decode(ids, skip_special_tokens=...). Ids outside the vocabulary
  // throw ffspec::Error(FFS_ERR_INVALID_ARGUMENT).
  virtual std::string decode(const std::vector<int32_t> &ids, bool skip_special_tokens) const = 0;

  virtual int32_t vocab_size() const = 0;           // largest id + 1 (added tokens included)
  virtual int32_t token_to_id(std::string_view token) const = 0;  // -1 if absent
  virtual std::string id_to_token(int32_t id) const = 0;          // "" if absent
  virtual bool is_special(int32_t id) const = 0;
  virtual int32_t bos_id() const = 0;  // -1 if none
  virtual int32_t eos_id() const = 0;  // -1 if none
};

// Streams the text of a growing id sequence: put() returns only newly completed text, never
// a partial UTF-8 character; the concatenation of put()s and flush() equals
// tokenizer.decode(all ids, skip_special_tokens).
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer &tok, bool skip_special_tokens);
  std::string put(int32_t id);
  std::string flush();

 private:
  const Tokenizer &tok_;
  bool skip_special_;
  std::string decode_range(size_t from, size_t to) const;

  std::vector<int32_t> ids_;
  // Text is emitted for ids_[read_..) by decoding the window ids_[prefix_..) and dropping the
  // text of ids_[prefix_..read_): a few ids of context keep decoder rules that look at
  // neighbours (a stripped leading space, byte tokens of one character) right, at a cost per
  // token that does not grow with the sequence.
  size_t prefix_ = 0, read_ = 0;
};

}  // namespace ffspec
