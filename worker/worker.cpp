// The worker's three kinds of threads: the IO thread (broker socket, heartbeats, reconnects),
// slot threads (kernels) and the writer (batched Redis writes, then DONE over inproc PAIR).
// Thread-safety: each thread owns its sockets and Store; they share only the two queues,
// the spec cache (under specs_mutex_) and atomic counters.
#include "worker.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <cerrno>
#include <chrono>
#include <utility>

#include "simq/errors.h"
#include "simq/protocol.h"
#include "simq/signals.h"

namespace simq {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// The writer hands DONE bodies to the IO thread here; an empty message means "all flushed".
constexpr const char* kDoneEndpoint = "inproc://simq-worker-done";

constexpr milliseconds kIdlePoll(100);     // longest poll: how soon a stop signal is seen
constexpr milliseconds kStoppingPoll(20);  // poll while waiting for slots to finish
constexpr milliseconds kPairSendTimeout(100);
constexpr int kMaxMessagesPerPoll = 256;     // broker messages read before looking at DONEs again
constexpr size_t kMaxNameInRoutingId = 200;  // routing ids are at most 255 bytes
constexpr uint64_t kMinHeartbeatMs = 10;
constexpr uint64_t kMaxHeartbeatMs = 3'600'000;
constexpr uint64_t kMaxLiveness = 1000;

// Records are dumped leniently: a kernel's invalid UTF-8 is replaced, never thrown.
std::string dump(const Json& value) {
  return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

milliseconds doubled(milliseconds delay, int max_ms) {
  return std::min(delay * 2, milliseconds(max_ms));
}

// Time left until `deadline`, rounded up to whole milliseconds so a poll never spins.
milliseconds until(Clock::time_point deadline, Clock::time_point now) {
  return deadline <= now ? milliseconds(0) : std::chrono::ceil<milliseconds>(deadline - now);
}

std::string running_record(const JobRef& job, const std::string& worker, double started_at) {
  Json record = Json::object();
  record["job"] = job_id(job.sweep, job.index);
  record["sweep"] = job.sweep;
  record["index"] = job.index;
  record["status"] = "running";
  record["attempts"] = job.attempt;
  record["worker"] = worker;
  record["started_at"] = started_at;
  return dump(record);
}

}  // namespace

// The IO thread's view of the broker: one DEALER per connection, a fresh routing id each time.
struct Worker::Connection {
  std::optional<zmq::socket_t> socket;  // empty while waiting to reconnect
  std::string routing_id;
  uint64_t count = 0;  // connections made so far: the <n> of "<name>#<n>"
  milliseconds heartbeat{kDefaultHeartbeatMs};
  uint64_t liveness = kDefaultLiveness;
  Clock::time_point last_sent;
  Clock::time_point last_heard;
  milliseconds reconnect_delay{0};
  Clock::time_point reconnect_at;

  milliseconds silence_limit() const { return heartbeat * static_cast<int64_t>(liveness); }
};

// A sweep's spec, or why there is none. All fields empty: stopped before Redis answered.
struct Worker::SpecLookup {
  std::shared_ptr<const SweepSpec> spec;  // null when missing, unreadable, or stopped
  bool missing = false;                   // no sweep record in Redis
  std::string error;                      // the record's spec could not be read
  std::string kernel;                     // the record's kernel name, when spec is null

