// simq-broker's socket loop (see broker.h). Decisions live in Dispatcher and Liveness;
// this file only decodes, calls them, and encodes.
#include "broker.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <iterator>
#include <map>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "simq/errors.h"
#include "simq/hop_trace.h"
#include "simq/signals.h"

namespace simq {

namespace {

std::chrono::milliseconds redis_call_timeout(int heartbeat_ms) {
  return std::chrono::milliseconds(std::clamp(heartbeat_ms / 2, 100, 500));
}

// The reply timeout while the broker recovers sweeps at start: a 10^6-job sweep's records take
// many HSCAN batches, and no worker waits for heartbeats yet.
constexpr std::chrono::milliseconds kSweepReadTimeout{5000};

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Longest retry delay a worker may ask for (an hour): bounds how long a retry waits here.
constexpr uint64_t kMaxRetryDelayMs = 3'600'000;

// Logs the first few refusals of a kind, then one in a thousand: a flood of garbage must
// not become a flood of log lines.
bool worth_logging(uint64_t count) { return count <= 10 || count % 1000 == 0; }

std::string bind_router(zmq::socket_t& socket, const std::string& endpoint, const char* flag) {
  configure_socket(socket);
  socket.set(zmq::sockopt::router_mandatory, 1);
  try {
    socket.bind(endpoint);
  } catch (const zmq::error_t& e) {
    throw ConfigError(fmt::format("{}: cannot bind {}: {}", flag, endpoint, e.what()));
  }
  return socket.get(zmq::sockopt::last_endpoint);
}

}  // namespace

Broker::Broker(zmq::context_t& context, BrokerOptions options)
    : options_(std::move(options)),
      frontend_(context, zmq::socket_type::router),
      backend_(context, zmq::socket_type::router),
      // Every Redis call on the loop is bounded well below a worker's lease, so a hung Redis
      // never stops the heartbeats (recover() alone, before serving, may take longer).
      store_(options_.redis, redis_call_timeout(options_.heartbeat_ms)),
      status_store_(options_.redis, redis_call_timeout(options_.heartbeat_ms)),
      liveness_(options_.heartbeat_ms, options_.liveness) {
  frontend_endpoint_ = bind_router(frontend_, options_.frontend, "--frontend");
  backend_endpoint_ = bind_router(backend_, options_.backend, "--backend");
}

void Broker::recover() {
  // Before serving: nobody waits for heartbeats yet, and a big HSCAN may take a while.
  const ScopedTimeout longer(store_.redis(), kSweepReadTimeout);
  redis_run_id_ = store_.server_run_id();  // the server whose records the queue is built from
  recover_sweeps();
}

void Broker::recover_sweeps() {
  // Redis is the source of truth: every sweep still in the active set is queued again,
  // except the jobs that already have a terminal record. Jobs that were running when the
  // previous broker stopped get their next attempt number. Memory is O(finished + running),
  // never O(total): the gaps between finished jobs are queued as ranges.
  for (const auto& id : store_.active_sweeps()) {
    try {
      recover_sweep(id);
    } catch (const ConnectError&) {
      throw;  // Redis went away: the broker cannot start
    } catch (const std::exception& e) {
      spdlog::error("cannot recover sweep {}: {}; its jobs are not queued", id, e.what());
    }
  }
}

void Broker::recover_sweep(const std::string& id) {
  const auto info = store_.sweep(id);
  if (!info) {
    spdlog::warn("active sweep {} has no record in Redis; skipped", id);
    return;
  }
  const auto index_of = [&](const std::string& field) -> std::optional<uint64_t> {
    const auto index = parse_job_index(field);
    return index && *index < info->total ? index : std::nullopt;
  };
  std::vector<uint64_t> taken = recorded_jobs(id, info->total);  // finished or re-queued below
  const auto finished = [&](uint64_t index) {
    return std::binary_search(taken.begin(), taken.end(), index);
  };
  // Jobs whose fence was raised (their worker was lost, or they wait for a retry) must run as
  // at least that attempt, or every result of theirs would be refused.
  std::unordered_map<uint64_t, uint32_t> fences;
  for (const auto& [index, attempt] : raised_fences(id, info->total))
    if (!finished(index)) fences[index] = attempt;
  std::vector<JobRef> running;
  store_.scan_hash(running_key(id), [&](const std::string& field, const std::string& value) {
    const auto index = index_of(field);
    if (!index || finished(*index)) return;
    const auto mark = Json::parse(value, nullptr, false);
    const auto* attempts =
        mark.is_object() && mark.contains("attempts") ? &mark["attempts"] : nullptr;
    const uint32_t last = attempts != nullptr && attempts->is_number_unsigned() &&
                                  attempts->get<uint64_t>() < UINT32_MAX
                              ? attempts->get<uint32_t>()
                              : 1;
    uint32_t attempt = last + 1;
    if (const auto fence = fences.find(*index); fence != fences.end()) {
      attempt = std::max(attempt, fence->second);
      fences.erase(fence);
    }
    running.push_back(JobRef{id, *index, attempt});
  });
  for (const auto& [index, attempt] : fences) running.push_back(JobRef{id, index, attempt});
  for (const auto& job : running) {
    // Their workers may still be running them: a new attempt, fenced before it is dispatched.
    unfenced_.push_back(Requeue{job, ""});
    taken.push_back(job.index);
  }
  std::vector<std::pair<uint64_t, uint64_t>> covered;
  covered.reserve(taken.size());
  for (const uint64_t index : taken) covered.emplace_back(index, 1);
  uint64_t queued = running.size();
  for (const auto& run : uncovered_runs(std::move(covered), info->total)) {
    dispatcher_.add_range(id, run.first, run.count);
    queued += run.count;
  }
  spdlog::info("recovered sweep {}: {} of {} jobs queued ({} were running or fenced)", id, queued,
               info->total, running.size());
}

std::vector<uint64_t> Broker::recorded_jobs(const std::string& id, uint64_t total) {
  std::vector<uint64_t> recorded;
  store_.scan_hash(jobs_key(id), [&](const std::string& field, const std::string&) {
    const auto index = parse_job_index(field);
    if (index && *index < total) recorded.push_back(*index);
  });
  std::sort(recorded.begin(), recorded.end());
  recorded.erase(std::unique(recorded.begin(), recorded.end()), recorded.end());  // HSCAN repeats
  return recorded;
}

std::vector<std::pair<uint64_t, uint32_t>> Broker::raised_fences(const std::string& id,
                                                                 uint64_t total) {
  std::vector<std::pair<uint64_t, uint32_t>> fences;
  store_.scan_hash(fence_key(id), [&](const std::string& field, const std::string& value) {
    const auto index = parse_job_index(field);
    uint32_t attempt = 0;
    const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), attempt);
    if (index && *index < total && ec == std::errc() && end == value.data() + value.size() &&
        attempt > 1) {
      fences.emplace_back(*index, attempt);
    }
  });
  std::sort(fences.begin(), fences.end());
  return fences;
}

