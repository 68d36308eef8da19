// A fixture for kernel unit tests: the built-in registry, and running a kernel by name the way
// a worker slot does (job s1:0, attempt 1, never stopped). No sockets, no Redis.
#pragma once

#include <gtest/gtest.h>

#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>

#include "kernel.h"

namespace simq {

class KernelFixture : public ::testing::Test {
 protected:
  const Kernel& kernel(std::string_view name) {
    const Kernel* found = registry_.find(name);
    if (found == nullptr) throw std::runtime_error("no kernel " + std::string(name));
    return *found;
  }

  Json run(std::string_view name, const Json& params) {
    return kernel(name).run(params, KernelContext{JobRef{"s1", 0, 1}, std::stop_token{}});
  }

  // The KernelError message run() throws, or "" if it does not throw one.
  std::string error_of(std::string_view name, const Json& params) {
    try {
      run(name, params);
    } catch (const KernelError& e) {
      return e.what();
    }
    return "";
  }

  KernelRegistry registry_ = KernelRegistry::with_builtins();
};

}  // namespace simq
