// The CPU emulation of CUDA declared in gpu_emu.h: fibers (ucontext) for a block's threads,
// barriers for __syncthreads and shuffles, recorded streams for graphs.
#include "kernels/gpu/emu/gpu_emu.h"

#include <dlfcn.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

struct FfsEmuStream {
  FfsEmuGraph *capture = nullptr;  // being captured into this graph
  bool capture_invalid = false;
};
struct FfsEmuGraph {
  std::vector<std::function<void()>> ops;
};
struct FfsEmuEvent {
  std::chrono::steady_clock::time_point t;
};

namespace ffspec::emu {
namespace {

constexpr int kWarp = FFS_GPU_EMU_WARP_SIZE;  // the device profile: gpu_emu.h
constexpr size_t kStack = 128 << 10;
constexpr size_t kDefaultSmem = FFS_GPU_EMU_SMEM_DEFAULT, kMaxSmem = FFS_GPU_EMU_SMEM_MAX;
constexpr int kSMs = FFS_GPU_EMU_SMS;

enum State { kReady, kAtBlock, kAtWarp, kDone };

// Switching fibers. On x86-64 a few instructions that save the callee-saved registers and
// swap stacks (swapcontext also saves the signal mask: two system calls per switch, which made
// the emulated attention tests take minutes); elsewhere ucontext.
#if defined(__x86_64__)
extern "C" void ffs_emu_switch(void **save_sp, void *load_sp);
asm(R"(
.text
.globl ffs_emu_switch
.type ffs_emu_switch,@function
ffs_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size ffs_emu_switch,.-ffs_emu_switch
)");
#define FFS_EMU_ASM_SWITCH 1
#endif

struct Fiber {
  void *sp = nullptr;  // FFS_EMU_ASM_SWITCH: the saved stack pointer
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  Dim3 tid;
  unsigned linear = 0;
  State state = kReady;
};

// The block being run (one at a time, on the thread that launched it).
struct Run {
  std::vector<Fiber> fibers;
  ucontext_t sched;
  void *sched_sp = nullptr;
  Fiber *cur = nullptr;
  const std::function<void()> *body = nullptr;
  const char *where = "";
  Dim3 block_idx, block_dim, grid_dim;
  std::vector<unsigned char> smem;
  std::vector<uint64_t> xchg;  // one exchange slot per thread
  std::vector<unsigned> warp_order, lane_order;
  uint64_t rng = 0;  // the shuffled schedule's generator (splitmix64 state)
};

// The order threads run in between barriers. In order (default): warp 0 first, lanes in
// order. Shuffled (FFS_GPU_EMU_SCHEDULE=shuffled[:SEED]): a fresh permutation of the warps, and
// of the lanes of each warp, at every barrier phase. A GPU runs warps in any order and
// lanes side by side, so a kernel whose result depends on the order (a shared-memory race: a
// read of what another thread writes in the same phase) can pass in order and fail shuffled.
struct Schedule {
  bool shuffled = false;
  uint64_t seed = 0;
};
const Schedule &schedule() {
  static const Schedule s = [] {
    Schedule r;
    const char *e = std::getenv("FFS_GPU_EMU_SCHEDULE");
    if (!e || !*e || std::strcmp(e, "in-order") == 0) return r;
    if (std::strncmp(e, "shuffled", 8) != 0 || (e[8] != '\0' && e[8] != ':')) {
      std::fprintf(stderr, "gpu emulator: FFS_GPU_EMU_SCHEDULE=%s: expected in-order or shuffled[:SEED]\n", e);
      std::abort();
    }
    r.shuffled = true;
    r.seed = e[8] == ':' ? std::strtoull(e + 9, nullptr, 10) : 1;
    std::fprintf(stderr, "gpu emulator: shuffled schedule, seed %llu\n", static_cast<unsigned long long>(r.seed));
    return r;
  }();
  return s;
}
uint64_t splitmix64(uint64_t &x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
void permute(std::vector<unsigned> &v, unsigned n, uint64_t &rng) {
  const bool shuffled = schedule().shuffled;
  if (!shuffled && v.size() == n) return;  // in order: the identity, built once per size
  v.resize(n);
  for (unsigned i = 0; i < n; i++) v[i] = i;
  if (!shuffled) return;
  for (unsigned i = n; i > 1; i--) std::swap(v[i - 1], v[splitmix64(rng) % i]);  // Fisher-Yates
}

std::recursive_mutex g_mu;  // one grid at a time in the process
Run g_run;
thread_local gpuError_t t_last_error = gpuSuccess;
thread_local FfsEmuStream *t_capturing = nullptr;  // the stream this thread captures (thread-local mode)
std::map<const void *, int> g_smem_limit;
std::map<void *, size_t> g_allocs;
FfsEmuStream g_default_stream;

[[noreturn]] void fatal(const char *what) {
  std::fprintf(stderr, "gpu emulator: %s (kernel %s, block (%u,%u,%u), thread (%u,%u,%u))\n", what, g_run.where,
               g_run.block_idx.x, g_run.block_idx.y, g_run.block_idx.z, g_run.cur ? g_run.cur->tid.x : 0,
               g_run.cur ? g_run.cur->tid.y : 0, g_run.cur ? g_run.cur->tid.z : 0);
  std::abort();
}

void to_scheduler(Fiber *f) {
#ifdef FFS_EMU_ASM_SWITCH
  ffs_emu_switch(&f->sp, g_run.sched_sp);
#else
  swapcontext(&f->ctx, &g_run.sched);
#endif
}

void to_fiber(Fiber *f) {
#ifdef FFS_EMU_ASM_SWITCH
  ffs_emu_switch(&g_run.sched_sp, f->sp);
#else
  swapcontext(&g_run.sched, &f->ctx);
#endif
}

void fiber_main() {
  (*g_run.body)();
  Fiber *f = g_run.cur;
  f->state = kDone;
#ifdef FFS_EMU_ASM_SWITCH
  to_scheduler(f);  // never resumed
  std::abort();
#endif
  // ucontext: uc_link returns to the scheduler
}

// A fresh fiber's stack: ffs_emu_switch's frame (8 bytes of mxcsr / x87 control word, six
// registers) below the address it returns to, fiber_main, placed as if fiber_main was called.
void init_fiber(Fiber &f) {
#ifdef FFS_EMU_ASM_SWITCH
  uintptr_t top = reinterpret_cast<uintptr_t>(f.stack.get()) + kStack;
  top &= ~uintptr_t(15);
  auto *sp = reinterpret_cast<uint64_t *>(top);
  *--sp = 0;                                         // keeps the return-address slot 16-byte aligned
  *--sp = reinterpret_cast<uint64_t>(&fiber_main);  // ret lands here, rsp = 8 mod 16 as after a call
  for (int i = 0; i < 6; i++) *--sp = 0;            // rbp rbx r12 r13 r14 r15
  uint32_t csr[2];
  asm volatile("stmxcsr %0" : "=m"(csr[0]));
  asm volatile("fnstcw %0" : "=m"(csr[1]));
  uint64_t word;
  std::memcpy(&word, csr, 8);
  *--sp = word;
  f.sp = sp;
#else
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack.get();
  f.ctx.uc_stack.ss_size = kStack;
  f.ctx.uc_link = &g_run.sched;
  makecontext(&f.ctx, fiber_main, 0);
#endif
}

void yield(State s) {
  Fiber *f = g_run.cur;
  if (!f) fatal("a barrier outside a kernel");
  f->state = s;
  to_scheduler(f);
}

void run_block(unsigned n) {
  Run &r = g_run;
  if (r.fibers.size() < n) r.fibers.resize(n);
  for (unsigned i = 0; i < n; i++) {
    Fiber &f = r.fibers[i];
    if (!f.stack) f.stack.reset(new char[kStack]);
    init_fiber(f);
    f.linear = i;
    f.tid = Dim3(i % r.block_dim.x, (i / r.block_dim.x) % r.block_dim.y, i / (r.block_dim.x * r.block_dim.y));
    f.state = kReady;
  }
  // Warp by warp: a warp's lanes run until each waits at __syncthreads() or is done, passing
  // its shuffles' barriers among themselves; then the block barrier releases everyone. The
  // order of warps and of lanes within each phase: schedule().
  const unsigned warps = (n + kWarp - 1) / kWarp;
  unsigned live = n;
  while (live > 0) {
    permute(r.warp_order, warps, r.rng);
    for (const unsigned w : r.warp_order) {
      const unsigned lo = w * kWarp, hi = std::min(n, lo + kWarp);
      for (;;) {
        permute(r.lane_order, hi - lo, r.rng);
        for (const unsigned l : r.lane_order) {
          const unsigned i = lo + l;
          Fiber &f = r.fibers[i];
          if (f.state != kReady) continue;
          r.cur = &f;
          to_fiber(&f);
          r.cur = nullptr;
          if (f.state == kDone) live--;
        }
        bool all = true, any = false;
        for (unsigned i = lo; i < hi; i++) {
          all = all && (r.fibers[i].state == kAtWarp || r.fibers[i].state == kDone);
          any = any || r.fibers[i].state == kAtWarp;
        }
        if (!(all && any)) break;
        for (unsigned i = lo; i < hi; i++)
          if (r.fibers[i].state == kAtWarp) r.fibers[i].state = kReady;
      }
    }
    if (live == 0) break;
    for (unsigned i = 0; i < n; i++)
      if (r.fibers[i].state == kAtWarp) {
        r.cur = &r.fibers[i];
        fatal("divergent barrier: this thread waits in a warp shuffle while other threads of its warp wait at "
              "__syncthreads()");
      }
    for (unsigned i = 0; i < n; i++)
      if (r.fibers[i].state == kAtBlock) r.fibers[i].state = kReady;
  }
}

void run_grid(const char *where, Dim3 grid, Dim3 block, size_t smem, const std::function<void()> &body) {
  std::lock_guard<std::recursive_mutex> lock(g_mu);
  if (g_run.cur) fatal("a kernel launched from inside a kernel");
  Run &r = g_run;
  r.body = &body;
  r.where = where;
  r.grid_dim = grid;
  r.block_dim = block;
  const unsigned n = block.x * block.y * block.z;
  r.xchg.assign(n, 0);
  r.rng = schedule().seed;
  for (unsigned z = 0; z < grid.z; z++)
    for (unsigned y = 0; y < grid.y; y++)
      for (unsigned x = 0; x < grid.x; x++) {
        r.block_idx = Dim3(x, y, z);
        r.smem.assign(smem, 0xFF);
        run_block(n);
      }
  r.body = nullptr;
}

gpuError_t set_error(gpuError_t e) {
  if (e != gpuSuccess) t_last_error = e;
  return e;
}

// CUDA forbids these on a thread with an open thread-local capture, and invalidates it.
bool capture_forbids() {
  if (!t_capturing) return false;
  t_capturing->capture_invalid = true;
  return true;
}

FfsEmuStream *stream_of(gpuStream_t s) { return s ? s : &g_default_stream; }

}  // namespace

const Dim3 &thread_idx() { return g_run.cur->tid; }
const Dim3 &block_idx() { return g_run.block_idx; }
const Dim3 &block_dim() { return g_run.block_dim; }
const Dim3 &grid_dim() { return g_run.grid_dim; }
unsigned char *dynamic_smem() { return g_run.smem.data(); }
void sync_threads() { yield(kAtBlock); }
void sync_warp() { yield(kAtWarp); }

uint64_t warp_exchange(uint64_t v, int lane_xor, int lane_up) {
  Run &r = g_run;
  Fiber *f = r.cur;
  if (!f) fatal("a warp shuffle outside a kernel");
  const unsigned lane = f->linear % kWarp, base = f->linear - lane;
  r.xchg[f->linear] = v;
  yield(kAtWarp);  // every live lane has stored its value
  f = r.cur;
  uint64_t out = v;
  const int src = lane_up ? static_cast<int>(lane) - lane_up : static_cast<int>(lane ^ static_cast<unsigned>(lane_xor));
  if (src >= 0 && src < kWarp) {
    const unsigned at = base + static_cast<unsigned>(src);
    if (at >= r.fibers.size() || at >= r.xchg.size() || r.fibers[at].state == kDone)
      fatal("a shuffle reads a lane that has exited or does not exist");
    out = r.xchg[at];
  }
  yield(kAtWarp);  // every live lane has read before any slot is written again
  return out;
}

std::atomic<bool> g_fail_captured_launch{false};
void fail_next_captured_launch() { g_fail_captured_launch = true; }

void enqueue(gpuStream_t s, std::function<void()> work) {
  FfsEmuStream *st = stream_of(s);
  if (st->capture) {
    st->capture->ops.push_back(std::move(work));
    return;
  }
  work();
}

void launch_grid(const void *kernel, const char *where, Dim3 grid, Dim3 block, size_t smem, gpuStream_t s,
                 std::function<void()> body) {
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.y > 65535 || grid.z > 65535) {
    std::fprintf(stderr, "gpu emulator: invalid launch configuration for %s: grid (%u,%u,%u) block (%u,%u,%u)\n", where,
                 grid.x, grid.y, grid.z, block.x, block.y, block.z);
    set_error(gpuErrorInvalidConfiguration);
    return;
  }
  size_t limit = kDefaultSmem;
  {
    std::lock_guard<std::recursive_mutex> lock(g_mu);
    auto it = g_smem_limit.find(kernel);
    if (it != g_smem_limit.end()) limit = std::max<size_t>(limit, static_cast<size_t>(it->second));
  }
  if (smem > limit) {
    std::fprintf(stderr, "gpu emulator: %s asks for %zu bytes of dynamic shared memory, its limit is %zu\n", where, smem,
                 limit);
    set_error(gpuErrorInvalidValue);
    return;
  }
  if (FfsEmuStream *st = stream_of(s); st->capture && g_fail_captured_launch.exchange(false)) {
    st->capture_invalid = true;
    set_error(gpuErrorStreamCaptureInvalidated);
    return;
  }
  std::string site(where);
  enqueue(s, [site, grid, block, smem, body = std::move(body)] { run_grid(site.c_str(), grid, block, smem, body); });
}

}  // namespace ffspec::emu