bool Broker::serving(const std::string& id) const {
  if (dispatcher_.has_sweep(id)) return true;
  if (std::any_of(unfenced_.begin(), unfenced_.end(),
                  [&](const Requeue& r) { return r.job.sweep == id; })) {
    return true;
  }
  return std::any_of(delayed_.begin(), delayed_.end(),
                     [&](const Delayed& d) { return d.second.sweep == id; });
}

bool Broker::adopt_sweep(const std::string& id) {
  // Redis has the sweep as running, but this broker holds none of its jobs: its own create,
  // which Redis ran but whose reply was lost (a timeout, a cut connection), or records Redis
  // lost in a restart after their DONE came. The sweep is queued as a recovered one would be.
  // A finished sweep is left alone, and so is one cancelled here (Redis may have lost the
  // cancel: it is not run again). Throws as the store does.
  if (cancelled_.contains(id)) return false;
  const auto info = store_.sweep(id);
  if (!info || info->status != "running") return false;
  spdlog::warn(
      "sweep {} is running in Redis but none of its jobs is queued here (a create "
      "whose reply was lost, or records lost by Redis?): queuing its unfinished jobs",
      id);
  recover_sweep(id);  // reads all its records: a big sweep takes a while (see run())
  // Workers read an unreadable spec from Redis, and fail its jobs saying what is wrong.
  begin_serving(id, Json::parse(info->spec, nullptr, /*allow_exceptions=*/false));
  return true;
}

bool Broker::requeue_lost_records(const std::string& id) {
  // A job leaves this broker only with its DONE, which a worker sends once the job's record is
  // in Redis (or, rarely, without one: a record it could not build or Redis refused). So a job
  // of a running sweep that is neither held here nor recorded most likely had a record that
  // Redis lost. It runs again, at the attempt its fence allows (its lost run's attempt, often).
  if (cancelled_.contains(id)) return false;
  const auto info = store_.sweep(id);
  if (!info || info->status != "running") return false;
  std::vector<std::pair<uint64_t, uint64_t>> covered;  // (first, count): held or recorded
  dispatcher_.held_of(id, covered);
  for (const auto& requeue : unfenced_)
    if (requeue.job.sweep == id) covered.emplace_back(requeue.job.index, 1);
  for (const auto& [due, job] : delayed_)
    if (job.sweep == id) covered.emplace_back(job.index, 1);
  for (const uint64_t index : recorded_jobs(id, info->total)) covered.emplace_back(index, 1);
  uint64_t lost = 0;
  for (const auto& run :
       uncovered_runs(std::move(covered), info->total, raised_fences(id, info->total))) {
    if (run.attempt == 1) {
      dispatcher_.add_range(id, run.first, run.count);
    } else {
      dispatcher_.add_job(JobRef{id, run.first, run.attempt});
    }
    lost += run.count;
  }
  // Their records may yet be lost: written to the old server, reported after this look.
  for (const auto& job : dispatcher_.in_flight_of_sweep(id)) suspects_[id][job.index] = job.attempt;
  if (lost > 0) {
    counters_.records_lost += lost;
    spdlog::warn(
        "sweep {}: {} jobs have no record in Redis and are not queued or running here (records "
        "Redis lost?): queued to run again",
        id, lost);
  }
  return true;
}

