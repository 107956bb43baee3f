#include "common/cli.h"

#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "flexflow_spec/c/flexflow_spec.h"
#include "util/json.h"

namespace ffspec::cli {
namespace {

const char *prog_name(Mode mode) { return mode == Mode::Speculative ? "spec_infer" : "incr_decoding"; }

// A problem with the command line (exit 2) or with what it names (exit 1).
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct RunError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string llm;
  std::vector<std::string> ssms;
  std::string cache_folder;
  std::string prompt_file;
  std::string output_file;
  bool full_precision = false;
  bool verbose = false;
  int max_requests_per_batch = 8;
  int max_tokens_per_batch = 128;
  int max_sequence_length = 256;
  int expansion_degree = 3;
  int max_depth = 8;
  int max_tree_tokens = 64;
  int max_new_tokens = -1;
  bool do_sample = false;
  double temperature = 0.9;
  double topp = 0.8;
  int topk = 0;
  long long seed = -1;
  int tensor_parallelism = 1;
  int pipeline_parallelism = 1;
  int data_parallelism = 1;
  std::vector<std::string> legion;  // -ll:* / -lg:* / -level ... as given
};

struct Flag {
  const char *names;  // "|"-separated spellings
  const char *arg;    // nullptr: a switch
  const char *help;
  std::function<void(Options &, const std::string &)> set;
};

int to_int(const std::string &flag, const std::string &v) {
  try {
    size_t used = 0;
    long long x = std::stoll(v, &used);
    if (used != v.size() || x < -(1LL << 31) || x >= (1LL << 31)) throw std::invalid_argument(v);
    return static_cast<int>(x);
  } catch (const std::exception &) {
    throw UsageError(flag + " expects an integer, got '" + v + "'");
  }
}

double to_double(const std::string &flag, const std::string &v) {
  try {
    size_t used = 0;
    double x = std::stod(v, &used);
    if (used != v.size()) throw std::invalid_argument(v);
    return x;
  } catch (const std::exception &) {
    throw UsageError(flag + " expects a number, got '" + v + "'");
  }
}

std::vector<Flag> flags(Mode mode) {
  std::vector<Flag> f = {
      {"-llm-model|--llm-model", "MODEL", "the LLM: checkpoint directory, .gguf file or Hugging Face id (required)",
       [](Options &o, const std::string &v) { o.llm = v; }},
      {"-cache-folder|--cache-folder", "DIR",
       "where models are looked for after the Hugging Face cache (default: $FF_CACHE_PATH or ~/.cache/flexflow_spec)",
       [](Options &o, const std::string &v) { o.cache_folder = v; }},
      {"-prompt|--prompt", "FILE", "JSON file holding an array of prompt strings (required)",
       [](Options &o, const std::string &v) { o.prompt_file = v; }},
      {"-output-file|--output-file", "FILE", "write each request's profile line, token IDs and text here",
       [](Options &o, const std::string &v) { o.output_file = v; }},
      {"--use-full-precision|-use-full-precision", nullptr, "fp32 weights (default: fp16)",
       [](Options &o, const std::string &) { o.full_precision = true; }},
      {"--verbose|-verbose", nullptr, "print each request's tokens and the model's step statistics",
       [](Options &o, const std::string &) { o.verbose = true; }},
      {"--max-requests-per-batch|-max-requests-per-batch", "N", "requests decoded together (default 8)",
       [](Options &o, const std::string &v) { o.max_requests_per_batch = to_int("--max-requests-per-batch", v); }},
      {"--max-tokens-per-batch|-max-tokens-per-batch", "N", "tokens per step, prefill chunks included (default 128)",
       [](Options &o, const std::string &v) { o.max_tokens_per_batch = to_int("--max-tokens-per-batch", v); }},
      {"--max-sequence-length|-max-sequence-length", "N",
       "prompt + generated tokens per request; generation stops there or at EOS (default 256)",
       [](Options &o, const std::string &v) { o.max_sequence_length = to_int("--max-sequence-length", v); }},
      {"--max-new-tokens|-max-new-tokens", "N", "stop each request after N generated tokens (default: no limit)",
       [](Options &o, const std::string &v) { o.max_new_tokens = to_int("--max-new-tokens", v); }},
      {"--do-sample|-do-sample", nullptr, "sample instead of greedy decoding",
       [](Options &o, const std::string &) { o.do_sample = true; }},
      {"--temperature|-temperature", "T", "sampling temperature (default 0.9)",
       [](Options &o, const std::string &v) { o.temperature = to_double("--temperature", v); }},
      {"--topp|-topp", "P", "nucleus sampling threshold (default 0.8)",
       [](Options &o, const std::string &v) { o.topp = to_double("--topp", v); }},
      {"--topk|-topk", "K", "top-k filter when sampling (default 0: none)",
       [](Options &o, const std::string &v) { o.topk = to_int("--topk", v); }},
      {"--seed|-seed", "S", "sampling seed of the first request (request i gets S + i; default: random)",
       [](Options &o, const std::string &v) {
         size_t used = 0;
         try {
           o.seed = std::stoll(v, &used);
         } catch (const std::exception &) {
           used = 0;
         }
         if (used != v.size() || v.empty() || o.seed < 0) throw UsageError("--seed expects an integer >= 0, got '" + v + "'");
       }},
      {"-tensor-parallelism-degree|--tensor-parallelism-degree", "N", "tensor-parallel shards (only 1 in this build)",
       [](Options &o, const std::string &v) { o.tensor_parallelism = to_int("-tensor-parallelism-degree", v); }},
      {"-pipeline-parallelism-degree|--pipeline-parallelism-degree", "N",
       "pipeline stages (only 1 in this build)",
       [](Options &o, const std::string &v) { o.pipeline_parallelism = to_int("-pipeline-parallelism-degree", v); }},
      {"-data-parallelism-degree|--data-parallelism-degree", "N", "data-parallel replicas (only 1 in this build)",
       [](Options &o, const std::string &v) { o.data_parallelism = to_int("-data-parallelism-degree", v); }},
  };
  if (mode == Mode::Speculative) {
    f.insert(f.begin() + 1,
             {"-ssm-model|--ssm-model", "MODEL", "a small speculative model (repeatable; at least one)",
              [](Options &o, const std::string &v) { o.ssms.push_back(v); }});
    f.push_back({"--expansion-degree|-expansion-degree", "N",
                 "token tree width from depth 3 (default 3); -1: speculate a single chain",
                 [](Options &o, const std::string &v) { o.expansion_degree = to_int("--expansion-degree", v); }});
    f.push_back({"--max-depth|-max-depth", "N", "speculation depth (default 8)",
                 [](Options &o, const std::string &v) { o.max_depth = to_int("--max-depth", v); }});
    f.push_back({"--max-tree-tokens|-max-tree-tokens", "N", "token tree size per request (default 64)",
                 [](Options &o, const std::string &v) { o.max_tree_tokens = to_int("--max-tree-tokens", v); }});
  }
  return f;
}

void print_help(Mode mode) {
  std::printf("usage: %s -llm-model MODEL%s -prompt FILE [-output-file FILE] [options] [Legion flags]\n\n",
              prog_name(mode), mode == Mode::Speculative ? " -ssm-model MODEL [-ssm-model MODEL ...]" : "");
  std::printf("%s\n\n", mode == Mode::Speculative
                            ? "Speculative inference with token tree verification: the SSMs draft token trees, the "
                              "LLM verifies them in one pass.\nThe output equals the LLM's own (greedy: token for "
                              "token; sampling: in distribution)."
                            : "Incremental decoding: the LLM generates one token per step.");
  std::printf("options:\n");
  for (const Flag &f : flags(mode)) {
    std::string spell = f.names;
    const size_t bar = spell.find('|');
    std::string shown = spell.substr(0, bar) + (f.arg ? std::string(" ") + f.arg : "");
    std::printf("  %-40s %s\n", shown.c_str(), f.help);
  }
  std::printf("  %-40s %s\n", "-h, --help", "show this help");
  std::printf(
      "\nLegion flags are passed to Legion as it defines them, e.g.\n"
      "  -ll:cpu N        CPU processors (default 4)\n"
      "  -ll:util N       utility processors (default 1)\n"
      "  -ll:csize MiB    system memory (default min(4096, RAM/2))\n"
      "  -ll:gpu 1, -ll:fsize MiB, -ll:zsize MiB   models on the GPU and its memory pool (default -ll:gpu 0;\n"
      "                   -ll:fsize defaults to free memory less max(2 GiB, 1/12 of the device))\n"
      "  -lg:prof N, -level ...   profiling and logging\n"
      "\nThe output file gets, per request: [Profile] guid(N) llm_decoding_steps(K) latency(us) ttft(us),\n"
      "then 'token IDs: ' (prompt and generated ids), then the prompt and generated text.\n");
}

bool is_legion_flag(const std::string &a) {
  for (const char *p : {"-ll:", "-lg:", "-hl:", "-dm:", "-cuda:", "-hip:", "-level", "-logfile", "-realm:"})
    if (a.rfind(p, 0) == 0) return true;
  return false;
}

// Returns false when --help was asked for.
bool parse(int argc, char **argv, Mode mode, Options &o) {
  const std::vector<Flag> fl = flags(mode);
  std::map<std::string, const Flag *> by_name;
  for (const Flag &f : fl) {
    std::string names = f.names;
    size_t at = 0;
    for (;;) {
      const size_t bar = names.find('|', at);
      by_name[names.substr(at, bar - at)] = &f;
      if (bar == std::string::npos) break;
      at = bar + 1;
    }
  }
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help" || a == "-help") return false;
    if (is_legion_flag(a)) {
      o.legion.push_back(a);
      // A Legion flag's value follows it unless the next word is a flag itself.
      if (i + 1 < argc && (argv[i + 1][0] != '-' || std::isdigit(static_cast<unsigned char>(argv[i + 1][1]))))
        o.legion.push_back(argv[++i]);
      continue;
    }
    std::string value;
    bool has_value = false;
    const size_t eq = a.find('=');
    if (eq != std::string::npos && a.rfind("--", 0) == 0) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
      has_value = true;
    }
    auto it = by_name.find(a);
    if (it == by_name.end())
      throw UsageError("unknown flag '" + a + "' (" + prog_name(mode) + " --help lists the flags)");
    const Flag &f = *it->second;
    if (f.arg) {
      if (!has_value) {
        if (i + 1 >= argc) throw UsageError(a + " needs a value (" + f.arg + ")");
        value = argv[++i];
      }
      f.set(o, value);
    } else {
      if (has_value) throw UsageError(a + " takes no value");
      f.set(o, "");
    }
  }
  if (o.llm.empty()) throw UsageError("-llm-model is required");
  if (o.prompt_file.empty()) throw UsageError("-prompt is required (a JSON file with an array of prompt strings)");
  if (mode == Mode::Speculative && o.ssms.empty()) throw UsageError("-ssm-model is required (at least one SSM)");
  if (o.tensor_parallelism != 1 || o.pipeline_parallelism != 1 || o.data_parallelism != 1)
    throw UsageError("tensor/pipeline/data parallelism degrees other than 1 are not supported by this build");
  if (o.max_requests_per_batch < 1) throw UsageError("--max-requests-per-batch must be >= 1");
  if (o.max_tokens_per_batch < 1) throw UsageError("--max-tokens-per-batch must be >= 1");
  if (o.max_sequence_length < 2) throw UsageError("--max-sequence-length must be >= 2");
  if (o.max_new_tokens < -1) throw UsageError("--max-new-tokens must be >= 0");
  if (mode == Mode::Speculative) {
    if (o.expansion_degree == 0 || o.expansion_degree < -1 || o.expansion_degree > 16)
      throw UsageError("--expansion-degree must be -1 (a chain) or in [1, 16]");
    if (o.max_depth < 1 || o.max_depth > 64) throw UsageError("--max-depth must be in [1, 64]");
    if (o.max_tree_tokens < 1 || o.max_tree_tokens > 64) throw UsageError("--max-tree-tokens must be in [1, 64]");
  }
  if (o.do_sample) {
    if (!(o.temperature > 0)) throw UsageError("--temperature must be > 0");
    if (!(o.topp > 0 && o.topp <= 1)) throw UsageError("--topp must be in (0, 1]");
    if (o.topk < 0) throw UsageError("--topk must be >= 0");
  }
  for (size_t i = 0; i < o.legion.size(); i++) {
    if (o.legion[i] != "-ll:gpu" || i + 1 >= o.legion.size()) continue;
    const int n = std::atoi(o.legion[i + 1].c_str());
    if (n <= 0) continue;
    if (n > 1) throw UsageError("-ll:gpu " + o.legion[i + 1] + ": one GPU per process for now (-ll:gpu 1)");
    // Refused here with the reason, rather than by Realm once it starts.
    ffs_gpu_info_t info;
    if (ffs_gpu_probe(&info) != FFS_OK) throw RunError(std::string("-ll:gpu 1: ") + ffs_last_error());
    if (!info.built || info.devices < 1)
      throw UsageError("-ll:gpu 1: " + std::string(info.why[0] ? info.why : "no usable GPU"));
  }
  return true;
}

