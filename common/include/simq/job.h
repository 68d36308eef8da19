// Names of one job as it travels: its sweep, its index, and which attempt this is.
// Plain value type; thread-safe as any value.
#pragma once

#include <cstdint>
#include <string>

namespace simq {

struct JobRef {
  std::string sweep;     // sweep id
  uint64_t index = 0;    // job index in the sweep, 0-based
  uint32_t attempt = 1;  // 1 on first dispatch, +1 on each re-dispatch

  bool operator==(const JobRef&) const = default;
};

// "<sweep>:<index>", the job id users see (`simq get s1a2b3:42`).
std::string job_id(const std::string& sweep, uint64_t index);

// Splits a job id; std::nullopt-like failure is reported by returning false.
bool parse_job_id(const std::string& id, std::string& sweep, uint64_t& index);

}  // namespace simq
