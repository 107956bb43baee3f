#include "runtime/engine.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <set>
#include <mutex>
#include <thread>

#include "legion.h"
#include "ops/llama_forward.h"
#include "runtime/engine_gpu.h"
#include "serve/sampling.h"
#include "serve/spec_manager.h"
#include "util/error.h"
#include "util/log.h"
#include "weights/checkpoint.h"

// The GPU task variants: with the GPU forward pass built and a Legion built with CUDA; or, in
// the tests' build over the GPU emulator (FFS_GPU_EMU_ENGINE, libflexflow_spec_gpuemu), on
// Legion CPU processors: ff.init(num_gpus=1)'s -ll:gpu/-ll:fsize are taken by the engine
// instead of Realm, the "GPU" tasks run the emulated forward pass on a CPU processor, and
// their instances (in the model's dtype, as in a framebuffer) are in system memory.
#if defined(FFS_HAVE_GPU_FORWARD) && defined(FFS_GPU_EMU_ENGINE)
#define FFS_GPU_TASKS 1
#define FFS_GPU_PROC_KIND Processor::LOC_PROC
#elif defined(FFS_HAVE_GPU_FORWARD) && defined(REALM_USE_CUDA)
#define FFS_GPU_TASKS 1
#define FFS_GPU_PROC_KIND Processor::TOC_PROC
#include "realm/cuda/cuda_module.h"
#endif

using namespace Legion;