  static SpecLookup found(std::shared_ptr<const SweepSpec> spec) {
    SpecLookup lookup;
    lookup.spec = std::move(spec);
    return lookup;
  }
  static SpecLookup not_found() {
    SpecLookup lookup;
    lookup.missing = true;
    return lookup;
  }
  static SpecLookup unreadable(std::string error, std::string kernel) {
    SpecLookup lookup;
    lookup.error = std::move(error);
    lookup.kernel = std::move(kernel);
    return lookup;
  }
};

// ---------------------------------------------------------------------------------------
// Queues

void Worker::JobQueue::push(const std::vector<JobRef>& jobs) {
  {
    const std::lock_guard lock(mutex_);
    jobs_.insert(jobs_.end(), jobs.begin(), jobs.end());
  }
  if (jobs.size() == 1) {
    ready_.notify_one();
  } else {
    ready_.notify_all();
  }
}

std::optional<JobRef> Worker::JobQueue::pop(const std::stop_token& stop) {
  std::unique_lock lock(mutex_);
  if (!ready_.wait(lock, stop, [this] { return !jobs_.empty(); })) return std::nullopt;
  if (stop.stop_requested()) return std::nullopt;
  JobRef job = std::move(jobs_.front());
  jobs_.pop_front();
  return job;
}

size_t Worker::JobQueue::clear() {
  const std::lock_guard lock(mutex_);
  const size_t count = jobs_.size();
  jobs_.clear();
  return count;
}

void Worker::WriteQueue::push_marks(std::vector<JobWrite> marks) {
  {
    const std::lock_guard lock(mutex_);
    if (marks_.empty()) {
      marks_ = std::move(marks);
    } else {
      std::move(marks.begin(), marks.end(), std::back_inserter(marks_));
    }
  }
  ready_.notify_one();
}

void Worker::WriteQueue::push_finished(JobWrite finished) {
  {
    const std::lock_guard lock(mutex_);
    finished_.push_back(std::move(finished));
  }
  ready_.notify_one();
}

void Worker::WriteQueue::close() {
  {
    const std::lock_guard lock(mutex_);
    closed_ = true;
  }
  ready_.notify_one();
}

bool Worker::WriteQueue::take(const std::stop_token& stop, std::vector<JobWrite>& marks,
                              std::vector<JobWrite>& finished, bool& closed) {
  {
    std::unique_lock lock(mutex_);
    ready_.wait(lock, stop, [this] { return !marks_.empty() || !finished_.empty() || closed_; });
    if (stop.stop_requested()) return false;
  }
  take_now(marks, finished, closed);
  return true;
}

void Worker::WriteQueue::take_now(std::vector<JobWrite>& marks, std::vector<JobWrite>& finished,
                                  bool& closed) {
  const std::lock_guard lock(mutex_);
  const auto move_all = [](std::vector<JobWrite>& from, std::vector<JobWrite>& to) {
    if (to.empty()) {
      to.swap(from);  // the common case: no copy, and `from` gets to's spare capacity
    } else {
      std::move(from.begin(), from.end(), std::back_inserter(to));
    }
    from.clear();
  };
  move_all(marks_, marks);
  move_all(finished_, finished);
  closed = closed_;
}

// ---------------------------------------------------------------------------------------
// Construction

Worker::Worker(WorkerOptions options, KernelRegistry kernels)
    : options_(std::move(options)),
      kernels_(std::move(kernels)),
      spec_store_(options_.redis),
      writer_store_(options_.redis) {
  if (options_.slots == 0) throw ConfigError("--slots: expected at least 1, got 0");
  if (options_.heartbeat_ms <= 0) {
    throw ConfigError(
        fmt::format("--heartbeat-ms: expected more than 0, got {}", options_.heartbeat_ms));
  }
  if (options_.liveness <= 0) {
    throw ConfigError(fmt::format("--liveness: expected more than 0, got {}", options_.liveness));
  }
  if (options_.name.empty()) options_.name = process_name();
  kernel_list_ = fmt::format("{}", fmt::join(kernels_.names(), ", "));
}

Worker::~Worker() {
  // Ask every thread first so they wind down together; the jthreads then join.
  for (auto& slot : slots_) slot.request_stop();
  writer_.request_stop();
}

// ---------------------------------------------------------------------------------------
// IO thread

void Worker::connect(Connection& connection) {
  ++connection.count;
  connection.routing_id =
      fmt::format("{}#{}", options_.name.substr(0, kMaxNameInRoutingId), connection.count);
  zmq::socket_t socket(context_, zmq::socket_type::dealer);
  configure_socket(socket);
  socket.set(zmq::sockopt::routing_id, connection.routing_id);
  try {
    socket.connect(options_.broker);
  } catch (const zmq::error_t& e) {
    throw ConfigError(fmt::format("broker endpoint \"{}\": {}", options_.broker, e.what()));
  }
  connection.socket = std::move(socket);
  connection.last_heard = Clock::now();
  spdlog::debug("connecting to broker at {} as {}", options_.broker, connection.routing_id);
  send_hello(connection);
}

void Worker::disconnect(Connection& connection) {
  connection.socket.reset();  // linger 0: whatever was queued for the broker is dropped
  // Jobs not started yet belong to the broker again: it requeues them when it gives up on
  // this connection, so running them here would only duplicate work.
  if (const size_t dropped = jobs_.clear(); dropped > 0) {
    spdlog::warn("dropped {} queued jobs of the lost connection; the broker requeues them",
                 dropped);
  }
}

void Worker::send_hello(Connection& connection) {
  const HelloMsg hello{options_.name, options_.slots, kernels_.names()};
  send(connection, Command::kHello, encode(hello));
}

void Worker::send(Connection& connection, Command command, std::string_view body) {
  if (!connection.socket) return;
  if (!simq::send(*connection.socket, command, body)) {
    spdlog::warn("could not send {} to the broker at {}", command_name(command), options_.broker);
  }
  connection.last_sent = Clock::now();
}

void Worker::handle_broker_message(Connection& connection, bool stopping) {
  for (int i = 0; i < kMaxMessagesPerPoll && connection.socket; ++i) {
    std::optional<Envelope> envelope;
    try {
      envelope = receive(*connection.socket, false);
    } catch (const FrameError& e) {
      connection.last_heard = Clock::now();  // garbage, but the broker is alive
      ++stats_.malformed;
      spdlog::warn("malformed message from the broker ({}): {}", e.code(), e.what());
      continue;
    }
    if (!envelope) return;
    connection.last_heard = Clock::now();
    try {
      switch (envelope->command) {
        case Command::kWelcome: {
          const WelcomeMsg welcome = decode_welcome(envelope->body);
          const uint64_t heartbeat =
              std::clamp(welcome.heartbeat_ms, kMinHeartbeatMs, kMaxHeartbeatMs);
          const uint64_t liveness = std::clamp(welcome.liveness, uint64_t{1}, kMaxLiveness);
          if (heartbeat != welcome.heartbeat_ms || liveness != welcome.liveness) {
            spdlog::warn("WELCOME asks for heartbeat {} ms and liveness {}; using {} ms and {}",
                         welcome.heartbeat_ms, welcome.liveness, heartbeat, liveness);
          }
          connection.heartbeat = milliseconds(static_cast<int64_t>(heartbeat));
          connection.liveness = liveness;
          connection.reconnect_delay = milliseconds(options_.reconnect_min_ms);
          spdlog::info("registered with the broker at {} as {} ({} slots, heartbeat {} ms)",
                       options_.broker, connection.routing_id, options_.slots, heartbeat);
          break;
        }
        case Command::kDispatch:
          on_dispatch(envelope->body, stopping);
          break;
        case Command::kHeartbeat:
          decode_empty(envelope->body, "HEARTBEAT");
          break;
        case Command::kError: {
          const ErrorMsg error = decode_error(envelope->body);
          if (error.code == "unknown_worker") {
            spdlog::warn("the broker does not know {}: saying HELLO again", connection.routing_id);
            send_hello(connection);
          } else {
            spdlog::warn("the broker refused a message: {}: {}", error.code, error.message);
          }
          break;
        }
        default:
          ++stats_.malformed;
          spdlog::warn("unexpected {} from the broker: ignored", command_name(envelope->command));
          break;
      }
    } catch (const ProtocolError& e) {
      ++stats_.malformed;
      spdlog::warn("malformed {} from the broker: {}", command_name(envelope->command), e.what());
    }
  }
}

void Worker::on_dispatch(std::string_view body, bool stopping) {
  DispatchMsg dispatch = decode_dispatch(body);
  if (stopping) {
    spdlog::debug("stopping: not taking {} dispatched jobs", dispatch.jobs.size());
    return;
  }
  const double now = unix_time();
  std::vector<JobWrite> marks;
  marks.reserve(dispatch.jobs.size());
  for (const auto& job : dispatch.jobs) {
    marks.push_back(JobWrite{job, true, running_record(job, options_.name, now)});
  }
  writes_.push_marks(std::move(marks));
  jobs_.push(dispatch.jobs);
}

void Worker::begin_stop() {
  for (auto& slot : slots_) slot.request_stop();  // first, so no slot takes another job
  const size_t dropped = jobs_.clear();
  spdlog::info(
      "stopping: {} queued jobs left to the broker; waiting for running jobs to finish or "
      "cancel (a second signal skips the wait)",
      dropped);
}

int Worker::run() {
  assert(!started_ && "Worker::run() is called once");
  started_ = true;

  zmq::socket_t done_in(context_, zmq::socket_type::pair);
  configure_socket(done_in);
  done_in.bind(kDoneEndpoint);

  Connection connection;
  connection.heartbeat = milliseconds(options_.heartbeat_ms);
  connection.liveness = static_cast<uint64_t>(options_.liveness);
  connection.reconnect_delay = milliseconds(options_.reconnect_min_ms);
  connect(connection);  // throws ConfigError for a bad endpoint, before any thread starts

  writer_ = std::jthread([this](const std::stop_token& stop) { writer_loop(stop); });
  slots_running_ = options_.slots;
  slots_.reserve(options_.slots);
  for (unsigned i = 0; i < options_.slots; ++i) {
    slots_.emplace_back([this](const std::stop_token& stop) { slot_loop(stop); });
  }
  spdlog::info("worker {} with {} slots and kernels {}", options_.name, options_.slots,
               kernel_list_);

  bool stopping = false;
  bool writes_closed = false;
  bool flushed = false;  // the writer wrote everything and its DONEs were forwarded
  bool forced = false;
  while (!flushed) {
    if (!stopping && stop_requested()) {
      stopping = true;
      begin_stop();
    }
    if (stopping && stop_signals() >= 2) {
      forced = true;
      spdlog::warn("second stop signal: leaving without waiting for running jobs and writes");
      break;
    }
    if (stopping && !writes_closed && slots_running_.load() == 0) {
      writes_closed = true;
      writes_.close();
    }

    auto now = Clock::now();
    milliseconds wait = stopping ? kStoppingPoll : kIdlePoll;
    if (connection.socket) {
      if (!stopping && now - connection.last_heard >= connection.silence_limit()) {
        ++stats_.reconnects;
        spdlog::warn("the broker at {} was silent for {} ms: reconnecting in {} ms",
                     options_.broker, connection.silence_limit().count(),
                     connection.reconnect_delay.count());
        disconnect(connection);
        connection.reconnect_at = now + connection.reconnect_delay;
        connection.reconnect_delay = doubled(connection.reconnect_delay, options_.reconnect_max_ms);
      } else {
        if (now - connection.last_sent >= connection.heartbeat) {
          send(connection, Command::kHeartbeat, encode_empty());
        }
        wait = std::min(wait, until(connection.last_sent + connection.heartbeat, now));
        if (!stopping) {
          wait = std::min(wait, until(connection.last_heard + connection.silence_limit(), now));
        }
      }
    } else if (!stopping) {
      if (now >= connection.reconnect_at) {
        connect(connection);
      } else {
        wait = std::min(wait, until(connection.reconnect_at, now));
      }
    }

    std::array<zmq_pollitem_t, 2> items{};
    items[0] = {done_in.handle(), 0, ZMQ_POLLIN, 0};
    size_t count = 1;
    if (connection.socket) {
      items[1] = {connection.socket->handle(), 0, ZMQ_POLLIN, 0};
      count = 2;
    }
    try {
      zmq::poll(items.data(), count, wait);
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) throw;
      continue;  // a signal: look at the stop flag
    }

    if ((items[0].revents & ZMQ_POLLIN) != 0) {
      zmq::message_t message;
      while (done_in.recv(message, zmq::recv_flags::dontwait)) {
        if (message.size() == 0) {
          flushed = true;
          break;
        }
        if (connection.socket) {
          send(connection, Command::kDone, message.to_string_view());
        } else {
          // Those jobs were dispatched on a connection the broker has given up: it requeues
          // them, and their results, already in Redis, make the reruns duplicates.
          spdlog::debug("no broker connection: a DONE batch is not sent");
        }
      }
    }
    if (count == 2 && (items[1].revents & ZMQ_POLLIN) != 0) {
      handle_broker_message(connection, stopping);
    }
  }

