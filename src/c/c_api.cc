// The C boundary: every call catches ffspec::Error (and anything else), stores the message
// for the calling thread and returns the status. Nothing crosses it as an exception.
#include <algorithm>
#include <atomic>
#include <ctime>
#include <cstring>
#include <memory>
#include <new>
#include <string>

#include "c/c_api_util.h"
#include "flexflow_spec/c/flexflow_spec.h"
#include "models/llama.h"
#include "runtime/engine.h"
#include "runtime/engine_gpu.h"
#include "util/error.h"
#include "weights/checkpoint.h"
#include "weights/resolve.h"

struct ffs_model_s {
  ffspec::ModelHandle handle;
};

namespace {

using ffspec::capi::guarded;
using ffspec::capi::require;

ffspec::ServeLimits limits_from(ffs_model_t m, const ffs_compile_params_t *p) {
  if (p->max_requests_per_batch < 1 || p->max_requests_per_batch > 4096)
    ffspec::fail(FFS_ERR_INVALID_ARGUMENT,
                 "max_requests_per_batch must be in [1, 4096], got " + std::to_string(p->max_requests_per_batch));
  if (p->max_tokens_per_batch < 1)
    ffspec::fail(FFS_ERR_INVALID_ARGUMENT, "max_tokens_per_batch must be >= 1, got " + std::to_string(p->max_tokens_per_batch));
  if (p->max_seq_length < 2)
    ffspec::fail(FFS_ERR_INVALID_ARGUMENT, "max_seq_length must be >= 2, got " + std::to_string(p->max_seq_length));
  if (p->max_seq_length > m->handle.config.max_position_embeddings)
    ffspec::fail(FFS_ERR_INVALID_ARGUMENT, "max_seq_length " + std::to_string(p->max_seq_length) +
                                               " exceeds the model's max_position_embeddings " +
                                               std::to_string(m->handle.config.max_position_embeddings));
  ffspec::ServeLimits lim;
  lim.max_requests_per_batch = p->max_requests_per_batch;
  lim.max_seq_length = p->max_seq_length;
  lim.max_tokens_per_batch = p->max_tokens_per_batch;
  lim.vocab_size = m->handle.config.vocab_size;
  return lim;
}

ffspec::RequestManager &manager_of(ffs_model_t m) {
  require(m != nullptr, "model handle is NULL");
  if (m->handle.attached_to >= 0)
    ffspec::fail(FFS_ERR_STATE, "model " + m->handle.path + " is an SSM of a speculative LLM; generate with the LLM");
  if (!m->handle.manager) ffspec::fail(FFS_ERR_STATE, "model " + m->handle.path + " is not compiled: call compile() first");
  return *m->handle.manager;
}

ffspec::RequestParams params_from(ffs_model_t m, const ffs_request_params_t &p) {
  ffspec::RequestParams rp;
  rp.max_new_tokens = p.max_new_tokens;
  rp.max_length = p.max_length;
  rp.do_sample = p.do_sample != 0;
  rp.temperature = p.temperature;
  rp.topp = p.topp;
  rp.topk = p.topk;
  rp.seed = p.seed;
  if (!p.has_seed) {
    static std::atomic<uint64_t> entropy{0x5EED0000ull ^ static_cast<uint64_t>(time(nullptr))};
    rp.seed = entropy.fetch_add(0x9E3779B97F4A7C15ull) ^ reinterpret_cast<uintptr_t>(&rp);
  }
  rp.return_logits = p.return_logits != 0;
  if (rp.return_logits && m->handle.speculative)
    ffspec::fail(FFS_ERR_INVALID_ARGUMENT, "return_logits is only available without speculation");
  if (p.num_eos_ids < 0)
    rp.eos_ids = m->handle.config.eos_token_ids;
  else {
    require(p.num_eos_ids <= 8, "at most 8 EOS ids");
    rp.eos_ids.assign(p.eos_ids, p.eos_ids + p.num_eos_ids);
  }
  return rp;
}

}  // namespace

std::string &ffspec::capi::last_error() {
  thread_local std::string msg;
  return msg;
}

