// MessagePack decoding with limits, and MessagePack <-> Json conversion.
#include "simq/codec.h"

#include <fmt/format.h>

#include <algorithm>

#include "simq/errors.h"
#include "simq/job.h"

namespace simq {

std::string job_id(const std::string& sweep, uint64_t index) {
  return fmt::format("{}:{}", sweep, index);
}

bool parse_job_id(const std::string& id, std::string& sweep, uint64_t& index) {
  const auto colon = id.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == id.size()) return false;
  uint64_t value = 0;
  for (size_t i = colon + 1; i < id.size(); ++i) {
    const char c = id[i];
    if (c < '0' || c > '9' || value > (UINT64_MAX - 9) / 10) return false;
    value = value * 10 + static_cast<uint64_t>(c - '0');
  }
  sweep = id.substr(0, colon);
  index = value;
  return true;
}

std::string_view type_name(const msgpack::object& value) {
  switch (value.type) {
    case msgpack::type::NIL:
      return "nil";
    case msgpack::type::BOOLEAN:
      return "boolean";
    case msgpack::type::POSITIVE_INTEGER:
      return "unsigned integer";
    case msgpack::type::NEGATIVE_INTEGER:
      return "negative integer";
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64:
      return "float";
    case msgpack::type::STR:
      return "string";
    case msgpack::type::BIN:
      return "binary";
    case msgpack::type::ARRAY:
      return "array";
    case msgpack::type::MAP:
      return "map";
    case msgpack::type::EXT:
      return "extension";
  }
  return "unknown";
}

msgpack::object_handle unpack(std::string_view bytes, const UnpackLimits& limits) {
  if (bytes.empty()) throw ProtocolError("empty MessagePack body");
  // Each array element needs at least one byte and each map entry two, so no header may
  // claim more than that: this bounds what the decoder allocates by the message size.
  const msgpack::unpack_limit limit(std::min(limits.max_array, bytes.size()),
                                    std::min(limits.max_map, bytes.size() / 2), limits.max_str,
                                    limits.max_bin, 0, limits.max_depth);
  size_t offset = 0;
  msgpack::object_handle handle;
  try {
    handle = msgpack::unpack(bytes.data(), bytes.size(), offset, nullptr, nullptr, limit);
  } catch (const msgpack::insufficient_bytes&) {
    throw ProtocolError(fmt::format("truncated MessagePack ({} bytes)", bytes.size()));
  } catch (const msgpack::depth_size_overflow&) {
    throw ProtocolError(fmt::format("MessagePack nested deeper than {}", limits.max_depth));
  } catch (const msgpack::array_size_overflow&) {
    throw ProtocolError("MessagePack array larger than allowed or than the message");
  } catch (const msgpack::map_size_overflow&) {
    throw ProtocolError("MessagePack map larger than allowed or than the message");
  } catch (const msgpack::str_size_overflow&) {
    throw ProtocolError(fmt::format("MessagePack string longer than {} bytes", limits.max_str));
  } catch (const msgpack::bin_size_overflow&) {
    throw ProtocolError(fmt::format("MessagePack binary longer than {} bytes", limits.max_bin));
  } catch (const msgpack::ext_size_overflow&) {
    throw ProtocolError("MessagePack extension types are not used by simq");
  } catch (const std::exception& e) {
    throw ProtocolError(fmt::format("malformed MessagePack: {}", e.what()));
  }
  if (offset != bytes.size()) {
    throw ProtocolError(
        fmt::format("{} trailing bytes after the MessagePack value", bytes.size() - offset));
  }
  return handle;
}

namespace {

// Strict UTF-8 (no overlongs, no surrogates, at most U+10FFFF): JSON text must be valid.
bool valid_utf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    size_t extra = 0;
    uint32_t code = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      extra = 1;
      code = c & 0x1Fu;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2;
      code = c & 0x0Fu;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3;
      code = c & 0x07u;
    } else {
      return false;
    }
    if (i + extra >= text.size()) return false;  // truncated sequence
    for (size_t k = 1; k <= extra; ++k) {
      const auto next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xC0) != 0x80) return false;
      code = (code << 6) | (next & 0x3Fu);
    }
    static constexpr uint32_t kSmallest[] = {0, 0x80, 0x800, 0x10000};
    if (code < kSmallest[extra] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) {
      return false;
    }
    i += extra + 1;
  }
  return true;
}

