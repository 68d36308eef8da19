// The built-in kernels: noop, sleep, fib and mc_pi, for demos, tests and benchmarks, and fault,
// which fails on request, for testing a cluster's resilience.
// Thread-safety: run() may be called from many slots at once (fault's leaked memory is kept
// under a mutex; the others are stateless).
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <mutex>
#include <numbers>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernel.h"

namespace simq {

namespace {

// Returns its parameters as the result: measures the system, not the kernel.
class NoopKernel final : public Kernel {
 public:
  std::string_view name() const override { return "noop"; }
  std::string_view params_help() const override {
    return "any params; returns the params as the result";
  }
  Json run(const Json& params, const KernelContext& /*ctx*/) const override {
    if (!params.is_object()) {
      throw KernelError("params: expected object, got " + describe_value(params));
    }
    return params;
  }
};

// Sleeps, waking at once when the worker stops: a stand-in for long simulations.
class SleepKernel final : public Kernel {
 public:
  std::string_view name() const override { return "sleep"; }
  std::string_view params_help() const override {
    return "seconds: number >= 0; returns {\"slept_s\": seconds}";
  }
  Json run(const Json& params, const KernelContext& ctx) const override {
    const double seconds = number_param(params, "seconds", 0);
    if (!sleep_unless_stopped(std::chrono::duration<double>(seconds), ctx.stop)) {
      throw KernelCancelled("sleep: stopped");
    }
    return Json{{"slept_s", seconds}};
  }
};

// The n-th Fibonacci number, iteratively; fib(92) is the largest that fits in an int64.
class FibKernel final : public Kernel {
 public:
  static constexpr int64_t kMaxN = 92;

  std::string_view name() const override { return "fib"; }
  std::string_view params_help() const override {
    return "n: integer 0 to 92; returns {\"value\": fib(n)} with fib(0) = 0, fib(1) = 1";
  }
  Json run(const Json& params, const KernelContext& /*ctx*/) const override {
    const int64_t n = int_param(params, "n", 0, kMaxN);
    uint64_t current = 0;  // fib(i)
    uint64_t next = 1;     // fib(i + 1); fib(93) still fits in a uint64
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t sum = current + next;
      current = next;
      next = sum;
    }
    return Json{{"value", current}};
  }
};

// Estimates pi by sampling points in the unit square: a CPU-bound kernel whose answer
// depends only on (samples, seed).
class McPiKernel final : public Kernel {
 public:
  static constexpr int64_t kMaxSamples = 10'000'000'000;
  static constexpr uint64_t kSamplesBetweenStopChecks = uint64_t{1} << 20;

  std::string_view name() const override { return "mc_pi"; }
  std::string_view params_help() const override {
    return "samples: integer 1 to 10^10, seed: integer (default 0); returns {\"pi\": estimate, "
           "\"abs_error\": |estimate - pi|}";
  }
  Json run(const Json& params, const KernelContext& ctx) const override {
    const auto samples = static_cast<uint64_t>(int_param(params, "samples", 1, kMaxSamples));
    const int64_t seed = int_param_or(params, "seed", 0, std::numeric_limits<int64_t>::min(),
                                      std::numeric_limits<int64_t>::max());
    std::mt19937_64 random(static_cast<uint64_t>(seed));
    // 53 random bits scaled to [0, 1): the same numbers on every platform, unlike
    // std::uniform_real_distribution, whose algorithm each standard library chooses.
    const auto uniform = [&random] { return static_cast<double>(random() >> 11) * 0x1.0p-53; };
    uint64_t inside = 0;
    for (uint64_t done = 0; done < samples;) {
      throw_if_stopped(ctx, "mc_pi");
      const uint64_t chunk = std::min(samples - done, kSamplesBetweenStopChecks);
      for (uint64_t i = 0; i < chunk; ++i) {
        const double x = uniform();
        const double y = uniform();
        inside += x * x + y * y < 1.0 ? 1 : 0;
      }
      done += chunk;
    }
    const double estimate = 4.0 * static_cast<double>(inside) / static_cast<double>(samples);
    return Json{{"pi", estimate}, {"abs_error", std::abs(estimate - std::numbers::pi)}};
  }
};

// Fails the way it is asked to, after sleeping `seconds`: tests how a cluster copes with kernel
// errors, transient errors, crashes of the process running the kernel, memory hogs and kernels
// that ignore their stop token.
class FaultKernel final : public Kernel {
 public:
  static constexpr std::array<std::string_view, 9> kModes = {
      "ok", "error", "retryable", "segv", "abort", "exit", "alloc", "leak", "hang"};
  static constexpr int64_t kMaxMib = int64_t{1} << 20;

