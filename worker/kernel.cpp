// The kernel registry and the parameter helpers kernels share.
// Thread-safety: the registry is read-only once built; the helpers have no shared state.
#include "kernel.h"

#include <fmt/format.h>

#include <cmath>
#include <condition_variable>
#include <mutex>
#include <utility>

namespace simq {

namespace {

constexpr size_t kMaxQuotedValue = 40;  // characters of a bad value quoted in an error message
constexpr auto kSleepStep = std::chrono::milliseconds(100);

std::string excerpt(std::string text) { return simq::excerpt(std::move(text), kMaxQuotedValue); }

// `fmt::format("{}", 1e10)` prints "10000000000", not "1e+10": limits read as the user typed.
std::string format_number(double value) {
  if (std::isinf(value)) return value > 0 ? "infinity" : "-infinity";
  return fmt::format("{}", value);
}

[[noreturn]] void bad_param(std::string_view name, std::string_view expected, const Json& got) {
  throw KernelError(
      fmt::format("param '{}': expected {}, got {}", name, expected, describe_value(got)));
}

const Json& require_param(const Json& params, std::string_view name) {
  const Json* value = find_param(params, name);
  if (value == nullptr) throw KernelError(fmt::format("param '{}' is missing", name));
  return *value;
}

int64_t to_int(const Json& value, std::string_view name, int64_t min, int64_t max) {
  const auto out_of_range = [&]() -> KernelError {
    return KernelError(
        fmt::format("param '{}': expected {} to {}, got {}", name, min, max, dump_lenient(value)));
  };
  int64_t number = 0;
  if (value.is_number_unsigned()) {
    const auto u = value.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) throw out_of_range();
    number = static_cast<int64_t>(u);
  } else if (value.is_number_integer()) {
    number = value.get<int64_t>();
  } else if (value.is_number_float()) {
    const auto d = value.get<double>();
    if (!std::isfinite(d) || std::trunc(d) != d) bad_param(name, "integer", value);
    // Doubles in [-2^63, 2^63) convert exactly; anything outside is out of range.
    if (d < -9223372036854775808.0 || d >= 9223372036854775808.0) throw out_of_range();
    number = static_cast<int64_t>(d);
  } else {
    bad_param(name, "integer", value);
  }
  if (number < min || number > max) throw out_of_range();
  return number;
}

}  // namespace

Kernel::~Kernel() = default;

void KernelRegistry::add(std::unique_ptr<Kernel> kernel) {
  std::string name(kernel->name());
  const auto [it, added] = kernels_.try_emplace(name, std::move(kernel));
  if (!added) throw ConfigError(fmt::format("kernel '{}' is registered twice", name));
}

const Kernel* KernelRegistry::find(std::string_view name) const {
  const auto it = kernels_.find(name);
  return it == kernels_.end() ? nullptr : it->second.get();
}

std::vector<std::string> KernelRegistry::names() const {
  std::vector<std::string> out;
  out.reserve(kernels_.size());
  for (const auto& [name, kernel] : kernels_) out.push_back(name);
  return out;
}

KernelRegistry KernelRegistry::with_builtins() {
  KernelRegistry registry;
  add_builtin_kernels(registry);
  add_science_kernels(registry);
  add_exec_kernel(registry);
  return registry;
}

std::string describe_value(const Json& value) {
  const auto text = [&] { return excerpt(dump_lenient(value)); };
  switch (value.type()) {
    case Json::value_t::null:
      return "null";
    case Json::value_t::boolean:
      return "boolean " + text();
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      return "integer " + text();
    case Json::value_t::number_float:
      return "float " + text();
    case Json::value_t::string:
      return "string " + text();
    case Json::value_t::array:
      return "array " + text();
    case Json::value_t::object:
      return "object " + text();
    default:
      return "binary data";
  }
}

const Json* find_param(const Json& params, std::string_view name) {
  if (!params.is_object()) {
    throw KernelError(fmt::format("params: expected object, got {}", describe_value(params)));
  }
  const auto it = params.find(name);
  return it == params.end() ? nullptr : &*it;
}

int64_t int_param(const Json& params, std::string_view name, int64_t min, int64_t max) {
  return to_int(require_param(params, name), name, min, max);
}

int64_t int_param_or(const Json& params, std::string_view name, int64_t fallback, int64_t min,
                     int64_t max) {
  const Json* value = find_param(params, name);
  return value == nullptr ? fallback : to_int(*value, name, min, max);
}

double number_param_or(const Json& params, std::string_view name, double fallback, double min,
                       double max) {
  return find_param(params, name) == nullptr ? fallback : number_param(params, name, min, max);
}

double number_param(const Json& params, std::string_view name, double min, double max) {
  const Json& value = require_param(params, name);
  if (!value.is_number()) bad_param(name, "number", value);
  const auto number = value.get<double>();
  if (!std::isfinite(number)) bad_param(name, "finite number", value);
  if (number < min || number > max) {
    const std::string expected =
        std::isinf(max) ? fmt::format("a number >= {}", format_number(min))
                        : fmt::format("{} to {}", format_number(min), format_number(max));
    throw KernelError(
        fmt::format("param '{}': expected {}, got {}", name, expected, dump_lenient(value)));
  }
  return number;
}

void throw_if_stopped(const KernelContext& ctx, std::string_view what) {
  if (ctx.stop.stop_requested()) throw KernelCancelled(fmt::format("{}: stopped", what));
}

bool sleep_unless_stopped(std::chrono::duration<double> duration, const std::stop_token& stop) {
  using Clock = std::chrono::steady_clock;
  std::mutex mutex;
  std::condition_variable_any wake;  // never notified: only the stop token wakes it early
  std::unique_lock lock(mutex);
  const auto start = Clock::now();
  for (;;) {
    if (stop.stop_requested()) return false;
    const std::chrono::duration<double> left = duration - (Clock::now() - start);
    if (!(left.count() > 0)) return true;  // also ends a NaN duration
    const auto step = left < kSleepStep ? std::chrono::duration_cast<Clock::duration>(left)
                                        : Clock::duration(kSleepStep);
    wake.wait_for(lock, stop, step, [] { return false; });
  }
}

}  // namespace simq
