// BrokerClient: requests to the broker's frontend, resent with backoff until answered.
// Not thread-safe (one DEALER socket).
#include "client.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <optional>
#include <random>
#include <utility>

#include "simq/codec.h"
#include "simq/errors.h"
#include "simq/signals.h"

namespace simq {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kResendFirst{1000};  // without an answer: resend after 1 s,
constexpr milliseconds kResendMax{2000};    // then every 2 s
constexpr milliseconds kRefusedFirst{100};  // refused for now: 100 ms, doubling
constexpr milliseconds kRefusedMax{2000};   // up to 2 s

std::string seconds_text(milliseconds duration) {
  return fmt::format("{:g} s", static_cast<double>(duration.count()) / 1000.0);
}

// Waits for the reply to request `req`, sending `body` again until answered (see
// BrokerClient::submit). `decode` turns the expected reply's body into a Reply with a `req`
// field; replies to other requests (late answers to earlier ones) are dropped. `timeout` 0 =
// for ever. Counts in `sends` the times `body` went out. `notice` is told once why it waits.
template <typename Reply, typename Decode>
Reply await_reply(zmq::socket_t& socket, const std::string& endpoint, Command command, uint64_t req,
                  const std::string& body, Command expected, Decode decode, milliseconds timeout,
                  int& sends, const std::function<void(const std::string&)>& notice) {
  const auto start = Clock::now();
  const auto deadline = timeout.count() > 0 ? start + timeout : Clock::time_point::max();
  auto next_send = start;
  Backoff silence(kResendFirst, kResendMax);
  Backoff refused(kRefusedFirst, kRefusedMax);
  std::string full;         // the broker's last "queue_full" message, if any
  std::string unavailable;  // the broker's last "store_unavailable" message, if any
  bool noticed = false;
  const auto tell = [&](const std::string& line) {
    if (noticed) return;
    noticed = true;
    if (notice) notice(line);
  };
  for (auto now = Clock::now(); now < deadline; now = Clock::now()) {
    if (stop_requested()) {
      throw Interrupted(fmt::format("interrupted while waiting for the broker at {}", endpoint));
    }
    if (now >= next_send) {
      if (sends > 0 && full.empty() && unavailable.empty()) {
        tell(fmt::format("broker at {} not answering; retrying", endpoint));
      }
      if (send(socket, command, body)) {
        ++sends;
      } else {
        spdlog::debug("{}: send would block", endpoint);
      }
      next_send = now + silence.next();
    }
    zmq::pollitem_t item{socket.handle(), 0, ZMQ_POLLIN, 0};
    const auto wait = std::chrono::ceil<milliseconds>(std::min(deadline, next_send) - now);
    try {
      zmq::poll(&item, 1, wait);
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;  // a signal: the deadline still holds
      throw;
    }
    if ((item.revents & ZMQ_POLLIN) == 0) continue;
    for (;;) {
      std::optional<Envelope> message;
      try {
        message = receive(socket, false);
      } catch (const FrameError& e) {
        spdlog::warn("ignoring a malformed message from the broker at {}: {}", endpoint, e.what());
        continue;
      }
      if (!message) break;
      if (message->command == expected) {
        Reply reply = decode(message->body);
        if (reply.req == req) return reply;
        spdlog::debug("ignoring {} for request {} (waiting for {})", command_name(message->command),
                      reply.req, req);
      } else if (message->command == Command::kError) {
        const auto error = decode_error(message->body);
        if (error.req != req && error.req != 0) continue;  // refuses an earlier request
        if (error.code == "bad_spec" || error.code == "bad_body") throw ConfigError(error.message);
        if (error.code == "queue_full" || error.code == "store_unavailable") {
          // Nothing was recorded: the same request, resent after a while, may be accepted.
          const bool is_full = error.code == "queue_full";
          (is_full ? full : unavailable) = error.message;
          (is_full ? unavailable : full).clear();
          tell(is_full ? fmt::format("broker queue is full ({}); waiting", error.message)
                       : fmt::format("the broker cannot reach Redis ({}); waiting", error.message));
          spdlog::info("the broker at {} refused {} for now: {} ({}); retrying", endpoint,
                       command_name(command), error.message, error.code);
          next_send = Clock::now() + refused.next();
          silence.reset();
          continue;
        }
        throw ProtocolError(fmt::format("the broker at {} refused {}: {} ({})", endpoint,
                                        command_name(command), error.message, error.code));
      } else {
        spdlog::debug("ignoring {} from the broker", command_name(message->command));
      }
    }
  }
  const auto waited = seconds_text(timeout);
  if (!full.empty()) {
    throw ConnectError(
        fmt::format("the broker at {} still refused {} after {}: its queue is full ({})", endpoint,
                    command_name(command), waited, full));
  }
  if (!unavailable.empty()) {
    throw ConnectError(
        fmt::format("the broker at {} cannot reach Redis: {}", endpoint, unavailable));
  }
  throw ConnectError(
      fmt::format("cannot reach the broker at {} (no reply within {})", endpoint, waited));
}

// The jitter of every Backoff of a thread. Seeded once: a std::random_device costs about 21 us
// on this VM (a getrandom or RDSEED behind it), and each request makes two Backoffs, so seeding
// each one added 40 us to a round trip.
std::minstd_rand& jitter_engine() {
  thread_local std::minstd_rand engine(std::random_device{}());
  return engine;
}

}  // namespace