using namespace ffspec::emu;

// gemm.cu loads cuBLAS from $FFS_CUBLAS_LIBRARY first: in a process running the emulator that
// must be this library (its emulated entry points), whatever the environment says.
__attribute__((constructor)) static void ffs_emu_point_cublas_here() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void *>(&ffs_emu_point_cublas_here), &info) && info.dli_fname)
    setenv("FFS_CUBLAS_LIBRARY", info.dli_fname, 1);
}

const char *gpuGetErrorString(gpuError_t e) {
  switch (e) {
    case gpuSuccess: return "no error (GPU emulator)";
    case gpuErrorInvalidValue: return "invalid argument (GPU emulator)";
    case gpuErrorMemoryAllocation: return "out of memory (GPU emulator)";
    case gpuErrorInvalidConfiguration: return "invalid configuration argument (GPU emulator)";
    case gpuErrorInsufficientDriver: return "CUDA driver version is insufficient (GPU emulator)";
    case gpuErrorNotSupported: return "operation not supported (GPU emulator)";
    case gpuErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing (GPU emulator)";
    case gpuErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture (GPU emulator)";
  }
  return "unknown error (GPU emulator)";
}

gpuError_t gpuGetLastError() {
  const gpuError_t e = t_last_error;
  t_last_error = gpuSuccess;
  return e;
}
gpuError_t gpuPeekAtLastError() { return t_last_error; }
gpuError_t gpuGetDeviceCount(int *n) {
  *n = 1;
  return gpuSuccess;
}
gpuError_t gpuSetDevice(int d) { return d == 0 ? gpuSuccess : set_error(gpuErrorInvalidValue); }
gpuError_t gpuGetDevice(int *d) {
  *d = 0;
  return gpuSuccess;
}
gpuError_t gpuDeviceGetAttribute(int *v, gpuDeviceAttr a, int d) {
  if (d != 0) return set_error(gpuErrorInvalidValue);
  if (a == gpuDevAttrMultiProcessorCount) *v = kSMs;
  else if (a == gpuDevAttrMaxSharedMemoryPerBlockOptin) *v = FFS_GPU_EMU_SMEM_MAX;
  else return set_error(gpuErrorInvalidValue);
  return gpuSuccess;
}
gpuError_t gpuMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  *total_bytes = page * static_cast<size_t>(sysconf(_SC_PHYS_PAGES));
  *free_bytes = page * static_cast<size_t>(sysconf(_SC_AVPHYS_PAGES));
  return gpuSuccess;
}
gpuError_t gpuGetDeviceProperties(gpuDeviceProp_t *p, int d) {
  if (d != 0) return set_error(gpuErrorInvalidValue);
  std::memset(p, 0, sizeof(*p));
  std::snprintf(p->name, sizeof(p->name), "flexflow_spec CPU emulator (%s)",
                kWarp == 64 ? "wave64, MI300X-like" : "warp32, H100-like");
  p->multiProcessorCount = kSMs;
  size_t fr;
  gpuMemGetInfo(&fr, &p->totalGlobalMem);
  p->sharedMemPerBlockOptin = kMaxSmem;
  p->major = 9;
  p->minor = 0;
  return gpuSuccess;
}
gpuError_t gpuDeviceSynchronize() { return capture_forbids() ? set_error(gpuErrorStreamCaptureUnsupported) : gpuSuccess; }