namespace ffspec::engine {

namespace {

// STEP_TASK_ID returns drawn tokens only (a bounded future); STEP_LOGITS_TASK_ID runs the
// same code but may return logits rows, a future of unbounded size that costs Legion more.
// LOAD_WEIGHTS_TASK_ID fills the weights region from the checkpoint; being a task on a CPU
// processor like the steps, its instance is the one the step tasks then map (an inline
// mapping made the mapper create a second copy of the weights).
// The *_GPU_* tasks are the same three on a GPU processor: Legion's default mapper places
// their instances in that GPU's framebuffer, so weights and KV cache live there, and the
// weights go from the checkpoint straight into the framebuffer (no system-memory copy).
enum TaskIDs {
  TOP_LEVEL_TASK_ID = 7100,
  STEP_TASK_ID = 7101,
  STEP_LOGITS_TASK_ID = 7102,
  LOAD_WEIGHTS_TASK_ID = 7103,
  STEP_GPU_TASK_ID = 7104,
  STEP_LOGITS_GPU_TASK_ID = 7105,
  LOAD_WEIGHTS_GPU_TASK_ID = 7106,
  PREPARE_TASK_ID = 7107,
};
enum FieldIDs { FID_DATA = 101 };
constexpr size_t kBoundedResult = 64 << 10;  // bytes

// A model's Legion state; only the driver thread touches the region handles.
struct Placement {
  LogicalRegion weights = LogicalRegion::NO_REGION, kv = LogicalRegion::NO_REGION;
  size_t bytes = 0;
  bool gpu = false;            // in a GPU framebuffer, stepped by the GPU variants
  size_t esize = sizeof(float);  // bytes per element of both regions (fp16/bf16 on the GPU: 2)
};

struct State {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::function<void(Context, Runtime *)>> jobs;
  bool stop = false;
  bool started = false;
  bool stopped = false;
  std::thread driver;
  std::map<int, ModelHandle *> models;  // registry read by step tasks
  std::map<int, Placement> placements;
  std::set<int> compiling;  // models with a compile in progress or done
  int next_id = 1;
  ffs_status_t load_status = FFS_OK;  // last failed weight load, read by the driver
  std::string load_error;
  size_t sysmem_capacity = 0;
  size_t sysmem_used = 0;
  int num_gpus = 0;         // Legion GPU processors in this process
  size_t fb_capacity = 0;   // framebuffer memory of one GPU (-ll:fsize)
  size_t fb_used = 0;
};

State &st() {
  static State s;
  return s;
}

// The CPUs this process may use, read before Legion starts. Realm pins a processor's thread
// to one core when it can reserve cores for it; the BLAS and OpenMP threads a step task
// starts would inherit that single core (measured: 10x slower steps with -ll:cpu 1 on 2
// cores). Our compute tasks therefore run with the process's own CPU set.
cpu_set_t g_process_cpus;
bool g_have_process_cpus = false;

void use_all_process_cpus() {
  thread_local bool done = false;
  if (done || !g_have_process_cpus) return;
  done = true;
  cpu_set_t now;
  if (sched_getaffinity(0, sizeof(now), &now) == 0 && !CPU_EQUAL(&now, &g_process_cpus))
    sched_setaffinity(0, sizeof(g_process_cpus), &g_process_cpus);
}

ModelHandle *lookup(int id) {
  std::lock_guard<std::mutex> lock(st().mu);
  auto it = st().models.find(id);
  return it == st().models.end() ? nullptr : it->second;
}

void wake() {
  st().cv.notify_all();
}

double now_us() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// A step's batch: its task argument, or (pipelined launches, whose argument is the model's
// id) the model's batch in the plan of its first future, made by the prepare task that ran
// after the previous step. *absent: the plan does not run this model, so the task does nothing.
StepBatch batch_of(const Task *task, bool *absent) {
  *absent = false;
  if (task->futures.empty()) return StepBatch::deserialize(task->args, task->arglen);
  int32_t id;
  FFS_CHECK(task->arglen == sizeof(id), FFS_ERR_INTERNAL, "a pipelined step task without its model id");
  std::memcpy(&id, task->args, sizeof(id));
  const StepPlan plan = task->futures[0].get_result<StepPlan>();
  const std::vector<uint8_t> *bytes = plan.find(id);
  if (bytes) return StepBatch::deserialize(bytes->data(), bytes->size());
  *absent = true;
  StepBatch none;
  none.model_id = id;
  return none;
}

// What a step task returns for a model its plan does not run.
StepResult idle_step() {
  StepResult r;
  r.ok = 1;
  return r;
}

// A step task's batch and model (both variants); nullptr when its plan does not run the model.
ModelHandle *step_input(const Task *task, StepBatch *b) {
  bool absent;
  *b = batch_of(task, &absent);
  if (absent) return nullptr;
  ModelHandle *m = lookup(b->model_id);
  FFS_CHECK(m, FFS_ERR_INTERNAL, "step for an unknown model");
  return m;
}

// ---- the step task -----------------------------------------------------------------------

StepResult run_step(const Task *task, const std::vector<PhysicalRegion> &regions) {
  use_all_process_cpus();
  const auto t0 = std::chrono::steady_clock::now();
  const double start = now_us();
  StepBatch b;
  ModelHandle *m = step_input(task, &b);
  if (!m) return idle_step();
  const FieldAccessor<LEGION_READ_ONLY, float, 1, coord_t, Realm::AffineAccessor<float, 1, coord_t>> w(regions[0], FID_DATA);
  const FieldAccessor<LEGION_READ_WRITE, float, 1, coord_t, Realm::AffineAccessor<float, 1, coord_t>> kv(regions[1], FID_DATA);
  ModelView view{&m->config, &m->layout, m->inv_freq.data(), w.ptr(Point<1>(0)), kv.ptr(Point<1>(0)),
                 m->limits.max_requests_per_batch, m->limits.max_seq_length};
  const int V = m->config.vocab_size;
  thread_local std::vector<float> logits;
  logits.resize(b.num_rows() * static_cast<size_t>(V));
  llama_forward_cpu(view, b, logits.data());
  StepResult r;
  result_from_logits(logits.data(), V, b, &r);
  r.compute_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  r.start_us = start;
  r.end_us = now_us();
  r.ok = 1;
  return r;
}

// Exceptions must not cross into Legion: a failed step returns no tokens and the driver
// fails the requests in it, with the message logged.
StepResult step_task(const Task *task, const std::vector<PhysicalRegion> &regions, Context, Runtime *) {
  try {
    return run_step(task, regions);
  } catch (const std::exception &e) {
    FFS_LOG(::ffspec::log::Level::Error, "step", "step failed: " << e.what());
    StepResult r;
    r.error = e.what();
    return r;
  }
}

// A weight-loading task's frame: finds the model named by the argument, runs fill, and
// records a failure for do_compile (exceptions must not cross into Legion): 0 or 1.
int32_t run_load(const Task *task, const std::function<void(ModelHandle *)> &fill) {
  int id;
  std::memcpy(&id, task->args, sizeof(id));
  try {
    ModelHandle *m = lookup(id);
    FFS_CHECK(m && m->checkpoint, FFS_ERR_INTERNAL, "load for an unknown model");
    fill(m);
    return 0;
  } catch (const Error &e) {
    std::lock_guard<std::mutex> lock(st().mu);
    st().load_status = e.status();
    st().load_error = e.what();
  } catch (const std::exception &e) {
    std::lock_guard<std::mutex> lock(st().mu);
    st().load_status = FFS_ERR_INTERNAL;
    st().load_error = e.what();
  }
  return 1;
}

int32_t load_weights_task(const Task *task, const std::vector<PhysicalRegion> &regions, Context, Runtime *) {
  use_all_process_cpus();
  return run_load(task, [&](ModelHandle *m) {
    const FieldAccessor<LEGION_WRITE_DISCARD, float, 1, coord_t, Realm::AffineAccessor<float, 1, coord_t>> acc(
        regions[0], FID_DATA);
    load_weights(*m->checkpoint, m->config, m->layout, m->data_type, acc.ptr(Point<1>(0)));
  });
}

// The pipelined driver's prepare task: applies the previous step's results and plans the
// next step, whose step tasks (launched before this ran) read the plan as their future.
// Argument: the driven model's id, then the models the previous step launched a task for.
// Futures (absent for a chain's first prepare): the previous plan, then those tasks' results.
// It runs as soon as that step finishes, while the next step is already launched and mapped.
StepPlan prepare_task(const Task *task, const std::vector<PhysicalRegion> &, Context, Runtime *) {
  std::vector<int32_t> args(task->arglen / sizeof(int32_t));
  std::memcpy(args.data(), task->args, args.size() * sizeof(int32_t));
  const int id = args.at(0);
  const std::vector<int32_t> launched(args.begin() + 1, args.end());
  StepPlan out;
  ModelHandle *m = lookup(id);
  if (!m || !m->manager) return out;  // freed meanwhile: an empty plan
  std::vector<StepBatch> prev;
  bool applied = false;
  try {
    if (!task->futures.empty()) {
      const StepPlan plan = task->futures[0].get_result<StepPlan>();
      std::vector<StepResult> results;
      std::string why;  // the first problem: the whole step's requests fail, as in the synchronous loop
      for (const std::vector<uint8_t> &bytes : plan.batches) {
        prev.push_back(StepBatch::deserialize(bytes.data(), bytes.size()));
        const StepBatch &b = prev.back();
        const auto at = std::find(launched.begin(), launched.end(), b.model_id);
        if (at == launched.end()) {
          if (why.empty()) why = "a model this step needs was freed (an SSM freed before its LLM?)";
          continue;
        }
        results.push_back(task->futures.at(1 + (at - launched.begin())).get_result<StepResult>());
        const StepResult &r = results.back();
        if (!why.empty()) continue;
        if (!r.ok)
          why = "the step failed: " + (r.error.empty() ? std::string("see the log") : r.error);
        else if (r.tokens.size() != b.num_rows())
          why = "the step returned " + std::to_string(r.tokens.size()) + " tokens for " +
                std::to_string(b.num_rows()) + " rows";
      }
      if (!prev.empty()) {
        if (why.empty())
          m->manager->update(prev, results);
        else
          m->manager->fail_steps(prev, why);
      }
    }
    applied = true;
    for (StepBatch &b : m->manager->next_steps()) {
      if (b.model_id < 0) b.model_id = id;
      out.batches.push_back(b.serialize());
    }
  } catch (const std::exception &e) {
    FFS_LOG(::ffspec::log::Level::Error, "step", "preparing a step failed: " << e.what());
    // Nothing is lost silently: the requests of the step it could not apply fail, or, if
    // scheduling itself failed, every request of the model (it would fail again each step).
    if (!applied && !prev.empty())
      m->manager->fail_steps(prev, e.what());
    else
      m->manager->fail_all(std::string("scheduling failed: ") + e.what());
    out.batches.clear();
  }
  return out;
}

#ifdef FFS_GPU_TASKS
// The device address of a 1-D instance of FID_DATA with esize-byte elements.
template <PrivilegeMode PM>
void *instance_base(const PhysicalRegion &pr, size_t esize) {
  if (esize == 2) {
    const FieldAccessor<PM, uint16_t, 1, coord_t, Realm::AffineAccessor<uint16_t, 1, coord_t>> a(pr, FID_DATA);
    return const_cast<void *>(static_cast<const void *>(a.ptr(Point<1>(0))));
  }
  const FieldAccessor<PM, float, 1, coord_t, Realm::AffineAccessor<float, 1, coord_t>> a(pr, FID_DATA);
  return const_cast<void *>(static_cast<const void *>(a.ptr(Point<1>(0))));
}

#ifdef FFS_GPU_EMU_ENGINE
int task_device(const Task *) { return 0; }  // the emulator's one device
void *task_stream() { return engine_gpu::thread_stream(); }
void gpu_task_begin() {}
#else
int task_device(const Task *task) {
  int device = 0;
  if (!Realm::Cuda::get_cuda_device_id(task->current_proc, &device))
    fail(FFS_ERR_INTERNAL, "a GPU task ran on a processor that is not a CUDA GPU");
  return device;
}

// Everything a GPU task enqueues goes on Realm's stream for the task, and it waits for it
// before returning, so Realm need not synchronize the whole context afterwards. Said first
// thing in every GPU task: an idle step or an early error would otherwise leave Realm's
// default (a whole-context sync at the task's end; the runtime hijack is off).
void gpu_task_begin() { Realm::Cuda::set_task_ctxsync_required(false); }
void *task_stream() { return Realm::Cuda::get_task_cuda_stream(); }
#endif

StepResult gpu_step_task(const Task *task, const std::vector<PhysicalRegion> &regions, Context, Runtime *) {
  gpu_task_begin();
  try {
    const double start = now_us();
    StepBatch b;
    ModelHandle *m = step_input(task, &b);
    if (!m) return idle_step();
    const size_t es = engine_gpu::storage_bytes(m->data_type);
    StepResult r = engine_gpu::step(m, task_device(task), b, instance_base<LEGION_READ_ONLY>(regions[0], es),
                                    instance_base<LEGION_READ_WRITE>(regions[1], es), task_stream());
    r.start_us = start;
    r.end_us = now_us();
    return r;
  } catch (const std::exception &e) {
    FFS_LOG(::ffspec::log::Level::Error, "step", "GPU step failed: " << e.what());
    StepResult r;
    r.error = e.what();
    return r;
  }
}

int32_t gpu_load_weights_task(const Task *task, const std::vector<PhysicalRegion> &regions, Context, Runtime *) {
  gpu_task_begin();
  // Realm pins the GPU processor's thread to one core; the loader's conversion threads
  // inherit the mask (see use_all_process_cpus).
  use_all_process_cpus();
  return run_load(task, [&](ModelHandle *m) {
    engine_gpu::load_weights(m, task_device(task),
                             instance_base<LEGION_WRITE_DISCARD>(regions[0], engine_gpu::storage_bytes(m->data_type)),
                             task_stream());
  });
}
#endif

// ---- regions ------------------------------------------------------------------------------

LogicalRegion make_region(Context ctx, Runtime *rt, size_t n, size_t esize, const std::string &name) {
  IndexSpace is = rt->create_index_space(ctx, Rect<1>(0, static_cast<coord_t>(n) - 1));
  FieldSpace fs = rt->create_field_space(ctx);
  {
    FieldAllocator fa = rt->create_field_allocator(ctx, fs);
    fa.allocate_field(esize, FID_DATA);
  }
  LogicalRegion lr = rt->create_logical_region(ctx, is, fs);
  rt->attach_name(lr, name.c_str());
  return lr;
}

void destroy_region(Context ctx, Runtime *rt, LogicalRegion lr) {
  if (lr == LogicalRegion::NO_REGION) return;
  rt->destroy_logical_region(ctx, lr);
  rt->destroy_field_space(ctx, lr.get_field_space());
  rt->destroy_index_space(ctx, lr.get_index_space());
}

Future launch_step(Context ctx, Runtime *rt, const Placement &p, const StepBatch &b);

void do_compile(Context ctx, Runtime *rt, ModelHandle *m) {
  Placement p;
  {
    std::lock_guard<std::mutex> lock(st().mu);
    p.gpu = st().num_gpus > 0;
  }
  if (p.gpu) {
    const std::string why = engine_gpu::unsupported(m);
    if (!why.empty()) fail(FFS_ERR_UNSUPPORTED, why);
  }
  // On the GPU the regions hold the model's own precision (fp16/bf16: 2 bytes); the CPU
  // kernels compute on fp32 values already rounded to it.
  p.esize = p.gpu ? engine_gpu::storage_bytes(m->data_type) : sizeof(float);
  const size_t wbytes = m->layout.total * p.esize;
  const size_t kv_elems = static_cast<size_t>(m->config.num_layers) * 2 * m->limits.max_requests_per_batch *
                          m->limits.max_seq_length * m->config.kv_dim();
  const size_t kvbytes = kv_elems * p.esize;
  p.bytes = wbytes + kvbytes;
  {
    std::lock_guard<std::mutex> lock(st().mu);
    const size_t need = p.bytes, cap = p.gpu ? st().fb_capacity : st().sysmem_capacity;
    const size_t used = p.gpu ? st().fb_used : st().sysmem_used;
    // Leave room for Legion's own instances and future buffers, and for its eager pool: Legion
    // sets LEGION_DEFAULT_EAGER_ALLOC_PERCENTAGE (1 %) of every memory aside, and an instance
    // that does not fit the rest fails in the mapper (an abort), not here.
    const size_t reserved = cap / 100 + (64ull << 20);
    const size_t usable = cap > reserved ? cap - reserved : 0;
    if (used + need > usable)
      fail(FFS_ERR_OUT_OF_MEMORY,
           "model " + m->path + " needs " + std::to_string(need >> 20) + " MiB of Legion " +
               (p.gpu ? "GPU framebuffer" : "system") + " memory (weights " + std::to_string(wbytes >> 20) +
               " MiB + KV cache " + std::to_string(kvbytes >> 20) + " MiB) but " +
               std::to_string((usable > used ? usable - used : 0) >> 20) + " MiB of the " + std::to_string(cap >> 20) +
               " MiB pool are free: " +
               (p.gpu ? "raise ff.init(memory_per_gpu=...) (Legion -ll:fsize)"
                      : "raise ff.init(system_memory=...) (Legion -ll:csize)") +
               ", or lower max_seq_length / max_requests_per_batch");
    (p.gpu ? st().fb_used : st().sysmem_used) += need;
  }
  auto release_memory = [&p] {
    std::lock_guard<std::mutex> lock(st().mu);
    (p.gpu ? st().fb_used : st().sysmem_used) -= p.bytes;
  };
  const std::string tag = "model" + std::to_string(m->id);
  p.weights = make_region(ctx, rt, m->layout.total, p.esize, tag + ".weights");
  p.kv = make_region(ctx, rt, kv_elems, p.esize, tag + ".kv_cache");
  try {
    TaskLauncher tl(p.gpu ? LOAD_WEIGHTS_GPU_TASK_ID : LOAD_WEIGHTS_TASK_ID, UntypedBuffer(&m->id, sizeof(m->id)));
    tl.add_region_requirement(RegionRequirement(p.weights, LEGION_WRITE_DISCARD, LEGION_EXCLUSIVE, p.weights));
    tl.add_field(0, FID_DATA);
    if (rt->execute_task(ctx, tl).get_result<int32_t>() != 0) {
      std::lock_guard<std::mutex> lock(st().mu);
      fail(st().load_status, st().load_error);
    }
    // Zeros (as bits, so any element type): attention reads whole tiles and multiplies the
    // positions it must not see by 0, so they must not hold NaN bits.
    if (p.esize == 2)
      rt->fill_field<uint16_t>(ctx, p.kv, p.kv, FID_DATA, 0);
    else
      rt->fill_field<float>(ctx, p.kv, p.kv, FID_DATA, 0.0f);
  } catch (...) {
    destroy_region(ctx, rt, p.weights);
    destroy_region(ctx, rt, p.kv);
    release_memory();
    throw;
  }
  m->checkpoint.reset();  // weights now live in the region; unmap the files
  {
    std::lock_guard<std::mutex> lock(st().mu);
    st().placements[m->id] = p;
  }
  // An empty step maps both regions now (creating the KV cache instance and running its
  // fill) so the first request does not pay for it (~150 ms for SmolLM2). On the GPU it also
  // sets up the step's scratch and loads cuBLAS, so a missing library fails compile().
  StepBatch empty;
  empty.model_id = m->id;
  const StepResult r = launch_step(ctx, rt, p, empty).get_result<StepResult>();
  if (!r.ok) {
    {
      std::lock_guard<std::mutex> lock(st().mu);
      st().placements.erase(m->id);
    }
    destroy_region(ctx, rt, p.weights);
    destroy_region(ctx, rt, p.kv);
    release_memory();
    engine_gpu::release(m->id);
    fail(FFS_ERR_INTERNAL, "model " + m->path + " could not run its first step: " +
                               (r.error.empty() ? std::string("see the log") : r.error));
  }
}

// A step's regions: the weights read-only, the KV cache read-write.
void add_step_regions(TaskLauncher &tl, const Placement &p) {
  tl.add_region_requirement(RegionRequirement(p.weights, LEGION_READ_ONLY, LEGION_EXCLUSIVE, p.weights));
  tl.add_field(0, FID_DATA);
  tl.add_region_requirement(RegionRequirement(p.kv, LEGION_READ_WRITE, LEGION_EXCLUSIVE, p.kv));
  tl.add_field(1, FID_DATA);
}

Future launch_step(Context ctx, Runtime *rt, const Placement &p, const StepBatch &b) {
  bool logits = false;
  size_t bytes = 96 + StepResult::kMaxError + b.num_rows() * sizeof(int32_t);
  for (const SampleSpec &s : b.samples) {
    logits = logits || s.want_logits;
    bytes += static_cast<size_t>(s.num_topk) * (sizeof(int32_t) + sizeof(float));
  }
  logits = logits || bytes > kBoundedResult;
  const std::vector<uint8_t> args = b.serialize();
  const TaskID id = p.gpu ? (logits ? STEP_LOGITS_GPU_TASK_ID : STEP_GPU_TASK_ID)
                          : (logits ? STEP_LOGITS_TASK_ID : STEP_TASK_ID);
  TaskLauncher tl(id, UntypedBuffer(args.data(), args.size()));
  add_step_regions(tl, p);
  return rt->execute_task(ctx, tl);
}

// ---- the pipelined driver ------------------------------------------------------------------
// Per driven model (a plain one, or a speculative LLM with its SSMs), the chain
// prepare(N) -> step(N) -> prepare(N+1) -> step(N+1) -> ..., each link waiting on the previous
// one through futures. The driver launches up to kPipelineDepth steps ahead, so Legion has
// analysed and mapped step N+1 while step N runs, and the only work between two steps is the
// prepare task: apply N's results, plan N+1. Which models step N+1 runs (a speculative LLM
// verifying, or its SSMs drafting) is only known when its prepare runs, so a step launches one
// task for every model of the chain; those its plan does not run return at once.
struct Pipe {
  struct Flight {
    Future plan;
    std::vector<int32_t> members;  // the models a step task was launched for
    std::vector<Future> results;   // theirs, in that order
    double launched_us = 0;
  };
  std::deque<Flight> flights;  // steps launched whose results the driver has not read (oldest first)
  bool have_next = false;      // a prepare whose plan no step has taken yet
  Future next_plan;
  bool have_last = false;      // the newest step: the next prepare's inputs
  Flight last;
  double prev_end_us = 0;      // end of the step read last
};
constexpr size_t kPipelineDepth = 2;
std::map<int, Pipe> g_pipes;  // driver thread only
// Whether the chains are used. Measured on the 2-core CPU machine they do not pay (the
// prepare task and Legion's analysis of the next step compete with the step's own threads:
// 0.6-1.0 ms between steps against 0.4-0.5 synchronous), so they are the default only with
// GPUs, where the step runs on the device and the host cores are free.
// FFS_STEP_PIPELINE=1 / 0 forces them on or off.
bool g_pipeline = false;

void launch_prepare(Context ctx, Runtime *rt, ModelHandle *m, Pipe &pp) {
  std::vector<int32_t> args{m->id};
  if (pp.have_last) args.insert(args.end(), pp.last.members.begin(), pp.last.members.end());
  TaskLauncher tl(PREPARE_TASK_ID, UntypedBuffer(args.data(), args.size() * sizeof(int32_t)));
  if (pp.have_last) {
    tl.add_future(pp.last.plan);
    for (const Future &f : pp.last.results) tl.add_future(f);
  }
  pp.next_plan = rt->execute_task(ctx, tl);
  pp.have_next = true;
  pp.have_last = false;  // applying that step is now this prepare's job
}

// One step of model m's chain whose plan is a future: a task per model of the chain still
// placed (an SSM freed before its LLM is not; the prepare then fails the requests that needed
// it), each the unbounded-result variant, since whether a row wants logits is not known yet.
Pipe::Flight launch_steps_from(Context ctx, Runtime *rt, ModelHandle *m, const Future &plan) {
  Pipe::Flight f;
  f.plan = plan;
  f.launched_us = now_us();
  for (const int id : m->manager->model_ids()) {
    Placement p;
    {
      std::lock_guard<std::mutex> lock(st().mu);
      auto it = st().placements.find(id);
      if (it == st().placements.end()) continue;
      p = it->second;
    }
    const int32_t arg = id;
    TaskLauncher tl(p.gpu ? STEP_LOGITS_GPU_TASK_ID : STEP_LOGITS_TASK_ID, UntypedBuffer(&arg, sizeof(arg)));
    tl.add_future(plan);
    add_step_regions(tl, p);
    f.members.push_back(id);
    f.results.push_back(rt->execute_task(ctx, tl));
  }
  return f;
}

bool plan_is_empty(const Future &f) { return f.get_result<StepPlan>().num_tokens() == 0; }

// Launches what model m's chain can take now; returns the driver time it spent (us).
double pump(Context ctx, Runtime *rt, ModelHandle *m) {
  const double t0 = now_us();
  Pipe &pp = g_pipes[m->id];
  bool work = m->manager->has_work();
  if (pp.have_next && pp.flights.empty() && !work) {
    // Idle: the pending prepare (quick) came back empty and is dropped, so that a later
    // request starts a fresh chain; or it took a request that arrived meanwhile.
    if (plan_is_empty(pp.next_plan))
      pp.have_next = false;
    else
      work = true;
  }
  if (!pp.have_next && work) launch_prepare(ctx, rt, m, pp);
  while (pp.have_next && work && pp.flights.size() < kPipelineDepth) {
    pp.flights.push_back(launch_steps_from(ctx, rt, m, pp.next_plan));
    pp.last = pp.flights.back();
    pp.have_last = true;
    pp.have_next = false;
    launch_prepare(ctx, rt, m, pp);
  }
  return now_us() - t0;
}

// Reads model m's oldest step (waiting for it) and records its timing: the slowest of the
// models that ran in it, as the synchronous loop does.
void drain_one(ModelHandle *m, double driver_us) {
  Pipe &pp = g_pipes[m->id];
  if (pp.flights.empty()) return;
  const Pipe::Flight f = pp.flights.front();
  pp.flights.pop_front();
  const StepPlan plan = f.plan.get_result<StepPlan>();
  bool ran = false, failed = false;
  double compute_us = 0, start_us = 0, end_us = 0;
  for (size_t i = 0; i < f.members.size(); i++) {
    const StepResult r = f.results[i].get_result<StepResult>();
    if (!plan.find(f.members[i])) continue;
    failed = failed || !r.ok;
    start_us = ran ? std::min(start_us, r.start_us) : r.start_us;
    end_us = std::max(end_us, r.end_us);
    compute_us = std::max(compute_us, r.compute_us);
    ran = true;
  }
  const double t_read = now_us();
  if (failed || !ran || plan.num_tokens() == 0) return;  // failures are applied (and logged) by the prepare
  std::lock_guard<std::mutex> lock(st().mu);
  ModelHandle::Stats &sx = m->stats;
  sx.steps++;
  sx.compute_us += compute_us;
  // Launch (or the previous step's end, if later) to this step's end: the step plus the gap
  // Legion left before it.
  const double from = std::max(pp.prev_end_us, f.launched_us);
  sx.wall_us += end_us - from;
  sx.driver_us += driver_us + (now_us() - t_read);
  FFS_DEBUG("step", "model " << m->id << " compute_us " << compute_us << " gap_us " << start_us - from);
  pp.prev_end_us = end_us;
}

// Waits for everything model id's chain has launched and forgets it (the model is freed).
void drain_pipe(int id) {
  auto it = g_pipes.find(id);
  if (it == g_pipes.end()) return;
  for (const Pipe::Flight &f : it->second.flights)
    for (const Future &r : f.results) r.get_void_result();
  if (it->second.have_next) it->second.next_plan.get_void_result();
  g_pipes.erase(it);
}

// Waits until no task of another chain uses model id (an SSM being freed before its LLM);
// those chains go on, their results read later as usual.
void settle_pipes_using(int id) {
  for (auto &[owner, pp] : g_pipes) {
    if (owner == id) continue;
    for (const Pipe::Flight &f : pp.flights)
      for (const Future &r : f.results) r.get_void_result();
    if (pp.have_next) pp.next_plan.get_void_result();
  }
}

#ifdef FFS_GPU_EMU_ENGINE
// What ff.init asked of Realm's CUDA module, taken by the emulated engine instead.
int g_emu_gpus = 0;
size_t g_emu_fsize = 0;  // bytes

// Removes -ll:gpu, -ll:fsize and -ll:zsize (and their values) from args, keeping the GPU
// count and framebuffer size.
std::vector<std::string> take_gpu_flags(const std::vector<std::string> &args) {
  std::vector<std::string> rest;
  for (size_t i = 0; i < args.size(); i++) {
    const std::string &a = args[i];
    if ((a == "-ll:gpu" || a == "-ll:fsize" || a == "-ll:zsize") && i + 1 < args.size()) {
      const long v = std::strtol(args[i + 1].c_str(), nullptr, 10);
      if (a == "-ll:gpu") g_emu_gpus = static_cast<int>(std::min(v, 1L));  // the emulator has one device
      if (a == "-ll:fsize") g_emu_fsize = static_cast<size_t>(std::max(v, 0L)) << 20;
      i++;
      continue;
    }
    rest.push_back(a);
  }
  return rest;
}
#endif

void driver_main(std::promise<void> ready) {
  Runtime *rt = Runtime::get_runtime();
  Context ctx = rt->begin_implicit_task(TOP_LEVEL_TASK_ID, 0, Processor::LOC_PROC, "ffs_driver", true);
  {
    size_t cap = 0;
    Machine::MemoryQuery mq(Machine::get_machine());
    mq.only_kind(Memory::SYSTEM_MEM).local_address_space();
    for (Memory mem : mq) cap = std::max(cap, mem.capacity());
    Machine::ProcessorQuery pq(Machine::get_machine());
    pq.only_kind(Processor::TOC_PROC).local_address_space();
    Machine::MemoryQuery fq(Machine::get_machine());
    fq.only_kind(Memory::GPU_FB_MEM).local_address_space();
    size_t fb = 0;
    for (Memory mem : fq) fb = fb == 0 ? mem.capacity() : std::min(fb, mem.capacity());
    std::lock_guard<std::mutex> lock(st().mu);
    st().sysmem_capacity = cap;
#if defined(FFS_GPU_EMU_ENGINE)
    // The emulated GPU's "framebuffer" is a share of system memory, where its instances are.
    st().num_gpus = g_emu_gpus;
    fb = std::min(g_emu_fsize, cap);
#elif defined(FFS_GPU_TASKS)
    st().num_gpus = static_cast<int>(pq.count());
#endif
    st().fb_capacity = fb;
    const char *pipe_env = std::getenv("FFS_STEP_PIPELINE");
    g_pipeline = pipe_env && *pipe_env ? std::string(pipe_env) != "0" : st().num_gpus > 0;
  }
  ready.set_value();
  for (;;) {
    std::deque<std::function<void(Context, Runtime *)>> jobs;
    std::vector<ModelHandle *> models;
    {
      std::unique_lock<std::mutex> lock(st().mu);
      jobs.swap(st().jobs);
      if (st().stop) {
        // Nothing else runs: queued jobs fail, and so do requests still waiting for steps.
        for (auto &job : jobs) job(Context(), nullptr);
        for (auto &kv : st().models)
          if (kv.second->manager) kv.second->manager->fail_all("the runtime is shutting down");
        break;
      }
      for (auto &kv : st().models)
        if (kv.second->manager && kv.second->attached_to < 0 && st().placements.count(kv.first))
          models.push_back(kv.second);
    }
    for (auto &job : jobs) job(ctx, rt);
    // Pipelined: each model's chain of prepare and step tasks, kept launched ahead.
    std::vector<std::pair<ModelHandle *, double>> pumped;
    if (g_pipeline) {
      for (ModelHandle *m : models) pumped.emplace_back(m, pump(ctx, rt, m));
      models.clear();
    }
    // Synchronous: each manager's next step, one batch per model in it (a plain model, a
    // speculative LLM, or its SSMs drafting), launched, waited for and applied here.
    // Everything launched in one pass runs concurrently on Legion's processors.
    struct InFlight {
      ModelHandle *m;
      std::vector<StepBatch> batches;
      std::vector<Future> futures;
      std::chrono::steady_clock::time_point launched;
      double driver_us;
    };
    std::vector<InFlight> flights;
    using Clock = std::chrono::steady_clock;
    using us = std::chrono::duration<double, std::micro>;
    for (ModelHandle *m : models) {
      const auto t_sched = Clock::now();
      std::vector<StepBatch> steps;
      try {
        steps = m->manager->next_steps();
        if (steps.empty()) continue;
        InFlight fl{m, steps, {}, {}, 0.0};
        fl.launched = Clock::now();
        fl.driver_us = us(fl.launched - t_sched).count();
        for (const StepBatch &b : fl.batches) {
          Placement p;
          {
            std::lock_guard<std::mutex> lock(st().mu);
            auto it = st().placements.find(b.model_id);
            if (it == st().placements.end())
              fail(FFS_ERR_STATE, "a model this step needs was freed (an SSM freed before its LLM?)");
            p = it->second;
          }
          fl.futures.push_back(launch_step(ctx, rt, p, b));
        }
        flights.push_back(std::move(fl));
      } catch (const std::exception &e) {
        // Futures already launched for this model finish on their own; its requests fail.
        m->manager->fail_steps(steps, e.what());
      }
    }
    for (InFlight &fl : flights) {
      try {
        std::vector<StepResult> results;
        for (size_t i = 0; i < fl.futures.size(); i++) {
          results.push_back(fl.futures[i].get_result<StepResult>());
          const StepResult &r = results.back();
          if (!r.ok) fail(FFS_ERR_INTERNAL, "the step failed: " + (r.error.empty() ? std::string("see the log") : r.error));
          if (r.tokens.size() != fl.batches[i].num_rows())
            fail(FFS_ERR_INTERNAL, "the step returned " + std::to_string(r.tokens.size()) + " tokens for " +
                                       std::to_string(fl.batches[i].num_rows()) + " rows");
        }
        const auto t_done = Clock::now();
        fl.m->manager->update(fl.batches, results);
        std::lock_guard<std::mutex> lock(st().mu);
        ModelHandle::Stats &sx = fl.m->stats;
        sx.steps++;
        sx.wall_us += us(t_done - fl.launched).count();
        double slowest = 0;
        for (const StepResult &r : results) slowest = std::max(slowest, r.compute_us);
        sx.compute_us += slowest;
        FFS_DEBUG("step", "model " << fl.m->id << " wall_us " << us(t_done - fl.launched).count()
                                   << " compute_us " << slowest);
        sx.driver_us += fl.driver_us + us(Clock::now() - t_done).count();
      } catch (const std::exception &e) {
        fl.m->manager->fail_steps(fl.batches, e.what());
      }
    }
    bool chains_busy = false;
    for (auto &[m, driver_us] : pumped) {
      drain_one(m, driver_us);
      chains_busy = chains_busy || !g_pipes[m->id].flights.empty();
    }
    if (flights.empty() && !chains_busy) {
      std::unique_lock<std::mutex> lock(st().mu);
      st().cv.wait_for(lock, std::chrono::milliseconds(50), [] {
        if (st().stop || !st().jobs.empty()) return true;
        for (auto &kv : st().models)
          if (kv.second->manager && st().placements.count(kv.first) && kv.second->manager->has_work()) return true;
        return false;
      });
    }
  }
  // The chains' futures must go before the runtime does (their destructors call into it).
  while (!g_pipes.empty()) drain_pipe(g_pipes.begin()->first);
  // No step runs any more: free the GPU objects while Realm's streams and context still exist.
  engine_gpu::release_all();
  rt->finish_implicit_task(ctx);
}

// Runs fn on the driver thread (inside the implicit top-level task) and waits for it.
void run_on_driver(std::function<void(Context, Runtime *)> fn) {
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> fut = done->get_future();
  {
    std::lock_guard<std::mutex> lock(st().mu);
    if (!st().started || st().stopped) fail(FFS_ERR_STATE, "the runtime is not running: call ff.init() first");
    st().jobs.push_back([fn = std::move(fn), done](Context ctx, Runtime *rt) {
      try {
        if (!rt) fail(FFS_ERR_STATE, "the runtime is shutting down");
        fn(ctx, rt);
        done->set_value();
      } catch (...) {
        done->set_exception(std::current_exception());
      }
    });
  }
  wake();
  fut.get();
}

}  // namespace

bool started() {
  std::lock_guard<std::mutex> lock(st().mu);
  return st().started && !st().stopped;
}

void start(const std::vector<std::string> &args) {
  {
    std::lock_guard<std::mutex> lock(st().mu);
    if (st().started) fail(FFS_ERR_STATE, "the runtime is already started (Legion starts once per process)");
    st().started = true;
  }
  {
    // Every task is a leaf with one processor kind. bound: the largest result (0: unbounded,
    // a future that costs Legion more).
    auto leaf = [](TaskID id, const char *name, Processor::Kind kind, const CodeDescriptor &desc, size_t bound) {
      TaskVariantRegistrar reg(id, name);
      reg.add_constraint(ProcessorConstraint(kind));
      reg.set_leaf();
      Runtime::preregister_task_variant(reg, desc, nullptr, 0, name, LEGION_AUTO_GENERATE_ID, bound, bound > 0);
    };
    using W = LegionTaskWrapper;
    const CodeDescriptor step(W::legion_task_wrapper<StepResult, step_task>);
    // drawn tokens and small top-k lists; larger results use the unbounded variant
    leaf(STEP_TASK_ID, "ffs_step", Processor::LOC_PROC, step, kBoundedResult);
    leaf(STEP_LOGITS_TASK_ID, "ffs_step_logits", Processor::LOC_PROC, step, 0);
    leaf(LOAD_WEIGHTS_TASK_ID, "ffs_load_weights", Processor::LOC_PROC,
         CodeDescriptor(W::legion_task_wrapper<int32_t, load_weights_task>), sizeof(int32_t));
    leaf(PREPARE_TASK_ID, "ffs_prepare", Processor::LOC_PROC,
         CodeDescriptor(W::legion_task_wrapper<StepPlan, prepare_task>), 0);
#ifdef FFS_GPU_TASKS
    const CodeDescriptor gpu_step(W::legion_task_wrapper<StepResult, gpu_step_task>);
    leaf(STEP_GPU_TASK_ID, "ffs_step_gpu", FFS_GPU_PROC_KIND, gpu_step, kBoundedResult);
    leaf(STEP_LOGITS_GPU_TASK_ID, "ffs_step_logits_gpu", FFS_GPU_PROC_KIND, gpu_step, 0);
    leaf(LOAD_WEIGHTS_GPU_TASK_ID, "ffs_load_weights_gpu", FFS_GPU_PROC_KIND,
         CodeDescriptor(W::legion_task_wrapper<int32_t, gpu_load_weights_task>), sizeof(int32_t));
#endif
  }
  g_have_process_cpus = sched_getaffinity(0, sizeof(g_process_cpus), &g_process_cpus) == 0;
  // Legion keeps pointers into argv for the life of the process.
  static std::vector<std::string> keep;
  static std::vector<char *> argv;
#ifdef FFS_GPU_EMU_ENGINE
  keep = take_gpu_flags(args);
#else
  keep = args;
#endif
  keep.insert(keep.begin(), "flexflow_spec");
  for (auto &s : keep) argv.push_back(s.data());
  argv.push_back(nullptr);
  int rc = Runtime::start(static_cast<int>(keep.size()), argv.data(), true);
  if (rc != 0) {
    std::lock_guard<std::mutex> lock(st().mu);
    st().started = false;
    fail(FFS_ERR_INTERNAL, "Legion failed to start (code " + std::to_string(rc) + ")");
  }
  std::promise<void> ready;
  std::future<void> fut = ready.get_future();
  st().driver = std::thread(driver_main, std::move(ready));
  fut.get();
  FFS_INFO("runtime", "Legion started; system memory pool " << (st().sysmem_capacity >> 20) << " MiB; "
                                                             << st().num_gpus
#ifdef FFS_GPU_EMU_ENGINE
                                                             << " emulated"
#endif
                                                             << " GPU(s), framebuffer "
                                                             << (st().fb_capacity >> 20) << " MiB");
}

void shutdown() {
  {
    std::lock_guard<std::mutex> lock(st().mu);
    if (!st().started || st().stopped) return;
    st().stop = true;
    st().stopped = true;
  }
  wake();
  st().driver.join();
  Runtime::wait_for_shutdown();
}

bool gpu_tasks_built() {
#ifdef FFS_GPU_TASKS
  return true;
#else
  return false;
#endif
}

int num_gpus() {
  std::lock_guard<std::mutex> lock(st().mu);
  return st().num_gpus;
}

ModelHandle::Stats stats(ModelHandle *m) {
  std::lock_guard<std::mutex> lock(st().mu);
  return m->stats;
}

int register_model(ModelHandle *m) {
  std::lock_guard<std::mutex> lock(st().mu);
  m->id = st().next_id++;
  st().models[m->id] = m;
  return m->id;
}

void unregister_model(int id) {
  bool placed;
  {
    std::lock_guard<std::mutex> lock(st().mu);
    st().models.erase(id);
    st().compiling.erase(id);
    for (auto &kv : st().models)
      if (kv.second->attached_to == id) kv.second->attached_to = -1;  // its SSMs are free again
    placed = st().placements.count(id) > 0;
  }
  if (placed && started()) {
    run_on_driver([id](Context ctx, Runtime *rt) {
      drain_pipe(id);  // nothing of its chain may still run when the handle goes
      settle_pipes_using(id);  // nor a speculative LLM's step that drafts with it
      Placement p;
      {
        std::lock_guard<std::mutex> lock(st().mu);
        p = st().placements.at(id);
        st().placements.erase(id);
        (p.gpu ? st().fb_used : st().sysmem_used) -= p.bytes;
      }
      destroy_region(ctx, rt, p.weights);
      destroy_region(ctx, rt, p.kv);
      engine_gpu::release(id);
    });
  }
}

// Marks a model as being compiled; a second compile of the same model fails at once.
void claim_compile(ModelHandle *m) {
  std::lock_guard<std::mutex> lock(st().mu);
  if (st().compiling.count(m->id) || st().placements.count(m->id))
    fail(FFS_ERR_STATE, "model " + m->path + " is already compiled");
  st().compiling.insert(m->id);
}

void release_compile_claim(ModelHandle *m) {
  std::lock_guard<std::mutex> lock(st().mu);
  st().compiling.erase(m->id);
}

void compile_speculative(ModelHandle *llm, const ServeLimits &limits, const std::vector<ModelHandle *> &ssms,
                         const TreeShape &shape) {
  std::vector<SpecModel> sm;
  for (size_t i = 0; i < ssms.size(); i++)
    for (size_t j = 0; j < i; j++)
      if (ssms[i] == ssms[j]) fail(FFS_ERR_INVALID_ARGUMENT, "SSM " + ssms[i]->path + " is listed twice");
  for (ModelHandle *s : ssms) {
    if (s->speculative) fail(FFS_ERR_INVALID_ARGUMENT, "SSM " + s->path + " is itself a speculative LLM");
    if (!s->manager) fail(FFS_ERR_STATE, "SSM " + s->path + " is not compiled: call ssm.compile() first");
    if (s == llm) fail(FFS_ERR_INVALID_ARGUMENT, "a model cannot be its own SSM");
    if (s->attached_to >= 0 && s->attached_to != llm->id)
      fail(FFS_ERR_STATE, "SSM " + s->path + " already serves another LLM");
    if (s->config.vocab_size != llm->config.vocab_size)
      fail(FFS_ERR_INVALID_ARGUMENT, "SSM " + s->path + " has a vocabulary of " + std::to_string(s->config.vocab_size) +
                                         " tokens, the LLM " + std::to_string(llm->config.vocab_size) +
                                         ": they must share one tokenizer");
    sm.push_back({s->id, s->limits});
  }
  if (shape.max_depth < 1 || shape.max_depth > kMaxTreeTokens)
    fail(FFS_ERR_INVALID_ARGUMENT, "tree max_depth must be in [1, 64]");
  if (shape.max_tree_tokens < 1 || shape.max_tree_tokens > kMaxTreeTokens)
    fail(FFS_ERR_INVALID_ARGUMENT, "max_tree_tokens must be in [1, 64]");
  for (int w : shape.widths)
    if (w < 1 || w > 16) fail(FFS_ERR_INVALID_ARGUMENT, "tree widths must be in [1, 16]");
  if (!llm->checkpoint) fail(FFS_ERR_STATE, "model " + llm->path + " has no checkpoint to load");
  claim_compile(llm);
  llm->limits = limits;
  try {
    run_on_driver([llm, ssms, sm, shape](Context ctx, Runtime *rt) {
    for (ModelHandle *s : ssms)
      if (s->manager->has_work())
        fail(FFS_ERR_STATE, "SSM " + s->path + " is serving requests of its own; wait for them first");
    do_compile(ctx, rt, llm);
    for (ModelHandle *s : ssms) s->attached_to = llm->id;
    llm->speculative = true;
    llm->manager = std::make_unique<SpecManager>(SpecModel{llm->id, llm->limits}, sm, shape, wake);
    });
  } catch (...) {
    release_compile_claim(llm);
    throw;
  }
}

void compile(ModelHandle *m, const ServeLimits &limits) {
  if (!m->checkpoint) fail(FFS_ERR_STATE, "model " + m->path + " has no checkpoint to load");
  claim_compile(m);
  m->limits = limits;
  try {
    run_on_driver([m](Context ctx, Runtime *rt) {
      do_compile(ctx, rt, m);
      m->manager = std::make_unique<RequestManager>(m->id, m->limits, wake);
    });
  } catch (...) {
    release_compile_claim(m);
    throw;
  }
}

}  // namespace ffspec::engine