  if (connection.socket) send(connection, Command::kBye, encode_empty());
  connection.socket.reset();
  if (!forced) {
    writer_.join();
    for (auto& slot : slots_) slot.join();
  }
  spdlog::info("stopped: {} jobs succeeded, {} failed, {} cancelled; {} malformed messages",
               stats_.succeeded.load(), stats_.failed.load(), stats_.cancelled.load(),
               stats_.malformed.load());
  return kExitOk;
}

// ---------------------------------------------------------------------------------------
// Slot threads

void Worker::slot_loop(const std::stop_token& stop) {
  while (const auto job = jobs_.pop(stop)) {
    try {
      run_job(*job, stop);
    } catch (const std::exception& e) {
      // Not the kernel (run_job catches those): out of memory building a record, say. The
      // job gets no record here; the broker requeues it when this worker goes away.
      spdlog::error("job {}: {}", job_id(job->sweep, job->index), e.what());
    }
  }
  slots_running_.fetch_sub(1);
}

Worker::SpecLookup Worker::lookup_sweep(const std::string& sweep, const std::stop_token& stop) {
  milliseconds delay(options_.redis_retry_min_ms);
  for (;;) {
    {
      const std::lock_guard lock(specs_mutex_);
      if (const auto it = specs_.find(sweep); it != specs_.end())
        return SpecLookup::found(it->second);
      try {
        const auto info = spec_store_.sweep(sweep);
        if (!info) return SpecLookup::not_found();
        std::shared_ptr<const SweepSpec> spec;
        try {
          const std::string origin = "sweep " + sweep;
          const Json parsed = Json::parse(info->spec, nullptr, false);
          if (parsed.is_discarded()) {
            return SpecLookup::unreadable(origin + ": the spec in Redis is not JSON", info->kernel);
          }
          spec = std::make_shared<const SweepSpec>(SweepSpec::from_json(parsed, origin));
        } catch (const std::exception& e) {
          return SpecLookup::unreadable(e.what(), info->kernel);
        }
        if (options_.max_cached_sweeps > 0) {
          if (specs_.size() >= options_.max_cached_sweeps) {
            specs_.erase(spec_order_.front());
            spec_order_.pop_front();
          }
          specs_.emplace(sweep, spec);
          spec_order_.push_back(sweep);
        }
        return SpecLookup::found(std::move(spec));
      } catch (const Error& e) {  // ConnectError, StoreError: Redis is down or refusing
        spdlog::warn("cannot read sweep {} from Redis at {}: {}; retrying in {} ms", sweep,
                     options_.redis.url(), e.what(), delay.count());
      }
    }
    if (!sleep_unless_stopped(delay, stop)) return SpecLookup{};
    delay = doubled(delay, options_.redis_retry_max_ms);
  }
}

