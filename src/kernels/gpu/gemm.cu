// Projections (QKV, O, gate_up, down, LM head) through cuBLAS, which is loaded at run time:
// libcublas is dlopen'ed and the few entry points below resolved with dlsym, so nothing links
// against it (the build machine has only cuBLAS's headers, fetched by
// scripts/fetch_cublas_headers.py; the GPU machines have the library from the nvidia-cublas
// wheel). The header gives the types and is used to check each entry point's signature.
// CUDA only: a HIP build would resolve hipBLAS the same way (not written yet).
#include <dlfcn.h>
#include <glob.h>
#include <sys/stat.h>

#include <cstdlib>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include <cublas_v2.h>  // types and prototypes only: nothing here calls libcublas directly

#include "kernels/gpu/dispatch.cuh"

namespace ffspec::gpu {

namespace {

using CreateFn = cublasStatus_t (*)(cublasHandle_t *);
using DestroyFn = cublasStatus_t (*)(cublasHandle_t);
using SetStreamFn = cublasStatus_t (*)(cublasHandle_t, cudaStream_t);
using SetMathModeFn = cublasStatus_t (*)(cublasHandle_t, cublasMath_t);
using StatusStringFn = const char *(*)(cublasStatus_t);
using SetWorkspaceFn = cublasStatus_t (*)(cublasHandle_t, void *, size_t);
using GemmExFn = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                    const void *, const void *, cudaDataType, int, const void *, cudaDataType, int,
                                    const void *, void *, cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
// The header's declarations must match the pointer types we cast dlsym's result to
// (unevaluated: no reference to the symbols). cublasGemmEx is overloaded in C++ (a legacy
// cudaDataType compute type), hence the static_cast selecting the C one.
static_assert(std::is_same_v<decltype(&cublasCreate_v2), CreateFn>);
static_assert(std::is_same_v<decltype(&cublasDestroy_v2), DestroyFn>);
static_assert(std::is_same_v<decltype(&cublasSetStream_v2), SetStreamFn>);
static_assert(std::is_same_v<decltype(&cublasSetMathMode), SetMathModeFn>);
static_assert(std::is_same_v<decltype(&cublasGetStatusString), StatusStringFn>);
static_assert(std::is_same_v<decltype(&cublasSetWorkspace_v2), SetWorkspaceFn>);
static_assert(std::is_same_v<decltype(static_cast<GemmExFn>(&cublasGemmEx)), GemmExFn>);

// The process-wide library: loaded once, never unloaded.
struct CublasApi {
  void *lib = nullptr;
  std::string path;   // what was loaded
  std::string error;  // why nothing was, naming every candidate tried
  CreateFn create = nullptr;
  DestroyFn destroy = nullptr;
  SetStreamFn set_stream = nullptr;
  SetMathModeFn set_math_mode = nullptr;
  StatusStringFn status_string = nullptr;
  SetWorkspaceFn set_workspace = nullptr;
  GemmExFn gemm_ex = nullptr;
};

std::string dirname_of(const std::string &p) {
  const size_t s = p.rfind('/');
  return s == std::string::npos ? std::string(".") : p.substr(0, s);
}

// Candidates in search order (see kernels.h).
std::vector<std::string> cublas_candidates() {
  std::vector<std::string> c;
  if (const char *env = std::getenv("FFS_CUBLAS_LIBRARY"); env && *env) {
    // A directory (e.g. the wheel's .../nvidia/cu13/lib) means the library inside it.
    struct stat st {};
    const bool is_dir = stat(env, &st) == 0 && S_ISDIR(st.st_mode);
    c.push_back(is_dir ? std::string(env) + "/libcublas.so.13" : std::string(env));
  }
  // By soname: LD_LIBRARY_PATH, the ld.so cache, or a copy already in the process (torch
  // loads the wheel's libcublas.so.13 when it initialises CUDA).
  c.push_back("libcublas.so.13");
  c.push_back("libcublas.so");
  // The nvidia-cublas wheel in the active virtual environment or conda prefix.
  for (const char *var : {"VIRTUAL_ENV", "CONDA_PREFIX"}) {
    const char *prefix = std::getenv(var);
    if (!prefix || !*prefix) continue;
    for (const char *sub : {"cu13", "cublas"}) {
      const std::string pattern =
          std::string(prefix) + "/lib/python3*/site-packages/nvidia/" + sub + "/lib/libcublas.so.13";
      glob_t g{};
      if (glob(pattern.c_str(), 0, nullptr, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc; i++) c.push_back(g.gl_pathv[i]);
      } else {
        c.push_back(pattern);  // listed in the error message as tried
      }
      globfree(&g);
    }
  }
  return c;
}

const CublasApi &cublas_api() {
  static CublasApi api;
  static std::once_flag once;
  std::call_once(once, [] {
    std::string tried;
    for (const std::string &cand : cublas_candidates()) {
      if (cand.find('/') != std::string::npos) {
        // A path: load libcublasLt from the same directory first, so it resolves even where
        // the library's RUNPATH does not point at its own directory.
        dlopen((dirname_of(cand) + "/libcublasLt.so.13").c_str(), RTLD_NOW | RTLD_GLOBAL);
      }
      void *lib = dlopen(cand.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!lib) {
        const char *why = dlerror();
        tried += "\n  " + cand + ": " + (why ? why : "not loadable");
        continue;
      }
      // The entry points are C symbols: dlsym's void* converted to the checked pointer types.
      auto sym = [&](const char *name) {
        void *f = dlsym(lib, name);
        if (!f) tried += "\n  " + cand + ": no symbol " + name;
        return f;
      };
      api.create = reinterpret_cast<CreateFn>(sym("cublasCreate_v2"));
      api.destroy = reinterpret_cast<DestroyFn>(sym("cublasDestroy_v2"));
      api.set_stream = reinterpret_cast<SetStreamFn>(sym("cublasSetStream_v2"));
      api.set_math_mode = reinterpret_cast<SetMathModeFn>(sym("cublasSetMathMode"));
      api.status_string = reinterpret_cast<StatusStringFn>(sym("cublasGetStatusString"));
      api.set_workspace = reinterpret_cast<SetWorkspaceFn>(sym("cublasSetWorkspace_v2"));
      api.gemm_ex = reinterpret_cast<GemmExFn>(sym("cublasGemmEx"));
      if (api.create && api.destroy && api.set_stream && api.set_math_mode && api.status_string &&
          api.set_workspace && api.gemm_ex) {
        api.lib = lib;
        api.path = cand;
        return;
      }
      dlclose(lib);
      api = CublasApi{};
    }
    api.error = "cuBLAS (libcublas.so.13) not found; tried:" + tried +
                "\nSet FFS_CUBLAS_LIBRARY to libcublas.so.13 (or its directory, e.g. a venv's "
                "site-packages/nvidia/cu13/lib) or add that directory to LD_LIBRARY_PATH.";
  });
  return api;
}

std::string status_text(const CublasApi &api, cublasStatus_t s) {
  return std::string(api.status_string(s)) + " (" + std::to_string(static_cast<int>(s)) + ")";
}

// y[m, :] = bias for every row: cuBLAS then adds x·wᵀ with beta = 1, in fp32, rounding once.
template <typename T>
__global__ void fill_rows_kernel(const T *bias, T *y, int N) {
  T *row = y + static_cast<size_t>(blockIdx.y) * N;
  for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < N; n += gridDim.x * blockDim.x) row[n] = bias[n];
}

}  // namespace