  std::string_view name() const override { return "fault"; }
  std::string_view params_help() const override {
    return "mode: \"ok\" (default), \"error\", \"retryable\", \"segv\", \"abort\", \"exit\" "
           "(_exit(3)), \"alloc\" (touches `mib` MiB, freed on return), \"leak\" (touches `mib` "
           "MiB, never freed) or \"hang\" (sleeps `seconds` ignoring the stop token), seconds: "
           "number >= 0 slept first (default 0), mib: integer (default 0), hold_s: seconds alloc "
           "and leak hold the memory (default 0); returns {\"mode\": mode}";
  }
  Json run(const Json& params, const KernelContext& ctx) const override {
    std::string mode = "ok";
    if (const Json* value = find_param(params, "mode")) {
      if (!value->is_string()) {
        throw KernelError("param 'mode': expected string, got " + describe_value(*value));
      }
      mode = value->get<std::string>();
    }
    if (std::find(kModes.begin(), kModes.end(), mode) == kModes.end()) {
      throw KernelError(fmt::format("param 'mode': expected one of {}, got {}",
                                    fmt::join(kModes, ", "), describe_value(Json(mode))));
    }
    const double seconds = number_param_or(params, "seconds", 0, 0);
    const auto mib = static_cast<size_t>(int_param_or(params, "mib", 0, 0, kMaxMib));
    const double hold_s = number_param_or(params, "hold_s", 0, 0);
    if (mode == "hang") {
      std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
      return Json{{"mode", mode}};
    }
    if (!sleep_unless_stopped(std::chrono::duration<double>(seconds), ctx.stop)) {
      throw KernelCancelled("fault: stopped");
    }
    if (mode == "error") throw KernelError("fault: asked to fail");
    if (mode == "retryable") throw RetryableError("fault: asked to fail (retryable)");
    if (mode == "segv") {
      std::signal(SIGSEGV, SIG_DFL);  // a crash, even where a sanitizer would catch it
      std::raise(SIGSEGV);
    }
    if (mode == "abort") std::abort();
    if (mode == "exit") ::_exit(3);
    if (mode == "alloc" || mode == "leak") {
      std::unique_ptr<char[]> memory = touched(mib << 20);
      if (mode == "leak") {
        const std::lock_guard lock(leaked_mutex_);
        leaked_.push_back(std::move(memory));
      }
      if (!sleep_unless_stopped(std::chrono::duration<double>(hold_s), ctx.stop)) {
        throw KernelCancelled("fault: stopped");
      }
    }
    return Json{{"mode", mode}};
  }

 private:
  // `bytes` of memory with every page written, so they count in the resident set.
  static std::unique_ptr<char[]> touched(size_t bytes) {
    std::unique_ptr<char[]> memory(new char[bytes]);
    volatile char* pages = memory.get();  // volatile: the writes are the point
    for (size_t i = 0; i < bytes; i += 4096) pages[i] = 1;
    return memory;
  }

  // What mode "leak" keeps, for the life of the process.
  mutable std::mutex leaked_mutex_;
  mutable std::vector<std::unique_ptr<char[]>> leaked_;
};

}  // namespace

void add_builtin_kernels(KernelRegistry& registry) {
  registry.add(std::make_unique<NoopKernel>());
  registry.add(std::make_unique<SleepKernel>());
  registry.add(std::make_unique<FibKernel>());
  registry.add(std::make_unique<McPiKernel>());
  registry.add(std::make_unique<FaultKernel>());
}

}  // namespace simq
