#include "weights/resolve.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <vector>

#include "util/error.h"

namespace fs = std::filesystem;

namespace ffspec {
namespace {

std::string env(const char *name) {
  const char *v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

fs::path home() {
  std::string h = env("HOME");
  return h.empty() ? fs::path("/") : fs::path(h);
}

fs::path expand_user(const std::string &p) {
  if (p == "~") return home();
  if (p.rfind("~/", 0) == 0) return home() / p.substr(2);
  return fs::path(p);
}

bool path_exists(const fs::path &p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

// A checkpoint directory we can open.
bool usable(const fs::path &dir) {
  std::error_code ec;
  if (fs::is_regular_file(dir / "config.json", ec)) return true;
  return false;
}

// A hub-style repo folder (models--org--name): refs/main's snapshot, else the newest usable.
std::string from_hub_repo(const fs::path &repo, std::vector<std::string> &looked) {
  const fs::path snaps = repo / "snapshots";
  looked.push_back(snaps.string());
  std::error_code ec;
  if (!fs::is_directory(snaps, ec)) return "";
  std::ifstream ref(repo / "refs" / "main");
  std::string rev;
  // refs/main names a commit hash; anything with a path separator is not one.
  if (ref && std::getline(ref, rev) && !rev.empty() && rev.find('/') == std::string::npos && rev != "." &&
      rev != ".." && usable(snaps / rev))
    return (snaps / rev).string();
  std::vector<std::pair<fs::file_time_type, fs::path>> cands;
  for (const auto &e : fs::directory_iterator(snaps, ec))
    if (usable(e.path())) cands.push_back({fs::last_write_time(e.path(), ec), e.path()});
  if (cands.empty()) return "";
  std::sort(cands.begin(), cands.end(), [](const auto &a, const auto &b) { return a.first > b.first; });
  return cands.front().second.string();
}

std::string canonical_or_same(const fs::path &p) {
  std::error_code ec;
  fs::path c = fs::canonical(p, ec);
  return ec ? p.string() : c.string();
}

}  // namespace

std::string cache_folder(const std::string &given) {
  if (!given.empty()) return expand_user(given).string();
  std::string e = env("FF_CACHE_PATH");
  if (!e.empty()) return expand_user(e).string();
  return (home() / ".cache" / "flexflow_spec").string();
}

std::string resolve_model(const std::string &name, const std::string &cache_folder_given) {
  if (name.empty()) fail(FFS_ERR_NOT_FOUND, "the model name is empty: give a checkpoint directory, a .gguf file or a Hugging Face id");
  const fs::path p = expand_user(name);
  if (path_exists(p)) return canonical_or_same(p);
  std::vector<std::string> looked{p.string()};
  const bool hub_id = name.find('/') != std::string::npos && name[0] != '/' && name[0] != '.' && name[0] != '~' &&
                      std::count(name.begin(), name.end(), '/') == 1 && name.back() != '/' &&
                      name.find("..") == std::string::npos;
  if (hub_id) {
    const std::string repo = "models--" + name.substr(0, name.find('/')) + "--" + name.substr(name.find('/') + 1);
    std::vector<fs::path> hubs;
    if (!env("HF_HUB_CACHE").empty()) hubs.push_back(expand_user(env("HF_HUB_CACHE")));
    if (!env("HF_HOME").empty()) hubs.push_back(expand_user(env("HF_HOME")) / "hub");
    hubs.push_back(home() / ".cache" / "huggingface" / "hub");
    for (const fs::path &hub : hubs) {
      std::string got = from_hub_repo(hub / repo, looked);
      if (!got.empty()) return got;
    }
    const fs::path ours = cache_folder(cache_folder_given);
    for (const fs::path &c : {ours / name, ours / "models" / name}) {
      looked.push_back(c.string());
      if (usable(c)) return canonical_or_same(c);
    }
    std::string got = from_hub_repo(ours / repo, looked);
    if (!got.empty()) return got;
  }
  std::string where;
  for (const std::string &l : looked) where += (where.empty() ? "" : ", ") + l;
  fail(FFS_ERR_NOT_FOUND,
       "model '" + name + "' not found; looked in: " + where +
           ". Give a local checkpoint directory (config.json + *.safetensors) or a .gguf file, or put the model "
           "in the Hugging Face cache (huggingface-cli download " +
           (hub_id ? name : std::string("<org>/<name>")) + ") or under the cache folder (-cache-folder / FF_CACHE_PATH)");
}

}  // namespace ffspec
