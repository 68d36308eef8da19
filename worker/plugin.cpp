// Plug-in kernels: dlopen, the ABI version check, registration through simq/plugin.h, and the
// Kernel that calls a plug-in's C run function. dl* errors become ConfigError here only.
// Thread-safety: load_plugin() is for start-up, one thread; PluginKernel::run() keeps its state
// on the stack, so slots may call it at once.
#include "plugin.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <exception>
#include <filesystem>
#include <memory>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "simq/plugin.h"

namespace simq {

namespace {

struct DlClose {
  void operator()(void* handle) const { dlclose(handle); }
};
using LibraryHandle = std::unique_ptr<void, DlClose>;

std::string last_dl_error() {
  const char* error = dlerror();
  return error == nullptr ? "unknown error" : error;
}

// A plug-in's kernel seen as a simq Kernel: params go in as JSON text, the result comes back as
// JSON text (an object) or an error message.
class PluginKernel final : public Kernel {
 public:
  PluginKernel(std::string name, std::string help, const simq_kernel_v1& kernel)
      : name_(std::move(name)), help_(std::move(help)), run_(kernel.run), user_(kernel.user) {}

  std::string_view name() const override { return name_; }
  std::string_view params_help() const override { return help_; }
  Json run(const Json& params, const KernelContext& ctx) const override;