void check(ffs_status_t st, const std::string &what) {
  if (st != FFS_OK) throw RunError(what + ": " + ffs_last_error());
}

std::vector<std::string> read_prompts(const std::string &path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw RunError("cannot read prompt file " + path + ": " + std::strerror(errno));
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  Json j;
  try {
    j = Json::parse(text, path);
  } catch (const std::exception &e) {
    throw RunError(std::string("prompt file is not valid JSON: ") + e.what());
  }
  if (!j.is_array()) throw RunError("prompt file " + path + " must hold a JSON array of strings");
  std::vector<std::string> out;
  for (size_t i = 0; i < j.array().size(); i++) {
    const Json &p = j.array()[i];
    if (!p.is_string()) throw RunError("prompt file " + path + ": element " + std::to_string(i) + " is not a string");
    out.push_back(p.str());
  }
  if (out.empty()) throw RunError("prompt file " + path + " holds no prompts");
  return out;
}

std::string resolve(const std::string &name, const Options &o) {
  std::vector<char> buf(8192);
  check(ffs_resolve_model(name.c_str(), o.cache_folder.c_str(), buf.data(), buf.size()), "model " + name);
  return buf.data();
}

long long default_csize_mib() {
  const long long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  const long long total = pages > 0 && page > 0 ? pages * page / (1 << 20) : 8192;
  return std::max(1024LL, std::min(4096LL, total / 2));
}

