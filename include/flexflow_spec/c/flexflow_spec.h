/* flexflow_spec C API.
 *
 * Every function returns an ffs_status_t. On failure, ffs_last_error() returns a message
 * for the calling thread that names the problem (the file, the tensor, the setting).
 * Handles are opaque. All functions are thread-safe; the blocking ones
 * (ffs_request_wait) may be called from any thread.
 *
 * The Python binding is generated from the declarations between the cffi markers below,
 * so they must stay plain C that cffi's parser accepts (no macros inside them).
 */
#ifndef FLEXFLOW_SPEC_C_H
#define FLEXFLOW_SPEC_C_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* cffi-begin */
typedef enum {
  FFS_OK = 0,
  FFS_ERR_INVALID_ARGUMENT = 1, /* a bad setting or prompt */
  FFS_ERR_NOT_FOUND = 2,        /* a file or directory does not exist */
  FFS_ERR_BAD_CHECKPOINT = 3,   /* malformed config, missing or mis-shaped tensor */
  FFS_ERR_UNSUPPORTED = 4,      /* architecture or tensor type we do not run */
  FFS_ERR_OUT_OF_MEMORY = 5,    /* a memory pool is too small; message names the setting */
  FFS_ERR_STATE = 6,            /* call out of order (e.g. generate before compile) */
  FFS_ERR_INTERNAL = 7,
  FFS_ERR_NUMERICAL = 8         /* a request's logits held NaN or +inf (overflow, or NaN weights) */
} ffs_status_t;

typedef enum { FFS_DT_FLOAT = 0, FFS_DT_HALF = 1, FFS_DT_BFLOAT16 = 2 } ffs_data_type_t;

typedef struct ffs_model_s *ffs_model_t;

/* Message for the last failed call on this thread ("" if none). */
const char *ffs_last_error(void);

/* Start Legion in the background with the given Legion flags (-ll:cpu 2 -ll:csize 4096 ...).
 * A second call returns FFS_ERR_STATE. */
ffs_status_t ffs_runtime_init(int argc, const char **argv);
/* Finish the driver's implicit top-level task and wait for Legion to shut down. */
ffs_status_t ffs_runtime_shutdown(void);
int ffs_runtime_is_started(void);
/* Legion GPU processors in the running runtime (0 before ffs_runtime_init). Models compiled
 * while it is > 0 live in GPU 0's framebuffer and step on it. */
int ffs_runtime_num_gpus(void);

/* The GPU backend as the CUDA runtime sees it, for choosing Legion's -ll:gpu / -ll:fsize
 * before ffs_runtime_init. `built`: this build has the GPU task variants (CUDA kernels,
 * cuBLAS headers, Legion with CUDA). `why` says what is missing when devices == 0. */
typedef struct {
  int built;
  int devices;
  size_t free_bytes;
  size_t total_bytes;
  /* The default -ll:fsize / memory_per_gpu: free memory less max(2 GiB, 1/12 of the device),
   * left for the CUDA context, cuBLAS and the step's scratch (0 when that leaves < 256 MiB). */
  size_t default_pool_bytes;
  char name[128];
  char why[512];
} ffs_gpu_info_t;
ffs_status_t ffs_gpu_probe(ffs_gpu_info_t *out);

typedef struct {
  int32_t vocab_size;
  int32_t hidden_size;
  int32_t num_layers;
  int32_t num_heads;
  int32_t num_kv_heads;
  int32_t head_dim;
  int32_t max_position_embeddings;
  int32_t bos_token_id; /* -1 if none */
  int32_t num_eos_ids;
  int32_t eos_ids[8];
  int64_t num_parameters;
  char architecture[64];
} ffs_model_info_t;

/* Read a checkpoint (HF directory with config.json + safetensors, or a .gguf file) and
 * validate every tensor's presence and shape. Weights are loaded at compile time. */
ffs_status_t ffs_model_load(const char *path, ffs_data_type_t data_type, ffs_model_t *out);
ffs_status_t ffs_model_info(ffs_model_t model, ffs_model_info_t *out);
void ffs_model_free(ffs_model_t model);

typedef struct {
  int32_t max_requests_per_batch;
  int32_t max_seq_length;
  int32_t max_tokens_per_batch;
} ffs_compile_params_t;

/* Place weights and the KV cache in Legion regions and start the model's request manager. */
ffs_status_t ffs_model_compile(ffs_model_t model, const ffs_compile_params_t *params);

/* Token tree shape for speculation. widths[d-1] = nodes at depth d (the last repeats);
 * SpecInfer's default: depth 8, widths {1, 1, 3}, at most 64 tree tokens per request.
 * A chain: widths {1}. */
typedef struct {
  int32_t max_depth;
  int32_t num_widths;
  int32_t widths[16];
  int32_t max_tree_tokens;
  int32_t verifier; /* 0: multi-step speculative sampling; 1: argmax-match, deliberately biased (tests) */
  int32_t adaptive_depth; /* 1: per request, draft accepted+1 levels after a rejection, double after a full accept */
} ffs_tree_params_t;

/* Compile the LLM for speculative inference with already compiled SSMs (same vocabulary).
 * The SSMs then serve this LLM only. */