Backoff::Backoff(milliseconds first, milliseconds max)
    : first_(first), max_(max), current_(first) {}

milliseconds Backoff::next() {
  const milliseconds delay = current_;
  current_ = std::min(max_, current_ * 2);
  std::uniform_real_distribution<double> jitter(0.75, 1.25);
  return milliseconds(std::max<int64_t>(
      1, std::llround(static_cast<double>(delay.count()) * jitter(jitter_engine()))));
}

BrokerClient::BrokerClient(std::string endpoint)
    : endpoint_(std::move(endpoint)), context_(1), socket_(context_, zmq::socket_type::dealer) {
  configure_socket(socket_);
  socket_.set(zmq::sockopt::rcvtimeo, 1000);  // only the frames after the first can block
  socket_.set(zmq::sockopt::sndtimeo, 1000);
  try {
    socket_.connect(endpoint_);
  } catch (const zmq::error_t& e) {
    throw ConfigError(fmt::format(
        "broker endpoint: expected tcp://host:port (or another ZeroMQ endpoint), got \"{}\": {}",
        endpoint_, e.what()));
  }
}

SubmitResult BrokerClient::submit(const std::string& sweep_id, const SweepSpec& spec,
                                  std::string_view what, milliseconds timeout) {
  const uint64_t req = next_req_++;
  const std::string body = encode(SubmitMsg{req, sweep_id, spec.to_json()});
  if (body.size() > static_cast<uint64_t>(kMaxMessageBytes)) {
    constexpr double kMiB = 1 << 20;
    throw ConfigError(fmt::format("{}: the sweep spec is {:.1f} MiB encoded; the limit is {} MiB",
                                  what, static_cast<double>(body.size()) / kMiB,
                                  kMaxMessageBytes >> 20));
  }
  int sends = 0;
  SubmitResult result;
  result.reply =
      await_reply<SubmittedMsg>(socket_, endpoint_, Command::kSubmit, req, body,
                                Command::kSubmitted, decode_submitted, timeout, sends, notice_);
  result.resent = sends > 1;
  return result;
}

PongMsg BrokerClient::ping(milliseconds timeout) {
  const uint64_t req = next_req_++;
  const std::string body = encode(PingMsg{req});
  int sends = 0;
  return await_reply<PongMsg>(socket_, endpoint_, Command::kPing, req, body, Command::kPong,
                              decode_pong, timeout, sends, notice_);
}

CancelledMsg BrokerClient::cancel(const std::string& sweep_id, milliseconds timeout) {
  const uint64_t req = next_req_++;
  const std::string body = encode(CancelMsg{req, sweep_id});
  int sends = 0;
  return await_reply<CancelledMsg>(socket_, endpoint_, Command::kCancel, req, body,
                                   Command::kCancelled, decode_cancelled, timeout, sends, notice_);
}

SubmittedMsg submit_under_fresh_id(
    const std::function<SubmitResult(const std::string& sweep_id)>& submit,
    const std::function<std::string()>& new_id) {
  constexpr int kAttempts = 2;
  std::string id;
  for (int attempt = 1; attempt <= kAttempts; ++attempt) {
    id = new_id();
    SubmitResult result = submit(id);
    if (!result.reply.existed || result.resent) {
      result.reply.sweep_id = id;  // the id it was sent under, whatever the reply echoes
      return result.reply;
    }
    spdlog::info("sweep id {} is taken by another sweep (attempt {} of {})", id, attempt,
                 kAttempts);
  }
  throw Error(fmt::format("sweep id {} already exists in Redis", id));
}

}  // namespace simq