void Broker::recheck_records(std::vector<JobRef> jobs) {
  std::erase_if(jobs, [&](const JobRef& job) { return cancelled_.contains(job.sweep); });
  if (jobs.empty()) return;
  if (outage_.since != 0) {  // no reply is coming: asked again once Redis answers
    unchecked_.insert(unchecked_.end(), jobs.begin(), jobs.end());
    return;
  }
  std::vector<RedisArgs> reads;
  reads.reserve(jobs.size());
  for (const auto& job : jobs)
    reads.push_back({"HEXISTS", jobs_key(job.sweep), std::to_string(job.index)});
  std::vector<RedisReply> replies;
  try {
    replies = store_.redis().pipeline(reads);
    redis_answered();
  } catch (const ConnectError& e) {
    redis_failed(e);
    unchecked_.insert(unchecked_.end(), jobs.begin(), jobs.end());
    return;
  } catch (const Error& e) {  // cannot be checked: they run again rather than be lost
    spdlog::error("cannot check the records of {} reported jobs: {}; they run again", jobs.size(),
                  e.what());
    for (const auto& job : jobs) dispatcher_.add_job(job);
    return;
  }
  for (size_t i = 0; i < jobs.size(); ++i) {
    const auto& job = jobs[i];
    if (replies[i].type == RedisReply::Type::kError) {
      try {
        store_.redis().throw_error("HEXISTS", replies[i].str);
      } catch (const ConnectError& e) {  // not ready yet (LOADING...): asked again later
        redis_failed(e);
        unchecked_.push_back(job);
        continue;
      } catch (const StoreError& e) {
        spdlog::error("cannot check the record of job {}: {}; it runs again",
                      job_id(job.sweep, job.index), e.what());
      }
    } else if (replies[i].type == RedisReply::Type::kInteger && replies[i].integer == 1) {
      continue;
    } else {
      ++counters_.records_lost;
      spdlog::warn(
          "job {} was reported after Redis was replaced, but Redis has no record of it (written "
          "to the server before?): queued to run again",
          job_id(job.sweep, job.index));
    }
    dispatcher_.add_job(job);  // its fence cannot be above the attempt that was in flight here
  }
}

void Broker::begin_serving(const std::string& id, const Json& spec) {
  // The id may have been used before (the old sweep expired): its spec and its cancel are
  // forgotten, or workers could run the old spec and hand-backs of new jobs be dropped.
  if (spec.is_discarded()) {
    forget_spec(id);
  } else {
    remember_spec(id, encode_spec(spec));
  }
  if (cancelled_.erase(id) > 0) std::erase(cancelled_order_, id);
  forget_suspects(id);
}

void Broker::dispatch_early() {
  try {
    dispatch();
  } catch (const std::exception& e) {  // the loop dispatches again; the SUBMIT is answered
    spdlog::error("cannot dispatch yet: {}", e.what());
  }
}

void Broker::reconcile() {
  // After an outage: a sweep Redis has as running that this broker does not serve lost its
  // jobs here (a create whose reply was lost and whose producer gave up; records a restarted
  // Redis lost after their DONE). Each is queued again, one per turn of the loop: adopting a
  // big sweep reads all its records, and workers' messages must not wait for every sweep.
  // If Redis is another server process than before (restarted, failed over), the sweeps
  // served here are looked into too, for records it lost. (With the loop's short reply
  // timeout: the loop must keep heartbeating.)
  if (reconcile_queue_.empty()) {
    try {
      const std::string run_id = store_.server_run_id();
      reconcile_queue_ = store_.active_sweeps();
      checking_lost_ = run_id.empty() || run_id != redis_run_id_;
      checking_run_id_ = run_id;
      if (checking_lost_) {
        // Jobs reported since the last look and not checked yet are looked at with the rest.
        suspects_.clear();
        unchecked_.clear();
        spdlog::warn(
            "Redis at {} is not the server process it was (restarted, or failed over): looking "
            "for records it lost (running sweeps: {})",
            options_.redis.url(), reconcile_queue_.size());
      }
    } catch (const ConnectError& e) {
      redis_failed(e);  // when Redis answers again, the outage's end starts this over
      reconcile_due_ = false;
      return;
    }
  }
  while (!reconcile_queue_.empty()) {
    const std::string id = std::move(reconcile_queue_.back());
    reconcile_queue_.pop_back();
    try {
      const bool looked =
          serving(id) ? checking_lost_ && requeue_lost_records(id) : adopt_sweep(id);
      if (looked) break;  // one sweep's records per turn
    } catch (const ConnectError& e) {
      redis_failed(e);  // the next pass starts over, looking for lost records again if due
      reconcile_queue_.clear();
      reconcile_due_ = false;
      return;
    } catch (const std::exception& e) {
      spdlog::error("sweep {} is running in Redis but cannot be queued: {}", id, e.what());
    }
  }
  reconcile_due_ = !reconcile_queue_.empty();
  if (!reconcile_due_ && checking_lost_) {
    redis_run_id_ = checking_run_id_;  // every sweep was looked into
    checking_lost_ = false;
  }
}

