// BrokerClient: requests to the broker's frontend, resent once a second until answered.
// Not thread-safe (one DEALER socket).
#include "client.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <optional>
#include <utility>

#include "simq/codec.h"
#include "simq/errors.h"

namespace simq {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kResendInterval{1000};

// Waits for the reply to request `req`, sending `body` again every kResendInterval. `decode`
// turns the expected reply's body into a Reply with a `req` field; replies to other requests
// (late answers to earlier ones) are dropped.
// Counts in `sends` the times `body` went out.
template <typename Reply, typename Decode>
Reply await_reply(zmq::socket_t& socket, const std::string& endpoint, Command command, uint64_t req,
                  const std::string& body, Command expected, Decode decode, milliseconds timeout,
                  int& sends) {
  const auto deadline = Clock::now() + timeout;
  auto next_send = Clock::now();
  std::string unavailable;  // the broker's last "store_unavailable" message, if any
  for (auto now = Clock::now(); now < deadline; now = Clock::now()) {
    if (now >= next_send) {
      if (send(socket, command, body)) {
        ++sends;
      } else {
        spdlog::debug("{}: send would block", endpoint);
      }
      next_send = now + kResendInterval;
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
        if (error.code == "store_unavailable") {
          spdlog::info("the broker cannot reach Redis yet: {}; retrying", error.message);
          unavailable = error.message;
          continue;  // the next resend retries
        }
        throw ProtocolError(fmt::format("the broker at {} refused {}: {} ({})", endpoint,
                                        command_name(command), error.message, error.code));
      } else {
        spdlog::debug("ignoring {} from the broker", command_name(message->command));
      }
    }
  }
  if (!unavailable.empty()) {
    throw ConnectError(
        fmt::format("the broker at {} cannot reach Redis: {}", endpoint, unavailable));
  }
  throw ConnectError(fmt::format("cannot reach the broker at {} (no reply within {:g} s)", endpoint,
                                 static_cast<double>(timeout.count()) / 1000.0));
}

}  // namespace

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
  result.reply = await_reply<SubmittedMsg>(socket_, endpoint_, Command::kSubmit, req, body,
                                           Command::kSubmitted, decode_submitted, timeout, sends);
  result.resent = sends > 1;
  return result;
}

PongMsg BrokerClient::ping(milliseconds timeout) {
  const uint64_t req = next_req_++;
  const std::string body = encode(PingMsg{req});
  int sends = 0;
  return await_reply<PongMsg>(socket_, endpoint_, Command::kPing, req, body, Command::kPong,
                              decode_pong, timeout, sends);
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
