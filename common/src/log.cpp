// Logging setup on stderr.
#include "simq/log.h"

#include <fmt/format.h>
#include <spdlog/sinks/stdout_sinks.h>

#include "simq/errors.h"

namespace simq {

void init_logging(std::string_view program, std::string_view level) {
  const auto parsed = spdlog::level::from_str(std::string(level));
  if (parsed == spdlog::level::off && level != "off") {
    throw ConfigError(fmt::format(
        "--log-level: expected trace, debug, info, warn, error or off, got \"{}\"", level));
  }
  auto logger = spdlog::stderr_logger_mt(std::string(program));
  logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %n[%P] %l: %v");
  logger->set_level(parsed);
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(std::move(logger));
}

}  // namespace simq
