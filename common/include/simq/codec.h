// MessagePack decoding of untrusted bytes with hard limits, and conversions between
// MessagePack and Json. Every limit violation is a ProtocolError naming what was wrong.
// Thread-safe: free functions without shared state.
#pragma once

#include <cstdint>
#include <msgpack.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "simq/json.h"

namespace simq {

// Bounds applied to every MessagePack body simq decodes (see docs/protocol.md).
struct UnpackLimits {
  size_t max_depth = 32;        // nesting of arrays/maps
  size_t max_array = 1u << 20;  // elements in one array
  size_t max_map = 1u << 16;    // entries in one map
  size_t max_str = 16u << 20;   // bytes in one string
  size_t max_bin = 16u << 20;   // bytes in one binary
};

// Largest ZeroMQ message any simq socket accepts (ZMQ_MAXMSGSIZE), in bytes.
inline constexpr int64_t kMaxMessageBytes = 64ll << 20;

// Decodes exactly one MessagePack value filling all of `bytes`. Array and map headers may
// not claim more elements than the bytes could hold, so a 5-byte message cannot make us
// allocate for 4 G elements. Throws ProtocolError.
msgpack::object_handle unpack(std::string_view bytes, const UnpackLimits& limits = {});

// Converts a decoded value to Json (maps need string keys; bin and ext are refused).
// Throws ProtocolError naming `what`.
Json to_json(const msgpack::object& value, std::string_view what);

// Packs Json as MessagePack.
void pack_json(msgpack::packer<msgpack::sbuffer>& packer, const Json& value);

// Typed access to a MessagePack map with precise errors:
// "<what>: field 'slots': expected unsigned integer, got string".
class MapReader {
 public:
  MapReader(const msgpack::object& map, std::string_view what);

  const msgpack::object* find(std::string_view key) const;  // nullptr when absent
  const msgpack::object& require(std::string_view key) const;

  std::string str(std::string_view key) const;
  uint64_t u64(std::string_view key) const;
  uint64_t u64_or(std::string_view key, uint64_t fallback) const;
  bool boolean_or(std::string_view key, bool fallback) const;
  std::vector<std::string> str_list_or(std::string_view key) const;  // absent -> empty
  const msgpack::object_array& array(std::string_view key) const;
  Json json(std::string_view key) const;

  [[noreturn]] void fail(std::string_view key, std::string_view expected,
                         const msgpack::object& got) const;
  std::string_view what() const { return what_; }

 private:
  const msgpack::object_map* map_;
  std::string what_;
};

// The MessagePack type of a value, as words for error messages ("string", "map"...).
std::string_view type_name(const msgpack::object& value);

}  // namespace simq
