// BrokerClient: the producer's side of the broker's frontend (SUBMIT, PING), one ZeroMQ DEALER
// with its own context. Not thread-safe: one thread uses a client at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <zmq.hpp>

#include "simq/protocol.h"
#include "simq/sweep.h"

namespace simq {

// How long commands wait for the broker to answer by default.
inline constexpr std::chrono::milliseconds kDefaultBrokerTimeout{5000};

// What BrokerClient::submit() got back.
struct SubmitResult {
  SubmittedMsg reply;
  bool resent = false;  // the SUBMIT went out more than once before this reply: then
                        // reply.existed may answer our own earlier send
};

class BrokerClient {
 public:
  // Connects (lazily, as ZeroMQ does) to the broker's frontend, e.g. "tcp://127.0.0.1:5555".
  explicit BrokerClient(std::string endpoint);
  BrokerClient(const BrokerClient&) = delete;
  BrokerClient& operator=(const BrokerClient&) = delete;

  // Submits a sweep under an id the caller chose (new_sweep_id()). The same SUBMIT is sent
  // again once a second until answered: safe, because the broker answers existed=true for an
  // id it has recorded already instead of queuing the sweep twice. `what` names the spec in
  // errors (the sweep file).
  // Throws ConfigError, before sending anything, if the encoded SUBMIT is larger than
  // kMaxMessageBytes (the broker would drop the connection), and if the broker refuses the
  // spec (bad_spec, bad_body); ConnectError if nothing answers within `timeout` (or the broker
  // still cannot reach Redis by then); ProtocolError for any other refusal.
  SubmitResult submit(const std::string& sweep_id, const SweepSpec& spec, std::string_view what,
                      std::chrono::milliseconds timeout = kDefaultBrokerTimeout);

  // Asks the broker for its workers and queue depth. Throws as submit() does.
  PongMsg ping(std::chrono::milliseconds timeout = kDefaultBrokerTimeout);

  const std::string& endpoint() const { return endpoint_; }

 private:
  std::string endpoint_;
  zmq::context_t context_;
  zmq::socket_t socket_;  // declared after context_: closed before the context ends
  uint64_t next_req_ = 1;
};

// Submits one sweep: `submit(id)` sends it under `id` (BrokerClient::submit), `new_id()` makes a
// fresh id (new_sweep_id()). existed=true in the reply to a SUBMIT sent only once means the id
// belongs to someone else's sweep: then it tries once more with another id, and throws Error
// "sweep id <id> already exists in Redis" if that collides too. Only after a resend is
// existed=true taken as our own sweep. Returns the reply; its sweep_id is the sweep's.
SubmittedMsg submit_under_fresh_id(
    const std::function<SubmitResult(const std::string& sweep_id)>& submit,
    const std::function<std::string()>& new_id);

}  // namespace simq
