// Frames between a worker slot and its kernel process (host_protocol.h).
#include "host_protocol.h"

#include <fmt/format.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "simq/codec.h"
#include "simq/errors.h"

namespace simq {

namespace {

using Packer = msgpack::packer<msgpack::sbuffer>;
using Type = HostMessage::Type;

constexpr size_t kLengthBytes = 4;
constexpr size_t kReadBytes = size_t{64} << 10;

// The names of the types on the wire, in the order of HostMessage::Type.
constexpr std::array<std::string_view, 7> kTypeNames = {"run",   "stop",      "ready",    "result",
                                                        "error", "retryable", "cancelled"};

// Whatever a frame holds, decoding allocates no more than its size allows (codec.h).
const UnpackLimits kFrameLimits{.max_depth = 64,
                                .max_array = kMaxHostFrameBytes,
                                .max_map = kMaxHostFrameBytes,
                                .max_str = kMaxHostFrameBytes,
                                .max_bin = kMaxHostFrameBytes};

void pack_key(Packer& packer, std::string_view key) {
  packer.pack_str(static_cast<uint32_t>(key.size()));
  packer.pack_str_body(key.data(), static_cast<uint32_t>(key.size()));
}

void pack_string(Packer& packer, std::string_view key, std::string_view value) {
  pack_key(packer, key);
  packer.pack_str(static_cast<uint32_t>(value.size()));
  packer.pack_str_body(value.data(), static_cast<uint32_t>(value.size()));
}

void pack_number(Packer& packer, std::string_view key, uint64_t value) {
  pack_key(packer, key);
  packer.pack(value);
}

// Starts a frame in `out`: room for the length, then a map of the type, the seq and `fields`
// more entries, packed by `packer` (which writes to `out`).
void begin_frame(msgpack::sbuffer& out, Packer& packer, Type type, uint64_t seq, uint32_t fields) {
  out.clear();
  const std::array<char, kLengthBytes> length{};
  out.write(length.data(), length.size());
  packer.pack_map(fields + 2);
  pack_string(packer, "type", kTypeNames[static_cast<size_t>(type)]);
  pack_number(packer, "seq", seq);
}

// Writes the body's length in front of it.
void end_frame(msgpack::sbuffer& out) {
  const size_t body = out.size() - kLengthBytes;
  if (body > kMaxHostFrameBytes) {
    throw ProtocolError(fmt::format("a frame of {} bytes, more than the limit of {} bytes", body,
                                    kMaxHostFrameBytes));
  }
  const auto length = static_cast<uint32_t>(body);
  for (size_t i = 0; i < kLengthBytes; ++i) {
    out.data()[i] = static_cast<char>((length >> (8 * (kLengthBytes - 1 - i))) & 0xFFu);
  }
}

}  // namespace

void encode_run(uint64_t seq, std::string_view kernel, const JobRef& job, const Json& params,
                msgpack::sbuffer& out) {
  Packer packer(out);
  begin_frame(out, packer, Type::kRun, seq, 5);
  pack_string(packer, "kernel", kernel);
  pack_string(packer, "sweep", job.sweep);
  pack_number(packer, "index", job.index);
  pack_number(packer, "attempt", job.attempt);
  pack_key(packer, "params");
  pack_json(packer, params);
  end_frame(out);
}

void encode_frame(const HostMessage& message, msgpack::sbuffer& out) {
  Packer packer(out);
  switch (message.type) {
    case Type::kRun:
      encode_run(message.seq, message.kernel, message.job, message.params, out);
      return;
    case Type::kStop:
      begin_frame(out, packer, message.type, message.seq, 0);
      break;
    case Type::kReady:
      begin_frame(out, packer, message.type, message.seq, 1);
      pack_number(packer, "rss_kib", message.rss_kib);
      break;
    case Type::kResult:
      begin_frame(out, packer, message.type, message.seq, 3);
      pack_key(packer, "result");
      pack_json(packer, message.result);
      pack_number(packer, "peak_rss_kib", message.peak_rss_kib);
      pack_number(packer, "rss_kib", message.rss_kib);
      break;
    case Type::kError:
    case Type::kRetryable:
    case Type::kCancelled:
      begin_frame(out, packer, message.type, message.seq, 3);
      pack_string(packer, "message", message.message);
      pack_number(packer, "peak_rss_kib", message.peak_rss_kib);
      pack_number(packer, "rss_kib", message.rss_kib);
      break;
  }
  end_frame(out);
}

HostMessage decode_host_message(std::string_view body) {
  const auto handle = unpack(body, kFrameLimits);
  const MapReader r(handle.get(), "kernel process frame");
  HostMessage message;
  const std::string type = r.str("type");
  size_t i = 0;
  while (i < kTypeNames.size() && kTypeNames[i] != type) ++i;
  if (i == kTypeNames.size()) {
    throw ProtocolError(
        fmt::format("kernel process frame: unknown type \"{}\"", excerpt(type, 40)));
  }
  message.type = static_cast<Type>(i);
  message.seq = r.u64("seq");
  switch (message.type) {
    case Type::kRun:
      message.kernel = r.str("kernel");
      message.job = JobRef{r.str("sweep"), r.u64("index"), static_cast<uint32_t>(r.u64("attempt"))};
      message.params = r.json("params");
      break;
    case Type::kStop:
      break;
    case Type::kReady:
      message.rss_kib = r.u64("rss_kib");
      break;
    case Type::kResult:
      message.result = r.json("result");
      message.peak_rss_kib = r.u64("peak_rss_kib");
      message.rss_kib = r.u64("rss_kib");
      break;
    case Type::kError:
    case Type::kRetryable:
    case Type::kCancelled:
      message.message = r.str("message");
      message.peak_rss_kib = r.u64("peak_rss_kib");
      message.rss_kib = r.u64("rss_kib");
      break;
  }
  return message;
}

void FrameReader::make_room(size_t bytes) {
  if (start_ == end_) {
    start_ = end_ = 0;
  } else if (start_ > 0 && buffer_.size() - end_ < bytes) {
    std::memmove(buffer_.data(), buffer_.data() + start_, end_ - start_);
    end_ -= start_;
    start_ = 0;
  }
  if (buffer_.size() - end_ < bytes) buffer_.resize(end_ + bytes);
}

ptrdiff_t FrameReader::read_from(int fd) {
  make_room(kReadBytes);
  ssize_t n = 0;
  do {
    n = ::read(fd, buffer_.data() + end_, kReadBytes);
  } while (n < 0 && errno == EINTR);
  if (n > 0) end_ += static_cast<size_t>(n);
  return n;
}

void FrameReader::append(std::string_view bytes) {
  make_room(bytes.size());
  std::memcpy(buffer_.data() + end_, bytes.data(), bytes.size());
  end_ += bytes.size();
}

std::optional<std::string_view> FrameReader::next() {
  if (end_ - start_ < kLengthBytes) return std::nullopt;
  uint32_t length = 0;
  for (size_t i = 0; i < kLengthBytes; ++i) {
    length = (length << 8) | static_cast<unsigned char>(buffer_[start_ + i]);
  }
  if (length == 0 || length > kMaxHostFrameBytes) {
    throw ProtocolError(
        fmt::format("a frame claims {} bytes; expected 1 to {}", length, kMaxHostFrameBytes));
  }
  if (end_ - start_ < kLengthBytes + length) return std::nullopt;
  const std::string_view body(buffer_.data() + start_ + kLengthBytes, length);
  start_ += kLengthBytes + length;
  return body;
}

bool send_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

}  // namespace simq
