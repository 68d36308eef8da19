// Encoding, decoding and framing of simq protocol messages (docs/protocol.md).
#include "simq/protocol.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <utility>

#include "simq/codec.h"
#include "simq/errors.h"

namespace simq {

namespace {

constexpr std::array<std::pair<Command, std::string_view>, 15> kCommandNames{{
    {Command::kSubmit, "SUBMIT"},
    {Command::kSubmitted, "SUBMITTED"},
    {Command::kPing, "PING"},
    {Command::kPong, "PONG"},
    {Command::kCancel, "CANCEL"},
    {Command::kCancelled, "CANCELLED"},
    {Command::kError, "ERROR"},
    {Command::kHello, "HELLO"},
    {Command::kWelcome, "WELCOME"},
    {Command::kDispatch, "DISPATCH"},
    {Command::kDone, "DONE"},
    {Command::kHeartbeat, "HEARTBEAT"},
    {Command::kBye, "BYE"},
    {Command::kDrain, "DRAIN"},
    {Command::kCredit, "CREDIT"},
}};

using Packer = msgpack::packer<msgpack::sbuffer>;

// Builds one body: a map of `fields` entries written by `write`.
template <typename Write>
std::string pack_map(uint32_t fields, Write&& write) {
  msgpack::sbuffer buffer;
  Packer packer(buffer);
  packer.pack_map(fields);
  write(packer);
  return {buffer.data(), buffer.size()};
}

void pack_key(Packer& packer, std::string_view key) {
  packer.pack_str(static_cast<uint32_t>(key.size()));
  packer.pack_str_body(key.data(), static_cast<uint32_t>(key.size()));
}

template <typename T>
void pack_field(Packer& packer, std::string_view key, const T& value) {
  pack_key(packer, key);
  packer.pack(value);
}

void pack_job(Packer& packer, const JobRef& job) {
  packer.pack(job.sweep);
  packer.pack(job.index);
  packer.pack(job.attempt);
}

// Reads [sweep, index, attempt, ...] from element `i` of a jobs array.
JobRef read_job(const MapReader& reader, const msgpack::object& item, size_t min_size) {
  if (item.type != msgpack::type::ARRAY || item.via.array.size < min_size) {
    reader.fail(
        "jobs",
        fmt::format("array of [sweep, index, attempt{}] arrays", min_size > 3 ? ", ok" : ""), item);
  }
  const auto* f = item.via.array.ptr;
  if (f[0].type != msgpack::type::STR || f[0].via.str.size == 0) {
    reader.fail("jobs[].sweep", "non-empty string", f[0]);
  }
  if (f[1].type != msgpack::type::POSITIVE_INTEGER) {
    reader.fail("jobs[].index", "unsigned integer", f[1]);
  }
  if (f[2].type != msgpack::type::POSITIVE_INTEGER || f[2].via.u64 == 0 ||
      f[2].via.u64 > UINT32_MAX) {
    reader.fail("jobs[].attempt", "integer from 1 to 2^32-1", f[2]);
  }
  return JobRef{std::string(f[0].via.str.ptr, f[0].via.str.size), f[1].via.u64,
                static_cast<uint32_t>(f[2].via.u64)};
}

// Peer bytes quoted for an error message: a JSON string, so control bytes are escaped and
// invalid UTF-8 becomes U+FFFD (ERROR messages and logs stay valid UTF-8).
std::string quoted(std::string_view bytes) { return dump_lenient(Json(std::string(bytes))); }

uint32_t to_u32(const MapReader& reader, std::string_view key, uint64_t value) {
  if (value > UINT32_MAX) {
    throw ProtocolError(fmt::format("{}: field '{}': expected at most {}, got {}", reader.what(),
                                    key, UINT32_MAX, value));
  }
  return static_cast<uint32_t>(value);
}

}  // namespace

std::string_view command_name(Command command) {
  for (const auto& [c, name] : kCommandNames) {
    if (c == command) return name;
  }
  return "?";
}

std::optional<Command> command_from_name(std::string_view name) {
  for (const auto& [c, n] : kCommandNames) {
    if (n == name) return c;
  }
  return std::nullopt;
}

std::string encode(const SubmitMsg& msg) {
  return pack_map(3, [&](Packer& p) {
    pack_field(p, "req", msg.req);
    pack_field(p, "sweep_id", msg.sweep_id);
    pack_key(p, "spec");
    pack_json(p, msg.spec);
  });
}

std::string encode(const SubmittedMsg& msg) {
  return pack_map(4, [&](Packer& p) {
    pack_field(p, "req", msg.req);
    pack_field(p, "sweep_id", msg.sweep_id);
    pack_field(p, "total", msg.total);
    pack_field(p, "existed", msg.existed);
  });
}

std::string encode(const PingMsg& msg) {
  return pack_map(1, [&](Packer& p) { pack_field(p, "req", msg.req); });
}

std::string encode(const PongMsg& msg) {
  return pack_map(5, [&](Packer& p) {
    pack_field(p, "req", msg.req);
    pack_field(p, "workers", msg.workers);
    pack_field(p, "slots", msg.slots);
    pack_field(p, "queued", msg.queued);
    pack_field(p, "in_flight", msg.in_flight);
  });
}

std::string encode(const ErrorMsg& msg) {
  return pack_map(3, [&](Packer& p) {
    pack_field(p, "req", msg.req);
    pack_field(p, "code", msg.code);
    pack_field(p, "message", msg.message);
  });
}

std::string encode(const HelloMsg& msg) {
  return pack_map(4, [&](Packer& p) {
    pack_field(p, "name", msg.name);
    pack_field(p, "slots", msg.slots);
    pack_field(p, "kernels", msg.kernels);
    pack_field(p, "busy", msg.busy);
  });
}

std::string encode(const WelcomeMsg& msg) {
  return pack_map(2, [&](Packer& p) {
    pack_field(p, "heartbeat_ms", msg.heartbeat_ms);
    pack_field(p, "liveness", msg.liveness);
  });
}

namespace {

// The field `jobs: [[sweep, index, attempt], ...]` of DISPATCH, DRAIN and CREDIT.
void pack_jobs(Packer& p, const std::vector<JobRef>& jobs) {
  pack_key(p, "jobs");
  p.pack_array(static_cast<uint32_t>(jobs.size()));
  for (const auto& job : jobs) {
    p.pack_array(3);
    pack_job(p, job);
  }
}

std::vector<JobRef> read_jobs(const MapReader& r) {
  const auto& jobs = r.array("jobs");
  std::vector<JobRef> out;
  out.reserve(jobs.size);
  for (uint32_t i = 0; i < jobs.size; ++i) out.push_back(read_job(r, jobs.ptr[i], 3));
  return out;
}

std::string encode_jobs(const std::vector<JobRef>& jobs) {
  return pack_map(1, [&](Packer& p) { pack_jobs(p, jobs); });
}

std::vector<JobRef> decode_jobs(std::string_view body, std::string_view what) {
  const auto handle = unpack(body);
  return read_jobs(MapReader(handle.get(), what));
}

}  // namespace

std::string encode(const DrainMsg& msg) { return encode_jobs(msg.jobs); }

DrainMsg decode_drain(std::string_view body) { return DrainMsg{decode_jobs(body, "DRAIN")}; }

std::string encode(const CreditMsg& msg) {
  return pack_map(2, [&](Packer& p) {
    pack_field(p, "prefetch", msg.prefetch);
    pack_jobs(p, msg.jobs);
  });
}

CreditMsg decode_credit(std::string_view body) {
  const auto handle = unpack(body);
  const MapReader r(handle.get(), "CREDIT");
  CreditMsg msg{to_u32(r, "prefetch", r.u64("prefetch")), {}};
  if (msg.prefetch > kMaxPrefetch) {
    throw ProtocolError(fmt::format("CREDIT: field 'prefetch': expected 0 to {}, got {}",
                                    kMaxPrefetch, msg.prefetch));
  }
  if (r.find("jobs") != nullptr) msg.jobs = read_jobs(r);
  return msg;
}

std::string encode(const DispatchMsg& msg) {
  if (msg.spec_bodies.empty() && msg.reload.empty()) return encode_jobs(msg.jobs);
  msgpack::sbuffer buffer;
  Packer p(buffer);
  p.pack_map(1u + (msg.spec_bodies.empty() ? 0u : 1u) + (msg.reload.empty() ? 0u : 1u));
  pack_jobs(p, msg.jobs);
  if (!msg.spec_bodies.empty()) {
    pack_key(p, "specs");
    p.pack_map(static_cast<uint32_t>(msg.spec_bodies.size()));
    for (const auto& [sweep, body] : msg.spec_bodies) {
      p.pack(sweep);
      buffer.write(body.data(), body.size());  // already MessagePack (encode_spec)
    }
  }
  if (!msg.reload.empty()) {
    pack_key(p, "reload");
    p.pack(msg.reload);
  }
  return {buffer.data(), buffer.size()};
}

std::string encode_spec(const Json& spec) {
  msgpack::sbuffer buffer;
  Packer packer(buffer);
  pack_json(packer, spec);
  return std::string(buffer.data(), buffer.size());
}

std::string encode(const DoneMsg& msg) {
  return pack_map(1, [&](Packer& p) {
    pack_key(p, "jobs");
    p.pack_array(static_cast<uint32_t>(msg.jobs.size()));
    for (const auto& done : msg.jobs) {
      p.pack_array(done.retry_after_ms ? 5 : 4);
      pack_job(p, done.job);
      p.pack(done.ok);
      if (done.retry_after_ms) p.pack(*done.retry_after_ms);
    }
  });
}

std::string encode(const CancelMsg& msg) {
  return pack_map(2, [&](Packer& p) {
    pack_field(p, "req", msg.req);
    pack_field(p, "sweep_id", msg.sweep_id);
  });
}

std::string encode(const CancelledMsg& msg) {
  return pack_map(5, [&](Packer& p) {
    pack_field(p, "req", msg.req);
    pack_field(p, "sweep_id", msg.sweep_id);
    pack_field(p, "outcome", msg.outcome);
    pack_field(p, "dropped", msg.dropped);
    pack_field(p, "running", msg.running);
  });
}

std::string encode_empty() {
  return pack_map(0, [](Packer&) {});
}

SubmitMsg decode_submit(std::string_view body) {
  const auto handle = unpack(body);
  const MapReader r(handle.get(), "SUBMIT");
  SubmitMsg msg{r.u64("req"), r.str("sweep_id"), r.json("spec")};
  if (msg.sweep_id.empty() || msg.sweep_id.size() > 64 ||
      msg.sweep_id.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-_") !=
          std::string::npos) {
    throw ProtocolError("SUBMIT: field 'sweep_id': expected 1 to 64 of [a-z0-9_-], got \"" +
                        msg.sweep_id.substr(0, 64) + "\"");
  }
  return msg;
}

SubmittedMsg decode_submitted(std::string_view body) {
  const auto handle = unpack(body);
  const MapReader r(handle.get(), "SUBMITTED");
  return SubmittedMsg{r.u64("req"), r.str("sweep_id"), r.u64("total"),
                      r.boolean_or("existed", false)};
}

CancelMsg decode_cancel(std::string_view body) {
  const auto handle = unpack(body);
  const MapReader r(handle.get(), "CANCEL");
  CancelMsg msg{r.u64_or("req", 0), r.str("sweep_id")};
  if (msg.sweep_id.empty()) {
    throw ProtocolError("CANCEL: field 'sweep_id': expected a sweep id, got \"\"");
  }
  return msg;
}

CancelledMsg decode_cancelled(std::string_view body) {
  const auto handle = unpack(body);
  const MapReader r(handle.get(), "CANCELLED");
  return CancelledMsg{r.u64_or("req", 0), r.str("sweep_id"), r.str("outcome"),
                      r.u64_or("dropped", 0), r.u64_or("running", 0)};
}

PingMsg decode_ping(std::string_view body) {
  const auto handle = unpack(body);
  const MapReader r(handle.get(), "PING");
  return PingMsg{r.u64_or("req", 0)};
}

PongMsg decode_pong(std::string_view body) {
  const auto handle = unpack(body);
  const MapReader r(handle.get(), "PONG");
  return PongMsg{r.u64_or("req", 0), r.u64("workers"), r.u64_or("slots", 0), r.u64("queued"),
                 r.u64("in_flight")};
}

ErrorMsg decode_error(std::string_view body) {
  const auto handle = unpack(body);
  const MapReader r(handle.get(), "ERROR");
  return ErrorMsg{r.u64_or("req", 0), r.str("code"), r.str("message")};
}

HelloMsg decode_hello(std::string_view body) {
  const auto handle = unpack(body);
  const MapReader r(handle.get(), "HELLO");
  HelloMsg msg{r.str("name"), to_u32(r, "slots", r.u64("slots")), r.str_list_or("kernels"),
               to_u32(r, "busy", r.u64_or("busy", 0))};
  if (msg.slots == 0 || msg.slots > kMaxSlots) {
    throw ProtocolError(
        fmt::format("HELLO: field 'slots': expected 1 to {}, got {}", kMaxSlots, msg.slots));
  }
  if (msg.busy > msg.slots) {
    throw ProtocolError(fmt::format("HELLO: field 'busy': expected at most slots ({}), got {}",
                                    msg.slots, msg.busy));
  }
  return msg;
}

WelcomeMsg decode_welcome(std::string_view body) {
  const auto handle = unpack(body);
  const MapReader r(handle.get(), "WELCOME");
  return WelcomeMsg{r.u64("heartbeat_ms"), r.u64("liveness")};
}

DispatchMsg decode_dispatch(std::string_view body) {
  const auto handle = unpack(body);
  const MapReader r(handle.get(), "DISPATCH");
  DispatchMsg msg(read_jobs(r));
  // Specs are an optimisation: one that cannot be read is reported, and its sweep's spec is
  // read from Redis; the jobs are not dropped for it.
  if (const msgpack::object* specs = r.find("specs")) {
    try {
      if (specs->type != msgpack::type::MAP) r.fail("specs", "map", *specs);
      for (uint32_t i = 0; i < specs->via.map.size; ++i) {
        const auto& entry = specs->via.map.ptr[i];
        if (entry.key.type != msgpack::type::STR) r.fail("specs", "map of sweep ids", entry.key);
        if (entry.val.type != msgpack::type::MAP) r.fail("specs", "a map per sweep", entry.val);
        msg.specs.emplace_back(std::string(entry.key.via.str.ptr, entry.key.via.str.size),
                               to_json(entry.val, "DISPATCH: field 'specs'"));
      }
    } catch (const ProtocolError& e) {
      msg.specs.clear();
      msg.spec_problem = e.what();
    }
  }
  try {
    msg.reload = r.str_list_or("reload");
  } catch (const ProtocolError& e) {
    msg.spec_problem += (msg.spec_problem.empty() ? "" : "; ") + std::string(e.what());
  }
  if (!msg.spec_problem.empty()) {
    // Which sweeps are new to this worker is unknown: no spec it kept for any sweep of these
    // jobs is trusted, each is read from Redis.
    msg.reload.clear();
    for (const auto& job : msg.jobs) msg.reload.push_back(job.sweep);
    std::sort(msg.reload.begin(), msg.reload.end());
    msg.reload.erase(std::unique(msg.reload.begin(), msg.reload.end()), msg.reload.end());
  }
  return msg;
}

DoneMsg decode_done(std::string_view body) {
  const auto handle = unpack(body);
  const MapReader r(handle.get(), "DONE");
  const auto& jobs = r.array("jobs");
  DoneMsg msg;
  msg.jobs.reserve(jobs.size);
  for (uint32_t i = 0; i < jobs.size; ++i) {
    const auto& item = jobs.ptr[i];
    DoneJob done{read_job(r, item, 4), true, std::nullopt};
    const auto& ok = item.via.array.ptr[3];
    if (ok.type != msgpack::type::BOOLEAN) r.fail("jobs[].ok", "boolean", ok);
    done.ok = ok.via.boolean;
    if (item.via.array.size > 4) {
      const auto& retry = item.via.array.ptr[4];
      if (retry.type != msgpack::type::POSITIVE_INTEGER) {
        r.fail("jobs[].retry_after_ms", "unsigned integer", retry);
      }
      done.retry_after_ms = retry.via.u64;
    }
    msg.jobs.push_back(std::move(done));
  }
  return msg;
}

void decode_empty(std::string_view body, std::string_view what) {
  const auto handle = unpack(body);
  const MapReader r(handle.get(), what);  // any map is fine: unknown keys are ignored
}

std::optional<Envelope> receive(zmq::socket_t& socket, bool routed) {
  std::vector<zmq::message_t> frames;
  for (;;) {
    zmq::message_t frame;
    const auto flags = frames.empty() ? zmq::recv_flags::dontwait : zmq::recv_flags::none;
    if (!socket.recv(frame, flags)) return std::nullopt;
    const bool more = frame.more();
    // Never hold more than a few frames of one message: the rest are read and dropped.
    if (frames.size() < 8) frames.push_back(std::move(frame));
    if (!more) break;
  }
  Envelope envelope;
  size_t first = 0;
  if (routed) {
    envelope.identity = frames[0].to_string();
    first = 1;
  }
  const size_t count = frames.size() - first;
  if (count != 3) {
    throw FrameError(envelope.identity, "bad_frame",
                     fmt::format("expected 3 frames (protocol, command, body), got {}", count));
  }
  const auto protocol = frames[first].to_string_view();
  if (protocol != kProtocol) {
    const bool looks_like_simq = protocol.substr(0, 4) == "SIMQ";
    throw FrameError(
        envelope.identity, looks_like_simq ? "bad_version" : "bad_frame",
        fmt::format(R"(protocol frame {} is not "{}"{})", quoted(protocol.substr(0, 16)), kProtocol,
                    looks_like_simq ? ": unsupported version" : ""));
  }
  const auto name = frames[first + 1].to_string_view();
  const auto command = command_from_name(name);
  if (!command) {
    throw FrameError(envelope.identity, "bad_command",
                     fmt::format("unknown command {}", quoted(name.substr(0, 16))));
  }
  envelope.command = *command;
  envelope.body = frames[first + 2].to_string();
  return envelope;
}

bool send(zmq::socket_t& socket, Command command, std::string_view body,
          const std::string* identity) {
  try {
    // Only the first frame may fail for lack of room (dontwait); once it is out, ZeroMQ
    // takes the rest of the message whole.
    const auto first = identity != nullptr ? zmq::buffer(*identity) : zmq::buffer(kProtocol);
    if (!socket.send(first, zmq::send_flags::sndmore | zmq::send_flags::dontwait)) return false;
    if (identity != nullptr) socket.send(zmq::buffer(kProtocol), zmq::send_flags::sndmore);
    socket.send(zmq::buffer(command_name(command)), zmq::send_flags::sndmore);
    socket.send(zmq::buffer(body), zmq::send_flags::none);
    return true;
  } catch (const zmq::error_t& e) {
    if (e.num() == EHOSTUNREACH || e.num() == EAGAIN) return false;
    throw;
  }
}

void configure_socket(zmq::socket_t& socket) {
  socket.set(zmq::sockopt::linger, 0);
  socket.set(zmq::sockopt::maxmsgsize, kMaxMessageBytes);
}

}  // namespace simq
