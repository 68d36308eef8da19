// The value type of parameters and results: JSON that keeps key order, so parameter columns
// come out in the order a sweep file gives them. Not thread-safe (a plain value).
#pragma once

#include <nlohmann/json.hpp>

namespace simq {
using Json = nlohmann::ordered_json;
}  // namespace simq