std::vector<std::string> legion_args(const Options &o) {
  auto given = [&](const char *flag) {
    for (const std::string &a : o.legion)
      if (a == flag) return true;
    return false;
  };
  std::vector<std::string> a;
  if (!given("-ll:cpu")) a.insert(a.end(), {"-ll:cpu", "4"});
  if (!given("-ll:util")) a.insert(a.end(), {"-ll:util", "1"});
  if (!given("-ll:csize")) a.insert(a.end(), {"-ll:csize", std::to_string(default_csize_mib())});
  if (!given("-level")) a.insert(a.end(), {"-level", "threads=5"});
  // With a GPU and no -ll:fsize: the core's default pool, as ff.init(num_gpus=1) takes it.
  bool gpu = false;
  for (size_t i = 0; i + 1 < o.legion.size(); i++) gpu = gpu || (o.legion[i] == "-ll:gpu" && std::atoi(o.legion[i + 1].c_str()) > 0);
  ffs_gpu_info_t info;
  if (gpu && !given("-ll:fsize") && ffs_gpu_probe(&info) == FFS_OK && info.default_pool_bytes > 0)
    a.insert(a.end(), {"-ll:fsize", std::to_string(info.default_pool_bytes >> 20)});
  a.insert(a.end(), o.legion.begin(), o.legion.end());
  return a;
}