gpuError_t gpuMalloc(void **p, size_t n) {
  if (capture_forbids()) return set_error(gpuErrorStreamCaptureUnsupported);
  void *m = std::aligned_alloc(256, std::max<size_t>(256, (n + 255) / 256 * 256));
  if (!m) return set_error(gpuErrorMemoryAllocation);
  std::memset(m, 0xFF, n);
  std::lock_guard<std::recursive_mutex> lock(g_mu);
  g_allocs[m] = n;
  *p = m;
  return gpuSuccess;
}
gpuError_t gpuFree(void *p) {
  if (capture_forbids()) return set_error(gpuErrorStreamCaptureUnsupported);
  if (!p) return gpuSuccess;
  std::lock_guard<std::recursive_mutex> lock(g_mu);
  if (!g_allocs.erase(p)) return set_error(gpuErrorInvalidValue);
  std::free(p);
  return gpuSuccess;
}
gpuError_t gpuMallocHost(void **p, size_t n) {
  if (capture_forbids()) return set_error(gpuErrorStreamCaptureUnsupported);
  *p = std::malloc(std::max<size_t>(n, 1));
  return *p ? gpuSuccess : set_error(gpuErrorMemoryAllocation);
}
gpuError_t gpuFreeHost(void *p) {
  std::free(p);
  return gpuSuccess;
}
gpuError_t gpuMemcpy(void *dst, const void *src, size_t n, gpuMemcpyKind) {
  if (capture_forbids()) return set_error(gpuErrorStreamCaptureUnsupported);
  if (n) std::memmove(dst, src, n);
  return gpuSuccess;
}
gpuError_t gpuMemcpyAsync(void *dst, const void *src, size_t n, gpuMemcpyKind, gpuStream_t s) {
  enqueue(s, [dst, src, n] {
    if (n) std::memmove(dst, src, n);
  });
  return gpuSuccess;
}
gpuError_t gpuMemset(void *p, int v, size_t n) {
  if (capture_forbids()) return set_error(gpuErrorStreamCaptureUnsupported);
  std::memset(p, v, n);
  return gpuSuccess;
}
gpuError_t gpuMemsetAsync(void *p, int v, size_t n, gpuStream_t s) {
  enqueue(s, [p, v, n] { std::memset(p, v, n); });
  return gpuSuccess;
}
gpuError_t gpuStreamCreateWithFlags(gpuStream_t *s, unsigned) {
  *s = new FfsEmuStream;
  return gpuSuccess;
}
gpuError_t gpuStreamDestroy(gpuStream_t s) {
  delete s;
  return gpuSuccess;
}
gpuError_t gpuStreamSynchronize(gpuStream_t s) {
  if (capture_forbids() || stream_of(s)->capture) return set_error(gpuErrorStreamCaptureUnsupported);
  return gpuSuccess;
}
gpuError_t gpuEventCreate(gpuEvent_t *e) {
  *e = new FfsEmuEvent;
  return gpuSuccess;
}
gpuError_t gpuEventCreateWithFlags(gpuEvent_t *e, unsigned) { return gpuEventCreate(e); }
gpuError_t gpuEventRecord(gpuEvent_t e, gpuStream_t s) {
  enqueue(s, [e] { e->t = std::chrono::steady_clock::now(); });
  return gpuSuccess;
}
gpuError_t gpuEventSynchronize(gpuEvent_t) { return capture_forbids() ? set_error(gpuErrorStreamCaptureUnsupported) : gpuSuccess; }
gpuError_t gpuEventElapsedTime(float *ms, gpuEvent_t a, gpuEvent_t b) {
  *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
  return gpuSuccess;
}
gpuError_t gpuEventDestroy(gpuEvent_t e) {
  delete e;
  return gpuSuccess;
}
gpuError_t gpuStreamBeginCapture(gpuStream_t s, gpuStreamCaptureMode) {
  FfsEmuStream *st = stream_of(s);
  if (!s || st->capture || t_capturing) return set_error(gpuErrorStreamCaptureUnsupported);
  st->capture = new FfsEmuGraph;
  st->capture_invalid = false;
  t_capturing = st;
  return gpuSuccess;
}
gpuError_t gpuStreamEndCapture(gpuStream_t s, gpuGraph_t *g) {
  FfsEmuStream *st = stream_of(s);
  if (!st->capture) return set_error(gpuErrorInvalidValue);
  FfsEmuGraph *graph = st->capture;
  st->capture = nullptr;
  if (t_capturing == st) t_capturing = nullptr;
  if (st->capture_invalid) {
    delete graph;
    *g = nullptr;
    return set_error(gpuErrorStreamCaptureInvalidated);
  }
  *g = graph;
  return gpuSuccess;
}
gpuError_t gpuGraphInstantiate(gpuGraphExec_t *x, gpuGraph_t g, unsigned long long) {
  if (!g) return set_error(gpuErrorInvalidValue);
  *x = new FfsEmuGraph(*g);
  return gpuSuccess;
}
gpuError_t gpuGraphLaunch(gpuGraphExec_t x, gpuStream_t s) {
  if (!x) return set_error(gpuErrorInvalidValue);
  for (const auto &op : x->ops) enqueue(s, op);
  return gpuSuccess;
}
gpuError_t gpuGraphExecDestroy(gpuGraphExec_t x) {
  delete x;
  return gpuSuccess;
}
gpuError_t gpuGraphDestroy(gpuGraph_t g) {
  delete g;
  return gpuSuccess;
}
gpuError_t gpuFuncSetAttribute(const void *kernel, gpuFuncAttribute a, int v) {
  if (a != gpuFuncAttributeMaxDynamicSharedMemorySize || v < 0 || static_cast<size_t>(v) > kMaxSmem)
    return set_error(gpuErrorInvalidValue);
  std::lock_guard<std::recursive_mutex> lock(g_mu);
  g_smem_limit[kernel] = v;
  return gpuSuccess;
}
