// run_main: the one place where an exception escaping a simq program becomes an exit code.
#include "simq/main_support.h"

#include <fmt/format.h>

#include <cstdio>
#include <exception>

#include "simq/errors.h"

namespace simq {

namespace {

int report(std::string_view program, const std::exception& error, int code) {
  fmt::print(stderr, "{}: {}\n", program, error.what());
  std::fflush(stderr);
  return code;
}

}  // namespace

int run_main(std::string_view program, const std::function<int()>& body) {
  try {
    return body();
  } catch (const ConfigError& e) {
    return report(program, e, kExitUsage);
  } catch (const ConnectError& e) {
    return report(program, e, kExitUnreachable);
  } catch (const std::exception& e) {
    return report(program, e, kExitJobsFailed);
  }
}

}  // namespace simq