std::string Worker::job_record(const JobRef& job, const std::string& kernel, const Json& params,
                               const Json& result, const std::string* error, double started_at,
                               double finished_at, double elapsed_s) const {
  Json record = Json::object();
  record["job"] = job_id(job.sweep, job.index);
  record["sweep"] = job.sweep;
  record["index"] = job.index;
  record["status"] = error == nullptr ? "succeeded" : "failed";
  record["kernel"] = kernel;
  record["params"] = params;
  record["result"] = error == nullptr ? result : Json(nullptr);
  record["error"] = error == nullptr ? Json(nullptr) : Json(*error);
  record["attempts"] = job.attempt;
  record["worker"] = options_.name;
  record["started_at"] = started_at;
  record["finished_at"] = finished_at;
  record["elapsed_s"] = elapsed_s;
  return dump(record);
}

void Worker::run_job(const JobRef& job, const std::stop_token& stop) {
  const SpecLookup lookup = lookup_sweep(job.sweep, stop);
  if (lookup.missing) {
    spdlog::error(
        "job {}: sweep {} is not in Redis at {} (expired or never recorded): no record "
        "can be written",
        job_id(job.sweep, job.index), job.sweep, options_.redis.url());
    ++stats_.failed;
    writes_.push_finished(JobWrite{job, false, {}});
    return;
  }
  if (!lookup.spec && lookup.error.empty()) {
    ++stats_.cancelled;  // stopped while Redis was unreachable
    return;
  }
  if (lookup.spec && job.index >= lookup.spec->total()) {
    // A broker bug, not the job's fault: a record would count a job the sweep does not have.
    spdlog::error("job {}: index out of range, sweep {} has {} jobs: no record is written",
                  job_id(job.sweep, job.index), job.sweep, lookup.spec->total());
    ++stats_.failed;
    writes_.push_finished(JobWrite{job, false, {}});
    return;
  }

  double started_at = unix_time();
  auto start = Clock::now();
  const std::string& kernel_name = lookup.spec ? lookup.spec->kernel : lookup.kernel;
  Json params = Json::object();
  Json result;
  std::optional<std::string> error;
  if (!lookup.spec) {
    error = lookup.error;
  } else if (const Kernel* kernel = kernels_.find(kernel_name); kernel == nullptr) {
    params = lookup.spec->params_at(job.index);
    error = fmt::format("unknown kernel '{}' (this worker has: {})", kernel_name, kernel_list_);
  } else {
    params = lookup.spec->params_at(job.index);
    started_at = unix_time();
    start = Clock::now();
    try {
      result = kernel->run(params, KernelContext{job, stop});
      if (!result.is_object()) {
        error = fmt::format("kernel '{}' returned {}, expected an object", kernel_name,
                            describe_value(result));
      }
    } catch (const KernelCancelled&) {
      ++stats_.cancelled;
      return;
    } catch (const std::exception& e) {
      if (stop.stop_requested()) {  // most likely the stop made it fail: let it run elsewhere
        ++stats_.cancelled;
        return;
      }
      error = *e.what() != '\0' ? std::string(e.what())
                                : fmt::format("kernel '{}' failed without a message", kernel_name);
    } catch (...) {
      if (stop.stop_requested()) {
        ++stats_.cancelled;
        return;
      }
      error = fmt::format("kernel '{}' threw something that is not a std::exception", kernel_name);
    }
  }
  const double finished_at = unix_time();
  const double elapsed_s = std::chrono::duration<double>(Clock::now() - start).count();

  std::string record = job_record(job, kernel_name, params, result, error ? &*error : nullptr,
                                  started_at, finished_at, elapsed_s);
  if (options_.max_result_bytes > 0 && record.size() > options_.max_result_bytes) {
    error = fmt::format("the job record is {} bytes, more than the limit of {} bytes",
                        record.size(), options_.max_result_bytes);
    record = job_record(job, kernel_name, Json::object(), Json(), &*error, started_at, finished_at,
                        elapsed_s);
  }
  if (error) {
    ++stats_.failed;
    spdlog::debug("job {} failed: {}", job_id(job.sweep, job.index), *error);
  } else {
    ++stats_.succeeded;
  }
  writes_.push_finished(JobWrite{job, !error, std::move(record)});
}

