// What simq-bench reads about a running process from /proc: resident memory and CPU time.
// Thread-safe (plain reads of /proc, no state).
#pragma once

#include <sys/types.h>

#include <optional>

namespace simq::bench {

struct Memory {
  double rss_mib = 0;   // VmRSS: resident now
  double peak_mib = 0;  // VmHWM: the most it was ever resident
};

// From /proc/<pid>/status; std::nullopt if the process is gone.
std::optional<Memory> memory_of(pid_t pid);

// utime + stime of the process from /proc/<pid>/stat, in seconds (clock-tick resolution,
// usually 10 ms); std::nullopt if the process is gone.
std::optional<double> cpu_seconds_of(pid_t pid);

}  // namespace simq::bench
