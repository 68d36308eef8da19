// Settings resolution: flag, then environment, then default.
#include "simq/config.h"

#include <fmt/format.h>
#include <unistd.h>

#include <array>
#include <cstdlib>

namespace simq {

std::string setting(const std::string& flag, const char* env, std::string_view fallback) {
  if (!flag.empty()) return flag;
  if (const char* value = std::getenv(env); value != nullptr && *value != '\0') return value;
  return std::string(fallback);
}

std::string process_name() {
  std::array<char, 256> host{};
  if (gethostname(host.data(), host.size() - 1) != 0) host = {'?'};
  return fmt::format("{}:{}", host.data(), getpid());
}

}  // namespace simq