struct Tokenizer {
  ffs_tokenizer_t t = nullptr;
  ~Tokenizer() {
    if (t) ffs_tokenizer_free(t);
  }
  std::vector<int32_t> encode(const std::string &text) const {
    std::vector<int32_t> ids(text.size() + 16);
    int32_t n = 0;
    check(ffs_tokenizer_encode(t, text.data(), text.size(), 1, ids.data(), static_cast<int32_t>(ids.size()), &n),
          "tokenizing a prompt");
    if (n > static_cast<int32_t>(ids.size())) {
      ids.resize(n);
      check(ffs_tokenizer_encode(t, text.data(), text.size(), 1, ids.data(), n, &n), "tokenizing a prompt");
    }
    ids.resize(n);
    return ids;
  }
  std::string decode(const std::vector<int32_t> &ids) const {
    std::string s(ids.size() * 8 + 16, '\0');
    size_t n = 0;
    check(ffs_tokenizer_decode(t, ids.data(), static_cast<int32_t>(ids.size()), 1, s.data(), s.size(), &n),
          "decoding tokens");
    if (n > s.size()) {
      s.resize(n);
      check(ffs_tokenizer_decode(t, ids.data(), static_cast<int32_t>(ids.size()), 1, s.data(), s.size(), &n),
            "decoding tokens");
    }
    s.resize(n);
    return s;
  }
};

