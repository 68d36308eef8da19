// simq-broker's socket loop: a ROUTER for clients (frontend) and one for workers (backend).
// It moves messages in and out of the Dispatcher and Liveness, records submissions in
// Redis before acknowledging them, and publishes a status snapshot to Redis.
// Not thread-safe: run() owns the sockets; construct and run on one thread.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>
#include <zmq.hpp>

#include "dispatcher.h"
#include "liveness.h"
#include "simq/errors.h"
#include "simq/protocol.h"
#include "simq/store.h"

namespace simq {

struct BrokerOptions {
  std::string frontend = "tcp://*:5555";  // clients connect here (SUBMIT, PING)
  std::string backend = "tcp://*:5556";   // workers connect here
  RedisAddress redis;
  int heartbeat_ms = 1000;  // heartbeat interval both ways, milliseconds
  int liveness = 3;         // a worker silent for heartbeat_ms * liveness is dead
  uint64_t result_ttl_s = kDefaultResultTtlSeconds;  // records expire this long after a sweep
                                                     // finishes; 0 = never
  uint32_t max_batch = 256;                          // most jobs in one DISPATCH
  uint64_t max_queued = 1'000'000;  // SUBMIT is refused (queue_full) while this many jobs
                                    // wait; a sweep is admitted whole (ranges cost O(1))
};

// What went wrong with traffic, for logs and `simq status`.
struct BrokerCounters {
  uint64_t malformed = 0;     // messages refused (bad frames, version, command, body)
  uint64_t unroutable = 0;    // messages to peers that were gone
  uint64_t late_done = 0;     // DONE for jobs not in flight on that worker (late, duplicate)
  uint64_t workers_lost = 0;  // workers dropped for missed heartbeats
  uint64_t requeued = 0;      // jobs returned to the queue from lost workers
  uint64_t submitted = 0;     // sweeps recorded and queued
  uint64_t retries = 0;       // jobs a worker asked to run again (retryable failures)
  uint64_t queue_full = 0;    // SUBMITs refused because --max-queued jobs were waiting
  uint64_t cancelled = 0;     // sweeps cancelled
  uint64_t records_lost = 0;  // jobs reported finished whose records Redis lost: run again
};

// Redis outages as the broker saw them, for `simq status` once Redis is back.
struct RedisOutage {
  double since = 0;         // unix time the current outage began; 0 = Redis answers
  double last_seconds = 0;  // how long the last finished outage lasted
  uint64_t outages = 0;     // outages seen since the broker started
  std::string last_error;   // the last error Redis gave
};

class Broker {
 public:
  Broker(zmq::context_t& context, BrokerOptions options);

  // Serves until stop_requested() (simq/signals.h). Rebuilds the queue of unfinished sweeps
  // from Redis first. Throws ConnectError if Redis cannot be reached at start.
  void run();

  // Endpoints actually bound (a "*" port resolved), valid after construction.
  const std::string& frontend_endpoint() const { return frontend_endpoint_; }
  const std::string& backend_endpoint() const { return backend_endpoint_; }
  const BrokerCounters& counters() const { return counters_; }

 private:
  struct WorkerInfo {
    std::string name;
    uint32_t slots = 0;
    // Sweeps a DISPATCH to it carried the spec of, or told it to read from Redis (`reload`).
    std::unordered_set<std::string> sweeps_told;
  };