void Broker::refuse(zmq::socket_t& socket, const std::string& identity, uint64_t req,
                    const std::string& code, const std::string& message) {
  if (!send(socket, Command::kError, encode(ErrorMsg{req, code, message}), &identity)) {
    ++counters_.unroutable;
  }
}

void Broker::on_frontend(const Envelope& message) {
  switch (message.command) {
    case Command::kSubmit:
      on_submit(message);
      return;
    case Command::kCancel:
      on_cancel(message);
      return;
    case Command::kPing: {
      const auto ping = decode_ping(message.body);
      uint64_t slots = 0;
      for (const auto& [id, info] : workers_) slots += info.slots;
      const PongMsg pong{ping.req, workers_.size(), slots, dispatcher_.queued(),
                         dispatcher_.in_flight()};
      if (!send(frontend_, Command::kPong, encode(pong), &message.identity)) ++counters_.unroutable;
      return;
    }
    default:
      ++counters_.malformed;
      refuse(frontend_, message.identity, 0, "bad_command",
             fmt::format("{} is not a client command{}", command_name(message.command),
                         message.command == Command::kHello
                             ? " (workers connect to the broker's backend endpoint)"
                             : ""));
  }
}

void Broker::on_submit(const Envelope& message) {
  const auto submit = decode_submit(message.body);
  hop_stamp(hop::kBrokerReceived, submit.sweep_id, 0);
  SweepSpec spec;
  try {
    spec = SweepSpec::from_json(submit.spec, "SUBMIT spec");
  } catch (const ConfigError& e) {
    ++counters_.malformed;
    refuse(frontend_, message.identity, submit.req, "bad_spec", e.what());
    return;
  }
  if (dispatcher_.queued() >= options_.max_queued) {
    // Back-pressure: nothing is recorded, so nothing is lost; the client waits and resends.
    ++counters_.queue_full;
    refuse(frontend_, message.identity, submit.req, "queue_full",
           fmt::format("the broker has {} jobs queued, its limit (--max-queued {}); retry later",
                       dispatcher_.queued(), options_.max_queued));
    return;
  }
  bool created = false;
  try {
    created = store_.create_sweep(submit.sweep_id, spec, options_.result_ttl_s);
    hop_stamp(hop::kBrokerRecorded, submit.sweep_id, 0);
    redis_answered();
  } catch (const Error& e) {
    // Not recorded, so not acknowledged: the client retries.
    redis_failed(e);
    spdlog::warn("cannot record sweep {}: {}", submit.sweep_id, e.what());
    refuse(
        frontend_, message.identity, submit.req, "store_unavailable",
        fmt::format("cannot record the sweep in Redis at {}: {}", options_.redis.url(), e.what()));
    return;
  }
  if (created) {
    begin_serving(submit.sweep_id, spec.to_json());  // the spec as Redis has it
    dispatcher_.add_range(submit.sweep_id, 0, spec.total());
    ++counters_.submitted;
    // The jobs go out before the reply and the log line: the round trip of a job waits on its
    // DISPATCH, not on SUBMITTED (its result is read from Redis). While jobs wait for their
    // fence (lost workers' jobs, retries due), the loop's order is kept instead: it fences
    // them first (if Redis lets it), then dispatches.
    if (unfenced_.empty()) dispatch_early();
  } else if (!serving(submit.sweep_id)) {
    // "existed", and none of its jobs here: perhaps a create Redis ran whose reply was lost.
    try {
      adopt_sweep(submit.sweep_id);
    } catch (const ConnectError& e) {
      redis_failed(e);
      refuse(frontend_, message.identity, submit.req, "store_unavailable",
             fmt::format("sweep {} is recorded in Redis at {} but could not be read back: {}",
                         submit.sweep_id, options_.redis.url(), e.what()));
      return;
    } catch (const std::exception& e) {
      spdlog::error("sweep {} is recorded in Redis but cannot be queued: {}", submit.sweep_id,
                    e.what());
      refuse(frontend_, message.identity, submit.req, "internal",
             fmt::format("sweep {} is recorded in Redis but cannot be queued: {}", submit.sweep_id,
                         e.what()));
      return;
    }
  }
  const SubmittedMsg reply{submit.req, submit.sweep_id, spec.total(), !created};
  if (!send(frontend_, Command::kSubmitted, encode(reply), &message.identity)) {
    ++counters_.unroutable;
  }
  if (created) {
    spdlog::info("sweep {} submitted: {} jobs of kernel {}", submit.sweep_id, spec.total(),
                 spec.kernel);
  }
}

