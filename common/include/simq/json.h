// The value type of parameters and results: JSON that keeps key order, so parameter columns
// come out in the order a sweep file gives them. Not thread-safe (a plain value).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace simq {

using Json = nlohmann::ordered_json;

// Json as compact text that never throws: invalid UTF-8 (say, from a kernel's output) is
// replaced by U+FFFD instead of raising type_error.
inline std::string dump_lenient(const Json& value) {
  return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace simq