extern "C" {

const char *ffs_last_error(void) { return ffspec::capi::last_error().c_str(); }

ffs_status_t ffs_runtime_init(int argc, const char **argv) {
  return guarded([&] {
    std::vector<std::string> args;
    for (int i = 0; i < argc; i++) args.emplace_back(argv[i]);
    ffspec::engine::start(args);
  });
}

ffs_status_t ffs_runtime_shutdown(void) {
  return guarded([] { ffspec::engine::shutdown(); });
}

int ffs_runtime_is_started(void) { return ffspec::engine::started() ? 1 : 0; }

int ffs_runtime_num_gpus(void) { return ffspec::engine::started() ? ffspec::engine::num_gpus() : 0; }

ffs_status_t ffs_gpu_probe(ffs_gpu_info_t *out) {
  return guarded([&] {
    require(out != nullptr, "out must not be NULL");
    *out = ffs_gpu_info_t{};
    auto put = [](char *dst, size_t cap, const std::string &v) {
      const size_t n = std::min(v.size(), cap - 1);
      std::memcpy(dst, v.data(), n);
      dst[n] = 0;
    };
    out->built = ffspec::engine::gpu_tasks_built() ? 1 : 0;
    const ffspec::engine_gpu::Probe p = ffspec::engine_gpu::probe();  // says why when there is no backend
    out->devices = p.devices;
    out->free_bytes = p.free_bytes;
    out->total_bytes = p.total_bytes;
    out->default_pool_bytes = p.default_pool_bytes;
    put(out->name, sizeof(out->name), p.name);
    std::string why = p.why;
    if (!out->built && why.empty())
      why = "this build's Legion has no CUDA (rebuild with nvcc found and FFS_LEGION_CUDA=ON)";
    put(out->why, sizeof(out->why), why);
  });
}

ffs_status_t ffs_model_load(const char *path, ffs_data_type_t data_type, ffs_model_t *out) {
  return guarded([&] {
    require(path && out, "path and out must not be NULL");
    require(data_type == FFS_DT_FLOAT || data_type == FFS_DT_HALF || data_type == FFS_DT_BFLOAT16,
            "data_type must be DT_FLOAT, DT_HALF or DT_BFLOAT16");
    auto m = std::make_unique<ffs_model_s>();
    ffspec::ModelHandle &h = m->handle;
    h.path = path;
    h.data_type = data_type;
    h.checkpoint = ffspec::Checkpoint::open(path);
    const std::string where = h.checkpoint->is_gguf() ? h.checkpoint->path() : std::string(path) + "/config.json";
    h.config = ffspec::LlamaConfig::from_json(h.checkpoint->config(), h.checkpoint->generation_config(), where);
    ffspec::validate_checkpoint(*h.checkpoint, h.config);
    h.layout = ffspec::LlamaLayout::make(h.config);
    h.inv_freq = h.config.rope_inv_freq();
    ffspec::engine::register_model(&h);
    *out = m.release();
  });
}

ffs_status_t ffs_model_info(ffs_model_t m, ffs_model_info_t *out) {
  return guarded([&] {
    require(m && out, "model and out must not be NULL");
    const ffspec::LlamaConfig &c = m->handle.config;
    std::memset(out, 0, sizeof(*out));
    out->vocab_size = c.vocab_size;
    out->hidden_size = c.hidden_size;
    out->num_layers = c.num_layers;
    out->num_heads = c.num_heads;
    out->num_kv_heads = c.num_kv_heads;
    out->head_dim = c.head_dim;
    out->max_position_embeddings = c.max_position_embeddings;
    out->bos_token_id = c.bos_token_id;
    out->num_eos_ids = static_cast<int32_t>(c.eos_token_ids.size());
    for (size_t i = 0; i < c.eos_token_ids.size(); i++) out->eos_ids[i] = c.eos_token_ids[i];
    // Parameters as stored (tied embeddings counted once).
    const auto &l = m->handle.layout;
    out->num_parameters = static_cast<int64_t>(l.total);
    std::strncpy(out->architecture, c.architecture.c_str(), sizeof(out->architecture) - 1);
  });
}

void ffs_model_free(ffs_model_t m) {
  if (!m) return;
  try {
    ffspec::engine::unregister_model(m->handle.id);
  } catch (...) {
  }
  delete m;
}

ffs_status_t ffs_model_compile(ffs_model_t m, const ffs_compile_params_t *p) {
  return guarded([&] {
    require(m && p, "model and params must not be NULL");
    ffspec::ServeLimits lim = limits_from(m, p);
    ffspec::engine::compile(&m->handle, lim);
  });
}

ffs_status_t ffs_model_compile_speculative(ffs_model_t llm, const ffs_compile_params_t *p, const ffs_model_t *ssms,
                                           int32_t num_ssms, const ffs_tree_params_t *tree) {
  return guarded([&] {
    require(llm && p && tree && (ssms || num_ssms == 0), "bad arguments to ffs_model_compile_speculative");
    require(num_ssms >= 1, "speculative inference needs at least one SSM");
    require(tree->num_widths >= 1 && tree->num_widths <= 16, "tree num_widths must be in [1, 16]");
    ffspec::ServeLimits lim = limits_from(llm, p);
    std::vector<ffspec::ModelHandle *> hs;
    for (int i = 0; i < num_ssms; i++) {
      require(ssms[i] != nullptr, "SSM handle is NULL");
      hs.push_back(&ssms[i]->handle);
    }
    ffspec::TreeShape shape;
    shape.max_depth = tree->max_depth;
    shape.widths.assign(tree->widths, tree->widths + tree->num_widths);
    shape.max_tree_tokens = tree->max_tree_tokens;
    require(tree->verifier == 0 || tree->verifier == 1, "tree verifier must be 0 (MSS) or 1 (argmax-match)");
    shape.verifier = static_cast<ffspec::Verifier>(tree->verifier);
    shape.adaptive_depth = tree->adaptive_depth != 0;
    ffspec::engine::compile_speculative(&llm->handle, lim, hs, shape);
  });
}

ffs_status_t ffs_model_stats(ffs_model_t m, ffs_model_stats_t *out) {
  return guarded([&] {
    require(m && out, "model and out must not be NULL");
    ffspec::ModelHandle::Stats s = ffspec::engine::stats(&m->handle);
    out->steps = s.steps;
    out->compute_us = s.compute_us;
    out->wall_us = s.wall_us;
    out->driver_us = s.driver_us;
  });
}

ffs_status_t ffs_request_get_accepted(ffs_model_t m, uint64_t guid, int32_t *counts, int32_t capacity) {
  return guarded([&] {
    ffspec::Request r;
    if (!manager_of(m).wait(guid, 0, &r)) ffspec::fail(FFS_ERR_STATE, "request is still running");
    require(capacity >= static_cast<int32_t>(r.accepted_per_step.size()), "counts buffer too small");
    std::copy(r.accepted_per_step.begin(), r.accepted_per_step.end(), counts);
  });
}

ffs_status_t ffs_request_submit(ffs_model_t m, const int32_t *tokens, int32_t n, const ffs_request_params_t *p,
                                uint64_t *guid) {
  return guarded([&] {
    require(p && guid && (tokens || n == 0) && n >= 0, "bad arguments to ffs_request_submit");
    ffspec::RequestManager &rm = manager_of(m);
    *guid = rm.submit(std::vector<int32_t>(tokens, tokens + n), params_from(m, *p));
  });
}

ffs_status_t ffs_request_submit_many(ffs_model_t m, int32_t num_requests, const int32_t *const *tokens,
                                     const int32_t *num_tokens, const ffs_request_params_t *params,
                                     uint64_t *guids) {
  return guarded([&] {
    require(num_requests >= 0 && (num_requests == 0 || (tokens && num_tokens && params && guids)),
            "bad arguments to ffs_request_submit_many");
    ffspec::RequestManager &rm = manager_of(m);
    std::vector<std::vector<int32_t>> prompts(num_requests);
    std::vector<ffspec::RequestParams> rps;
    for (int32_t i = 0; i < num_requests; i++) {
      require(num_tokens[i] >= 0 && (tokens[i] || num_tokens[i] == 0), "bad prompt in ffs_request_submit_many");
      prompts[i].assign(tokens[i], tokens[i] + num_tokens[i]);
      try {
        rps.push_back(params_from(m, params[i]));
      } catch (const ffspec::Error &e) {
        ffspec::fail(e.status(), "prompt " + std::to_string(i) + ": " + e.what());
      }
    }
    const std::vector<uint64_t> g = rm.submit_many(prompts, rps);
    std::copy(g.begin(), g.end(), guids);
  });
}

ffs_status_t ffs_request_wait(ffs_model_t m, uint64_t guid, int64_t timeout_ms, ffs_request_result_t *out) {
  return guarded([&] {
    require(out != nullptr, "out must not be NULL");
    ffspec::Request r;
    if (!manager_of(m).wait(guid, timeout_ms, &r)) ffspec::fail(FFS_ERR_STATE, "timed out waiting for request");
    using us = std::chrono::duration<double, std::micro>;
    out->num_output_tokens = r.num_generated();
    out->finish_reason = static_cast<int32_t>(r.finish);
    out->llm_decoding_steps = r.decoding_steps;
    out->vocab_size = m->handle.config.vocab_size;
    out->latency_us = us(r.finished - r.submitted).count();
    out->ttft_us = r.num_generated() > 0 ? us(r.first_token - r.submitted).count() : 0.0;
    if (r.finish == ffspec::FinishReason::Error)
      ffspec::fail(r.error_code, "request failed: " + r.error);
  });
}

ffs_status_t ffs_request_get_tokens(ffs_model_t m, uint64_t guid, int32_t *tokens, int32_t capacity) {
  return guarded([&] {
    ffspec::Request r;
    if (!manager_of(m).wait(guid, 0, &r)) ffspec::fail(FFS_ERR_STATE, "request is still running");
    require(capacity >= r.num_generated(), "token buffer too small");
    std::copy(r.tokens.begin() + r.prompt_len, r.tokens.end(), tokens);
  });
}

ffs_status_t ffs_request_get_logits(ffs_model_t m, uint64_t guid, float *logits, int64_t capacity) {
  return guarded([&] {
    ffspec::Request r;
    if (!manager_of(m).wait(guid, 0, &r)) ffspec::fail(FFS_ERR_STATE, "request is still running");
    if (r.params.return_logits && m->handle.speculative)
      ffspec::fail(FFS_ERR_INVALID_ARGUMENT, "logits are not kept in speculative mode");
    require(capacity >= static_cast<int64_t>(r.logits.size()), "logits buffer too small");
    std::copy(r.logits.begin(), r.logits.end(), logits);
  });
}

ffs_status_t ffs_request_release(ffs_model_t m, uint64_t guid) {
  return guarded([&] {
    if (!manager_of(m).release(guid)) ffspec::fail(FFS_ERR_STATE, "request is unknown or still running");
  });
}

namespace {
void copy_path(const std::string &path, char *out, size_t capacity) {
  if (path.size() + 1 > capacity)
    ffspec::fail(FFS_ERR_INVALID_ARGUMENT, "path buffer too small: need " + std::to_string(path.size() + 1) + " bytes");
  std::memcpy(out, path.c_str(), path.size() + 1);
}
}  // namespace

ffs_status_t ffs_resolve_model(const char *name, const char *cache_folder, char *out, size_t capacity) {
  return guarded([&] {
    require(name != nullptr && out != nullptr, "bad arguments to ffs_resolve_model");
    copy_path(ffspec::resolve_model(name, cache_folder ? cache_folder : ""), out, capacity);
  });
}

ffs_status_t ffs_cache_folder(const char *cache_folder, char *out, size_t capacity) {
  return guarded([&] {
    require(out != nullptr, "bad arguments to ffs_cache_folder");
    copy_path(ffspec::cache_folder(cache_folder ? cache_folder : ""), out, capacity);
  });
}

}  // extern "C"
