#include "util/log.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace ffspec::log {

Level level() {
  static const Level lvl = [] {
    const char *env = std::getenv("FFS_LOG_LEVEL");
    if (!env) return Level::Warning;
    if (!std::strcmp(env, "error")) return Level::Error;
    if (!std::strcmp(env, "info")) return Level::Info;
    if (!std::strcmp(env, "debug")) return Level::Debug;
    return Level::Warning;
  }();
  return lvl;
}

void write(Level lvl, const char *component, const std::string &msg) {
  static std::mutex mu;
  static const char *names[] = {"error", "warning", "info", "debug"};
  std::lock_guard<std::mutex> lock(mu);
  std::fprintf(stderr, "[flexflow_spec %s %s] %s\n", names[static_cast<int>(lvl)], component,
               msg.c_str());
}

}  // namespace ffspec::log
