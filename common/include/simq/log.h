// Logging setup: one spdlog logger on stderr per program, named after it.
// Thread-safe after init_logging (spdlog's default logger is).
#pragma once

#include <spdlog/spdlog.h>

#include <string_view>

namespace simq {

// level: trace, debug, info, warn, error, off. Throws ConfigError on an unknown level.
void init_logging(std::string_view program, std::string_view level);

}  // namespace simq
