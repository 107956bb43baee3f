// C API of the tokenizer (ffs_tokenizer_*): the same status-plus-message boundary as c_api.cc.
#include <cstring>
#include <memory>
#include <vector>

#include "c/c_api_util.h"
#include "flexflow_spec/c/flexflow_spec.h"
#include "tokenizer/tokenizer.h"

struct ffs_tokenizer_s {
  std::unique_ptr<ffspec::Tokenizer> tok;
};

using ffspec::capi::guarded;
using ffspec::capi::require;

extern "C" {

ffs_status_t ffs_tokenizer_load(const char *path, ffs_tokenizer_t *out) {
  return guarded([&] {
    require(path != nullptr && out != nullptr, "path and out must not be NULL");
    *out = nullptr;
    auto h = std::make_unique<ffs_tokenizer_s>();
    h->tok = ffspec::Tokenizer::load(path);
    *out = h.release();
  });
}

void ffs_tokenizer_free(ffs_tokenizer_t tok) { delete tok; }

ffs_status_t ffs_tokenizer_encode(ffs_tokenizer_t tok, const char *text, size_t len, int32_t add_special_tokens,
                                  int32_t *ids, int32_t capacity, int32_t *num_tokens) {
  return guarded([&] {
    require(tok != nullptr, "tokenizer handle is NULL");
    require(text != nullptr || len == 0, "text is NULL");
    require(num_tokens != nullptr, "num_tokens is NULL");
    require(capacity >= 0 && (ids != nullptr || capacity == 0), "ids is NULL with a positive capacity");
    std::vector<int32_t> v = tok->tok->encode(std::string_view(text ? text : "", len), add_special_tokens != 0);
    if (v.size() > static_cast<size_t>(INT32_MAX)) ffspec::fail(FFS_ERR_INVALID_ARGUMENT, "text too long");
    *num_tokens = static_cast<int32_t>(v.size());
    size_t n = std::min(v.size(), static_cast<size_t>(capacity));
    if (n) std::memcpy(ids, v.data(), n * sizeof(int32_t));
  });
}

ffs_status_t ffs_tokenizer_decode(ffs_tokenizer_t tok, const int32_t *ids, int32_t num_ids,
                                  int32_t skip_special_tokens, char *text, size_t capacity, size_t *len) {
  return guarded([&] {
    require(tok != nullptr, "tokenizer handle is NULL");
    require(num_ids >= 0 && (ids != nullptr || num_ids == 0), "ids is NULL or num_ids negative");
    require(len != nullptr, "len is NULL");
    require(text != nullptr || capacity == 0, "text is NULL with a positive capacity");
    std::string s = tok->tok->decode(std::vector<int32_t>(ids, ids + num_ids), skip_special_tokens != 0);
    *len = s.size();
    size_t n = std::min(s.size(), capacity);
    if (n) std::memcpy(text, s.data(), n);
  });
}

int32_t ffs_tokenizer_vocab_size(ffs_tokenizer_t tok) { return tok ? tok->tok->vocab_size() : 0; }

}  // extern "C"
