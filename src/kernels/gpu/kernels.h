// GPU kernels (CUDA, and HIP through gpu_compat.h): host-side launch functions over plain
// device pointers and a stream; no Legion. Row-major; shapes in comments. Activations are
// fp32, fp16 or bf16 (DType); every kernel computes in fp32 and rounds once on store.
// Semantics mirror src/kernels/cpu/kernels.h and src/serve/sampling.h, which are the
// reference these kernels are tested against (tests/cpp/test_gpu_kernels.cu).
// Each function only enqueues work on `stream` and returns the launch status.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/gpu/gpu_compat.h"

namespace ffspec::gpu {

enum class DType : int32_t { F32 = 0, F16 = 1, BF16 = 2 };
size_t dtype_size(DType dt);

// out[T, H] = table[tokens[t], :]   (table [vocab, H]); ids outside [0, vocab) give zeros.
gpuError_t embedding(const int32_t *tokens, const void *table, void *out, int T, int H, int vocab, DType dt,
                     gpuStream_t stream);

// Residual add fused with RMSNorm, as transformers' LlamaRMSNorm computes it:
//   if add: residual[t] += add[t]            (rounded to dt, like the eager model)
//   out[t] = w * dt(residual[t] * rsqrt(mean(residual[t]^2) + eps))   (fp32 accumulation)
// residual, add, out [T, H]; w [H]. add may be null (first layer); out may alias add.
gpuError_t add_rms_norm(void *residual, const void *add, const void *w, float eps, void *out, int T, int H,
                        DType dt, gpuStream_t stream);

// Rotary embedding in place on the first n_heads heads of each row (non-interleaved halves),
// exactly cpu::rope: angle = float(positions[t]) * inv_freq[i], computed in fp32.
// inv_freq [head_dim/2] fp32 already carries the scaling (linear / llama3), as made by
// LlamaConfig::rope_inv_freq(). Over the fused QKV buffer, n_heads = q heads + kv heads
// rotates Q and K in one launch (K starts right after Q).
gpuError_t rope(void *x, int T, int row_stride, int n_heads, int head_dim, const int32_t *positions,
                const float *inv_freq, DType dt, gpuStream_t stream);

// A step's rope and K/V store in one launch over the fused QKV rows [T, row_stride] (Q heads,
// then K, then V): rope() on the Q and K heads in place, then cache_k/v[slots[t], cache_pos[t]]
// = the row's rotated K / its V (cache_k/v [slots, max_seq, n_kv_heads*head_dim]): the CPU's
// rope then K/V copy. positions (the rotation) and cache_pos (where it is stored) differ for
// tree tokens.
gpuError_t rope_kv_store(void *qkv, int T, int row_stride, int n_q_heads, int n_kv_heads, int head_dim,
                         const int32_t *positions, const float *inv_freq, const int32_t *slots,
                         const int32_t *cache_pos, void *cache_k, void *cache_v, int max_seq, DType dt,
                         gpuStream_t stream);

// out[T, I] = silu(gu[:, :I]) * gu[:, I:]   (gu [T, 2I], the fused gate_up layout)
gpuError_t silu_mul(const void *gu, void *out, int T, int I, DType dt, gpuStream_t stream);

// Attention of each token against its slot's cache, exactly cpu::attention's visibility:
// cache positions [0, prefix_len[t]) plus, for tree tokens, tree_base[t] + j for each set bit
// j of tree_mask[t] (ancestors and itself). Prefill: prefix_len = position + 1; incremental:
// the same with one token per request; tree verification: masks from TokenTree::path_mask.
// q [T, q_stride] (heads first), cache_k/v [slots, max_seq, n_kv_heads*head_dim],
// out [T, n_heads*head_dim]. GQA/MQA: n_heads % n_kv_heads == 0. head_dim: 8, 16, 32, 64, 128,
// 256 (attention_supports_head_dim; the small ones are the tests' tiny models').
// Flash-attention tiling (see docs/gpu_kernels.md): no score matrix in global memory.
struct AttentionArgs {
  const void *q;
  int q_stride;
  const void *cache_k, *cache_v;
  int max_seq;
  int n_heads, n_kv_heads, head_dim;
  const int32_t *prefix_len, *slots;
  const int32_t *tree_base;    // [T] or null
  const uint64_t *tree_mask;   // [T] or null: no tree tokens
  int T;
  void *out;
  DType dtype;
  // How many consecutive tokens share a slot, at most (1 for a decode batch; the chunk or
  // tree size otherwise): tokens in one tile that share a slot share K/V tile loads.
  // Only a performance hint: any value gives the same result.
  int tokens_per_slot_hint;
  // Split-KV (flash-decoding): each segment's keys are cut into kv_splits equal ranges (of
  // its own kv_end, so the work stays balanced), scanned by separate blocks that write
  // unnormalized fp32 partial outputs with their running max and sum to `partial`; a second
  // kernel merges them. For steps with too few blocks to fill the device (decoding at small
  // batch). 1: no split. Any value gives the same result up to fp32 summation order.
  int kv_splits = 1;
  float *partial = nullptr;  // attention_workspace_floats(a) floats when kv_splits > 1
  // A decode batch (no tree tokens, tokens_per_slot_hint 1, at most 8 query heads per KV head,
  // head_dim >= the warp size) runs a kernel without shared-memory K/V tiles; false keeps the
  // tiled kernel for every step. Same result up to fp32 summation order.
  bool decode_kernel = true;
  // fp16/bf16 steps whose tokens come in runs of one slot (prefill chunks, verify trees) run
  // S = Q K^T and P V on tensor cores (CUDA; not HIP); false keeps the CUDA-core tiled kernel.
  bool tensor_cores = true;
};
// Which kernel gpu::attention runs for a: the decode kernel (above), tensor cores (fp16/bf16,
// head dim a multiple of 16, at least 32 query rows a block from one slot's consecutive tokens
// or from the query heads of one KV head, and the device's shared memory), else the tiled one.
enum class AttentionKernel { Tiled = 0, Decode = 1, TensorCores = 2 };
AttentionKernel attention_kernel_for(const AttentionArgs &a);
const char *attention_kernel_name(AttentionKernel k);
// Whether this build has the tensor-core kernel (CUDA sm_80+ and the emulator's 32-lane
// profile; not HIP).
bool attention_has_tensor_cores();
gpuError_t attention(const AttentionArgs &a, gpuStream_t stream);
bool attention_supports_head_dim(int head_dim);
// The kv_splits that fills the device for this shape (T, heads, tile hint, max_seq) and 1
// when the unsplit blocks already do. It depends on the shape only, so a CUDA graph captured
// with it stays valid whatever the context lengths.
int attention_auto_splits(const AttentionArgs &a);
size_t attention_workspace_floats(const AttentionArgs &a);  // for a.kv_splits

// KV commit: for each move in order, cache[l][k|v][slot][dst] = cache[l][k|v][slot][src] for
// every layer, exactly as the CPU forward applies StepBatch::commits (src == dst: no-op).
// moves [n, 3] int32 = {slot, src, dst} (layout of ffspec::KvMove).
// kv [layers, 2, max_requests, max_seq, kv_dim].
gpuError_t kv_commit(void *kv, const int32_t *moves, int n, int layers, int max_requests, int max_seq, int kv_dim,
                     DType dt, gpuStream_t stream);

// out[r] = argmax(logits[r * ld : r * ld + vocab]), the first maximum (like torch.argmax);
// -1 (serve/sampling.h's kNonFiniteToken) for a row holding a NaN or +inf.
gpuError_t argmax_rows(const void *logits, int64_t ld, int R, int vocab, int32_t *out, DType dt, gpuStream_t stream);

// One row's sampling parameters: ffspec::SampleSpec's numeric fields.
struct SampleParams {
  int32_t do_sample;  // 0: argmax
  float temperature;  // <= 0: 1
  float topp;         // >= 1: off
  int32_t topk;       // <= 0 or >= vocab: off
  uint64_t seed, counter;
};
// Most tokens (and logit rows) one step takes: several kernels put the token on grid.y.
constexpr int kMaxStepTokens = 65535;

// Largest candidate set the truncated paths keep (top-k above it is cut to it; top-p alone
// is computed over the top kMaxCandidates tokens: see docs/gpu_kernels.md).
constexpr int kMaxCandidates = 4096;

// out[r] = a token drawn from row r with params[r]: softmax(logits / T) restricted to the
// top-k, then the smallest top-p prefix (ties: lower id first), as serve/sampling.h.
// Random number: u = uniform01(seed, counter), the same counter-based splitmix64 generator as
// the CPU sampler, so a seeded request draws the same u on either backend. -1 for a row
// holding a NaN or +inf, as argmax_rows.
gpuError_t sample_rows(const void *logits, int64_t ld, int R, int vocab, const SampleParams *params, int32_t *out,
                       DType dt, gpuStream_t stream);

// The MSS verifier's distributions: probs[i, :] = warped_probs(logits[rows[i]], params[i])
// (temperature, top-k, top-p; zeros outside the kept set), fp32 [n, vocab]; all NaN for a
// row holding a NaN or +inf.
gpuError_t warped_probs_rows(const void *logits, int64_t ld, const int32_t *rows, int n, int vocab,
                             const SampleParams *params, float *probs, DType dt, gpuStream_t stream);
// Per-node draft probabilities: q[i] = probs[row_of[i] * vocab + tokens[i]] for i < n.
gpuError_t gather_token_probs(const float *probs, int vocab, const int32_t *row_of, const int32_t *tokens, int n,
                              float *q, gpuStream_t stream);

// ---- Projections with few rows (linear_small.cu): no cuBLAS ----
// Decoding at batch <= 8 and small trees: a projection then reads each weight once for at
// most 8 multiply-adds, so it runs at the speed the weights stream from memory. These batched
// GEMVs read every weight row once with 16-byte loads and apply it to all M rows.
constexpr int kSmallLinearMaxRows = 8;
// linear()'s semantics (below) for 1 <= M <= kSmallLinearMaxRows: fp32 accumulation, bias
// added in fp32, one rounding; another summation order than cuBLAS's.
gpuError_t linear_small(const void *x, const void *w, const void *bias, void *y, int M, int N, int K, DType dt,
                        gpuStream_t stream);
// out[M, I] = silu(g) * u with g = dt(x · w_gate_up[c]), u = dt(x · w_gate_up[I + c]): the
// gate_up projection and silu_mul in one pass, bit for bit what linear() into [M, 2I] then
// silu_mul() compute from the same dot products. w_gate_up [2I, K]; M <= kSmallLinearMaxRows.
gpuError_t linear_swiglu_small(const void *x, const void *w_gate_up, void *out, int M, int I, int K, DType dt,
                               gpuStream_t stream);

// ---- Projections (gemm.cu): cuBLAS, loaded at run time ----
// Built when CMake finds cuBLAS's headers (FFS_HAVE_CUBLAS is then defined for users of the
// library); nothing links libcublas: the first blas_create dlopens it, trying in order
//   1. $FFS_CUBLAS_LIBRARY (a libcublas.so.13 path, or the directory holding it),
//   2. libcublas.so.13, libcublas.so by name (LD_LIBRARY_PATH, the ld.so cache, or a copy
//      already loaded into the process, e.g. by torch),
//   3. $VIRTUAL_ENV, $CONDA_PREFIX: lib/python3*/site-packages/nvidia/{cu13,cublas}/lib/
//      (the nvidia-cublas wheel; CUDA 13 wheels use cu13/).
// CUDA only for now (a HIP build would load hipBLAS the same way).
struct Blas;  // one cuBLAS handle; use it from one host thread at a time
struct BlasOptions {
  // fp32 inputs: let cuBLAS round them to TF32 on tensor cores (~1e-3 relative). Off by
  // default, so fp32 matches the CPU within ~1e-5.
  bool allow_tf32 = false;
  // cuBLAS's workspace, owned by the handle (allocated by blas_create). A handle with its own
  // workspace never allocates during a GEMM, which CUDA graph capture requires; 32 MiB is
  // NVIDIA's recommendation for Hopper.
  size_t workspace_bytes = size_t(32) << 20;
  // linear() with M <= this many rows runs linear_small() instead of cuBLAS (0: always
  // cuBLAS; at most kSmallLinearMaxRows). FFS_GPU_SMALL_GEMM=0 turns it off in the engine, so
  // benchmarks/gpu/bench_gpu_forward compares the two on the device.
  int small_m_rows = kSmallLinearMaxRows;
};
// Loads cuBLAS (once per process) and creates a handle; null on failure, with *error saying
// why (every library path tried, or the cuBLAS status).
Blas *blas_create(const BlasOptions &opts, std::string *error);
void blas_destroy(Blas *b);
// The loaded library's path, or null when none could be loaded (tries to load it).
const char *blas_library_path();

enum class BlasStatus : int32_t { Ok = 0, InvalidValue = 1, LaunchFailed = 2, CublasFailed = 3 };
// The message of the handle's last failed call ("" after a success).
const char *blas_last_error(const Blas *b);

// y[M, N] = x[M, K] · w[N, K]^T (+ bias[N]), cpu::linear's semantics on HF's row-major [out,
// in] weights: QKV, O, gate_up, down, LM head. x, w, bias, y all of dtype dt; fp32
// accumulation (CUBLAS_COMPUTE_32F, no reduced-precision split-K reductions) and one rounding
// on store: with a bias, y is first filled with it and cuBLAS adds x·w^T with beta = 1.
// y must not overlap x or w. Enqueues on `stream`. M <= opts.small_m_rows: linear_small().
BlasStatus linear(Blas *b, const void *x, const void *w, const void *bias, void *y, int M, int N, int K, DType dt,
                  gpuStream_t stream);

}  // namespace ffspec::gpu