void Broker::on_cancel(const Envelope& message) {
  const auto cancel = decode_cancel(message.body);
  const std::string& id = cancel.sweep_id;
  CancelOutcome outcome = CancelOutcome::kNoSweep;
  try {
    outcome = store_.cancel_sweep(id);
    redis_answered();
  } catch (const Error& e) {
    redis_failed(e);
    refuse(
        frontend_, message.identity, cancel.req, "store_unavailable",
        fmt::format("cannot cancel the sweep in Redis at {}: {}", options_.redis.url(), e.what()));
    return;
  }
  CancelledMsg reply{cancel.req, id, "no_sweep", 0, 0};
  if (outcome != CancelOutcome::kNoSweep) {
    // Whatever Redis said, nothing of the sweep may run again.
    remember_cancelled(id);
    reply.dropped = dispatcher_.drop_sweep(id);
    reply.dropped += std::erase_if(unfenced_, [&](const Requeue& r) { return r.job.sweep == id; });
    reply.dropped +=
        std::erase_if(delayed_, [&](const Delayed& d) { return d.second.sweep == id; });
    std::make_heap(delayed_.begin(), delayed_.end(), Later{});
    reply.running = dispatcher_.in_flight_of(id);
    reply.outcome = outcome == CancelOutcome::kCancelled ? "cancelled" : "not_running";
    std::vector<WorkerId> workers;
    for (const auto& [worker, info] : workers_) workers.push_back(worker);
    const std::string stop = encode(CancelMsg{0, id});
    for (const auto& worker : workers) send_to_worker(worker, Command::kCancel, stop);
  }
  if (outcome == CancelOutcome::kCancelled) {
    ++counters_.cancelled;
    spdlog::info("sweep {} cancelled: {} queued jobs dropped, {} running asked to stop", id,
                 reply.dropped, reply.running);
  }
  if (!send(frontend_, Command::kCancelled, encode(reply), &message.identity)) {
    ++counters_.unroutable;
  }
}

void Broker::forget_suspects(const std::string& sweep) {
  suspects_.erase(sweep);
  std::erase_if(unchecked_, [&](const JobRef& job) { return job.sweep == sweep; });
}

void Broker::remember_cancelled(const std::string& sweep) {
  forget_suspects(sweep);  // its jobs do not run again
  if (!cancelled_.insert(sweep).second) return;
  cancelled_order_.push_back(sweep);
  if (cancelled_order_.size() > kRememberedCancels) {
    cancelled_.erase(cancelled_order_.front());
    cancelled_order_.pop_front();
  }
}

void Broker::on_backend(const Envelope& message) {
  const auto& worker = message.identity;
  const int64_t now = now_ms();
  if (message.command == Command::kHello) {
    const auto hello = decode_hello(message.body);
    if (dispatcher_.has_worker(worker)) drop_worker(worker, "said HELLO again", true);
    dispatcher_.add_worker(worker, hello.slots, hello.busy);
    workers_[worker] = WorkerInfo{hello.name, hello.slots, {}};
    liveness_.touch(worker, now);
    spdlog::info("worker {} joined with {} slots ({} still busy with earlier jobs)", hello.name,
                 hello.slots, hello.busy);
    send_to_worker(worker, Command::kWelcome,
                   encode(WelcomeMsg{static_cast<uint64_t>(options_.heartbeat_ms),
                                     static_cast<uint64_t>(options_.liveness)}));
    return;
  }
  if (!dispatcher_.has_worker(worker)) {
    if (message.command == Command::kBye) return;
    // Dropped earlier (missed heartbeats) or never said HELLO: its jobs were requeued.
    refuse(backend_, worker, 0, "unknown_worker", "unknown worker: send HELLO first");
    return;
  }
  // A message counts as a sign of life only once its body decoded.
  switch (message.command) {
    case Command::kDone: {
      const auto done = decode_done(message.body);
      liveness_.touch(worker, now);
      std::vector<JobRef> suspected;  // reported with a record Redis may have lost
      const auto suspect_reported = [&](const DoneJob& job) {
        const auto sweep = suspects_.find(job.job.sweep);
        if (sweep == suspects_.end()) return;
        const auto suspect = sweep->second.find(job.job.index);
        if (suspect == sweep->second.end()) return;
        // A retry has no record to check; another attempt than the one in flight at the look
        // wrote nothing to the old server.
        if (suspect->second == job.job.attempt && !job.retry_after_ms) suspected.push_back(job.job);
        sweep->second.erase(suspect);
        if (sweep->second.empty()) suspects_.erase(sweep);
      };
      for (const auto& job : done.jobs) {
        if (dispatcher_.complete(worker, job.job)) {
          if (job.retry_after_ms) {
            // A retryable failure, no record written: the next attempt after the delay.
            ++counters_.retries;
            const auto delay =
                static_cast<int64_t>(std::min<uint64_t>(*job.retry_after_ms, kMaxRetryDelayMs));
            // +1: `now` is whole milliseconds, rounded down; a retry is never early.
            delayed_.emplace_back(now + delay + 1,
                                  JobRef{job.job.sweep, job.job.index, job.job.attempt + 1});
            std::push_heap(delayed_.begin(), delayed_.end(), Later{});
          }
          if (!suspects_.empty()) suspect_reported(job);
          continue;
        }
        // Not in flight here: a job of the worker's earlier session (frees a busy slot),
        // or a late or duplicate report.
        if (!dispatcher_.release_busy(worker)) ++counters_.late_done;
      }
      if (!suspected.empty()) recheck_records(std::move(suspected));
      return;
    }
    case Command::kHeartbeat:
      decode_empty(message.body, "HEARTBEAT");
      liveness_.touch(worker, now);
      return;
    case Command::kBye:
      drop_worker(worker, "said BYE", false);
      return;
    case Command::kDrain: {
      const auto drain = decode_drain(message.body);
      liveness_.touch(worker, now);
      const uint64_t requeued = dispatcher_.drain(worker, drain.jobs);
      counters_.requeued += requeued;
      drop_cancelled(drain.jobs);
      const auto it = workers_.find(worker);
      spdlog::info("worker {} is stopping: it takes no more jobs; {} unstarted jobs requeued",
                   it == workers_.end() ? worker : it->second.name, requeued);
      return;
    }
    case Command::kCredit: {
      const auto credit = decode_credit(message.body);
      liveness_.touch(worker, now);
      const auto it = workers_.find(worker);
      const uint32_t slots = it == workers_.end() ? 0 : it->second.slots;
      const uint64_t requeued =
          dispatcher_.set_credit(worker, slots + credit.prefetch, credit.jobs);
      counters_.requeued += requeued;
      drop_cancelled(credit.jobs);
      spdlog::debug("worker {} holds up to {} jobs beyond its {} slots; {} unstarted jobs requeued",
                    it == workers_.end() ? worker : it->second.name, credit.prefetch, slots,
                    requeued);
      return;
    }
    default:
      ++counters_.malformed;
      refuse(backend_, worker, 0, "bad_command",
             fmt::format("{} is not a worker command", command_name(message.command)));
  }
}

