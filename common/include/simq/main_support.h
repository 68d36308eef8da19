// The top of every simq program's main(): runs its body and turns an escaping exception into
// one line on stderr and the exit code the user's scripts rely on (simq/errors.h).
// Thread-safety: call from the main thread only.
#pragma once

#include <functional>
#include <string_view>

namespace simq {

// Returns body()'s exit code. If it throws, prints "<program>: <what>" on stderr and returns
// kExitUsage for a ConfigError, kExitUnreachable for a ConnectError, kExitJobsFailed for any
// other exception.
int run_main(std::string_view program, const std::function<int()>& body);

}  // namespace simq