Json to_json_at(const msgpack::object& value, std::string_view what, size_t depth) {
  if (depth > 64) throw ProtocolError(fmt::format("{}: nested too deeply", what));
  switch (value.type) {
    case msgpack::type::NIL:
      return nullptr;
    case msgpack::type::BOOLEAN:
      return value.via.boolean;
    case msgpack::type::POSITIVE_INTEGER:
      return value.via.u64;
    case msgpack::type::NEGATIVE_INTEGER:
      return value.via.i64;
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64:
      return value.via.f64;
    case msgpack::type::STR: {
      const std::string_view text(value.via.str.ptr, value.via.str.size);
      if (!valid_utf8(text)) {
        throw ProtocolError(fmt::format("{}: a string is not valid UTF-8", what));
      }
      return std::string(text);
    }
    case msgpack::type::ARRAY: {
      Json out = Json::array();
      for (uint32_t i = 0; i < value.via.array.size; ++i) {
        out.push_back(to_json_at(value.via.array.ptr[i], what, depth + 1));
      }
      return out;
    }
    case msgpack::type::MAP: {
      Json out = Json::object();
      for (uint32_t i = 0; i < value.via.map.size; ++i) {
        const auto& kv = value.via.map.ptr[i];
        if (kv.key.type != msgpack::type::STR) {
          throw ProtocolError(
              fmt::format("{}: map keys must be strings, got {}", what, type_name(kv.key)));
        }
        const std::string_view key(kv.key.via.str.ptr, kv.key.via.str.size);
        if (!valid_utf8(key)) {
          throw ProtocolError(fmt::format("{}: a map key is not valid UTF-8", what));
        }
        out[std::string(key)] = to_json_at(kv.val, what, depth + 1);
      }
      return out;
    }
    default:
      throw ProtocolError(fmt::format("{}: {} values are not supported", what, type_name(value)));
  }
}

}  // namespace

Json to_json(const msgpack::object& value, std::string_view what) {
  return to_json_at(value, what, 0);
}

void pack_json(msgpack::packer<msgpack::sbuffer>& packer, const Json& value) {
  switch (value.type()) {
    case Json::value_t::null:
      packer.pack_nil();
      break;
    case Json::value_t::boolean:
      packer.pack(value.get<bool>());
      break;
    case Json::value_t::number_integer:
      packer.pack(value.get<int64_t>());
      break;
    case Json::value_t::number_unsigned:
      packer.pack(value.get<uint64_t>());
      break;
    case Json::value_t::number_float:
      packer.pack(value.get<double>());
      break;
    case Json::value_t::string:
      packer.pack(value.get_ref<const std::string&>());
      break;
    case Json::value_t::array:
      packer.pack_array(static_cast<uint32_t>(value.size()));
      for (const auto& item : value) pack_json(packer, item);
      break;
    case Json::value_t::object:
      packer.pack_map(static_cast<uint32_t>(value.size()));
      for (const auto& [key, item] : value.items()) {
        packer.pack(key);
        pack_json(packer, item);
      }
      break;
    default:
      throw ProtocolError("cannot encode binary or discarded JSON values");
  }
}

MapReader::MapReader(const msgpack::object& map, std::string_view what) : what_(what) {
  if (map.type != msgpack::type::MAP) {
    throw ProtocolError(fmt::format("{}: body: expected map, got {}", what_, type_name(map)));
  }
  map_ = &map.via.map;
}

const msgpack::object* MapReader::find(std::string_view key) const {
  for (uint32_t i = 0; i < map_->size; ++i) {
    const auto& kv = map_->ptr[i];
    if (kv.key.type == msgpack::type::STR &&
        std::string_view(kv.key.via.str.ptr, kv.key.via.str.size) == key) {
      return &kv.val;
    }
  }
  return nullptr;
}

const msgpack::object& MapReader::require(std::string_view key) const {
  const auto* value = find(key);
  if (value == nullptr) {
    throw ProtocolError(fmt::format("{}: field '{}' is missing", what_, key));
  }
  return *value;
}

void MapReader::fail(std::string_view key, std::string_view expected,
                     const msgpack::object& got) const {
  throw ProtocolError(
      fmt::format("{}: field '{}': expected {}, got {}", what_, key, expected, type_name(got)));
}

std::string MapReader::str(std::string_view key) const {
  const auto& value = require(key);
  if (value.type != msgpack::type::STR) fail(key, "string", value);
  return std::string(value.via.str.ptr, value.via.str.size);
}

uint64_t MapReader::u64(std::string_view key) const {
  const auto& value = require(key);
  if (value.type != msgpack::type::POSITIVE_INTEGER) fail(key, "unsigned integer", value);
  return value.via.u64;
}

uint64_t MapReader::u64_or(std::string_view key, uint64_t fallback) const {
  return find(key) == nullptr ? fallback : u64(key);
}

bool MapReader::boolean_or(std::string_view key, bool fallback) const {
  const auto* value = find(key);
  if (value == nullptr) return fallback;
  if (value->type != msgpack::type::BOOLEAN) fail(key, "boolean", *value);
  return value->via.boolean;
}

std::vector<std::string> MapReader::str_list_or(std::string_view key) const {
  std::vector<std::string> out;
  const auto* value = find(key);
  if (value == nullptr) return out;
  if (value->type != msgpack::type::ARRAY) fail(key, "array of strings", *value);
  for (uint32_t i = 0; i < value->via.array.size; ++i) {
    const auto& item = value->via.array.ptr[i];
    if (item.type != msgpack::type::STR) fail(key, "array of strings", item);
    out.emplace_back(item.via.str.ptr, item.via.str.size);
  }
  return out;
}

const msgpack::object_array& MapReader::array(std::string_view key) const {
  const auto& value = require(key);
  if (value.type != msgpack::type::ARRAY) fail(key, "array", value);
  return value.via.array;
}

Json MapReader::json(std::string_view key) const {
  return to_json(require(key), fmt::format("{}: field '{}'", what_, key));
}

}  // namespace simq