void Broker::send_to_worker(const WorkerId& worker, Command command, const std::string& body) {
  if (send(backend_, command, body, &worker)) {
    liveness_.sent(worker, now_ms());
    return;
  }
  ++counters_.unroutable;
  if (dispatcher_.has_worker(worker)) drop_worker(worker, "is unreachable", true);
}

void Broker::drop_worker(const WorkerId& worker, const std::string& why, bool lost) {
  const auto it = workers_.find(worker);
  const std::string name = it == workers_.end() ? worker : it->second.name;
  // A lost worker's jobs run again as a new attempt, fenced first so that whatever the old
  // attempt still writes is refused; jobs handed back (BYE) were never finished: same attempt.
  std::vector<JobRef> unstarted;
  const auto jobs = dispatcher_.remove_worker(
      worker, lost ? Dispatcher::Handback::kHeld : Dispatcher::Handback::kReturned, &unstarted);
  if (lost) {
    for (const auto& job : jobs) unfenced_.push_back(Requeue{job, name});
  } else {
    drop_cancelled(jobs);
  }
  drop_cancelled(unstarted);
  counters_.requeued += jobs.size() + unstarted.size();
  liveness_.forget(worker);
  if (it != workers_.end()) workers_.erase(it);
  spdlog::log(jobs.empty() ? spdlog::level::info : spdlog::level::warn,
              "worker {} {}: {} jobs in flight requeued{}{}", name, why, jobs.size(),
              lost && !jobs.empty() ? " as their next attempt" : "",
              unstarted.empty()
                  ? ""
                  : fmt::format(" ({} more it held unstarted: same attempt)", unstarted.size()));
  fence_pending();
}

void Broker::drop_cancelled(const std::vector<JobRef>& handed_back) {
  std::unordered_set<std::string> sweeps;
  for (const auto& job : handed_back) {
    if (cancelled_.contains(job.sweep)) sweeps.insert(job.sweep);
  }
  for (const auto& sweep : sweeps) dispatcher_.drop_sweep(sweep);
}

void Broker::fence_pending() {
  if (unfenced_.empty() || now_ms() < next_fence_try_) return;
  std::erase_if(unfenced_, [&](const Requeue& r) { return cancelled_.contains(r.job.sweep); });
  std::vector<Requeue> fenced;
  try {
    store_.requeue(unfenced_);
    redis_answered();
    fenced = std::move(unfenced_);
    unfenced_.clear();
  } catch (const ConnectError& e) {
    redis_failed(e);
    spdlog::warn("cannot fence {} jobs in Redis at {}: {}; they wait, retrying in 1 s",
                 unfenced_.size(), options_.redis.url(), e.what());
    next_fence_try_ = now_ms() + 1000;
    return;
  } catch (const Error& e) {
    // Redis refused one sweep's script (a corrupt fence, say): fence the sweeps one by one so
    // that the others run; the refused ones wait and are tried again.
    std::map<std::string, std::vector<Requeue>> by_sweep;
    for (auto& r : unfenced_) by_sweep[r.job.sweep].push_back(std::move(r));
    unfenced_.clear();
    for (auto& [sweep, jobs] : by_sweep) {
      try {
        store_.requeue(jobs);
        std::move(jobs.begin(), jobs.end(), std::back_inserter(fenced));
      } catch (const Error& refused) {
        spdlog::error("cannot fence {} jobs of sweep {}: {}; retrying in 1 s", jobs.size(), sweep,
                      refused.what());
        std::move(jobs.begin(), jobs.end(), std::back_inserter(unfenced_));
      }
    }
    next_fence_try_ = now_ms() + 1000;
  }
  std::vector<JobRef> jobs;
  jobs.reserve(fenced.size());
  for (auto& r : fenced) jobs.push_back(std::move(r.job));
  dispatcher_.requeue_front(jobs);
}

