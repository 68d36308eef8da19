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

// `text` cut to at most `limit` bytes with "..." at the end, for quoting a bad value in an
// error message; never cuts a UTF-8 character in two.
inline std::string excerpt(std::string text, size_t limit) {
  if (text.size() <= limit || limit < 3) return text;
  size_t keep = limit - 3;
  while (keep > 0 && (static_cast<unsigned char>(text[keep]) & 0xC0) == 0x80) --keep;
  text.resize(keep);
  return text + "...";
}

}  // namespace simq