  void recover();
  void recover_sweeps();
  void recover_sweep(const std::string& id);
  // Indices below `total` of the jobs of sweep `id` with a terminal record, sorted.
  std::vector<uint64_t> recorded_jobs(const std::string& id, uint64_t total);
  // (index, attempt) of the jobs of sweep `id` below `total` fenced above attempt 1, sorted.
  std::vector<std::pair<uint64_t, uint32_t>> raised_fences(const std::string& id, uint64_t total);
  // Whether a job of sweep `id` is queued, in flight, waiting for its fence or for a retry.
  bool serving(const std::string& id) const;
  // Queues the unfinished jobs of a sweep Redis has as running of which this broker holds no
  // job (serving() is false), unless it was cancelled here. Returns whether it did.
  bool adopt_sweep(const std::string& id);
  // From now on sweep `id` (of `spec`; discarded if unreadable) is served here: its spec goes
  // out with DISPATCH, and an older sweep of the id no longer counts as cancelled.
  void begin_serving(const std::string& id, const Json& spec);
  // dispatch() from a handler: a failure is logged, not answered to the client.
  void dispatch_early();
  // Queues again the jobs of sweep `id`, served here and running in Redis, that are neither
  // held here nor recorded: Redis lost their records after their DONE came (a crash that lost
  // its last writes, a restart from an older snapshot). Returns whether it looked (false for a
  // sweep not running in Redis or cancelled here).
  bool requeue_lost_records(const std::string& id);
  // Jobs in flight when their sweep was looked into for lost records were reported: their
  // workers may have written the records to the Redis before. Those Redis has no record of run
  // again; while Redis does not answer they wait in unchecked_.
  void recheck_records(std::vector<JobRef> jobs);
  // A sweep cancelled, or its id used again: its jobs are checked no more.
  void forget_suspects(const std::string& sweep);
  // After an outage, one sweep Redis has as running per call while reconcile_due_: adopts it
  // if it is not served here; else, if Redis is another server process than before, requeues
  // the jobs whose records it lost.
  void reconcile();
  void on_frontend(const Envelope& message);
  void on_backend(const Envelope& message);
  void on_submit(const Envelope& message);
  void refuse(zmq::socket_t& socket, const std::string& identity, uint64_t req,
              const std::string& code, const std::string& message);
  void send_to_worker(const WorkerId& worker, Command command, const std::string& body);
  void on_cancel(const Envelope& message);
  void remember_cancelled(const std::string& sweep);
  // Jobs handed back (BYE, DRAIN) were queued again: those of cancelled sweeps must not run.
  void drop_cancelled(const std::vector<JobRef>& handed_back);
  void drop_worker(const WorkerId& worker, const std::string& why, bool lost);
  // Raises the fences of jobs about to run with a new attempt, then queues them at the front.
  // While Redis does not answer they wait here (not dispatched), retried every tick.
  void fence_pending();
  void release_due_retries(int64_t now);
  void redis_failed(const Error& error);
  void redis_answered();
  void dispatch();
  // Keeps a new sweep's spec (MessagePack) for the first DISPATCH of it to each worker, if it is
  // small; the oldest are forgotten past kInlineSpecsBytes (workers then read them from Redis).
  void remember_spec(const std::string& sweep, std::string body);
  // Drops sweep's spec kept for DISPATCH, and which workers had it.
  void forget_spec(const std::string& sweep);
  void heartbeat(int64_t now_ms);
  void publish_status();

  BrokerOptions options_;
  zmq::socket_t frontend_;
  zmq::socket_t backend_;
  std::string frontend_endpoint_;
  std::string backend_endpoint_;
  Store store_;
  // The status snapshot has its own connection with a short timeout, so a hung Redis
  // delays the loop (and its heartbeats) by at most that much, and then only every 2 s.
  Store status_store_;
  Dispatcher dispatcher_;
  Liveness liveness_;
  std::unordered_map<WorkerId, WorkerInfo> workers_;
  BrokerCounters counters_;
  RedisOutage outage_;
  bool status_unpublished_ = false;           // the last status snapshot could not be written
  bool reconcile_due_ = false;                // an outage ended: look for sweeps nobody serves
  std::vector<std::string> reconcile_queue_;  // active sweeps still to look at
  // The Redis server process (INFO run_id) whose records this broker's queue agrees with; a
  // reconciliation that finds another one looks for lost records (checking_lost_) and, once
  // it has looked at every sweep, takes checking_run_id_ as its own.
  std::string redis_run_id_;
  std::string checking_run_id_;
  bool checking_lost_ = false;
  // Jobs in flight when their sweep was looked into for lost records (sweep -> index ->
  // attempt): their DONE is checked against Redis (recheck_records). Dropped when the next
  // look begins, and with their sweep when it is cancelled or its id used again.
  std::unordered_map<std::string, std::unordered_map<uint64_t, uint32_t>> suspects_;
  std::vector<JobRef> unchecked_;  // reported suspects not checked yet (Redis did not answer)

  // Jobs that will run as a higher attempt once their fence is in Redis (lost workers,
  // recovered running jobs, retries whose delay is over), oldest first.
  std::vector<Requeue> unfenced_;
  int64_t next_fence_try_ = 0;  // steady ms; backoff while Redis does not answer

  // Retries waiting for their delay, soonest first: (due, steady ms; job as its next attempt).
  using Delayed = std::pair<int64_t, JobRef>;
  struct Later {
    bool operator()(const Delayed& a, const Delayed& b) const { return a.first > b.first; }
  };
  std::vector<Delayed> delayed_;  // a heap under Later (std::push_heap, pop_heap)

  // Specs DISPATCH carries to workers that have not had them, oldest first.
  static constexpr size_t kInlineSpecMaxBytes = size_t{64} << 10;
  static constexpr size_t kInlineSpecsBytes = size_t{8} << 20;
  static constexpr size_t kMaxSweepsTold = 4096;  // per worker, then forgotten (told again)
  std::unordered_map<std::string, std::string> inline_specs_;
  std::deque<std::string> inline_order_;
  size_t inline_bytes_ = 0;

  // Recently cancelled sweeps: their jobs are never queued again (a lost worker's, a retry).
  static constexpr size_t kRememberedCancels = 10000;
  std::unordered_set<std::string> cancelled_;
  std::deque<std::string> cancelled_order_;
};

}  // namespace simq