struct Model {
  ffs_model_t m = nullptr;
  ~Model() {
    if (m) ffs_model_free(m);
  }
};

struct Outcome {
  uint64_t guid = 0;
  ffs_request_result_t res{};
  std::vector<int32_t> prompt, out;
  std::vector<int32_t> accepted;
};

int execute(const Options &o, Mode mode) {
  const std::vector<std::string> prompts = read_prompts(o.prompt_file);
  if (!o.output_file.empty()) {  // fail before the models load, not after generating
    std::ofstream probe(o.output_file, std::ios::app);
    if (!probe) throw RunError("cannot write output file " + o.output_file + ": " + std::strerror(errno));
  }
  const std::string llm_path = resolve(o.llm, o);
  std::vector<std::string> ssm_paths;
  for (const std::string &s : o.ssms) ssm_paths.push_back(resolve(s, o));

  Tokenizer tok;
  check(ffs_tokenizer_load(llm_path.c_str(), &tok.t), "tokenizer of " + o.llm);
  std::vector<std::vector<int32_t>> encoded;
  for (const std::string &p : prompts) encoded.push_back(tok.encode(p));

  const std::vector<std::string> largs = legion_args(o);
  std::vector<const char *> argv;
  for (const std::string &a : largs) argv.push_back(a.c_str());
  check(ffs_runtime_init(static_cast<int>(argv.size()), argv.data()), "starting Legion");

  int status = 0;
  try {
    const ffs_data_type_t dt = o.full_precision ? FFS_DT_FLOAT : FFS_DT_HALF;
    Model llm;
    check(ffs_model_load(llm_path.c_str(), dt, &llm.m), "loading " + o.llm);
    std::vector<Model> ssms(ssm_paths.size());
    ffs_compile_params_t cp{o.max_requests_per_batch, o.max_sequence_length, o.max_tokens_per_batch};
    for (size_t i = 0; i < ssm_paths.size(); i++) {
      check(ffs_model_load(ssm_paths[i].c_str(), dt, &ssms[i].m), "loading SSM " + o.ssms[i]);
      check(ffs_model_compile(ssms[i].m, &cp), "compiling SSM " + o.ssms[i]);
    }
    if (mode == Mode::Speculative) {
      ffs_tree_params_t tree{};
      tree.max_depth = o.max_depth;
      if (o.expansion_degree == -1) {
        tree.num_widths = 1;
        tree.widths[0] = 1;
        tree.max_tree_tokens = std::min(64, std::max(o.max_depth, 1));
      } else {
        tree.num_widths = 3;
        tree.widths[0] = 1;
        tree.widths[1] = 1;
        tree.widths[2] = o.expansion_degree;
        tree.max_tree_tokens = o.max_tree_tokens;
      }
      tree.verifier = 0;
      tree.adaptive_depth = 1;
      std::vector<ffs_model_t> handles;
      for (Model &s : ssms) handles.push_back(s.m);
      check(ffs_model_compile_speculative(llm.m, &cp, handles.data(), static_cast<int32_t>(handles.size()), &tree),
            "compiling " + o.llm + " for speculation");
    } else {
      check(ffs_model_compile(llm.m, &cp), "compiling " + o.llm);
    }

    std::vector<Outcome> outs(prompts.size());
    std::vector<ffs_request_params_t> params(prompts.size());
    std::vector<const int32_t *> tokens;
    std::vector<int32_t> lens;
    for (size_t i = 0; i < prompts.size(); i++) {
      ffs_request_params_t &rp = params[i];
      rp.max_new_tokens = o.max_new_tokens;
      rp.max_length = -1;
      rp.do_sample = o.do_sample;
      rp.temperature = static_cast<float>(o.temperature);
      rp.topp = static_cast<float>(o.topp);
      rp.topk = o.do_sample ? o.topk : 0;
      rp.has_seed = o.seed >= 0;
      rp.seed = o.seed >= 0 ? static_cast<uint64_t>(o.seed) + i : 0;
      rp.num_eos_ids = -1;
      outs[i].prompt = encoded[i];
      tokens.push_back(encoded[i].data());
      lens.push_back(static_cast<int32_t>(encoded[i].size()));
    }
    std::vector<uint64_t> guids(prompts.size());
    check(ffs_request_submit_many(llm.m, static_cast<int32_t>(prompts.size()), tokens.data(), lens.data(),
                                  params.data(), guids.data()),
          "submitting the prompts");
    for (size_t i = 0; i < prompts.size(); i++) outs[i].guid = guids[i];
    std::ofstream out;
    if (!o.output_file.empty()) out.open(o.output_file, std::ios::app);
    for (size_t i = 0; i < prompts.size(); i++) {
      Outcome &r = outs[i];
      const ffs_status_t st = ffs_request_wait(llm.m, r.guid, -1, &r.res);
      if (st != FFS_OK && r.res.finish_reason != 3) check(st, "request " + std::to_string(r.guid));
      if (st != FFS_OK) {  // this request failed; the others go on
        std::fprintf(stderr, "%s: error: prompt %zu (guid %llu): %s\n", prog_name(mode), i,
                     static_cast<unsigned long long>(r.guid), ffs_last_error());
        status = 1;
      }
      r.out.resize(r.res.num_output_tokens);
      check(ffs_request_get_tokens(llm.m, r.guid, r.out.data(), static_cast<int32_t>(r.out.size())), "tokens");
      r.accepted.resize(r.res.llm_decoding_steps);
      check(ffs_request_get_accepted(llm.m, r.guid, r.accepted.data(), static_cast<int32_t>(r.accepted.size())),
            "steps");
      check(ffs_request_release(llm.m, r.guid), "release");
      const std::string text = tok.decode(r.out);
      std::string ids;
      for (int32_t t : r.prompt) ids += (ids.empty() ? "" : ", ") + std::to_string(t);
      for (int32_t t : r.out) ids += (ids.empty() ? "" : ", ") + std::to_string(t);
      char profile[256];
      std::snprintf(profile, sizeof profile, "[Profile] guid(%llu) llm_decoding_steps(%d) latency(%.0f) ttft(%.0f)",
                    static_cast<unsigned long long>(r.guid), r.res.llm_decoding_steps, r.res.latency_us,
                    r.res.ttft_us);
      if (out.is_open()) out << profile << "\ntoken IDs: " << ids << "\n" << prompts[i] << text << "\n";
      std::printf("%s\n%s%s\n", profile, prompts[i].c_str(), text.c_str());
      if (o.verbose) {
        std::string acc;
        for (int32_t a : r.accepted) acc += (acc.empty() ? "" : " ") + std::to_string(a);
        std::printf("[%s] %d tokens, tokens per LLM step: %s\n",
                    r.res.finish_reason == 1 ? "eos" : "length", r.res.num_output_tokens, acc.c_str());
      }
    }
    if (out.is_open() && !out.good()) throw RunError("writing output file " + o.output_file + " failed");
    if (o.verbose) {
      ffs_model_stats_t st{};
      if (ffs_model_stats(llm.m, &st) == FFS_OK && st.steps > 0)
        std::printf("[stats] %lld steps, %.2f ms compute, %.2f ms wall, %.2f ms driver per step\n",
                    static_cast<long long>(st.steps), st.compute_us / st.steps / 1e3, st.wall_us / st.steps / 1e3,
                    st.driver_us / st.steps / 1e3);
    }
  } catch (...) {
    ffs_runtime_shutdown();
    throw;
  }
  ffs_runtime_shutdown();
  return status;
}

}  // namespace

int run(int argc, char **argv, Mode mode) {
  // libgomp reads OMP_WAIT_POLICY when it loads, before main: spinning OpenMP threads take
  // the cores OpenBLAS needs next. Re-run once with PASSIVE unless the user chose.
  if (!std::getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    execv("/proc/self/exe", argv);  // returns only on failure: go on as we are
  }
  const char *name = prog_name(mode);
  Options o;
  try {
    if (!parse(argc, argv, mode, o)) {
      print_help(mode);
      return 0;
    }
  } catch (const UsageError &e) {
    std::fprintf(stderr, "%s: error: %s\n", name, e.what());
    return 2;
  }
  try {
    return execute(o, mode);
  } catch (const std::exception &e) {
    std::fprintf(stderr, "%s: error: %s\n", name, e.what());
    return 1;
  }
}

}  // namespace ffspec::cli
