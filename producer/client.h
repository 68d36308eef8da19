// BrokerClient: the producer's side of the broker's frontend (SUBMIT, PING, CANCEL), one ZeroMQ
// DEALER with its own context. Not thread-safe: one thread uses a client at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <zmq.hpp>

#include "simq/errors.h"
#include "simq/protocol.h"
#include "simq/sweep.h"

namespace simq {

// How long commands wait for the broker to answer by default.
inline constexpr std::chrono::milliseconds kDefaultBrokerTimeout{5000};

// How long `simq submit` and `simq run` keep trying by default while the broker is full, cannot
// reach Redis or does not answer (--submit-timeout).
inline constexpr std::chrono::milliseconds kDefaultSubmitTimeout{60000};

// A stop signal (Ctrl-C) ended a wait for the broker: the caller exits kExitInterrupted.
class Interrupted : public Error {
 public:
  using Error::Error;
};

// Delays between retries: `first`, doubling up to `max`, each with +-25% jitter so that many
// clients refused at once do not come back at once. Not thread-safe.
class Backoff {
 public:
  Backoff(std::chrono::milliseconds first, std::chrono::milliseconds max);

  // The next delay (and doubles the one after it).
  std::chrono::milliseconds next();
  void reset() { current_ = first_; }

 private:
  std::chrono::milliseconds first_;
  std::chrono::milliseconds max_;
  std::chrono::milliseconds current_;
};

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
  // again until answered: safe, because the broker answers existed=true for an id it has
  // recorded already instead of queuing the sweep twice. Without an answer it is resent after
  // 1 s, then every 2 s (a restarted broker never saw the first one); when the broker refuses
  // it for now (queue_full: its --max-queued bound is reached; store_unavailable: it cannot
  // reach Redis) it is resent after 100 ms, doubling to 2 s, with jitter. The first time it
  // starts waiting, the notice callback (set_notice) is told why. `what` names the spec in
  // errors (the sweep file).
  // Throws ConfigError, before sending anything, if the encoded SUBMIT is larger than
  // kMaxMessageBytes (the broker would drop the connection), and if the broker refuses the
  // spec (bad_spec, bad_body); ConnectError if it is not accepted within `timeout` (0 = keep
  // trying for ever); Interrupted on a stop signal (only seen once install_stop_handlers() ran);
  // ProtocolError for any other refusal.
  SubmitResult submit(const std::string& sweep_id, const SweepSpec& spec, std::string_view what,
                      std::chrono::milliseconds timeout = kDefaultSubmitTimeout);

  // Asks the broker for its workers and queue depth. Throws as submit() does.
  PongMsg ping(std::chrono::milliseconds timeout = kDefaultBrokerTimeout);

  // Asks the broker to cancel a sweep (docs/protocol.md, CANCEL): it marks the sweep cancelled
  // in Redis, drops its queued jobs and tells the workers to stop its running ones. Resent as
  // submit() does (a resend is answered "not_running"; the first answer is the one kept).
  // Throws as submit() does.
  CancelledMsg cancel(const std::string& sweep_id,
                      std::chrono::milliseconds timeout = kDefaultBrokerTimeout);

  // Called with one line (no "simq: " prefix, no newline) when a request starts waiting for the
  // broker: "broker queue is full (...); waiting" or "broker at EP not answering; retrying".
  void set_notice(std::function<void(const std::string&)> notice) { notice_ = std::move(notice); }

  const std::string& endpoint() const { return endpoint_; }

 private:
  std::string endpoint_;
  zmq::context_t context_;
  zmq::socket_t socket_;  // declared after context_: closed before the context ends
  uint64_t next_req_ = 1;
  std::function<void(const std::string&)> notice_;
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