// ---------------------------------------------------------------------------------------
// Writer thread

void Worker::writer_loop(const std::stop_token& stop) {
  zmq::socket_t done_out(context_, zmq::socket_type::pair);
  configure_socket(done_out);
  done_out.set(zmq::sockopt::sndtimeo, static_cast<int>(kPairSendTimeout.count()));
  done_out.connect(kDoneEndpoint);
  // Blocks while the IO thread is behind, but never past a stop request.
  const auto forward = [&](std::string_view body) {
    while (!stop.stop_requested()) {
      if (done_out.send(zmq::buffer(body), zmq::send_flags::none)) return;
    }
  };

  std::vector<JobWrite> marks;
  std::vector<JobWrite> finished;
  std::vector<JobWrite> records;  // the finished jobs that have a record, when not all do
  bool closed = false;
  milliseconds delay(options_.redis_retry_min_ms);
  while (!stop.stop_requested()) {
    if (marks.empty() && finished.empty()) {
      if (closed) {
        forward({});  // everything is written and reported
        return;
      }
      if (!writes_.take(stop, marks, finished, closed)) return;
    } else {
      writes_.take_now(marks, finished, closed);  // a retry also writes what came meanwhile
    }
    if (marks.empty() && finished.empty()) continue;

    try {
      // Marks first: a job's running mark and its terminal record may be in one batch, and
      // the record must win (finish deletes the mark).
      if (!marks.empty()) {
        writer_store_.mark_running(marks);
        marks.clear();
      }
      if (!finished.empty()) {
        const bool all_recorded = std::all_of(finished.begin(), finished.end(),
                                              [](const JobWrite& w) { return !w.record.empty(); });
        if (!all_recorded) {
          records.clear();
          std::copy_if(finished.begin(), finished.end(), std::back_inserter(records),
                       [](const JobWrite& w) { return !w.record.empty(); });
        }
        const FinishCounts counts = writer_store_.finish(all_recorded ? finished : records);
        if (counts.duplicates > 0 || counts.orphans > 0) {
          spdlog::info(
              "{} results discarded as duplicates (another attempt was first), {} of "
              "sweeps no longer in Redis",
              counts.duplicates, counts.orphans);
        }
      }
    } catch (const Error& e) {  // ConnectError, StoreError: keep the batch and retry
      spdlog::warn("cannot write {} records to Redis at {}: {}; retrying in {} ms",
                   finished.size() + marks.size(), options_.redis.url(), e.what(), delay.count());
      if (!sleep_unless_stopped(delay, stop)) return;
      delay = doubled(delay, options_.redis_retry_max_ms);
      continue;
    }
    if (delay != milliseconds(options_.redis_retry_min_ms)) {
      spdlog::info("writing to Redis at {} again", options_.redis.url());
      delay = milliseconds(options_.redis_retry_min_ms);
    }

    if (!finished.empty()) {
      DoneMsg done;
      done.jobs.reserve(finished.size());
      for (auto& w : finished) done.jobs.push_back(DoneJob{std::move(w.job), w.ok});
      forward(encode(done));
      finished.clear();
    }
  }
}

}  // namespace simq
