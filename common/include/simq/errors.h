// The one exception hierarchy of simq (tier 2 of the error policy: failures the caller cannot
// fix on the spot). Expected outcomes are values (std::optional, bool), broken invariants
// are asserts. Thread-safe: plain value types.
#pragma once

#include <stdexcept>
#include <string>

namespace simq {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Malformed or unexpected bytes on the wire: bad framing, bad MessagePack, wrong version.
class ProtocolError : public Error {
 public:
  using Error::Error;
};

// Redis refused a command or answered something unexpected.
class StoreError : public Error {
 public:
  using Error::Error;
};

// A service (Redis, the broker) cannot be reached. Maps to exit code 3.
class ConnectError : public Error {
 public:
  using Error::Error;
};

// A bad sweep file, flag or parameter: the message names the field and what was expected.
// Maps to exit code 2.
class ConfigError : public Error {
 public:
  using Error::Error;
};

// Exit codes shared by every simq program (see DESIGN.md and the README).
inline constexpr int kExitOk = 0;
inline constexpr int kExitJobsFailed = 1;  // also "not found"
inline constexpr int kExitUsage = 2;
inline constexpr int kExitUnreachable = 3;

}  // namespace simq
