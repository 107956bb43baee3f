// Every GPU kernel (src/kernels/gpu) against the CPU reference: the CPU kernels
// (src/kernels/cpu), the CPU sampler (src/serve/sampling.h), or a plain loop where the CPU
// has no kernel of its own. Fresh random inputs each run (the seed is printed; pass one as
// argv[1] to repeat a run). Tolerances are per op and per dtype, stated at each check:
// |gpu - ref| <= atol + rtol * |ref|. Inputs are rounded to the dtype first, so the CPU
// sees exactly what the GPU reads. Without a GPU: "SKIP: no GPU (...)", exit 0.
// Prints "N passed, M failed".
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/kernels.h"
#include "kernels/gpu/kernels.h"
#include "serve/batch.h"
#include "serve/sampling.h"
#include "serve/token_tree.h"

#include "expect.h"
#include "gpu_test_start.h"

using namespace ffspec;
using gpu::DType;

static_assert(sizeof(KvMove) == 3 * sizeof(int32_t), "kv_commit reads KvMove as int32 triples");

namespace {

std::mt19937_64 rng;
const char *dname(DType dt) { return dt == DType::F32 ? "f32" : dt == DType::F16 ? "f16" : "bf16"; }

#define GPU_OK(call)                                                                       \
  do {                                                                                     \
    gpuError_t e_ = (call);                                                                \
    if (e_ != gpuSuccess) {                                                                \
      std::printf("GPU error %s at %s:%d: %s\n", gpuGetErrorString(e_), __FILE__, __LINE__, #call); \
      std::exit(2);                                                                        \
    }                                                                                      \
  } while (0)

// Device buffer of raw bytes.
struct DevBuf {
  void *p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t bytes) : n(bytes) { GPU_OK(gpuMalloc(&p, bytes ? bytes : 1)); }
  DevBuf(const void *host, size_t bytes) : DevBuf(bytes) { GPU_OK(gpuMemcpy(p, host, bytes, gpuMemcpyHostToDevice)); }
  ~DevBuf() { gpuFree(p); }
  DevBuf(const DevBuf &) = delete;
  DevBuf &operator=(const DevBuf &) = delete;
  template <typename V>
  V *as() const { return static_cast<V *>(p); }
  template <typename V>
  std::vector<V> get(size_t count) const {
    std::vector<V> h(count);
    GPU_OK(gpuMemcpy(h.data(), p, count * sizeof(V), gpuMemcpyDeviceToHost));
    return h;
  }
};
template <typename V>
DevBuf upload(const std::vector<V> &h) { return DevBuf(h.data(), h.size() * sizeof(V)); }

// Host encoding of fp32 values in the kernel's dtype, and back.
std::vector<uint8_t> encode(const std::vector<float> &x, DType dt) {
  std::vector<uint8_t> b(x.size() * gpu::dtype_size(dt));
  for (size_t i = 0; i < x.size(); i++) {
    if (dt == DType::F32) {
      std::memcpy(&b[4 * i], &x[i], 4);
    } else if (dt == DType::F16) {
      const gpu_half h = gpu_float2half(x[i]);
      std::memcpy(&b[2 * i], &h, 2);
    } else {
      const gpu_bf16 h = gpu_float2bf16(x[i]);
      std::memcpy(&b[2 * i], &h, 2);
    }
  }
  return b;
}
std::vector<float> decode(const std::vector<uint8_t> &b, DType dt) {
  const size_t n = b.size() / gpu::dtype_size(dt);
  std::vector<float> x(n);
  for (size_t i = 0; i < n; i++) {
    if (dt == DType::F32) {
      std::memcpy(&x[i], &b[4 * i], 4);
    } else if (dt == DType::F16) {
      gpu_half h;
      std::memcpy(&h, &b[2 * i], 2);
      x[i] = gpu_half2float(h);
    } else {
      gpu_bf16 h;
      std::memcpy(&h, &b[2 * i], 2);
      x[i] = gpu_bf162float(h);
    }
  }
  return x;
}
std::vector<float> round_to(const std::vector<float> &x, DType dt) { return decode(encode(x, dt), dt); }
std::vector<float> fetch(const DevBuf &d, size_t count, DType dt) {
  return decode(d.get<uint8_t>(count * gpu::dtype_size(dt)), dt);
}
std::vector<float> randu(size_t n, float lo = -1.f, float hi = 1.f) {
  std::uniform_real_distribution<float> U(lo, hi);
  std::vector<float> v(n);
  for (float &x : v) x = U(rng);
  return v;
}
int randi(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
std::vector<float> abs_of(std::vector<float> v) {
  for (float &a : v) a = std::fabs(a);
  return v;
}

// One EXPECT per call: the worst element against atol + rtol * |ref|.
// extra (optional): a further allowance per element, for a method with a rounding of its own.
void expect_close(const std::string &what, const std::vector<float> &got, const std::vector<float> &ref, double rtol,
                  double atol, const std::vector<double> *extra = nullptr) {
  double worst = 0, worst_err = 0;
  size_t at = 0, worst_at = 0;
  bool ok = got.size() == ref.size();
  size_t pattern = 0;  // elements finite on one side only
  for (size_t i = 0; ok && i < ref.size(); i++) {
    if (std::isfinite(got[i]) != std::isfinite(ref[i])) {
      pattern++;
      continue;
    }
    if (!std::isfinite(ref[i])) continue;  // non-finite on both sides: the row failed on both
    const double err = std::fabs(static_cast<double>(got[i]) - ref[i]);
    const double excess = err - (atol + rtol * std::fabs(ref[i]) + (extra ? (*extra)[i] : 0.0));
    if (!(excess <= 0)) ok = false;
    if (!(err <= worst_err)) {
      worst_err = err;
      at = i;
    }
    if (!(excess <= worst)) {
      worst = excess;
      worst_at = i;
    }
  }
  if (pattern) {
    ok = false;
    std::printf("FAIL %s: %zu elements finite on one side only\n", what.c_str(), pattern);
  }
  if (ok) {
    g_pass++;
  } else {
    g_fail++;
    std::printf("FAIL %s: max abs error %.3g at %zu (gpu %.7g, ref %.7g; rtol %.1g atol %.1g); furthest past "
                "its bound: %zu (gpu %.7g, ref %.7g, by %.3g)\n",
                what.c_str(), worst_err, at, at < got.size() ? got[at] : 0.f, at < ref.size() ? ref[at] : 0.f, rtol,
                atol, worst_at, worst_at < got.size() ? got[worst_at] : 0.f,
                worst_at < ref.size() ? ref[worst_at] : 0.f, worst);
  }
}
// Per-dtype tolerance: ~1e-5 relative in fp32; an output rounding or two in fp16 / bf16.
double tol(DType dt, double f32, double f16, double bf16) {
  return dt == DType::F32 ? f32 : dt == DType::F16 ? f16 : bf16;
}

const DType kTypes[] = {DType::F32, DType::F16, DType::BF16};

// Under the CPU emulator (FFS_GPU_EMU, src/kernels/gpu/emu) the same cases run smaller: the
// same code paths (many K/V tiles, splits, trees, candidate sets) at a CPU's pace.
#ifdef FFS_GPU_EMU
constexpr int kScale = 8;
#else
constexpr int kScale = 1;
#endif

void test_embedding(DType dt) {
  const int vocab = 1000 + randi(0, 100), H = 320 + randi(0, 64), T = 37;
  const auto table = round_to(randu(static_cast<size_t>(vocab) * H), dt);
  std::vector<int32_t> tok(T);
  for (int &t : tok) t = randi(0, vocab - 1);
  tok[3] = vocab + 5;  // out of range: zeros
  DevBuf dtab = upload(encode(table, dt)), dtok = upload(tok), dout(static_cast<size_t>(T) * H * 4);
  GPU_OK(gpu::embedding(dtok.as<int32_t>(), dtab.p, dout.p, T, H, vocab, dt, nullptr));
  std::vector<float> ref(static_cast<size_t>(T) * H, 0.f);
  for (int t = 0; t < T; t++)
    if (tok[t] < vocab) std::copy_n(&table[static_cast<size_t>(tok[t]) * H], H, &ref[static_cast<size_t>(t) * H]);
  expect_close(std::string("embedding ") + dname(dt), fetch(dout, ref.size(), dt), ref, 0, 0);  // a copy: exact
}

void test_rms_norm(DType dt) {
  const int T = 9, H = 2048 + randi(0, 999);
  const float eps = 1e-5f;
  const auto x = round_to(randu(static_cast<size_t>(T) * H, -2, 2), dt), add = round_to(randu(x.size()), dt);
  const auto w = round_to(randu(H, 0.5f, 1.5f), dt);
  DevBuf dx = upload(encode(x, dt)), dadd = upload(encode(add, dt)), dw = upload(encode(w, dt)),
         dout(x.size() * 4);
  GPU_OK(gpu::add_rms_norm(dx.p, dadd.p, dw.p, eps, dout.p, T, H, dt, nullptr));
  std::vector<float> sum(x.size());
  for (size_t i = 0; i < x.size(); i++) sum[i] = x[i] + add[i];
  sum = round_to(sum, dt);
  std::vector<float> ref(x.size());
  cpu::rms_norm(sum.data(), w.data(), eps, ref.data(), T, H);
  const std::string n = dname(dt);
  expect_close("add_rms_norm residual " + n, fetch(dx, x.size(), dt), sum, 0, 0);  // one rounding of the same sum
  // fp32: sums in a different order; fp16/bf16: the normalised value and the product are rounded.
  expect_close("add_rms_norm out " + n, fetch(dout, x.size(), dt), ref, tol(dt, 1e-5, 2e-3, 1.6e-2), 1e-6);
  // No residual add (the first layer).
  GPU_OK(gpu::add_rms_norm(dx.p, nullptr, dw.p, eps, dout.p, T, H, dt, nullptr));
  expect_close("rms_norm (no add) " + n, fetch(dout, x.size(), dt), ref, tol(dt, 1e-5, 2e-3, 1.6e-2), 1e-6);
}

// inv_freq as LlamaConfig::rope_inv_freq makes it (that formula, restated here: the test does
// not link the model code).
std::vector<float> inv_freq_for(int head_dim, double theta, int scaling, double factor) {
  std::vector<float> inv(head_dim / 2);
  const double lowf = 1.0, highf = 4.0, orig = 8192;
  for (int i = 0; i < head_dim / 2; i++) {
    float f = 1.0f / std::pow(static_cast<float>(theta), static_cast<float>(2 * i) / static_cast<float>(head_dim));
    if (scaling == 1) {
      f = f / static_cast<float>(factor);
    } else if (scaling == 2) {
      const double wavelen = 2.0 * M_PI / f;
      if (wavelen > orig / lowf) {
        f = f / static_cast<float>(factor);
      } else if (wavelen >= orig / highf) {
        const double smooth = (orig / wavelen - lowf) / (highf - lowf);
        f = static_cast<float>((1 - smooth) * f / factor + smooth * f);
      }
    }
    inv[i] = f;
  }
  return inv;
}

void test_rope(DType dt, int scaling) {
  const int T = 13, nq = 6, nkv = 2, hd = 128, stride = (nq + 2 * nkv) * hd + 64;
  const auto inv = inv_freq_for(hd, 500000.0, scaling, 8.0);
  const auto x = round_to(randu(static_cast<size_t>(T) * stride), dt);
  std::vector<int32_t> pos(T);
  for (int &p : pos) p = randi(0, 8000);
  DevBuf dx = upload(encode(x, dt)), dpos = upload(pos), dinv = upload(inv);
  // Q and K heads together: K starts right after Q in the fused row.
  GPU_OK(gpu::rope(dx.p, T, stride, nq + nkv, hd, dpos.as<int32_t>(), dinv.as<float>(), dt, nullptr));
  std::vector<float> ref = x;
  cpu::rope(ref.data(), T, stride, nq, hd, pos.data(), inv.data());
  cpu::rope(ref.data() + nq * hd, T, stride, nkv, hd, pos.data(), inv.data());
  const char *sc[] = {"none", "linear", "llama3"};
  expect_close(std::string("rope ") + sc[scaling] + " " + dname(dt), fetch(dx, x.size(), dt), ref,
               tol(dt, 1e-5, 1e-3, 8e-3), tol(dt, 2e-6, 1e-3, 8e-3));
}

// rope_kv_store: the rows rotated as rope() (Q and K heads), and the cache holding each token's
// rotated K and its V at (slot, cache_pos), every other cache position untouched. Tree-like
// tokens: positions (the rotation) differ from cache positions; GQA with a padded row stride.
void test_rope_kv_store(DType dt) {
  const int T = 11, nq = 8, nkv = 2, hd = 64, stride = (nq + 2 * nkv) * hd + 32, kv_dim = nkv * hd;
  const int slots_n = 3, max_seq = 40;
  const auto inv = inv_freq_for(hd, 10000.0, 0, 1.0);
  const auto x = round_to(randu(static_cast<size_t>(T) * stride), dt);
  const auto cache0 = round_to(randu(static_cast<size_t>(slots_n) * max_seq * kv_dim), dt);
  std::vector<int32_t> pos(T), slot(T), cpos(T);
  std::vector<int> order(slots_n * max_seq);
  for (size_t i = 0; i < order.size(); i++) order[i] = static_cast<int>(i);
  std::shuffle(order.begin(), order.end(), rng);  // distinct (slot, cache position) per token
  for (int t = 0; t < T; t++) {
    slot[t] = order[t] / max_seq;
    cpos[t] = order[t] % max_seq;
    pos[t] = std::max(0, cpos[t] - randi(0, 3));  // a tree token sits deeper than its depth
  }
  DevBuf dx = upload(encode(x, dt)), dpos = upload(pos), dinv = upload(inv), dslot = upload(slot),
         dcpos = upload(cpos), dk = upload(encode(cache0, dt)), dv = upload(encode(cache0, dt));
  GPU_OK(gpu::rope_kv_store(dx.p, T, stride, nq, nkv, hd, dpos.as<int32_t>(), dinv.as<float>(),
                            dslot.as<int32_t>(), dcpos.as<int32_t>(), dk.p, dv.p, max_seq, dt, nullptr));
  std::vector<float> ref = x;
  cpu::rope(ref.data(), T, stride, nq, hd, pos.data(), inv.data());
  cpu::rope(ref.data() + nq * hd, T, stride, nkv, hd, pos.data(), inv.data());
  std::vector<float> ref_k = cache0, ref_v = cache0;
  for (int t = 0; t < T; t++) {
    const size_t at = (static_cast<size_t>(slot[t]) * max_seq + cpos[t]) * kv_dim;
    for (int c = 0; c < kv_dim; c++) {
      ref_k[at + c] = ref[static_cast<size_t>(t) * stride + nq * hd + c];
      ref_v[at + c] = x[static_cast<size_t>(t) * stride + (nq + nkv) * hd + c];
    }
  }
  ref_k = round_to(ref_k, dt);  // the cache holds dt values (the untouched ones already are)
  const std::string d = dname(dt);
  expect_close("rope_kv_store rows " + d, fetch(dx, x.size(), dt), ref, tol(dt, 1e-5, 1e-3, 8e-3),
               tol(dt, 2e-6, 1e-3, 8e-3));
  expect_close("rope_kv_store K cache " + d, fetch(dk, ref_k.size(), dt), ref_k, tol(dt, 1e-5, 1e-3, 8e-3),
               tol(dt, 2e-6, 1e-3, 8e-3));
  expect_close("rope_kv_store V cache (a copy) " + d, fetch(dv, ref_v.size(), dt), ref_v, 0, 0);
}

void test_silu_mul(DType dt) {
  const int T = 7, I = 1111 + randi(0, 50);
  const auto gu = round_to(randu(static_cast<size_t>(T) * 2 * I, -6, 6), dt);
  DevBuf dgu = upload(encode(gu, dt)), dout(static_cast<size_t>(T) * I * 4);
  GPU_OK(gpu::silu_mul(dgu.p, dout.p, T, I, dt, nullptr));
  std::vector<float> ref(static_cast<size_t>(T) * I);
  cpu::silu_mul(gu.data(), ref.data(), T, I);
  expect_close(std::string("silu_mul ") + dname(dt), fetch(dout, ref.size(), dt), ref, tol(dt, 1e-5, 1e-3, 8e-3),
               1e-6);
}

// One attention batch: tokens with their slot, prefix length and (for tree tokens) base + mask.
struct AttnBatch {
  std::vector<int32_t> prefix_len, slots, base;
  std::vector<uint64_t> mask;
  bool tree = false;
  int hint = 1;
  std::string what;
  // Cache entries made non-finite (every KV head): V = v there, and K NaN too if k_nan. The
  // rows that see such a key must come out non-finite exactly where the CPU's do, the rows
  // that do not (masked in the same K/V tile) finite and unchanged.
  struct Poison {
    int slot, pos;
    bool k_nan;
    float v;
  };
  std::vector<Poison> poison;
};

// The kernel each attention case ran (coverage: main() checks every kernel ran).
std::vector<gpu::AttentionKernel> g_attention_runs;

void run_attention(DType dt, int n_heads, int n_kv, int hd, int max_seq, int n_slots, const AttnBatch &b) {
  const int T = static_cast<int>(b.slots.size()), kv_dim = n_kv * hd, q_stride = (n_heads + 2 * n_kv) * hd;
  const auto q = round_to(randu(static_cast<size_t>(T) * q_stride), dt);
  auto ck = round_to(randu(static_cast<size_t>(n_slots) * max_seq * kv_dim), dt);
  auto cv = round_to(randu(ck.size()), dt);
  for (const AttnBatch::Poison &z : b.poison)
    for (int i = 0; i < kv_dim; i++) {
      const size_t at = (static_cast<size_t>(z.slot) * max_seq + z.pos) * kv_dim + i;
      if (z.k_nan) ck[at] = std::numeric_limits<float>::quiet_NaN();
      cv[at] = z.v;
    }
  DevBuf dq = upload(encode(q, dt)), dk = upload(encode(ck, dt)), dv = upload(encode(cv, dt));
  DevBuf dplen = upload(b.prefix_len), dslots = upload(b.slots), dbase = upload(b.base), dmask = upload(b.mask);
  DevBuf dout(static_cast<size_t>(T) * n_heads * hd * 4);
  std::vector<float> ref(static_cast<size_t>(T) * n_heads * hd);
  cpu::AttentionArgs c{q.data(), q_stride, ck.data(), cv.data(), max_seq, n_heads, n_kv, hd,
                       b.prefix_len.data(), b.slots.data(), b.tree ? b.base.data() : nullptr,
                       b.tree ? b.mask.data() : nullptr, T, ref.data()};
  cpu::attention(c);
  float scale = 0;
  for (float v : ref)
    if (std::isfinite(v)) scale = std::max(scale, std::fabs(v));
  // The tensor-core kernel rounds the probabilities P to the element type before P . V (and l
  // sums the same rounded values). A relative error e_j <= u on p_j moves output d by
  // sum_j w_j e_j (v_jd - o_d) to first order (w = the softmax weights), so it stays within
  // u * sum_j w_j |v_jd - o_d|: computed here per element in double, u the type's unit
  // roundoff, times 1.05 for the second-order terms.
  std::vector<double> p_rounding(ref.size(), 0.0);
  if (dt != DType::F32) {
    const double u = dt == DType::F16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
    const int group = n_heads / n_kv;
    std::vector<double> w(max_seq);
    for (int t = 0; t < T; t++)
      for (int h = 0; h < n_heads; h++) {
        const float *qh = &q[static_cast<size_t>(t) * q_stride + static_cast<size_t>(h) * hd];
        const size_t base = static_cast<size_t>(b.slots[t]) * max_seq * kv_dim + static_cast<size_t>(h / group) * hd;
        double mx = -INFINITY, z = 0;
        for (int p = 0; p < max_seq; p++) {
          const int j = p - (b.tree ? b.base[t] : 0);
          const bool vis = p < b.prefix_len[t] ||
                           (b.tree && b.mask[t] && j >= 0 && j < 64 && ((b.mask[t] >> j) & 1ull));
          w[p] = -INFINITY;
          if (!vis) continue;
          double dot = 0;
          for (int i = 0; i < hd; i++) dot += static_cast<double>(qh[i]) * ck[base + static_cast<size_t>(p) * kv_dim + i];
          w[p] = dot / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, w[p]);
        }
        if (mx == -INFINITY) continue;
        for (int p = 0; p < max_seq; p++) z += w[p] == -INFINITY ? 0.0 : std::exp(w[p] - mx);
        for (int i = 0; i < hd; i++) {
          const size_t at = (static_cast<size_t>(t) * n_heads + h) * hd + i;
          double acc = 0;
          for (int p = 0; p < max_seq; p++)
            if (w[p] != -INFINITY)
              acc += std::exp(w[p] - mx) / z * std::fabs(cv[base + static_cast<size_t>(p) * kv_dim + i] - ref[at]);
          p_rounding[at] = 1.05 * u * acc;
        }
      }
  }
  char name[160];
  // Every kernel that can take the batch: the one chosen at its hint and at hint 1 (the decode
  // kernel without tree tokens; tensor cores for fp16/bf16 runs of a slot, or many query heads
  // per KV head), and the tiled kernel (both off) wherever that is another kernel.
  for (int hint : {b.hint, 1}) {
    for (int variant = 0; variant < 2; variant++) {
      gpu::AttentionArgs a{dq.p, q_stride, dk.p, dv.p, max_seq, n_heads, n_kv, hd, dplen.as<int32_t>(),
                           dslots.as<int32_t>(), b.tree ? dbase.as<int32_t>() : nullptr,
                           b.tree ? dmask.as<uint64_t>() : nullptr, T, dout.p, dt, hint};
      a.decode_kernel = a.tensor_cores = variant == 0;
      const gpu::AttentionKernel k = gpu::attention_kernel_for(a);
      if (variant == 1 && g_attention_runs.back() == gpu::AttentionKernel::Tiled) break;
      EXPECT(variant == 0 || k == gpu::AttentionKernel::Tiled);
      g_attention_runs.push_back(k);
      GPU_OK(gpu::attention(a, nullptr));
      std::snprintf(name, sizeof name, "attention %s %s heads=%d kv=%d dim=%d T=%d hint=%d %s", b.what.c_str(),
                    dname(dt), n_heads, n_kv, hd, T, hint, gpu::attention_kernel_name(k));
      // fp32: both sum a few thousand fp32 terms in different orders (~1e-5 of the output's
      // scale); fp16/bf16: inputs are exact in both, so only the output rounding differs (and,
      // on tensor cores, P rounded to the element type before P . V, which the bounds cover).
      expect_close(name, fetch(dout, ref.size(), dt), ref, tol(dt, 1e-5, 1e-3, 8e-3),
                   tol(dt, 2e-5, 2e-4, 2e-3) * scale,
                   k == gpu::AttentionKernel::TensorCores ? &p_rounding : nullptr);
    }
    if (hint == 1) break;
  }
  // Split-KV: forced split counts (a split may get no key at all) and the automatic one,
  // same bounds (only the fp32 summation order changes).
  gpu::AttentionArgs a{dq.p, q_stride, dk.p, dv.p, max_seq, n_heads, n_kv, hd, dplen.as<int32_t>(),
                       dslots.as<int32_t>(), b.tree ? dbase.as<int32_t>() : nullptr,
                       b.tree ? dmask.as<uint64_t>() : nullptr, T, dout.p, dt, b.hint};
  const int auto_splits = gpu::attention_auto_splits(a);
  for (int splits : {2, 7, auto_splits}) {
    if (splits < 2) continue;
    for (int variant = 0; variant < 2; variant++) {
      a.kv_splits = splits;
      a.decode_kernel = a.tensor_cores = variant == 0;
      const gpu::AttentionKernel k = gpu::attention_kernel_for(a);
      if (variant == 1 && g_attention_runs.back() == gpu::AttentionKernel::Tiled) break;
      EXPECT(variant == 0 || k == gpu::AttentionKernel::Tiled);
      g_attention_runs.push_back(k);
      DevBuf ws(gpu::attention_workspace_floats(a) * sizeof(float));
      a.partial = static_cast<float *>(ws.p);
      GPU_OK(gpu::attention(a, nullptr));
      std::snprintf(name, sizeof name, "attention %s %s heads=%d kv=%d dim=%d T=%d kv_splits=%d%s %s", b.what.c_str(),
                    dname(dt), n_heads, n_kv, hd, T, splits, splits == auto_splits ? " (auto)" : "",
                    gpu::attention_kernel_name(k));
      expect_close(name, fetch(dout, ref.size(), dt), ref, tol(dt, 1e-5, 1e-3, 8e-3),
                   tol(dt, 2e-5, 2e-4, 2e-3) * scale,
                   k == gpu::AttentionKernel::TensorCores ? &p_rounding : nullptr);
    }
  }
}

// Tree verification: per request, `commit` tokens to commit (causal) then a random tree of
// `nodes` tokens after a prefix of `prefix` positions, as the LLM's verify step sees them.
void test_tree_attention(DType dt, int n_heads, int n_kv, int hd, int requests, int prefix_max, int nodes_max,
                         bool poisoned = false) {
  AttnBatch b;
  b.tree = true;
  b.what = poisoned ? "tree (a NaN key and an inf value)" : "tree";
  int max_seq = 0;
  std::vector<int> prefixes;
  prefix_max = std::max(prefix_max / kScale, 80);
  for (int r = 0; r < requests; r++) prefixes.push_back(randi(prefix_max / 4, prefix_max));
  for (int r = 0; r < requests; r++) max_seq = std::max(max_seq, prefixes[r] + 64 + 8);
  for (int r = 0; r < requests; r++) {
    const int slot = (r * 7 + 1) % (requests + 1), prefix = prefixes[r];
    const int nodes = poisoned ? nodes_max : randi(1, nodes_max);
    const int commit = randi(0, 2);  // committed tokens at the end of the prefix, causal
    for (int c = 0; c < commit; c++) {
      b.slots.push_back(slot);
      b.prefix_len.push_back(prefix - commit + c + 1);
      b.base.push_back(0);
      b.mask.push_back(0);
    }
    TokenTree tree;
    for (int j = 0; j < nodes; j++) {
      TreeNode n;
      n.parent = j == 0 ? -1 : randi(0, j) - 1;
      n.depth = n.parent < 0 ? 1 : tree.nodes()[n.parent].depth + 1;
      n.token = j;
      tree.add(n);
    }
    for (int j = 0; j < nodes; j++) {
      b.slots.push_back(slot);
      b.prefix_len.push_back(prefix);
      b.base.push_back(prefix);
      b.mask.push_back(tree.path_mask(j));
    }
    b.hint = std::max(b.hint, nodes + commit);
    // A node in the middle of each tree (seen by its descendants only): NaN K and V in the
    // first, an infinite V (K finite) in the second.
    if (poisoned && r < 2)
      b.poison.push_back({slot, prefix + nodes / 2, r == 0, r == 0 ? std::numeric_limits<float>::quiet_NaN() : INFINITY});
  }
  run_attention(dt, n_heads, n_kv, hd, max_seq, requests + 1, b);
}

// Prefill chunks (causal, prefix_len = position + 1) mixed with decode tokens of other slots.
void test_causal_attention(DType dt, int n_heads, int n_kv, int hd, int chunk, int history, int decodes,
                           bool poisoned = false) {
  AttnBatch b;
  b.what = poisoned ? "prefill+decode (a NaN key and value mid-chunk)" : "prefill+decode";
  history = std::max(history / kScale, 40);
  const int max_seq = history + chunk + 8, n_slots = decodes + 1;
  for (int i = 0; i < chunk; i++) {
    b.slots.push_back(0);
    b.prefix_len.push_back(history + i + 1);
  }
  for (int d = 0; d < decodes; d++) {
    b.slots.push_back(d + 1);
    b.prefix_len.push_back(randi(1, max_seq));
  }
  b.base.assign(b.slots.size(), 0);
  b.mask.assign(b.slots.size(), 0);
  b.hint = chunk;
  if (poisoned) b.poison = {{0, history + chunk / 2, true, std::numeric_limits<float>::quiet_NaN()}};
  run_attention(dt, n_heads, n_kv, hd, max_seq, n_slots, b);
}

// A decode batch: one token per slot (prefix_len = its position + 1, some slots empty), no
// tree; hint 1, so the decode kernel takes it (and the tiled kernel runs it too).
void test_decode_attention(DType dt, int n_heads, int n_kv, int hd, int batch, int history) {
  AttnBatch b;
  b.what = "decode";
  history = std::max(history / kScale, 40);
  const int max_seq = history + 8;
  for (int i = 0; i < batch; i++) {
    b.slots.push_back((i * 5 + 2) % (batch + 1));
    b.prefix_len.push_back(i == 1 ? 0 : randi(1, max_seq));  // slot with nothing cached yet: 0
  }
  b.base.assign(b.slots.size(), 0);
  b.mask.assign(b.slots.size(), 0);
  b.hint = 1;
  run_attention(dt, n_heads, n_kv, hd, max_seq, batch + 1, b);
}

void test_kv_commit(DType dt) {
  const int layers = 3, max_req = 3, max_seq = 100, kv_dim = 96;
  const size_t n = static_cast<size_t>(layers) * 2 * max_req * max_seq * kv_dim;
  const auto kv = round_to(randu(n), dt);
  // Accepted path [0, 2, 3, 5] of a tree at base 40 in slot 1 (moves that read what an earlier
  // one... and that later ones overwrite), plus random moves in slot 2.
  std::vector<int32_t> moves;
  for (int i : {0, 1, 2, 3}) {
    const int node[] = {0, 2, 3, 5};
    moves.insert(moves.end(), {1, 40 + node[i], 40 + i});
  }
  for (int i = 0; i < 6; i++) moves.insert(moves.end(), {2, randi(0, max_seq - 1), randi(0, max_seq - 1)});
  const int nm = static_cast<int>(moves.size() / 3);
  DevBuf dkv = upload(encode(kv, dt)), dm = upload(moves);
  GPU_OK(gpu::kv_commit(dkv.p, dm.as<int32_t>(), nm, layers, max_req, max_seq, kv_dim, dt, nullptr));
  std::vector<float> ref = kv;  // the CPU forward's loop
  const size_t slot_stride = static_cast<size_t>(max_seq) * kv_dim, half = max_req * slot_stride;
  for (int m = 0; m < nm; m++) {
    const int slot = moves[3 * m], src = moves[3 * m + 1], dst = moves[3 * m + 2];
    if (src == dst) continue;
    for (int l = 0; l < layers; l++)
      for (int k = 0; k < 2; k++) {
        float *c = ref.data() + (static_cast<size_t>(l) * 2 + k) * half + slot * slot_stride;
        std::memcpy(c + static_cast<size_t>(dst) * kv_dim, c + static_cast<size_t>(src) * kv_dim, kv_dim * 4);
      }
  }
  expect_close(std::string("kv_commit ") + dname(dt), fetch(dkv, n, dt), ref, 0, 0);
}

void test_argmax(DType dt) {
  const int R = 5, vocab = 50000 + randi(0, 2000);
  auto logits = randu(static_cast<size_t>(R) * vocab, -10, 10);
  for (int r = 0; r < R; r++) {  // a tied maximum: the first one wins
    const int a = randi(0, vocab - 1), b2 = randi(0, vocab - 1);
    logits[static_cast<size_t>(r) * vocab + a] = logits[static_cast<size_t>(r) * vocab + b2] = 20.f;
  }
  logits = round_to(logits, dt);
  DevBuf dl = upload(encode(logits, dt)), dout(R * 4);
  GPU_OK(gpu::argmax_rows(dl.p, vocab, R, vocab, dout.as<int32_t>(), dt, nullptr));
  const auto got = dout.get<int32_t>(R);
  for (int r = 0; r < R; r++) EXPECT(got[r] == argmax(&logits[static_cast<size_t>(r) * vocab], vocab));
}

// Rows holding a NaN or +inf have no right token: argmax and sampling give -1 (the CPU
// sampler's kNonFiniteToken) on every path (greedy, untruncated, top-k/top-p), whatever the
// position of the bad value (index 0 used to stick as the maximum: nothing compares greater
// than NaN); the MSS distributions of such rows are all NaN. -inf is an ordinary logit.
void test_non_finite_rows(DType dt) {
  const int vocab = 3000 + randi(0, 1000);
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  struct Row {
    int at;
    float v;
    bool finite;
  };
  const std::vector<Row> kinds = {{randi(1, vocab - 1), nan, false}, {0, nan, false}, {vocab - 1, nan, false},
                                  {randi(0, vocab - 1), inf, false}, {randi(0, vocab - 1), -inf, true},
                                  {-1, 0.0f, true}};
  const int R = static_cast<int>(kinds.size());
  auto logits = round_to(randu(static_cast<size_t>(R) * vocab, -5, 5), dt);
  for (int r = 0; r < R; r++)
    if (kinds[r].at >= 0) logits[static_cast<size_t>(r) * vocab + kinds[r].at] = kinds[r].v;
  DevBuf dl = upload(encode(logits, dt)), dout(R * 4);
  GPU_OK(gpu::argmax_rows(dl.p, vocab, R, vocab, dout.as<int32_t>(), dt, nullptr));
  auto got = dout.get<int32_t>(R);
  for (int r = 0; r < R; r++) {
    const float *row = &logits[static_cast<size_t>(r) * vocab];
    EXPECT(kinds[r].finite ? argmax(row, vocab) >= 0 : argmax(row, vocab) == kNonFiniteToken);
    EXPECT(got[r] == argmax(row, vocab));
    EXPECT((got[r] >= 0) == kinds[r].finite);
  }
  // Sampling: greedy, untruncated, top-k and top-p rows over the same logits.
  const std::vector<gpu::SampleParams> modes = {
      {0, 1.0f, 1.0f, 0, 7, 0}, {1, 1.0f, 1.0f, 0, 7, 0}, {1, 0.8f, 1.0f, 30, 7, 0}, {1, 1.0f, 0.9f, 0, 7, 0}};
  for (const gpu::SampleParams &m : modes) {
    std::vector<gpu::SampleParams> params(R, m);
    DevBuf dp = upload(params);
    GPU_OK(gpu::sample_rows(dl.p, vocab, R, vocab, dp.as<gpu::SampleParams>(), dout.as<int32_t>(), dt, nullptr));
    got = dout.get<int32_t>(R);
    for (int r = 0; r < R; r++) {
      SampleSpec s;
      s.do_sample = m.do_sample;
      s.temperature = m.temperature;
      s.topp = m.topp;
      s.topk = m.topk;
      s.seed = m.seed;
      const int cpu = sample_token(&logits[static_cast<size_t>(r) * vocab], vocab, s);
      EXPECT((cpu >= 0) == kinds[r].finite);
      EXPECT((got[r] >= 0) == kinds[r].finite);
      if (kinds[r].finite && kinds[r].at >= 0) EXPECT(got[r] != kinds[r].at);  // -inf is never drawn
    }
  }
  // The MSS distributions: NaN rows for the bad ones, a distribution summing to 1 otherwise.
  std::vector<int32_t> rows(R);
  for (int r = 0; r < R; r++) rows[r] = r;
  std::vector<gpu::SampleParams> params(R, modes[2]);
  DevBuf dr = upload(rows), dp = upload(params), dprobs(static_cast<size_t>(R) * vocab * 4);
  GPU_OK(gpu::warped_probs_rows(dl.p, vocab, dr.as<int32_t>(), R, vocab, dp.as<gpu::SampleParams>(),
                                dprobs.as<float>(), dt, nullptr));
  const auto probs = dprobs.get<float>(static_cast<size_t>(R) * vocab);
  for (int r = 0; r < R; r++) {
    int nans = 0;
    double sum = 0;
    for (int v = 0; v < vocab; v++) {
      const float x = probs[static_cast<size_t>(r) * vocab + v];
      nans += std::isnan(x);
      if (!std::isnan(x)) sum += x;
    }
    EXPECT(kinds[r].finite ? nans == 0 && std::fabs(sum - 1) < 1e-4 : nans == vocab);
  }
}

// Upper tail of the chi-square distribution with k degrees of freedom: Q(k/2, x/2), the
// regularized upper incomplete gamma function (a power series below a + 1, a continued
// fraction by the modified Lentz method above).
double chi_square_sf(double x, int k) {
  if (x <= 0) return 1.0;
  const double a = 0.5 * k, z = 0.5 * x, lg = a * std::log(z) - z - std::lgamma(a);
  if (z < a + 1) {  // P(a, z) = e^lg / a * sum_n z^n / ((a+1)...(a+n))
    double term = 1.0 / a, sum = term;
    for (int n = 1; n < 1000 && std::fabs(term) > 1e-16 * std::fabs(sum); n++) sum += term *= z / (a + n);
    return std::max(0.0, 1.0 - sum * std::exp(lg));
  }
  const double tiny = 1e-300;  // Q(a, z) = e^lg / (z + 1 - a - 1(1-a)/(z + 3 - a - ...))
  double b = z + 1 - a, c = 1 / tiny, d = 1 / b, h = d;
  for (int n = 1; n < 1000; n++) {
    const double an = -n * (n - a);
    b += 2;
    d = an * d + b;
    if (std::fabs(d) < tiny) d = tiny;
    c = b + an / c;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1 / d;
    const double delta = d * c;
    h *= delta;
    if (std::fabs(delta - 1) < 1e-15) break;
  }
  return std::exp(lg) * h;
}

// Pearson's statistic of counts against N * p; returns the p-value. Cells expected fewer than
// 5 times are pooled (the usual validity rule) with their neighbours in order of expectation,
// ties in token order: the order must not depend on the counts (sorting ties by count groups
// the low counts together and makes a correct sampler fail). tests/conftest.py pools all small
// cells into one instead, which here would pool most of a 5000-token top-p row.
double pooled_chi_square_pvalue(const std::vector<int> &count, const std::vector<double> &p, int N) {
  std::vector<size_t> cells;  // tokens with p > 0, by expectation, then id
  for (size_t v = 0; v < p.size(); v++)
    if (p[v] > 0) cells.push_back(v);
  std::stable_sort(cells.begin(), cells.end(), [&](size_t a, size_t b) { return p[a] < p[b]; });
  std::vector<std::pair<double, double>> pooled;  // (expected, observed)
  double e = 0, o = 0;
  for (const size_t v : cells) {
    e += N * p[v];
    o += count[v];
    if (e >= 5) {
      pooled.push_back({e, o});
      e = o = 0;
    }
  }
  if (e > 0) {
    if (pooled.empty()) pooled.push_back({0, 0});
    pooled.back().first += e;
    pooled.back().second += o;
  }
  if (pooled.size() < 2) return 1.0;
  double x = 0;
  for (const auto &[pe, po] : pooled) x += (po - pe) * (po - pe) / pe;
  return chi_square_sf(x, static_cast<int>(pooled.size()) - 1);
}

// Sampling: N draws of one row (ld = 0 repeats it) with counters 0..N-1. Checks: every draw
// is in the CPU's kept set (support); every token's count within Bernstein's bound of
// N * warped_probs; with no truncation, the draws equal the CPU sampler's (same u, same
// id-order draw) but for rounding at a boundary (>= 99%); and the pooled chi-square of all
// counts against N * warped_probs has p >= 1e-6 (the per-token bound misses a distribution
// that is a little off everywhere, e.g. a wrong temperature).
// The count bound: for N independent draws, P(|count - Np| >= t) <= 2 exp(-t^2 / (2 (Np(1-p) +
// t/3))) (Bernstein). t solves it for 1e-6 / vocab, so a correct sampler fails a case with
// probability <= 1e-6 (union over tokens) at any N and any p: a "5 sigma" bound is not valid for
// tokens expected a few times (the emulator's N = 2500 made it fail 1e-3 of the top-p cases).
// The width is ~sqrt(2 Np L) with L = ln(2e6 vocab) ~ 22: 5-7 sigma where Np is large.
void test_sampling(DType dt, int vocab, float temperature, float topp, int topk, bool quantize) {
  auto logits = randu(vocab, -4, 4);
  if (quantize)
    for (float &x : logits) x = std::round(x * 2) / 2;  // many exact ties
  logits = round_to(logits, dt);
  const int N = 20000 / kScale;
  std::vector<gpu::SampleParams> params(N);
  const uint64_t seed = rng();
  for (int i = 0; i < N; i++) params[i] = {1, temperature, topp, topk, seed, static_cast<uint64_t>(i)};
  DevBuf dl = upload(encode(logits, dt)), dp = upload(params), dout(N * 4);
  GPU_OK(gpu::sample_rows(dl.p, 0, N, vocab, dp.as<gpu::SampleParams>(), dout.as<int32_t>(), dt, nullptr));
  const auto got = dout.get<int32_t>(N);
  const auto p = warped_probs(logits.data(), vocab, temperature, topp, topk);
  std::vector<int> count(vocab, 0);
  int outside = 0, same = 0;
  for (int i = 0; i < N; i++) {
    if (got[i] < 0 || got[i] >= vocab || p[got[i]] <= 0) {
      outside++;
      continue;
    }
    count[got[i]]++;
    SampleSpec s;
    s.do_sample = 1;
    s.temperature = temperature;
    s.topp = topp;
    s.topk = topk;
    s.seed = seed;
    s.counter = i;
    same += sample_token(logits.data(), vocab, s) == got[i];
  }
  char name[160];
  std::snprintf(name, sizeof name, "sampling %s vocab=%d T=%.2f topp=%.2f topk=%d%s", dname(dt), vocab, temperature,
                topp, topk, quantize ? " ties" : "");
  double worst = 0;  // the largest excess of |count - Np| over the bound, in draws
  const double L = std::log(2.0 * vocab / 1e-6);
  for (int v = 0; v < vocab; v++) {
    const double var = N * p[v] * (1 - p[v]), t = L / 3 + std::sqrt(L * L / 9 + 2 * var * L);
    worst = std::max(worst, std::fabs(count[v] - N * p[v]) - t);
  }
  const bool untrunc = !(topk > 0 && topk < vocab) && !(topp > 0 && topp < 1);
  const double chi_p = pooled_chi_square_pvalue(count, std::vector<double>(p.begin(), p.end()), N);
  const bool ok = outside == 0 && worst <= 0 && chi_p >= 1e-6 && (!untrunc || same >= N * 99 / 100);
  if (ok) {
    g_pass++;
  } else {
    g_fail++;
    std::printf("FAIL %s: %d draws outside the kept set, count excess %.3g draws, chi-square p %.3g, %d/%d equal "
                "to the CPU's\n", name, outside, worst, chi_p, same, N);
  }
  // Greedy rows: the argmax.
  for (auto &s : params) s.do_sample = 0;
  DevBuf dp2 = upload(params);
  GPU_OK(gpu::sample_rows(dl.p, 0, 4, vocab, dp2.as<gpu::SampleParams>(), dout.as<int32_t>(), dt, nullptr));
  EXPECT(dout.get<int32_t>(1)[0] == argmax(logits.data(), vocab));
}

// The untruncated draw's boundaries at a full vocabulary: a token is drawn when u * Z falls in
// [its running mass before, that plus its mass). Summed in fp32, consecutive boundaries need not
// meet; a draw that lands between them must still go to the token whose interval ends after
// it, not to the "nothing crossed" fallback (the last token with mass). Here the last token's
// mass is ~e^-80 of the others', so a correct sampler draws it with probability ~1e-7 (the
// fallback for u * Z past the scan's total); in N draws: none.
void test_sampling_tail(DType dt) {
  // On a GPU: a LLaMA-3 vocabulary and 40000 draws, where the gap bug gave ~15-30 tail draws
  // (0.035-0.07 % in a float32 model of the scan); the emulator runs a smaller smoke case.
  const int vocab = 128256 / kScale, N = 40000 / (kScale * kScale);
  auto logits = randu(vocab, -4, 4);
  logits[vocab - 1] = -80.0f;
  logits = round_to(logits, dt);
  std::vector<gpu::SampleParams> params(N);
  const uint64_t seed = rng();
  for (int i = 0; i < N; i++) params[i] = {1, 1.0f, 1.0f, 0, seed, static_cast<uint64_t>(i)};
  DevBuf dl = upload(encode(logits, dt)), dp = upload(params), dout(N * 4);
  GPU_OK(gpu::sample_rows(dl.p, 0, N, vocab, dp.as<gpu::SampleParams>(), dout.as<int32_t>(), dt, nullptr));
  const auto got = dout.get<int32_t>(N);
  int tail = 0, bad = 0;
  for (int i = 0; i < N; i++) {
    tail += got[i] == vocab - 1;
    bad += got[i] < 0 || got[i] >= vocab;
  }
  if (tail || bad) {
    g_fail++;
    std::printf("FAIL sampling tail %s vocab=%d: %d of %d draws went to the last token (mass ~e^-80), %d out of "
                "range\n", dname(dt), vocab, tail, N, bad);
  } else {
    g_pass++;
  }
}

// Warped distributions of selected rows and the per-node gathers, against warped_probs.
void test_draft_probs(DType dt) {
  const int rows_total = 6, vocab = 3000 + randi(0, 1000);
  auto logits = round_to(randu(static_cast<size_t>(rows_total) * vocab, -5, 5), dt);
  const std::vector<int32_t> rows = {4, 1, 1, 5};
  const std::vector<gpu::SampleParams> params = {
      {1, 1.0f, 1.0f, 0, 0, 0}, {1, 0.7f, 0.9f, 0, 0, 0}, {1, 1.3f, 1.0f, 50, 0, 0}, {1, 0.9f, 0.8f, 200, 0, 0}};
  const int n = static_cast<int>(rows.size());
  DevBuf dl = upload(encode(logits, dt)), dr = upload(rows), dp = upload(params),
         dprobs(static_cast<size_t>(n) * vocab * 4);
  GPU_OK(gpu::warped_probs_rows(dl.p, vocab, dr.as<int32_t>(), n, vocab, dp.as<gpu::SampleParams>(),
                                dprobs.as<float>(), dt, nullptr));
  const auto got = dprobs.get<float>(static_cast<size_t>(n) * vocab);
  std::vector<float> ref(got.size());
  for (int i = 0; i < n; i++) {
    const auto p = warped_probs(&logits[static_cast<size_t>(rows[i]) * vocab], vocab, params[i].temperature,
                                params[i].topp, params[i].topk);
    for (int v = 0; v < vocab; v++) ref[static_cast<size_t>(i) * vocab + v] = static_cast<float>(p[v]);
  }
  // fp32 exp and sums against the CPU's double: ~1e-5 relative.
  expect_close(std::string("warped_probs_rows ") + dname(dt), got, ref, 2e-5, 1e-9);
  // Gathers: the draft probability of each node's token in its row.
  std::vector<int32_t> row_of(40), toks(40);
  for (int i = 0; i < 40; i++) {
    row_of[i] = randi(0, n - 1);
    toks[i] = randi(0, vocab - 1);
  }
  DevBuf dro = upload(row_of), dt2 = upload(toks), dq(40 * 4);
  GPU_OK(gpu::gather_token_probs(dprobs.as<float>(), vocab, dro.as<int32_t>(), dt2.as<int32_t>(), 40, dq.as<float>(),
                                 nullptr));
  std::vector<float> qref(40);
  for (int i = 0; i < 40; i++) qref[i] = got[static_cast<size_t>(row_of[i]) * vocab + toks[i]];
  expect_close("gather_token_probs", dq.get<float>(40), qref, 0, 0);
}

#ifdef FFS_HAVE_CUBLAS
// linear (cuBLAS GemmEx) against cpu::linear on the same dtype-rounded inputs. The error of a
// dot product scales with Σ_k |x_k w_k| (the "abs-sum scale", computed as cpu::linear of |x|,
// |w|, |bias|), not with |y|, which cancellation can make tiny. Bound per element:
//   |gpu - ref| <= rtol * |ref| + stol * scale
// rtol: the output's one rounding to fp16 / bf16 (one ulp: 2^-10 / 2^-7; 0 in fp32).
// stol: fp32-accumulation differences, ~1e-7 of the scale in practice; 5e-6 is loose for that
// yet fails TF32 (inputs rounded to 10 mantissa bits: ~1e-5 of the scale at K = 4096), so the
// default mode is checked to be true fp32. With allow_tf32: stol 1e-3.
void test_linear(gpu::Blas *blas, DType dt, int M, int K, int N, bool with_bias, bool tf32 = false) {
  const auto x = round_to(randu(static_cast<size_t>(M) * K), dt), w = round_to(randu(static_cast<size_t>(N) * K), dt);
  const auto bias = with_bias ? round_to(randu(N), dt) : std::vector<float>();
  std::vector<float> ref(static_cast<size_t>(M) * N), scale(ref.size());
  cpu::linear(x.data(), w.data(), with_bias ? bias.data() : nullptr, ref.data(), M, N, K);
  const auto ax = abs_of(x), aw = abs_of(w), ab = abs_of(bias);
  cpu::linear(ax.data(), aw.data(), with_bias ? ab.data() : nullptr, scale.data(), M, N, K);
  DevBuf dx = upload(encode(x, dt)), dw = upload(encode(w, dt)), dy(ref.size() * gpu::dtype_size(dt));
  std::unique_ptr<DevBuf> db;
  if (with_bias) db = std::make_unique<DevBuf>(encode(bias, dt).data(), static_cast<size_t>(N) * gpu::dtype_size(dt));
  char what[96];
  std::snprintf(what, sizeof what, "linear %s M%d K%d N%d%s%s", dname(dt), M, K, N, with_bias ? " +bias" : "",
                tf32 ? " tf32" : "");
  const gpu::BlasStatus st = gpu::linear(blas, dx.p, dw.p, db ? db->p : nullptr, dy.p, M, N, K, dt, nullptr);
  if (st != gpu::BlasStatus::Ok) {
    g_fail++;
    std::printf("FAIL %s: %s\n", what, gpu::blas_last_error(blas));
    return;
  }
  const auto got = fetch(dy, ref.size(), dt);
  const double rtol = tol(dt, 0, 1.0 / 1024, 1.0 / 128), stol = tf32 ? 1e-3 : 5e-6;
  double worst = 0;  // largest |err| / bound
  size_t at = 0;
  for (size_t i = 0; i < ref.size(); i++) {
    const double err = std::fabs(static_cast<double>(got[i]) - ref[i]);
    const double r = err / (rtol * std::fabs(ref[i]) + stol * scale[i]);
    if (!(r <= worst)) {
      worst = r;
      at = i;
    }
  }
  if (worst <= 1.0) {
    g_pass++;
  } else {
    g_fail++;
    std::printf("FAIL %s: at %zu gpu %.7g ref %.7g scale %.4g (error %.2fx the bound; rtol %.2g stol %.1g)\n", what,
                at, got[at], ref[at], scale[at], worst, rtol, stol);
  }
}

// The fused gate_up + SwiGLU of small steps against cpu::linear then cpu::silu_mul on the
// same rounded gate/up values. The kernel's dot products differ from the CPU's in summation
// order only (stol of the scale, as test_linear), which can move g or u across a rounding
// boundary of dt: eg, eu below are one ulp of dt plus that. out = silu(g) * u moves by at most
// |silu'(g)| |u| eg + |silu(g)| eu (|silu'| < 1.1) before its own rounding (rtol).
void test_linear_swiglu(DType dt, int M, int K, int I) {
  const auto x = round_to(randu(static_cast<size_t>(M) * K), dt),
             w = round_to(randu(static_cast<size_t>(2) * I * K), dt);
  std::vector<float> gu(static_cast<size_t>(M) * 2 * I), scale(gu.size()), ref(static_cast<size_t>(M) * I);
  cpu::linear(x.data(), w.data(), nullptr, gu.data(), M, 2 * I, K);
  const auto ax = abs_of(x), aw = abs_of(w);
  cpu::linear(ax.data(), aw.data(), nullptr, scale.data(), M, 2 * I, K);
  const auto gu_r = round_to(gu, dt);
  cpu::silu_mul(gu_r.data(), ref.data(), M, I);
  ref = round_to(ref, dt);
  DevBuf dx = upload(encode(x, dt)), dw = upload(encode(w, dt)), dy(ref.size() * gpu::dtype_size(dt));
  GPU_OK(gpu::linear_swiglu_small(dx.p, dw.p, dy.p, M, I, K, dt, nullptr));
  const auto got = fetch(dy, ref.size(), dt);
  const double rtol = tol(dt, 0, 1.0 / 1024, 1.0 / 128), stol = 5e-6, f32_ulp = 1.2e-7;
  double worst = 0;
  size_t at = 0;
  for (int m = 0; m < M; m++)
    for (int c = 0; c < I; c++) {
      const size_t gi = static_cast<size_t>(m) * 2 * I + c, ui = gi + I, oi = static_cast<size_t>(m) * I + c;
      const double g = gu_r[gi], u = gu_r[ui], sg = g / (1 + std::exp(-g));
      const double eg = rtol * std::fabs(g) + stol * scale[gi], eu = rtol * std::fabs(u) + stol * scale[ui];
      const double bound = (rtol + f32_ulp) * std::fabs(ref[oi]) + 1.1 * std::fabs(u) * eg + std::fabs(sg) * eu + 1e-30;
      const double r = std::fabs(static_cast<double>(got[oi]) - ref[oi]) / bound;
      if (!(r <= worst)) {
        worst = r;
        at = oi;
      }
    }
  char what[96];
  std::snprintf(what, sizeof what, "linear_swiglu_small %s M%d K%d I%d", dname(dt), M, K, I);
  if (worst <= 1.0) {
    g_pass++;
  } else {
    g_fail++;
    std::printf("FAIL %s: at %zu gpu %.7g ref %.7g (error %.2fx the bound)\n", what, at, got[at], ref[at], worst);
  }
}

// SmolLM2-135M's projections (hidden 576, 9 q + 3 kv heads of 64, intermediate 1536, vocab
// 49152) and a 4096 x 4096 one, for decode (1), small trees (3, 17) and a prefill chunk (128).
void test_projections() {
  std::string error;
  gpu::Blas *blas = gpu::blas_create(gpu::BlasOptions{}, &error);
  if (!blas) {  // a GPU machine must have cuBLAS: the projections cannot run without it
    g_fail++;
    std::printf("FAIL cuBLAS: %s\n", error.c_str());
    return;
  }
  std::printf("cuBLAS: %s\n", gpu::blas_library_path());
  struct Shape {
    int K, N;
    bool bias;
  };
  const Shape shapes[] = {{576, 960, true},  {576, 576, false},   {576, 1536, false}, {576, 3072, false},
                          {1536, 576, false}, {576, 49152, false}, {4096, 4096, true}};
  // M <= 8 runs linear_small (16-byte loads, and one element per lane when K is not a
  // multiple of 16 bytes: K 63, 90); M > 8 runs cuBLAS.
  for (DType dt : kTypes) {
    for (const Shape &s : shapes)
      for (int M : {1, 3, 17, 128})
        if (kScale == 1 || M < 128) test_linear(blas, dt, M, s.K, s.N, s.bias);
    for (int M : {2, 5, 8}) test_linear(blas, dt, M, 576, 960, M != 5);
    test_linear(blas, dt, 8, 63, 129, true);
    test_linear(blas, dt, 1, 90, 7, false);
    test_linear(blas, dt, 9, 576, 960, true);  // the first M through cuBLAS
    for (int M : {1, 4, 8}) test_linear_swiglu(dt, M, 576, 1536);
    test_linear_swiglu(dt, 3, 64, 96);
    test_linear_swiglu(dt, 2, 70, 33);  // the one-element path
  }
  gpu::blas_destroy(blas);
  // cuBLAS at small M too (small_m_rows 0: what FFS_GPU_SMALL_GEMM=0 selects).
  gpu::BlasOptions cublas_only;
  cublas_only.small_m_rows = 0;
  blas = gpu::blas_create(cublas_only, &error);
  for (DType dt : kTypes)
    for (int M : {1, 3, 8}) test_linear(blas, dt, M, 576, 1536, M == 3);
  gpu::blas_destroy(blas);
  gpu::BlasOptions tf32;
  tf32.allow_tf32 = true;
  blas = gpu::blas_create(tf32, &error);
  test_linear(blas, DType::F32, 17, 4096, 4096, false, true);
  gpu::blas_destroy(blas);
}
#endif

}  // namespace

