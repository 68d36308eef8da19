// Reads /proc/<pid>/status and /proc/<pid>/stat (proc(5)). Thread-safe.
#include "proc_stats.h"

#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

namespace simq::bench {

namespace {

constexpr double kKibPerMib = 1024.0;

}  // namespace

std::optional<Memory> memory_of(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  if (!status) return std::nullopt;
  Memory memory;
  bool found = false;
  std::string line;
  while (std::getline(status, line)) {
    std::istringstream fields(line);
    std::string key;
    double kib = 0;
    if (!(fields >> key >> kib)) continue;
    if (key == "VmRSS:") {
      memory.rss_mib = kib / kKibPerMib;
      found = true;
    } else if (key == "VmHWM:") {
      memory.peak_mib = kib / kKibPerMib;
    }
  }
  if (!found) return std::nullopt;  // a zombie has no VmRSS
  return memory;
}

std::optional<double> cpu_seconds_of(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  if (!stat || !std::getline(stat, text)) return std::nullopt;
  // The command name (field 2) is in parentheses and may hold spaces: count from its end.
  const auto close = text.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream fields(text.substr(close + 1));
  std::string field;
  // Fields 3 (state) to 13, then 14 utime and 15 stime, in clock ticks.
  for (int i = 3; i <= 13; ++i) {
    if (!(fields >> field)) return std::nullopt;
  }
  double utime = 0;
  double stime = 0;
  if (!(fields >> utime >> stime)) return std::nullopt;
  return (utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

}  // namespace simq::bench
