// Kernels, the simulations a worker slot runs, and the registry that finds them by name, with
// helpers that read parameters with precise errors. Thread-safety: a Kernel is immutable and
// run() may be called from many slots at once; a registry is filled once, then only read.
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "simq/errors.h"
#include "simq/job.h"
#include "simq/json.h"

namespace simq {

// A kernel refused its parameters or failed: the job ends FAILED with this message.
class KernelError : public Error {
 public:
  using Error::Error;
};

// A transient failure (a license server down, a full scratch disk): the job is run again, as
// its next attempt after a backoff, while the sweep's max_attempts allows; then it ends FAILED
// with this message.
class RetryableError : public KernelError {
 public:
  using KernelError::KernelError;
};

// A kernel stopped because its stop token was signalled. The worker decides what becomes of the
// job (handed back to the broker, failed as timed out, or recorded as cancelled). Not a
// KernelError, so it is never mistaken for a failure.
class KernelCancelled : public Error {
 public:
  using Error::Error;
};

// What a kernel knows about the job it runs.
struct KernelContext {
  JobRef job;            // which job this is (sweep, index, attempt)
  std::stop_token stop;  // signalled when the worker stops, the job's time limit passes or its
                         // sweep is cancelled: kernels that loop must check it
};

class Kernel {
 public:
  virtual ~Kernel();

  // The name sweeps use in `kernel = "..."`: [A-Za-z0-9_.-], unique in a registry.
  virtual std::string_view name() const = 0;

  // One line for `simq-worker --list-kernels`: the parameters and what the result holds.
  virtual std::string_view params_help() const = 0;

  // Runs one job and returns its result, a Json object. Throws KernelError with a precise
  // message on bad parameters or failure (RetryableError for a transient one), KernelCancelled
  // when ctx.stop cut it short.
  virtual Json run(const Json& params, const KernelContext& ctx) const = 0;
};

class KernelRegistry {
 public:
  KernelRegistry() = default;
  KernelRegistry(KernelRegistry&&) = default;
  KernelRegistry& operator=(KernelRegistry&&) = default;
  KernelRegistry(const KernelRegistry&) = delete;
  KernelRegistry& operator=(const KernelRegistry&) = delete;

  // Adds a kernel. Throws ConfigError if one of the same name is registered already.
  void add(std::unique_ptr<Kernel> kernel);

  // The kernel called `name`, or nullptr.
  const Kernel* find(std::string_view name) const;

  // Names of all kernels, sorted.
  std::vector<std::string> names() const;

  // A registry holding the built-in kernels: fault, fib, mc_pi, noop, sleep
  // (builtin_kernels.cpp), beam, constrained_sample (science_kernels.cpp) and exec
  // (exec_kernel.cpp).
  static KernelRegistry with_builtins();

 private:
  std::map<std::string, std::unique_ptr<Kernel>, std::less<>> kernels_;
};

// Adds the built-in kernels (builtin_kernels.cpp) to `registry`.
void add_builtin_kernels(KernelRegistry& registry);

// Adds the scientific kernels beam and constrained_sample (science_kernels.cpp) to `registry`.
void add_science_kernels(KernelRegistry& registry);

// Adds the exec kernel, which runs an external program per job (exec_kernel.cpp), to `registry`.
void add_exec_kernel(KernelRegistry& registry);

// ---------------------------------------------------------------------------------------
// Parameter helpers for kernels. Each throws KernelError naming the parameter:
//   "param 'n' is missing"
//   "param 'n': expected integer, got string \"x\""
//   "param 'n': expected 0 to 92, got 100"
// Parameters a kernel does not read are allowed (a sweep may carry labels).

// The parameter `name`, or nullptr when absent. Throws if `params` is not an object.
const Json* find_param(const Json& params, std::string_view name);

// An integer in [min, max]. A float with an integral value (10.0, as a linspace axis gives)
// is accepted; 2.5 is not.
int64_t int_param(const Json& params, std::string_view name, int64_t min, int64_t max);
int64_t int_param_or(const Json& params, std::string_view name, int64_t fallback, int64_t min,
                     int64_t max);

// A number (integer or float) in [min, max].
double number_param(const Json& params, std::string_view name, double min,
                    double max = std::numeric_limits<double>::infinity());
double number_param_or(const Json& params, std::string_view name, double fallback, double min,
                       double max = std::numeric_limits<double>::infinity());

// How a parameter's value reads in an error message: `string "x"`, `float 2.5`, `array [1,2]`.
std::string describe_value(const Json& value);

// Throws KernelCancelled ("<what>: stopped") if the job's stop token was signalled.
void throw_if_stopped(const KernelContext& ctx, std::string_view what);

// Sleeps for `duration` unless `stop` is signalled first (then wakes at once). Returns false
// if it was stopped. Waits in steps of at most 100 ms, so any duration is safe.
bool sleep_unless_stopped(std::chrono::duration<double> duration, const std::stop_token& stop);

}  // namespace simq