int main(int argc, char **argv) {
  if (!gpu_test_start(argc, argv, rng)) return report();
  for (DType dt : kTypes) {
    test_embedding(dt);
    test_rms_norm(dt);
    for (int scaling : {0, 1, 2}) test_rope(dt, scaling);
    test_rope_kv_store(dt);
    test_silu_mul(dt);
    test_kv_commit(dt);
    test_argmax(dt);
    test_non_finite_rows(dt);
    // Tree verification: GQA (LLaMA-3-8B shape), MQA, small GQA with head_dim 64.
    test_tree_attention(dt, 32, 8, 128, 3, 2000, 64);
    test_tree_attention(dt, 16, 1, 64, 2, 3000, 64);
    test_tree_attention(dt, 9, 3, 64, 4, 300, 20);
    // Prefill chunk + decode tokens (incremental decoding is the decode part).
    test_causal_attention(dt, 8, 2, 64, 200, 300, 5);
    test_causal_attention(dt, 32, 8, 128, 64, 1000, 8);
    test_causal_attention(dt, 64, 1, 128, 17, 500, 3);  // MQA with more heads than a block's rows
    // Non-finite K/V (an overflow, NaN weights) stay in the rows that see them.
    test_tree_attention(dt, 16, 4, 64, 2, 300, 40, true);
    test_causal_attention(dt, 8, 2, 128, 70, 200, 2, true);
    // Decode batches: MHA (7B), GQA 4 (LLaMA-3), SmolLM2's 3 (rows padded to 4), 8, and MQA 16
    // (more than the decode kernel's 8: the tiled kernel); head dims 64, 128, 256, 32.
    test_decode_attention(dt, 32, 32, 128, 5, 700);
    test_decode_attention(dt, 32, 8, 128, 3, 1500);
    test_decode_attention(dt, 9, 3, 64, 4, 600);
    test_decode_attention(dt, 16, 2, 64, 2, 300);
    test_decode_attention(dt, 16, 1, 256, 2, 300);
    test_decode_attention(dt, 8, 4, 32, 3, 200);
  }
  test_tree_attention(DType::F32, 8, 8, 32, 2, 400, 30);
  // The tests' tiny models' head dims (8 and 16): 16 and 8 threads' worth of rows per column.
  test_tree_attention(DType::F16, 4, 2, 16, 3, 300, 20);
  test_causal_attention(DType::F32, 4, 2, 8, 30, 200, 4);
  test_tree_attention(DType::BF16, 8, 2, 256, 2, 600, 40);
  for (DType dt : {DType::F32, DType::BF16}) {
    test_sampling(dt, 64, 0.8f, 1.0f, 0, false);       // temperature only: the id-order draw
    test_sampling(dt, 100, 1.3f, 0.8f, 10, false);     // top-k then top-p
    test_sampling(dt, 5000, 1.0f, 0.9f, 0, false);     // top-p alone (candidates + full-row mass)
    test_sampling(dt, 3000, 1.0f, 1.0f, 40, true);     // top-k boundary on tied logits
    test_draft_probs(dt);
    test_sampling_tail(dt);
  }
  // Every attention kernel of this build took some of the cases above (a kernel that never
  // runs, e.g. by a dispatch condition that is always false, passes every comparison).
  int runs[3] = {0, 0, 0};
  for (gpu::AttentionKernel k : g_attention_runs) runs[static_cast<int>(k)]++;
  std::printf("attention cases: %d tiled, %d decode, %d tensor-core\n", runs[0], runs[1], runs[2]);
  EXPECT(runs[0] > 0 && runs[1] > 0);
  EXPECT(runs[2] > 0 || !gpu::attention_has_tensor_cores());
#ifdef FFS_HAVE_CUBLAS
  test_projections();
#else
  g_fail++;
  std::printf("FAIL linear: built without cuBLAS headers (see the cmake log), so the projections are untested\n");
#endif
  return report();
}
