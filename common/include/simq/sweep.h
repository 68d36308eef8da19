// The sweep model: a kernel, constant parameters and varied parameters combined as a
// cartesian grid. A sweep is data, not a list of jobs: job i's parameters are derived from
// (spec, i), so a 10^7-point grid costs a few bytes. Thread-safety: immutable after
// construction; const methods may be called from any number of threads.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "simq/json.h"

namespace simq {

// The most jobs one sweep may expand to, and so the most values one axis may have. Keeps
// job indices exact in a double (2^53) and a sweep's bookkeeping finite.
inline constexpr uint64_t kMaxSweepJobs = 1'000'000'000'000;  // 10^12

// One varied parameter: a named, ordered set of values.
struct Axis {
  enum class Kind { kList, kRange, kLinspace, kLogspace };

  std::string name;
  Kind kind = Kind::kList;
  Json values = Json::array();  // kList: the values as given
  double start = 0;             // kRange: first value; kLinspace: first; kLogspace: first exponent
  double stop = 0;              // kRange: exclusive end; kLinspace/kLogspace: inclusive end
  double step = 1;              // kRange only
  uint64_t num = 0;             // kLinspace/kLogspace: number of points
  bool integer = false;         // kRange: all of start/stop/step were integers -> integer values

  uint64_t size() const;
  Json value(uint64_t i) const;  // precondition: i < size()

  bool operator==(const Axis&) const = default;
};

// A per-job limit: a number for every job of the sweep, or the name of one of the sweep's
// parameters (constant or varied) whose value, job by job, is the limit.
struct JobLimit {
  double value = 0;   // used when `param` is empty
  std::string param;  // per job: the value of this parameter

  bool operator==(const JobLimit&) const = default;
};

// How the jobs of a sweep are retried and limited (the sweep file's [options] table).
struct SweepOptions {
  static constexpr uint32_t kMaxAttempts = 100;

  JobLimit max_attempts{3, ""};  // runs of one job at most, 1..kMaxAttempts; a worker lost while
                                 // running it counts as one
  JobLimit timeout_s{0, ""};     // a job running longer is stopped and ends failed; 0 = none
  double backoff_s = 1.0;        // delay before the first retry of a failed job, seconds
  double backoff_max_s = 60.0;   // the delay doubles per attempt up to this, then jitter 50-100%
  bool retry_errors = false;     // retry jobs whose kernel failed (not only lost workers and
                                 // errors the kernel marks retryable)

  bool operator==(const SweepOptions&) const = default;
};

struct SweepSpec {
  std::string name;              // optional label shown by `simq status`; "" if none
  std::string kernel;            // kernel name, e.g. "fib"
  Json params = Json::object();  // constant parameters
  std::vector<Axis> grid;        // varied parameters, in file order; empty = one job
  SweepOptions options;          // retries and time limits

  // Number of jobs: product of axis sizes (1 if there are no axes).
  uint64_t total() const;

  // Parameters of job `index`: the constants plus one value per axis, the last axis varying
  // fastest (like nested for-loops in file order). Precondition: index < total().
  Json params_at(uint64_t index) const;

  // The limits of one job, from its params (params_at(index)). A per-job limit whose parameter
  // is not a number in range throws ConfigError naming the parameter.
  uint32_t max_attempts_of(const Json& job_params) const;
  double timeout_of(const Json& job_params) const;  // seconds, 0 = none

  // Normalized form, stored in Redis and sent in SUBMIT; from_json(to_json()) is identity.
  Json to_json() const;

  // Parses and validates a spec given as JSON (a sweep file's JSON form, or to_json()).
  // `origin` (a file name, or "SUBMIT") prefixes every error message.
  // Throws ConfigError: "<origin>: <field>: expected <what>, got <what>".
  static SweepSpec from_json(const Json& spec, std::string_view origin);

  // Field by field; Json compares numbers by value (1 == 1.0), so compare to_json().dump()
  // where the integer/float distinction matters.
  bool operator==(const SweepSpec&) const = default;
};

// Reads a sweep file: TOML (".toml") or JSON (".json"; other extensions: sniffed by the
// first non-blank character). Throws ConfigError naming the file, the field and what was
// expected (syntax errors give line and column).
SweepSpec load_sweep_file(const std::string& path);

// Same, from text already in memory; `origin` is used in error messages.
SweepSpec parse_sweep_toml(std::string_view text, std::string_view origin);
SweepSpec parse_sweep_json(std::string_view text, std::string_view origin);

}  // namespace simq
