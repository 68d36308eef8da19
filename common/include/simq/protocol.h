// The simq wire protocol, version 1 (docs/protocol.md is its specification): every message
// is [protocol "SIMQ1"] [command] [MessagePack body], behind a routing-id frame on the
// broker's ROUTER sockets. Encoders and decoders of each body, and framing over cppzmq.
// Thread-safety: free functions; a zmq::socket_t must be used by one thread at a time.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
#include <zmq.hpp>

#include "simq/job.h"
#include "simq/json.h"

namespace simq {

inline constexpr std::string_view kProtocol = "SIMQ1";

// Most slots one worker may announce.
inline constexpr uint32_t kMaxSlots = 100000;
// Most jobs a worker may ask to hold beyond its slots (CREDIT).
inline constexpr uint32_t kMaxPrefetch = 100000;

enum class Command {
  // client <-> broker frontend
  kSubmit,     // client: record and queue a sweep
  kSubmitted,  // broker: the sweep is in Redis and queued
  kPing,       // client: are you there?
  kPong,       // broker: yes, with workers and queue depth
  kCancel,     // client: cancel a sweep; broker -> worker: stop this sweep's jobs
  kCancelled,  // broker: the sweep is cancelled in Redis and its queued jobs dropped
  kError,      // broker: your message was refused (either endpoint)
  // worker <-> broker backend
  kHello,      // worker: I am here with N slots
  kWelcome,    // broker: heartbeat settings
  kDispatch,   // broker: run these jobs
  kDone,       // worker: these jobs are finished and their results are in Redis
  kHeartbeat,  // both ways
  kBye,        // worker: I am leaving (graceful)
  kDrain,      // worker: I am stopping: send nothing more; these jobs were not started
  kCredit,     // worker: hold this many jobs beyond my slots; these jobs were not started
};

std::string_view command_name(Command command);
std::optional<Command> command_from_name(std::string_view name);

struct SubmitMsg {
  uint64_t req = 0;      // client's request number, echoed in the reply
  std::string sweep_id;  // chosen by the client; resubmitting the same id is a no-op
  Json spec;             // SweepSpec::to_json()
};

struct SubmittedMsg {
  uint64_t req = 0;
  std::string sweep_id;
  uint64_t total = 0;    // jobs in the sweep
  bool existed = false;  // true when the sweep id was already recorded (not queued again)
};

struct PingMsg {
  uint64_t req = 0;
};

struct PongMsg {
  uint64_t req = 0;
  uint64_t workers = 0;    // connected workers
  uint64_t slots = 0;      // their slots in all
  uint64_t queued = 0;     // jobs waiting
  uint64_t in_flight = 0;  // jobs dispatched, not done
};

struct CancelMsg {
  uint64_t req = 0;  // client's request number (0 from the broker to a worker)
  std::string sweep_id;
};

struct CancelledMsg {
  uint64_t req = 0;
  std::string sweep_id;
  std::string outcome;   // "cancelled", "not_running" (finished or cancelled before), "no_sweep"
  uint64_t dropped = 0;  // queued jobs the broker dropped
  uint64_t running = 0;  // jobs in flight on workers, asked to stop
};

struct ErrorMsg {
  uint64_t req = 0;     // request number of the refused message, 0 if unknown
  std::string code;     // one word, see docs/protocol.md ("bad_body", "bad_spec", ...)
  std::string message;  // for people
};

struct HelloMsg {
  std::string name;                  // "host:pid", for logs and job records
  uint32_t slots = 0;                // jobs it runs at once: its credit (1 to kMaxSlots)
  std::vector<std::string> kernels;  // kernels it can run
  uint32_t busy = 0;  // slots still taken by jobs of an earlier session (<= slots); each of
                      // their DONEs, arriving later, frees one
};

struct WelcomeMsg {
  uint64_t heartbeat_ms = 0;  // send something at least this often
  uint64_t liveness = 0;      // peer is dead after heartbeat_ms * liveness of silence
};

struct DispatchMsg {
  DispatchMsg() = default;
  explicit DispatchMsg(std::vector<JobRef> dispatched) : jobs(std::move(dispatched)) {}