ffs_status_t ffs_model_compile_speculative(ffs_model_t llm, const ffs_compile_params_t *params,
                                           const ffs_model_t *ssms, int32_t num_ssms,
                                           const ffs_tree_params_t *tree);

typedef struct {
  int32_t max_new_tokens;  /* -1: until max_length / max_seq_length */
  int32_t max_length;      /* prompt + generated; -1: max_seq_length */
  int32_t do_sample;
  float temperature;
  float topp;
  int32_t topk;            /* 0: no top-k filter */
  uint64_t seed;
  int32_t has_seed;        /* 0: draw a fresh seed */
  int32_t return_logits;   /* keep each sampled position's logits (debugging, tests) */
  int32_t num_eos_ids;     /* -1: the model's own EOS ids */
  int32_t eos_ids[8];
} ffs_request_params_t;

/* Queue a request; returns at once with its guid. Tokens are used exactly as given. */
ffs_status_t ffs_request_submit(ffs_model_t model, const int32_t *tokens, int32_t num_tokens,
                                const ffs_request_params_t *params, uint64_t *guid);
/* Queue several requests at once: every one is validated first (none is queued when one is
 * bad; the message names its index), then all are queued together, so the next step can
 * batch them. params and guids have num_requests entries. */
ffs_status_t ffs_request_submit_many(ffs_model_t model, int32_t num_requests, const int32_t *const *tokens,
                                     const int32_t *num_tokens, const ffs_request_params_t *params,
                                     uint64_t *guids);

typedef struct {
  int32_t num_output_tokens;
  int32_t finish_reason; /* 0 running, 1 eos, 2 length, 3 error */
  int32_t llm_decoding_steps;
  int32_t vocab_size;
  double latency_us;
  double ttft_us;
} ffs_request_result_t;

/* Block until the request finishes (timeout_ms < 0: forever). FFS_ERR_STATE on timeout. */
ffs_status_t ffs_request_wait(ffs_model_t model, uint64_t guid, int64_t timeout_ms,
                              ffs_request_result_t *out);
/* Copy the generated tokens ([num_output_tokens]) and, if asked for, logits
 * ([num_output_tokens, vocab_size], row i = logits that produced token i). */
ffs_status_t ffs_request_get_tokens(ffs_model_t model, uint64_t guid, int32_t *tokens,
                                    int32_t capacity);
ffs_status_t ffs_request_get_logits(ffs_model_t model, uint64_t guid, float *logits,
                                    int64_t capacity);
/* Tokens emitted at each LLM step ([llm_decoding_steps]). */
ffs_status_t ffs_request_get_accepted(ffs_model_t model, uint64_t guid, int32_t *counts, int32_t capacity);
typedef struct {
  int64_t steps;      /* steps of this model's manager (speculative: rounds' steps, drafts included) */
  double compute_us;  /* inside the step tasks (the slowest task of each step) */
  double wall_us;     /* from launch to result, as the driver sees it */
  double driver_us;   /* scheduling and bookkeeping between steps */
} ffs_model_stats_t;
ffs_status_t ffs_model_stats(ffs_model_t model, ffs_model_stats_t *out);

/* Forget a finished request. */
ffs_status_t ffs_request_release(ffs_model_t model, uint64_t guid);

/* Model names: a checkpoint directory, a .gguf file, or a Hugging Face id ("org/name") found
 * in the Hugging Face cache (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub) and then in
 * cache_folder (NULL or "": FF_CACHE_PATH, else ~/.cache/flexflow_spec), as
 * <cache>/<org>/<name> or <cache>/models--org--name/snapshots/<rev>. Writes the path
 * (NUL-terminated) to out; FFS_ERR_NOT_FOUND lists every place looked at. */
ffs_status_t ffs_resolve_model(const char *name, const char *cache_folder, char *out, size_t capacity);
/* Our cache folder: cache_folder itself when non-empty, else $FF_CACHE_PATH, else
 * ~/.cache/flexflow_spec (the one rule both front ends use). */
ffs_status_t ffs_cache_folder(const char *cache_folder, char *out, size_t capacity);

typedef struct ffs_tokenizer_s *ffs_tokenizer_t;
/* A checkpoint directory, tokenizer.json, tokenizer.model or .gguf file. */
ffs_status_t ffs_tokenizer_load(const char *path, ffs_tokenizer_t *out);
void ffs_tokenizer_free(ffs_tokenizer_t tok);
/* Writes min(capacity, n) ids; *num_tokens = n (call again with a larger buffer if needed). */
ffs_status_t ffs_tokenizer_encode(ffs_tokenizer_t tok, const char *text, size_t len, int32_t add_special_tokens,
                                  int32_t *ids, int32_t capacity, int32_t *num_tokens);
/* Writes min(capacity, n) bytes of UTF-8 (not NUL-terminated); *len = n. */
ffs_status_t ffs_tokenizer_decode(ffs_tokenizer_t tok, const int32_t *ids, int32_t num_ids,
                                  int32_t skip_special_tokens, char *text, size_t capacity, size_t *len);
int32_t ffs_tokenizer_vocab_size(ffs_tokenizer_t tok);
/* cffi-end */

#ifdef __cplusplus
}
#endif
#endif /* FLEXFLOW_SPEC_C_H */