void Broker::release_due_retries(int64_t now) {
  while (!delayed_.empty() && delayed_.front().first <= now) {
    std::pop_heap(delayed_.begin(), delayed_.end(), Later{});
    unfenced_.push_back(Requeue{std::move(delayed_.back().second), ""});
    delayed_.pop_back();
  }
}

void Broker::redis_failed(const Error& error) {
  if (dynamic_cast<const ConnectError*>(&error) == nullptr) return;  // Redis answered
  outage_.last_error = error.what();
  if (outage_.since != 0) return;
  outage_.since = unix_time();
  ++outage_.outages;
  // A reconciliation under way is started over when Redis answers: Redis may be another
  // server process by then, and sweeps already looked at must be looked at again.
  reconcile_queue_.clear();
  reconcile_due_ = false;
  spdlog::warn("Redis at {} is unreachable ({}); queued and running jobs are kept, retrying",
               options_.redis.url(), error.what());
}

void Broker::redis_answered() {
  if (outage_.since == 0) return;
  outage_.last_seconds = unix_time() - outage_.since;
  outage_.since = 0;
  reconcile_due_ = true;
  spdlog::info("Redis at {} is reachable again after {:.1f} s", options_.redis.url(),
               outage_.last_seconds);
}

void Broker::dispatch() {
  for (;;) {
    auto assignments = dispatcher_.dispatch(options_.max_batch);
    if (assignments.empty()) return;
    for (auto& assignment : assignments) {
      DispatchMsg message(std::move(assignment.jobs));
      // The specs of sweeps new to this worker come along, so it need not read them from
      // Redis. Those not kept here it is told to read: a spec it kept under the same id, from
      // before it joined or before the id was used again, may be another sweep's.
      const auto worker = workers_.find(assignment.worker);
      if (worker != workers_.end()) {
        auto& told = worker->second.sweeps_told;
        const std::string* last = nullptr;  // a batch is mostly runs of one sweep's jobs
        for (const auto& job : message.jobs) {
          if (last != nullptr && *last == job.sweep) continue;
          last = &job.sweep;
          if (told.contains(job.sweep)) continue;
          if (told.size() >= kMaxSweepsTold) told.clear();
          told.insert(job.sweep);
          if (const auto spec = inline_specs_.find(job.sweep); spec != inline_specs_.end()) {
            message.spec_bodies.emplace_back(job.sweep, spec->second);
          } else {
            message.reload.push_back(job.sweep);
          }
        }
      }
      if (hop_tracing()) {
        for (const auto& job : message.jobs)
          hop_stamp(hop::kBrokerDispatched, job.sweep, job.index);
      }
      send_to_worker(assignment.worker, Command::kDispatch, encode(message));
    }
  }
}

void Broker::forget_spec(const std::string& sweep) {
  // A sweep id used again (the old sweep expired): no worker may get the old spec for it.
  for (auto& [id, worker] : workers_) worker.sweeps_told.erase(sweep);
  if (const auto old = inline_specs_.find(sweep); old != inline_specs_.end()) {
    inline_bytes_ -= old->second.size();
    inline_specs_.erase(old);
    std::erase(inline_order_, sweep);
  }
}

void Broker::remember_spec(const std::string& sweep, std::string body) {
  forget_spec(sweep);
  if (body.size() > kInlineSpecMaxBytes) return;
  inline_bytes_ += body.size();
  inline_specs_.emplace(sweep, std::move(body));
  inline_order_.push_back(sweep);
  while (inline_bytes_ > kInlineSpecsBytes) {
    const auto oldest = inline_specs_.find(inline_order_.front());
    inline_bytes_ -= oldest->second.size();
    inline_specs_.erase(oldest);
    inline_order_.pop_front();
  }
}

void Broker::heartbeat(int64_t now) {
  for (const auto& worker : liveness_.expire(now)) {
    ++counters_.workers_lost;
    drop_worker(
        worker,
        fmt::format("missed heartbeats for {} ms", options_.heartbeat_ms * options_.liveness),
        true);
  }
  for (const auto& worker : liveness_.due_heartbeats(now)) {
    if (!send(backend_, Command::kHeartbeat, encode_empty(), &worker)) ++counters_.unroutable;
  }
}