  std::vector<JobRef> jobs;
  // Specs of sweeps among `jobs` this worker may not have seen, so it need not read them from
  // Redis: (sweep id, the spec as SUBMIT carried it). Encoded from `spec_bodies` (MessagePack,
  // see encode_spec()); decoded into `specs`.
  std::vector<std::pair<std::string, std::string>> spec_bodies;
  std::vector<std::pair<std::string, Json>> specs;
  // Sweeps among `jobs` new to this worker whose spec is not in `specs`: a spec the worker kept
  // for that id must not be used (the id may name a new sweep now); it is read from Redis.
  std::vector<std::string> reload;
  // Decoded: why `specs` or `reload` was unreadable, "" if they were. Unreadable specs are
  // dropped; an unreadable `reload` becomes every sweep among `jobs`.
  std::string spec_problem;
};

// DRAIN: jobs a stopping worker hands back unstarted (run them elsewhere, same attempt).
struct DrainMsg {
  std::vector<JobRef> jobs;
};

// CREDIT: how many jobs beyond its slots the worker asks the broker to keep dispatched to it
// (it runs them as slots free up: short jobs), and jobs it hands back unstarted (run them
// elsewhere, same attempt) because they wait behind long ones.
struct CreditMsg {
  uint32_t prefetch = 0;     // 0 to kMaxPrefetch
  std::vector<JobRef> jobs;  // may be empty
};

struct DoneJob {
  JobRef job;
  bool ok = true;  // succeeded (false: failed; the record in Redis says why)
  // No terminal record was written: run the job again as attempt+1 after this delay (a
  // retryable failure). Sent as a fifth element; absent = not a retry.
  std::optional<uint64_t> retry_after_ms;
};

struct DoneMsg {
  std::vector<DoneJob> jobs;
};

std::string encode(const SubmitMsg& msg);
std::string encode(const SubmittedMsg& msg);
std::string encode(const PingMsg& msg);
std::string encode(const PongMsg& msg);
std::string encode(const ErrorMsg& msg);
std::string encode(const CancelMsg& msg);
std::string encode(const CancelledMsg& msg);
std::string encode(const HelloMsg& msg);
std::string encode(const WelcomeMsg& msg);
std::string encode(const DispatchMsg& msg);
std::string encode(const DoneMsg& msg);
std::string encode(const DrainMsg& msg);
std::string encode(const CreditMsg& msg);
std::string encode_empty();                 // HEARTBEAT and BYE bodies: an empty map
std::string encode_spec(const Json& spec);  // a spec as MessagePack, for DispatchMsg

// Decoders throw ProtocolError naming the message, the field and what was expected.
SubmitMsg decode_submit(std::string_view body);
SubmittedMsg decode_submitted(std::string_view body);
PingMsg decode_ping(std::string_view body);
PongMsg decode_pong(std::string_view body);
ErrorMsg decode_error(std::string_view body);
CancelMsg decode_cancel(std::string_view body);
CancelledMsg decode_cancelled(std::string_view body);
HelloMsg decode_hello(std::string_view body);
WelcomeMsg decode_welcome(std::string_view body);
DispatchMsg decode_dispatch(std::string_view body);
DoneMsg decode_done(std::string_view body);
DrainMsg decode_drain(std::string_view body);
CreditMsg decode_credit(std::string_view body);
void decode_empty(std::string_view body, std::string_view what);

// One received message, frames split.
struct Envelope {
  std::string identity;  // routing id (ROUTER sockets only)
  Command command = Command::kHeartbeat;
  std::string body;
};

// A message whose frames could not be understood. Carries the routing id so the broker
// can still answer, and the error code for the answer.
class FrameError : public std::runtime_error {
 public:
  FrameError(std::string identity, std::string code, const std::string& message)
      : std::runtime_error(message), identity_(std::move(identity)), code_(std::move(code)) {}
  const std::string& identity() const { return identity_; }
  const std::string& code() const { return code_; }

 private:
  std::string identity_;
  std::string code_;
};

// Receives one whole multipart message without blocking; std::nullopt if none is waiting.
// `routed`: the socket is a ROUTER (first frame is the routing id). Throws FrameError
// (after consuming every frame of the bad message) for wrong frame count, protocol or command.
std::optional<Envelope> receive(zmq::socket_t& socket, bool routed);

// Sends [identity] protocol command body. Returns false if a ROUTER could not route it
// (peer gone, with ZMQ_ROUTER_MANDATORY) or the send would block.
bool send(zmq::socket_t& socket, Command command, std::string_view body,
          const std::string* identity = nullptr);

// Sets the options every simq socket has: linger 0, ZMQ_MAXMSGSIZE.
void configure_socket(zmq::socket_t& socket);

}  // namespace simq
