// One logger for the whole core. Level from FFS_LOG_LEVEL (error, warning, info, debug);
// default warning. Messages go to stderr with a component tag.
#pragma once
#include <sstream>
#include <string>

namespace ffspec::log {

enum class Level { Error = 0, Warning = 1, Info = 2, Debug = 3 };
Level level();
void write(Level lvl, const char *component, const std::string &msg);

}  // namespace ffspec::log

#define FFS_LOG(lvl, component, expr)                                  \
  do {                                                                 \
    if (static_cast<int>(lvl) <= static_cast<int>(::ffspec::log::level())) { \
      std::ostringstream ffs_log_os_;                                  \
      ffs_log_os_ << expr;                                             \
      ::ffspec::log::write(lvl, component, ffs_log_os_.str());            \
    }                                                                  \
  } while (0)
#define FFS_INFO(component, expr) FFS_LOG(::ffspec::log::Level::Info, component, expr)
#define FFS_DEBUG(component, expr) FFS_LOG(::ffspec::log::Level::Debug, component, expr)
#define FFS_WARN(component, expr) FFS_LOG(::ffspec::log::Level::Warning, component, expr)