struct Blas {
  cublasHandle_t handle = nullptr;
  BlasOptions opts;
  std::string last_error;
  void *workspace = nullptr;
  gpuStream_t stream = nullptr;  // the stream the handle is set to
  bool stream_set = false;
};

const char *blas_library_path() {
  const CublasApi &api = cublas_api();
  return api.lib ? api.path.c_str() : nullptr;
}

Blas *blas_create(const BlasOptions &opts, std::string *error) {
  const CublasApi &api = cublas_api();
  if (!api.lib) {
    if (error) *error = api.error;
    return nullptr;
  }
  cublasHandle_t h = nullptr;
  cublasStatus_t s = api.create(&h);
  // Reductions (split-K) stay in fp32 even when the output is fp16/bf16, like the CPU's.
  if (s == CUBLAS_STATUS_SUCCESS)
    s = api.set_math_mode(
        h, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
  if (s != CUBLAS_STATUS_SUCCESS) {
    if (error) *error = "cuBLAS handle (" + api.path + "): " + status_text(api, s);
    if (h) api.destroy(h);
    return nullptr;
  }
  Blas *b = new Blas{h, opts, {}};
  if (opts.workspace_bytes > 0) {
    const gpuError_t e = gpuMalloc(&b->workspace, opts.workspace_bytes);
    if (e != gpuSuccess) {
      if (error) *error = std::string("cuBLAS workspace: ") + gpuGetErrorString(e);
      blas_destroy(b);
      return nullptr;
    }
  }
  return b;
}

void blas_destroy(Blas *b) {
  if (!b) return;
  if (b->handle) cublas_api().destroy(b->handle);
  if (b->workspace) gpuFree(b->workspace);
  delete b;
}

const char *blas_last_error(const Blas *b) { return b ? b->last_error.c_str() : "null Blas handle"; }

BlasStatus linear(Blas *b, const void *x, const void *w, const void *bias, void *y, int M, int N, int K, DType dt,
                  gpuStream_t stream) {
  if (!b) return BlasStatus::InvalidValue;
  b->last_error.clear();
  if (M == 0) return BlasStatus::Ok;
  if (M < 0 || N <= 0 || K <= 0 || !x || !w || !y) {
    b->last_error = "linear: bad arguments (M " + std::to_string(M) + ", N " + std::to_string(N) + ", K " +
                    std::to_string(K) + ")";
    return BlasStatus::InvalidValue;
  }
  if (M <= b->opts.small_m_rows && M <= kSmallLinearMaxRows) {
    if (const gpuError_t e = linear_small(x, w, bias, y, M, N, K, dt, stream); e != gpuSuccess) {
      b->last_error = std::string("linear: small-M kernel launch: ") + gpuGetErrorString(e);
      return BlasStatus::LaunchFailed;
    }
    return BlasStatus::Ok;
  }
  const CublasApi &api = cublas_api();
  cudaDataType type;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;  // fp32 accumulation; no TF32 unless asked
  switch (dt) {
    case DType::F32:
      type = CUDA_R_32F;
      if (b->opts.allow_tf32) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
      break;
    case DType::F16: type = CUDA_R_16F; break;
    case DType::BF16: type = CUDA_R_16BF; break;
    default: b->last_error = "linear: unknown dtype"; return BlasStatus::InvalidValue;
  }
  float beta = 0.0f;
  if (bias) {
    const dim3 grid(ceil_div(N, 256 * 4), M);
    auto fill = [&]() -> gpuError_t {
      FFS_DISPATCH_DTYPE(dt, FFS_LAUNCH(fill_rows_kernel<T>, grid, 256, 0, stream, static_cast<const T *>(bias),
                                        static_cast<T *>(y), N));
      return gpuGetLastError();
    };
    if (const gpuError_t e = fill(); e != gpuSuccess) {
      b->last_error = std::string("linear: bias fill launch: ") + gpuGetErrorString(e);
      return BlasStatus::LaunchFailed;
    }
    beta = 1.0f;
  }
  // Row-major y[M, N] = x[M, K] · w[N, K]ᵀ is column-major yᵀ[N, M] = w · xᵀ, where w read
  // column-major is [K, N] (op T) and x is [K, M] (op N). alpha/beta are fp32 (compute 32F).
  const float alpha = 1.0f;
  // cublasSetStream puts the handle back on cuBLAS's own workspace pool, so ours is set again
  // after it; both only when the stream changes.
  cublasStatus_t s = CUBLAS_STATUS_SUCCESS;
  if (!b->stream_set || b->stream != stream) {
    s = api.set_stream(b->handle, reinterpret_cast<cudaStream_t>(stream));
    if (s == CUBLAS_STATUS_SUCCESS && b->workspace) s = api.set_workspace(b->handle, b->workspace, b->opts.workspace_bytes);
    b->stream_set = s == CUBLAS_STATUS_SUCCESS;
    b->stream = stream;
  }
  if (s == CUBLAS_STATUS_SUCCESS)
    s = api.gemm_ex(b->handle, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha, w, type, K, x, type, K, &beta, y, type, N,
                    compute, CUBLAS_GEMM_DEFAULT);
  if (s != CUBLAS_STATUS_SUCCESS) {
    b->last_error = "linear: cublasGemmEx (M " + std::to_string(M) + ", N " + std::to_string(N) + ", K " +
                    std::to_string(K) + "): " + status_text(api, s);
    return BlasStatus::CublasFailed;
  }
  return BlasStatus::Ok;
}

}  // namespace ffspec::gpu
