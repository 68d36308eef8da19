// The protocol between a worker slot and its kernel process (process isolation): frames over a
// socketpair, each a u32 length (big-endian) and a MessagePack map of at most
// kMaxHostFrameBytes. A frame either end cannot read ends the conversation: the worker kills
// the kernel process, which exits when its socket closes.
// Thread-safety: free functions and plain values; a FrameReader has one owner.
#pragma once

#include <cstddef>
#include <cstdint>
#include <msgpack.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "simq/job.h"
#include "simq/json.h"

namespace simq {

inline constexpr uint32_t kMaxHostFrameBytes = uint32_t{64} << 20;  // a frame's body, at most

// One frame's message. Which fields count depends on the type.
struct HostMessage {
  enum class Type {
    kRun,        // worker -> kernel process: run `kernel` with `params` for `job`, as job `seq`
    kStop,       // worker -> kernel process: stop job `seq` if it is still running
    kReady,      // kernel process -> worker, first: its kernels are loaded
    kResult,     // kernel process -> worker: job `seq` returned `result`
    kError,      // ... job `seq` failed with `message` (a KernelError or any other exception)
    kRetryable,  // ... job `seq` failed with `message`, worth another attempt (RetryableError)
    kCancelled,  // ... job `seq` stopped with `message` (KernelCancelled)
  };
  Type type = Type::kReady;
  uint64_t seq = 0;           // numbers a kernel process's jobs from 1; 0 in kReady
  std::string kernel;         // kRun
  JobRef job;                 // kRun
  Json params;                // kRun
  Json result;                // kResult
  std::string message;        // kError, kRetryable, kCancelled
  uint64_t peak_rss_kib = 0;  // replies: the kernel process's peak RSS during the job, in KiB
  uint64_t rss_kib = 0;       // replies and kReady: its RSS at the end, in KiB
};

// Encodes `message` as one whole frame (length and body) into `out`, replacing what it held
// (its memory is reused). Throws ProtocolError if the body would exceed kMaxHostFrameBytes.
void encode_frame(const HostMessage& message, msgpack::sbuffer& out);
// The same for a kRun message, from the caller's own values (no copy of `params`).
void encode_run(uint64_t seq, std::string_view kernel, const JobRef& job, const Json& params,
                msgpack::sbuffer& out);

// Decodes a frame's body. Throws ProtocolError naming what is wrong.
HostMessage decode_host_message(std::string_view body);

// Cuts a byte stream into frames. Its buffer is kept between frames.
class FrameReader {
 public:
  // Reads what `fd` has (one read, up to 64 KiB, retried on EINTR). Returns the bytes read;
  // 0 at end of stream; -1 on an error (errno says which; EAGAIN for nothing yet on a
  // non-blocking descriptor).
  ptrdiff_t read_from(int fd);
  // Adds bytes as read_from() would (for tests).
  void append(std::string_view bytes);
  // The body of the next whole frame, valid until the next call; nullopt if more bytes are
  // needed. Throws ProtocolError for a frame claiming 0 bytes or more than kMaxHostFrameBytes.
  std::optional<std::string_view> next();
  // Bytes of a frame begun but not complete.
  size_t pending() const { return end_ - start_; }

 private:
  void make_room(size_t bytes);

  std::string buffer_;
  size_t start_ = 0;  // first byte not consumed
  size_t end_ = 0;    // one past the last byte read
};

// Sends all of `bytes` on socket `fd`, blocking, without SIGPIPE. False if the socket failed
// (the peer is gone).
bool send_all(int fd, std::string_view bytes);

}  // namespace simq
