#include "serve/batch.h"

#include <algorithm>
#include <cstring>

#include "util/error.h"

namespace ffspec {

namespace {

struct Writer {
  std::vector<uint8_t> &out;
  template <typename T>
  void pod(const T &v) {
    const uint8_t *p = reinterpret_cast<const uint8_t *>(&v);
    out.insert(out.end(), p, p + sizeof(T));
  }
  template <typename T>
  void vec(const std::vector<T> &v) {
    pod<uint64_t>(v.size());
    const uint8_t *p = reinterpret_cast<const uint8_t *>(v.data());
    out.insert(out.end(), p, p + v.size() * sizeof(T));
  }
};

struct Reader {
  const uint8_t *p, *end;
  template <typename T>
  T pod() {
    FFS_CHECK(static_cast<size_t>(end - p) >= sizeof(T), FFS_ERR_INTERNAL, "truncated step batch");
    T v;
    std::memcpy(&v, p, sizeof(T));
    p += sizeof(T);
    return v;
  }
  template <typename T>
  std::vector<T> vec() {
    uint64_t n = pod<uint64_t>();
    FFS_CHECK(static_cast<uint64_t>(end - p) >= n * sizeof(T), FFS_ERR_INTERNAL, "truncated step batch");
    std::vector<T> v(n);
    std::memcpy(v.data(), p, n * sizeof(T));
    p += n * sizeof(T);
    return v;
  }
};

}  // namespace

std::vector<uint8_t> StepBatch::serialize() const {
  std::vector<uint8_t> out;
  Writer w{out};
  w.pod(model_id);
  w.vec(tokens);
  w.vec(positions);
  w.vec(slots);
  w.vec(logit_rows);
  w.vec(samples);
  w.vec(cache_pos);
  w.vec(prefix_len);
  w.vec(tree_base);
  w.vec(tree_mask);
  w.vec(commits);
  return out;
}

int32_t StepBatch::serialized_model_id(const void *data, size_t size) {
  Reader r{static_cast<const uint8_t *>(data), static_cast<const uint8_t *>(data) + size};
  return r.pod<int32_t>();  // serialize()'s first field
}

size_t StepBatch::serialized_num_tokens(const void *data, size_t size) {
  Reader r{static_cast<const uint8_t *>(data), static_cast<const uint8_t *>(data) + size};
  r.pod<int32_t>();  // model_id, then the tokens vector's length: serialize()'s order
  return static_cast<size_t>(r.pod<uint64_t>());
}

StepBatch StepBatch::deserialize(const void *data, size_t size) {
  Reader r{static_cast<const uint8_t *>(data), static_cast<const uint8_t *>(data) + size};
  StepBatch b;
  b.model_id = r.pod<int32_t>();
  b.tokens = r.vec<int32_t>();
  b.positions = r.vec<int32_t>();
  b.slots = r.vec<int32_t>();
  b.logit_rows = r.vec<int32_t>();
  b.samples = r.vec<SampleSpec>();
  b.cache_pos = r.vec<int32_t>();
  b.prefix_len = r.vec<int32_t>();
  b.tree_base = r.vec<int32_t>();
  b.tree_mask = r.vec<uint64_t>();
  b.commits = r.vec<KvMove>();
  return b;
}

size_t StepResult::legion_buffer_size() const {
  return 5 * sizeof(uint64_t) + 3 * sizeof(double) + sizeof(int32_t) + tokens.size() * sizeof(int32_t) + logits.size() * sizeof(float) +
         topk_tokens.size() * sizeof(int32_t) + topk_probs.size() * sizeof(float) + std::min(error.size(), kMaxError);
}

void StepResult::legion_serialize(void *buffer) const {
  std::vector<uint8_t> out;
  Writer w{out};
  w.vec(tokens);
  w.vec(logits);
  w.vec(topk_tokens);
  w.vec(topk_probs);
  w.pod(compute_us);
  w.pod(start_us);
  w.pod(end_us);
  w.pod(ok);
  w.vec(std::vector<char>(error.begin(), error.begin() + std::min(error.size(), kMaxError)));
  std::memcpy(buffer, out.data(), out.size());
}

void StepResult::legion_deserialize(const void *buffer) {
  // Sizes are self-describing; the reader trusts the buffer Legion hands back.
  const uint8_t *p = static_cast<const uint8_t *>(buffer);
  Reader r{p, p + (size_t(1) << 40)};
  tokens = r.vec<int32_t>();
  logits = r.vec<float>();
  topk_tokens = r.vec<int32_t>();
  topk_probs = r.vec<float>();
  compute_us = r.pod<double>();
  start_us = r.pod<double>();
  end_us = r.pod<double>();
  ok = r.pod<int32_t>();
  const std::vector<char> e = r.vec<char>();
  error.assign(e.begin(), e.end());
}

const std::vector<uint8_t> *StepPlan::find(int32_t model_id) const {
  for (const std::vector<uint8_t> &b : batches)
    if (StepBatch::serialized_model_id(b.data(), b.size()) == model_id) return &b;
  return nullptr;
}

size_t StepPlan::num_tokens() const {
  size_t n = 0;
  for (const std::vector<uint8_t> &b : batches) n += StepBatch::serialized_num_tokens(b.data(), b.size());
  return n;
}

size_t StepPlan::legion_buffer_size() const {
  size_t n = sizeof(uint64_t);
  for (const std::vector<uint8_t> &b : batches) n += sizeof(uint64_t) + b.size();
  return n;
}

void StepPlan::legion_serialize(void *buffer) const {
  std::vector<uint8_t> out;
  Writer w{out};
  w.pod<uint64_t>(batches.size());
  for (const std::vector<uint8_t> &b : batches) w.vec(b);
  std::memcpy(buffer, out.data(), out.size());
}

void StepPlan::legion_deserialize(const void *buffer) {
  // Sizes are self-describing; the reader trusts the buffer Legion hands back.
  const uint8_t *p = static_cast<const uint8_t *>(buffer);
  Reader r{p, p + (size_t(1) << 40)};
  batches.resize(r.pod<uint64_t>());
  for (std::vector<uint8_t> &b : batches) b = r.vec<uint8_t>();
}

}  // namespace ffspec