 private:
  std::string name_;
  std::string help_;
  int (*run_)(void*, const char*, const simq_context_v1*, simq_result_v1*);
  void* user_;
};

// What one run() call gathers through the callbacks. They are called from C, so nothing may
// leave them as an exception: a failure to copy is kept and rethrown after run() returns.
struct RunState {
  const KernelContext* ctx = nullptr;
  std::optional<std::string> json;
  std::optional<std::string> error;
  bool retryable = false;
  std::exception_ptr failure;
};

int stop_requested(const simq_context_v1* context) noexcept {
  const auto* state = static_cast<const RunState*>(context->host);
  return state->ctx->stop.stop_requested() ? 1 : 0;
}

void set_json(simq_result_v1* result, const char* json, size_t len) noexcept {
  auto* state = static_cast<RunState*>(result->host);
  try {
    state->json = json == nullptr ? std::string() : std::string(json, len);
  } catch (...) {
    state->failure = std::current_exception();
  }
}

void set_error(simq_result_v1* result, const char* message, int retryable) noexcept {
  auto* state = static_cast<RunState*>(result->host);
  try {
    state->error = message == nullptr ? std::string() : std::string(message);
    state->retryable = retryable != 0;
  } catch (...) {
    state->failure = std::current_exception();
  }
}

Json PluginKernel::run(const Json& params, const KernelContext& ctx) const {
  const std::string params_text = dump_lenient(params);
  const std::string id = job_id(ctx.job.sweep, ctx.job.index);
  RunState state;
  state.ctx = &ctx;
  const simq_context_v1 context{sizeof(simq_context_v1), id.c_str(), ctx.job.attempt,
                                &stop_requested, &state};
  simq_result_v1 result{sizeof(simq_result_v1), &set_json, &set_error, &state};
  const int code = run_(user_, params_text.c_str(), &context, &result);
  if (state.failure) std::rethrow_exception(state.failure);

  const bool failed = state.error.has_value() || code != 0 || !state.json.has_value();
  if (failed && ctx.stop.stop_requested()) throw KernelCancelled(fmt::format("{}: stopped", name_));
  if (state.error) {
    if (state.error->empty()) state.error = fmt::format("kernel '{}' failed", name_);
    if (state.retryable) throw RetryableError(*state.error);
    throw KernelError(*state.error);
  }
  if (code != 0) throw KernelError(fmt::format("kernel '{}' failed (returned {})", name_, code));
  if (!state.json) throw KernelError(fmt::format("kernel '{}' returned no result", name_));

  Json out;
  try {
    out = Json::parse(*state.json);
  } catch (const Json::parse_error& e) {
    throw KernelError(fmt::format("kernel '{}' returned invalid JSON: {}", name_, e.what()));
  }
  if (!out.is_object()) {
    throw KernelError(
        fmt::format("kernel '{}' returned {}, expected a JSON object", name_, describe_value(out)));
  }
  return out;
}

bool valid_name(std::string_view name) {
  if (name.empty()) return false;
  for (const char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

// The kernels one plug-in adds, held back until its registration has succeeded (all or none),
// and the first refusal, which the host reports instead of the plug-in's return code.
struct Registration {
  const KernelRegistry* registry = nullptr;
  std::vector<std::unique_ptr<PluginKernel>> kernels;
  std::optional<std::string> error;

  bool taken(std::string_view name) const {
    if (registry->find(name) != nullptr) return true;
    for (const auto& kernel : kernels) {
      if (kernel->name() == name) return true;
    }
    return false;
  }

  // Why `kernel` cannot be added, or "" if it can.
  std::string refusal(const simq_kernel_v1* kernel) const {
    if (kernel == nullptr) return "add_kernel() was given NULL";
    if (kernel->name == nullptr) return "a kernel has no name";
    const std::string_view name = kernel->name;
    if (!valid_name(name)) {
      return fmt::format("kernel name \"{}\" is invalid (use letters, digits, '_', '.', '-')",
                         excerpt(std::string(name), 40));
    }
    if (kernel->run == nullptr) return fmt::format("kernel '{}' has no run function", name);
    if (taken(name)) return fmt::format("kernel '{}' is already registered", name);
    return "";
  }
};

int add_kernel(const simq_host_v1* host, const simq_kernel_v1* kernel) noexcept {
  auto* registration = static_cast<Registration*>(host->host);
  try {
    std::string why = registration->refusal(kernel);
    if (why.empty()) {
      registration->kernels.push_back(std::make_unique<PluginKernel>(
          kernel->name, kernel->params_help == nullptr ? "" : kernel->params_help, *kernel));
      return 0;
    }
    if (!registration->error) registration->error = std::move(why);
  } catch (const std::exception& e) {
    if (!registration->error) registration->error = e.what();
  }
  return 1;
}

// dlsym() for a function: POSIX guarantees that the object pointer converts.
template <typename Function>
Function find_function(void* library, const char* name) {
  return reinterpret_cast<Function>(dlsym(library, name));
}

}  // namespace

void load_plugin(const std::string& path, KernelRegistry& registry) {
  const auto fail = [&](std::string_view what) {
    return ConfigError(fmt::format("--plugin {}: {}", path, what));
  };
  // dlopen() searches the library path for a bare name; a file of that name here is meant.
  std::string file = path;
  std::error_code ignored;
  if (path.find('/') == std::string::npos && std::filesystem::exists(path, ignored)) {
    file = "./" + path;
  }

  LibraryHandle library(dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL));
  if (!library) throw fail(fmt::format("cannot load: {}", last_dl_error()));
  const auto version =
      find_function<simq_plugin_abi_version_fn>(library.get(), "simq_plugin_abi_version");
  const auto register_kernels =
      find_function<simq_plugin_register_v1_fn>(library.get(), "simq_plugin_register_v1");
  // The version first: a plug-in of another ABI may lack the v1 entry point.
  if (version != nullptr) {
    const uint32_t speaks = version();
    if (speaks != SIMQ_PLUGIN_ABI_VERSION) {
      throw fail(
          fmt::format("ABI version {}, this worker speaks {}", speaks, SIMQ_PLUGIN_ABI_VERSION));
    }
  }
  if (register_kernels == nullptr) throw fail("no simq_plugin_register_v1 (not a simq plug-in?)");
  if (version == nullptr) throw fail("no simq_plugin_abi_version (not a simq plug-in?)");

  Registration registration;
  registration.registry = &registry;
  const simq_host_v1 host{SIMQ_PLUGIN_ABI_VERSION, sizeof(simq_host_v1), &add_kernel,
                          &registration};
  const int code = register_kernels(&host);
  if (registration.error) throw fail(*registration.error);
  if (code != 0) throw fail(fmt::format("registration failed (returned {})", code));
  if (registration.kernels.empty()) throw fail("registered no kernels");
  for (auto& kernel : registration.kernels) registry.add(std::move(kernel));
  // The kernels call into the library and may be run until the process exits: never unloaded.
  static_cast<void>(library.release());
}

}  // namespace simq
