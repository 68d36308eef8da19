// Plug-in kernels: loads a shared library that speaks the C ABI of simq/plugin.h and adds its
// kernels to a registry. Thread-safety: load_plugin() runs once per plug-in at start-up, on one
// thread; the kernels it adds are as thread-safe as the plug-in's run functions.
#pragma once

#include <string>

#include "kernel.h"

namespace simq {

// Loads the plug-in at `path` (dlopen: a name without '/' is searched the way the dynamic
// linker searches) and adds its kernels to `registry`, all or none. The library stays loaded
// for the rest of the process. Throws ConfigError naming the plug-in:
//   "--plugin X: cannot load: <dlerror>"
//   "--plugin X: no simq_plugin_register_v1 (not a simq plug-in?)"
//   "--plugin X: ABI version 7, this worker speaks 1"
//   "--plugin X: kernel 'fib' is already registered"
//   "--plugin X: registration failed (returned 3)"
void load_plugin(const std::string& path, KernelRegistry& registry);

}  // namespace simq