void Broker::publish_status() {
  Json workers = Json::array();
  for (const auto& [id, info] : workers_) {
    workers.push_back({{"name", info.name},
                       {"slots", info.slots},
                       {"in_flight", dispatcher_.in_flight(id)},
                       {"busy", dispatcher_.busy(id)}});
  }
  const Json status = {{"frontend", frontend_endpoint_},
                       {"backend", backend_endpoint_},
                       {"workers", std::move(workers)},
                       {"queued", dispatcher_.queued()},
                       {"in_flight", dispatcher_.in_flight()},
                       {"malformed", counters_.malformed},
                       {"unroutable", counters_.unroutable},
                       {"late_done", counters_.late_done},
                       {"workers_lost", counters_.workers_lost},
                       {"requeued", counters_.requeued},
                       {"submitted", counters_.submitted},
                       {"updated_at", unix_time()},
                       {"retries", counters_.retries},
                       {"queue_full", counters_.queue_full},
                       {"cancelled", counters_.cancelled},
                       {"records_lost", counters_.records_lost},
                       {"max_queued", options_.max_queued},
                       {"unfenced", unfenced_.size()},
                       {"delayed", delayed_.size()},
                       {"redis_outage",
                        {{"since", outage_.since},
                         {"last_seconds", outage_.last_seconds},
                         {"outages", outage_.outages},
                         {"last_error", outage_.last_error}}}};
  try {
    status_store_.put_broker_status(
        status, std::chrono::milliseconds(options_.heartbeat_ms * options_.liveness));
    status_unpublished_ = false;
    redis_answered();
  } catch (const Error& e) {
    if (!status_unpublished_) spdlog::warn("cannot publish status: {}", e.what());
    status_unpublished_ = true;
    redis_failed(e);
  }
}

void Broker::run() {
  recover();
  spdlog::info("serving clients on {} and workers on {} (Redis {})", frontend_endpoint_,
               backend_endpoint_, options_.redis.url());
  zmq::pollitem_t items[] = {{frontend_.handle(), 0, ZMQ_POLLIN, 0},
                             {backend_.handle(), 0, ZMQ_POLLIN, 0}};
  const int64_t tick_ms = std::max(10, options_.heartbeat_ms / 4);
  int64_t next_tick = now_ms();
  int64_t next_status = next_tick;
  while (!stop_requested()) {
    int64_t due = next_tick;
    if (!delayed_.empty()) due = std::min(due, delayed_.front().first);
    const int64_t wait = std::max<int64_t>(0, due - now_ms());
    try {
      zmq::poll(items, 2, std::chrono::milliseconds(wait));
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      throw;
    }
    // Drain both sockets in turns; bounded so neither starves the other or the timers.
    for (int round = 0; round < 512; ++round) {
      bool any = false;
      for (int i = 0; i < 2; ++i) {
        auto& socket = i == 0 ? frontend_ : backend_;
        std::optional<Envelope> message;
        try {
          message = receive(socket, true);
          if (!message) continue;
          any = true;
          i == 0 ? on_frontend(*message) : on_backend(*message);
        } catch (const FrameError& e) {
          any = true;
          if (worth_logging(++counters_.malformed)) {
            spdlog::warn("refused a message on the {}: {} ({} refused so far)",
                         i == 0 ? "frontend" : "backend", e.what(), counters_.malformed);
          }
          refuse(socket, e.identity(), 0, e.code(), e.what());
        } catch (const ProtocolError& e) {
          if (worth_logging(++counters_.malformed)) {
            spdlog::warn("refused a {} on the {}: {} ({} refused so far)",
                         command_name(message->command), i == 0 ? "frontend" : "backend", e.what(),
                         counters_.malformed);
          }
          refuse(socket, message->identity, 0, "bad_body", e.what());
        } catch (const std::exception& e) {
          // Anything else a message provoked: answered, counted and logged, never fatal.
          if (worth_logging(++counters_.malformed)) {
            spdlog::error("error handling a {} on the {}: {}", command_name(message->command),
                          i == 0 ? "frontend" : "backend", e.what());
          }
          refuse(socket, message->identity, 0, "internal",
                 fmt::format("the broker could not handle this {}: {}",
                             command_name(message->command), e.what()));
        }
      }
      if (!any) break;
    }
    const int64_t read_at = now_ms();  // workers' messages up to here are read
    release_due_retries(read_at);
    fence_pending();
    if (!unchecked_.empty() && outage_.since == 0) recheck_records(std::exchange(unchecked_, {}));
    if (reconcile_due_) reconcile();
    dispatch();
    const int64_t now = now_ms();
    // A slow turn (Redis answering slowly, a big sweep adopted) left workers' heartbeats unread
    // in the socket: the broker was busy, not they.
    if (now - read_at > liveness_.interval_ms()) liveness_.touch_all(now);
    if (now >= next_tick) {
      heartbeat(now);
      next_tick = now + tick_ms;
    }
    if (now >= next_status) {
      publish_status();
      // Often enough that `simq status` right after a sweep shows the queue as it is; while
      // Redis does not answer, rarely, so the loop keeps its heartbeats.
      next_status = now + (status_unpublished_ ? 2000 : std::min(options_.heartbeat_ms, 250));
    }
  }
  spdlog::info("stopping: {} jobs queued and {} in flight stay recorded in Redis",
               dispatcher_.queued(), dispatcher_.in_flight());
  try {
    store_.clear_broker_status();
  } catch (const Error&) {
    // Redis is gone too; the snapshot expires by itself.
  }
}

}  // namespace simq
