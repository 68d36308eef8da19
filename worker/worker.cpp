// The worker's three kinds of threads: the IO thread (broker socket, heartbeats, reconnects),
// slot threads (kernels) and the writer (batched Redis writes, then DONE over inproc PAIR).
// Thread-safety: each thread owns its sockets and Store (the slots share one, under
// spec_store_mutex_); they share only the two queues, the spec cache (under specs_mutex_) and
// atomic counters.
#include "worker.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cassert>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <map>
#include <random>
#include <utility>

#include "simq/errors.h"
#include "simq/hop_trace.h"
#include "simq/protocol.h"
#include "simq/signals.h"

namespace simq {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// The writer hands DONE batches to the IO thread here as two frames, [job count] [body]; a
// single empty frame means "all flushed".
constexpr const char* kDoneEndpoint = "inproc://simq-worker-done";

constexpr milliseconds kIdlePoll(100);     // longest poll: how soon a stop signal is seen
constexpr milliseconds kStoppingPoll(20);  // poll while waiting for slots to finish
constexpr milliseconds kPairSendTimeout(100);
constexpr int kFinalLingerMs = 2000;        // how long the last DONE and BYE may take to leave
constexpr int kForcedLingerMs = 100;        // time for the BYE to leave after a second stop signal
constexpr size_t kMaxMissingSweeps = 1024;  // sweep ids remembered as missing from Redis
constexpr size_t kMaxCancelledSweeps = 1024;  // sweep ids remembered as cancelled
// After a stop, once the slots are done: how long results may still take to reach Redis,
// beyond the stop grace, at most (and never more than the grace itself).
constexpr milliseconds kMaxWriteAfterSlots(1000);
constexpr int kMaxRefusals = 3;  // batches Redis refuses before each sweep is written apart
constexpr int kMaxMessagesPerPoll = 256;     // broker messages read before looking at DONEs again
constexpr size_t kMaxNameInRoutingId = 200;  // routing ids are at most 255 bytes
// Pacing (Worker::pace): a kernel running this long gets a running mark (shorter jobs finish
// before a mark could be written and need none); a worker holds at most this much work per slot
// queued beyond its slots (its prefetch), and none once a kernel has run for kLongKernel.
constexpr milliseconds kMarkAfter(10);
constexpr auto kPrefetchHorizon = std::chrono::microseconds(5000);
constexpr milliseconds kLongKernel(20);
// Hand-backs of jobs that came behind long kernels while the prefetch is 0 (a crossed DISPATCH)
// are this far apart at least: should the broker count a slot as free that is not (after a
// reconnection), the same jobs do not bounce between the two every few ms.
constexpr milliseconds kHandBackEvery(1000);
constexpr milliseconds kPaceEvery(5);       // how often the IO thread looks at the slots
constexpr milliseconds kEstimateEvery(20);  // how often the prefetch is reconsidered
constexpr uint64_t kMinJobsToEstimate = 8;  // jobs timed before a prefetch is asked for
constexpr uint64_t kMinHeartbeatMs = 10;
constexpr uint64_t kMaxHeartbeatMs = 3'600'000;
constexpr uint64_t kMaxLiveness = 1000;

milliseconds doubled(milliseconds delay, int max_ms) {
  return std::min(delay * 2, milliseconds(max_ms));
}

// Time left until `deadline`, rounded up to whole milliseconds so a poll never spins.
milliseconds until(Clock::time_point deadline, Clock::time_point now) {
  return deadline <= now ? milliseconds(0) : std::chrono::ceil<milliseconds>(deadline - now);
}

// A factor in [0.5, 1) that spreads retries of jobs that failed together.
double jitter() {
  thread_local std::mt19937_64 random(std::random_device{}());
  return std::uniform_real_distribution<double>(0.5, 1.0)(random);
}

// Appends `text` as a JSON string: as it is between quotes when it is plain printable ASCII
// (sweep ids, kernel names, statuses), else escaped by the JSON library (invalid UTF-8
// replaced, as dump_lenient() does).
void append_json_string(std::string& out, std::string_view text) {
  const bool plain = std::all_of(text.begin(), text.end(), [](char c) {
    return c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
  });
  if (plain) {
    out += '"';
    out += text;
    out += '"';
  } else {
    out += dump_lenient(Json(std::string(text)));
  }
}

// Appends a number as JSON: the shortest text that reads back as the same double, with a
// fraction or exponent; null when it is not finite (JSON has no NaN), as the JSON library
// writes it.
void append_json_number(std::string& out, double value) {
  if (!std::isfinite(value)) {
    out += "null";
    return;
  }
  char text[32];
  const auto end = std::to_chars(std::begin(text), std::end(text), value).ptr;
  out.append(text, end);
  // 0.0 stays a float for readers that tell numbers apart ("0" would read back as an integer).
  if (std::find_if(text, end, [](char c) { return c == '.' || c == 'e'; }) == end) out += ".0";
}

// Appends an integer as JSON.
void append_json_integer(std::string& out, int64_t value) {
  char text[24];
  out.append(text, std::to_chars(std::begin(text), std::end(text), value).ptr);
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
  return dump_lenient(record);  // a kernel's invalid UTF-8 never throws
}

// Calls `write(sweep, jobs)` for the jobs of each sweep in `jobs` that have a record.
template <typename Write>
void for_each_sweep(const std::vector<JobWrite>& jobs, const Write& write) {
  std::map<std::string, std::vector<JobWrite>, std::less<>> by_sweep;
  for (const auto& w : jobs) {
    if (!w.record.empty()) by_sweep[w.job.sweep].push_back(w);
  }
  for (const auto& [sweep, group] : by_sweep) write(sweep, group);
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
  bool welcomed = false;             // this connection's HELLO was answered
  bool done_blocked = false;         // a DONE could not be sent on this connection (warned once)
  uint32_t prefetch = 0;             // jobs beyond the slots the broker was asked for (CREDIT)
  Clock::time_point next_pace;       // when pace() looks at the slots again
  bool slots_busy = false;           // its last look saw slots holding jobs
  Clock::time_point next_estimate;   // when pace() reconsiders the prefetch
  Clock::time_point next_hand_back;  // the earliest pace() hands back jobs behind long kernels
                                     // again while its prefetch stays 0

  // DONE batches not yet handed to a socket, kept across connections: the next connection
  // announces their jobs as busy in HELLO, then sends them.
  struct PendingDone {
    std::string body;
    uint64_t jobs = 0;
  };
  std::deque<PendingDone> unsent;

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

void Worker::JobQueue::push(const std::vector<JobRef>& jobs, bool front) {
  {
    const std::lock_guard lock(mutex_);
    jobs_.insert(front ? jobs_.begin() : jobs_.end(), jobs.begin(), jobs.end());
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
  ++taken_;
  return job;
}

bool Worker::JobQueue::empty() {
  const std::lock_guard lock(mutex_);
  return jobs_.empty();
}

void Worker::JobQueue::settled(uint64_t jobs) {
  [[maybe_unused]] const uint64_t before = taken_.fetch_sub(jobs);
  assert(before >= jobs && "more jobs settled than taken");
}

std::vector<JobRef> Worker::JobQueue::take_sweep(const std::string& sweep) {
  std::vector<JobRef> taken;
  const std::lock_guard lock(mutex_);
  const auto kept = std::stable_partition(jobs_.begin(), jobs_.end(),
                                          [&](const JobRef& job) { return job.sweep != sweep; });
  std::move(kept, jobs_.end(), std::back_inserter(taken));
  jobs_.erase(kept, jobs_.end());
  taken_ += taken.size();
  return taken;
}

std::vector<JobRef> Worker::JobQueue::clear() {
  const std::lock_guard lock(mutex_);
  std::vector<JobRef> dropped(std::make_move_iterator(jobs_.begin()),
                              std::make_move_iterator(jobs_.end()));
  jobs_.clear();
  return dropped;
}

bool Worker::MissingSweeps::known(const std::string& sweep) {
  const std::lock_guard lock(mutex_);
  return ids_.contains(sweep);
}

void Worker::MissingSweeps::warn_once(const std::string& sweep) {
  {
    const std::lock_guard lock(mutex_);
    if (!ids_.insert(sweep).second) return;
    order_.push_back(sweep);
    if (order_.size() > kMaxMissingSweeps) {
      ids_.erase(order_.front());
      order_.pop_front();
    }
  }
  spdlog::warn("sweep {} is no longer in Redis (expired or deleted); its results are discarded",
               sweep);
}

void Worker::WriteQueue::push_marks(std::vector<JobWrite> marks) {
  {
    const std::lock_guard lock(mutex_);
    if (marks_dropped_) return;
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

void Worker::WriteQueue::push_retry(JobWrite mark, uint64_t retry_after_ms) {
  {
    const std::lock_guard lock(mutex_);
    retries_.push_back(DoneJob{mark.job, false, retry_after_ms});
    if (!marks_dropped_) marks_.push_back(std::move(mark));
  }
  ready_.notify_one();
}

void Worker::WriteQueue::drop_marks() {
  const std::lock_guard lock(mutex_);
  marks_dropped_ = true;
  marks_.clear();
}

void Worker::WriteQueue::close() {
  {
    const std::lock_guard lock(mutex_);
    closed_ = true;
  }
  ready_.notify_one();
}

bool Worker::WriteQueue::take(const std::stop_token& stop, std::vector<JobWrite>& marks,
                              std::vector<JobWrite>& finished, std::vector<DoneJob>& retries,
                              bool& closed) {
  {
    std::unique_lock lock(mutex_);
    ready_.wait(lock, stop, [this] {
      return !marks_.empty() || !finished_.empty() || !retries_.empty() || closed_;
    });
    if (stop.stop_requested()) return false;
  }
  take_now(marks, finished, retries, closed);
  return true;
}

void Worker::WriteQueue::take_now(std::vector<JobWrite>& marks, std::vector<JobWrite>& finished,
                                  std::vector<DoneJob>& retries, bool& closed) {
  const std::lock_guard lock(mutex_);
  const auto move_all = []<typename T>(std::vector<T>& from, std::vector<T>& to) {
    if (to.empty()) {
      to.swap(from);  // the common case: no copy, and `from` gets to's spare capacity
    } else {
      std::move(from.begin(), from.end(), std::back_inserter(to));
    }
    from.clear();
  };
  if (marks_dropped_) {
    marks.clear();  // those the writer holds, perhaps from an attempt that failed
  } else {
    move_all(marks_, marks);
  }
  move_all(finished_, finished);
  move_all(retries_, retries);
  closed = closed_;
}

// ---------------------------------------------------------------------------------------
// Construction

Worker::Worker(WorkerOptions options, KernelRegistry kernels)
    : options_(std::move(options)),
      kernels_(std::move(kernels)),
      running_(options_.slots, kMaxCancelledSweeps),
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
  if (options_.stop_grace_ms < 0) {
    throw ConfigError(
        fmt::format("--stop-grace-ms: expected 0 or more, got {}", options_.stop_grace_ms));
  }
  if (options_.process.kill_grace_ms < 0) {
    throw ConfigError(
        fmt::format("--kill-grace-ms: expected 0 or more, got {}", options_.process.kill_grace_ms));
  }
  if (options_.name.empty()) options_.name = process_name();
  kernel_list_ = fmt::format("{}", fmt::join(kernels_.names(), ", "));
}

Worker::~Worker() {
  // Ask every thread first so they wind down together; the jthreads then join.
  for (auto& slot : slots_) slot.request_stop();
  running_.stop_all();
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
  connection.welcomed = false;
  connection.done_blocked = false;
  connection.prefetch = 0;  // a new connection starts with credit = slots
  spdlog::debug("connecting to broker at {} as {}", options_.broker, connection.routing_id);
  send_hello(connection);  // the one HELLO of this connection
  send_done(connection);   // reports held back while there was no connection
}

void Worker::disconnect(Connection& connection) {
  connection.socket.reset();  // linger 0: whatever was queued for the broker is dropped
  connection.welcomed = false;
  // Jobs not started yet belong to the broker again: it requeues them when it gives up on
  // this connection, so running them here would only duplicate work.
  if (const size_t dropped = jobs_.clear().size(); dropped > 0) {
    spdlog::warn("dropped {} queued jobs of the lost connection; the broker requeues them",
                 dropped);
  }
}

void Worker::send_hello(Connection& connection) {
  // On a new connection nothing is dispatched yet, so every unsettled job belongs to an
  // earlier one. With a prefetch there may be more of them than slots (finished, waiting for
  // Redis): at most `slots` are announced, and the broker counts the reports of the others as
  // late.
  const uint64_t taken = jobs_.taken();
  const auto busy = static_cast<uint32_t>(std::min<uint64_t>(taken, options_.slots));
  if (busy > 0) {
    spdlog::info("connecting as {}: {} of {} slots still busy with jobs of an earlier connection",
                 connection.routing_id, busy, options_.slots);
  }
  HelloMsg hello{options_.name, options_.slots, kernels_.names()};
  hello.busy = busy;
  send(connection, Command::kHello, encode(hello));
}

bool Worker::send(Connection& connection, Command command, std::string_view body) {
  if (!connection.socket) return false;
  if (!simq::send(*connection.socket, command, body)) {
    if (command != Command::kDone) {
      spdlog::warn("could not send {} to the broker at {}", command_name(command), options_.broker);
    }
    return false;
  }
  connection.last_sent = Clock::now();
  return true;
}

void Worker::receive_done(zmq::socket_t& done_in, Connection& connection, bool& flushed) {
  zmq::message_t count;
  while (done_in.recv(count, zmq::recv_flags::dontwait)) {
    if (!count.more()) {  // the writer's last word: everything is written and forwarded
      flushed = true;
      break;
    }
    zmq::message_t body;
    [[maybe_unused]] const auto received = done_in.recv(body);  // same message: already here
    assert(received && !body.more());
    uint64_t jobs = 0;
    const auto text = count.to_string_view();
    [[maybe_unused]] const auto parsed =
        std::from_chars(text.data(), text.data() + text.size(), jobs);
    assert(parsed.ec == std::errc());
    connection.unsent.push_back({body.to_string(), jobs});
  }
  send_done(connection);
}

void Worker::send_done(Connection& connection) {
  while (connection.socket && !connection.unsent.empty()) {
    auto& done = connection.unsent.front();
    if (!send(connection, Command::kDone, done.body)) {
      // The broker is not reading (its queue to us is full): kept and tried again each poll.
      if (!connection.done_blocked) {
        spdlog::warn("cannot send DONE to the broker at {} yet: will retry", options_.broker);
      }
      connection.done_blocked = true;
      return;
    }
    jobs_.settled(done.jobs);
    connection.unsent.pop_front();
  }
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
          connection.welcomed = true;
          spdlog::info("registered with the broker at {} as {} ({} slots, heartbeat {} ms)",
                       options_.broker, connection.routing_id, options_.slots, heartbeat);
          break;
        }
        case Command::kDispatch:
          on_dispatch(connection, envelope->body, stopping);
          break;
        case Command::kHeartbeat:
          decode_empty(envelope->body, "HEARTBEAT");
          break;
        case Command::kCancel:
          on_cancel(decode_cancel(envelope->body).sweep_id);
          break;
        case Command::kError: {
          const ErrorMsg error = decode_error(envelope->body);
          if (error.code == "unknown_worker") {
            on_unknown_worker(connection, stopping);
            return;  // that socket is closed, with any further ERRORs queued on it
          }
          spdlog::warn("the broker refused a message: {}: {}", error.code, error.message);
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

void Worker::on_unknown_worker(Connection& connection, bool stopping) {
  // The broker declared this connection dead and requeued its jobs. As for a lost connection:
  // a new socket and routing id, and one HELLO announcing the slots still busy.
  const bool welcomed = connection.welcomed;
  const std::string routing_id = connection.routing_id;
  disconnect(connection);
  if (stopping) {
    spdlog::info("the broker no longer knows {}: leaving without BYE", routing_id);
    return;
  }
  connection.reconnect_at = Clock::now();
  if (!welcomed) {  // it never accepted our HELLO: back off rather than hammer it
    connection.reconnect_at += connection.reconnect_delay;
    connection.reconnect_delay = doubled(connection.reconnect_delay, options_.reconnect_max_ms);
  }
  spdlog::warn("the broker no longer knows {} (it presumed this worker dead): reconnecting",
               routing_id);
}

void Worker::on_dispatch(Connection& connection, std::string_view body, bool stopping) {
  DispatchMsg dispatch = decode_dispatch(body);
  if (hop_tracing()) {
    for (const auto& job : dispatch.jobs) hop_stamp(hop::kWorkerReceived, job.sweep, job.index);
  }
  if (stopping) {
    // Sent before the broker heard our DRAIN: handed straight back.
    spdlog::debug("stopping: handing back {} dispatched jobs", dispatch.jobs.size());
    send(connection, Command::kDrain, encode(DrainMsg{std::move(dispatch.jobs)}));
    return;
  }
  if (!dispatch.spec_problem.empty()) {
    ++stats_.malformed;  // its jobs run: their specs are read from Redis
    spdlog::warn("malformed DISPATCH from the broker: {}", dispatch.spec_problem);
  }
  // A spec kept under one of these ids may be an older sweep's: the id may be used again.
  for (const auto& sweep : dispatch.reload) forget_cached_spec(sweep);
  for (const auto& [sweep, json] : dispatch.specs) {
    try {  // replaces a cached spec, for the same reason
      cache_spec(sweep,
                 std::make_shared<const SweepSpec>(SweepSpec::from_json(json, "sweep " + sweep)));
    } catch (const std::exception& e) {  // the slot reads it from Redis, and says what is wrong
      forget_cached_spec(sweep);
      spdlog::debug("DISPATCH: the spec of sweep {} is unusable: {}", sweep, e.what());
    }
  }
  // Running marks come later, from pace(), for the kernels that run long enough to need one:
  // it looks every few ms from now on, while the slots hold jobs.
  connection.slots_busy = true;
  spdlog::debug("DISPATCH of {} jobs", dispatch.jobs.size());
  jobs_.push(dispatch.jobs);
}

void Worker::pace(Connection& connection, Clock::time_point now, milliseconds& wait,
                  bool stopping) {
  // Only while the slots hold jobs: an idle worker sleeps in its poll.
  if (now < connection.next_pace) {
    if (connection.slots_busy) wait = std::min(wait, until(connection.next_pace, now));
    return;
  }
  connection.next_pace = now + kPaceEvery;
  const RunningJobs::Look look =
      running_.look(now, kMarkAfter, [&](const std::vector<std::pair<JobRef, double>>& to_mark) {
        if (stopping) return;
        std::vector<JobWrite> marks;
        marks.reserve(to_mark.size());
        for (const auto& [job, started_at] : to_mark) {
          marks.push_back(
              JobWrite{job, true, running_record(job, options_.name, started_at), false});
        }
        writes_.push_marks(std::move(marks));
      });
  connection.slots_busy = look.held > 0 || !jobs_.empty();
  if (connection.slots_busy) wait = std::min(wait, kPaceEvery);

  if (stopping || !connection.socket || !connection.welcomed || options_.max_prefetch == 0) return;
  uint32_t wanted = connection.prefetch;
  if (look.longest >= kLongKernel) {
    wanted = 0;  // a long job: what waits behind it may run elsewhere
  } else if (now >= connection.next_estimate &&
             finished_jobs_.load(std::memory_order_relaxed) >= kMinJobsToEstimate) {
    connection.next_estimate = now + kEstimateEvery;
    const uint64_t jobs = finished_jobs_.exchange(0);
    const uint64_t ns = finished_ns_.exchange(0);
    const double mean_ns = std::max(1.0, static_cast<double>(ns) / static_cast<double>(jobs));
    const double per_slot =
        std::chrono::duration<double, std::nano>(kPrefetchHorizon).count() / mean_ns;
    wanted = 0;
    if (per_slot >= 1) {
      const double jobs_wanted = std::min<double>(
          options_.max_prefetch, std::floor(per_slot) * static_cast<double>(options_.slots));
      wanted = std::bit_floor(static_cast<uint32_t>(jobs_wanted));  // steps, not jitter
    }
  }
  // Jobs that came anyway while every slot is taken and a long kernel runs (a DISPATCH that
  // crossed our CREDIT, one after a reconnection) would wait behind it: they go back too.
  // (wanted is 0 then.)
  const bool crowded = look.longest >= kLongKernel && look.held >= options_.slots &&
                       !jobs_.empty() && now >= connection.next_hand_back;
  if (wanted == connection.prefetch && !crowded) return;
  if (wanted == connection.prefetch) connection.next_hand_back = now + kHandBackEvery;
  CreditMsg credit{wanted, {}};
  if (wanted == 0) credit.jobs = jobs_.clear();  // queued behind long jobs: run elsewhere
  if (!send(connection, Command::kCredit, encode(credit))) {
    jobs_.push(credit.jobs, /*front=*/true);  // not handed back after all: first, as before
    return;
  }
  spdlog::debug("holding up to {} jobs beyond {} slots ({} queued jobs handed back)", wanted,
                options_.slots, credit.jobs.size());
  connection.prefetch = wanted;
}

void Worker::on_cancel(const std::string& sweep) {
  // Remembered first: a job a slot takes from now on is stopped at once, so none slips
  // between the two steps.
  const size_t held = running_.cancel(sweep);
  const std::vector<JobRef> queued = jobs_.take_sweep(sweep);
  for (const auto& job : queued) {
    ++stats_.cancelled;
    writes_.push_finished(JobWrite{job, false, {}, false});  // reported without a record
  }
  spdlog::info("sweep {} cancelled: {} queued jobs dropped, {} taken jobs stopped", sweep,
               queued.size(), held);
}

void Worker::begin_stop(Connection& connection) {
  for (auto& slot : slots_) slot.request_stop();  // first, so no slot takes another job
  running_.stop_unstarted();                      // jobs still waiting for their sweep's spec, say
  auto queued = jobs_.clear();
  const size_t dropped = queued.size();
  // The broker sends nothing more and runs these elsewhere now, not after the grace.
  if (connection.socket) send(connection, Command::kDrain, encode(DrainMsg{std::move(queued)}));
  writes_.drop_marks();  // the jobs they announce are left to the broker, or running anyway
  spdlog::info(
      "stopping: {} queued jobs handed back to the broker; running jobs may finish within {} ms, "
      "then they are stopped and left to the broker too (a second signal stops them now)",
      dropped, options_.stop_grace_ms);
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
  for (size_t i = 0; i < options_.slots; ++i) {
    slots_.emplace_back([this, i](const std::stop_token& stop) { slot_loop(i, stop); });
  }
  spdlog::info("worker {} with {} slots and kernels {}", options_.name, options_.slots,
               kernel_list_);

  bool stopping = false;
  const milliseconds grace(options_.stop_grace_ms);
  // Once stopping: when running kernels are stopped. None while stopping only because kernel
  // processes cannot start: the kernels that run are fine and finish, however long they take
  // (a stop signal brings the grace back).
  std::optional<Clock::time_point> grace_ends;
  bool kernels_stopped = false;
  Clock::time_point give_up_at;  // once the slots are done: when unwritten results are abandoned
  bool writes_closed = false;
  bool flushed = false;  // the writer wrote everything and its DONEs were forwarded
  bool forced = false;
  bool gave_up = false;  // the stop grace ran out before the writer flushed
  while (!flushed) {
    if (!stopping && (stop_requested() || kernels_broken_.load())) {
      stopping = true;
      begin_stop(connection);
    }
    if (stopping && !grace_ends && stop_requested()) grace_ends = Clock::now() + grace;
    if (stopping && connection.socket) {
      // Jobs a slot could not start, as they come: the broker runs them elsewhere now.
      if (auto jobs = unstartable_.take(); !jobs.empty()) {
        if (!send(connection, Command::kDrain, encode(DrainMsg{jobs}))) unstartable_.add(jobs);
      }
    }
    if (stopping && stop_signals() >= 2) {
      forced = true;
      running_.stop_all();
      spdlog::warn("second stop signal: leaving without waiting for running jobs and writes");
      break;
    }
    if (stopping && !kernels_stopped && grace_ends && Clock::now() >= *grace_ends) {
      kernels_stopped = true;
      if (const size_t running = running_.stop_all(); running > 0) {
        spdlog::warn(
            "stop grace of {} ms over: stopping {} running jobs; the broker will run them again",
            options_.stop_grace_ms, running);
      }
    }
    if (stopping && !writes_closed && slots_running_.load() == 0) {
      writes_closed = true;
      writes_.close();
      // Results of jobs that finished at the end of the grace get a moment to be written.
      const auto now = Clock::now();
      give_up_at = std::max(grace_ends.value_or(now), now + std::min(grace, kMaxWriteAfterSlots));
    }
    // Slots end within the grace (or soon after: kernels see their stop token); the writer may
    // wait on Redis for ever. Its unwritten results are not ours to keep: BYE hands them back.
    if (writes_closed && Clock::now() >= give_up_at) {
      gave_up = true;
      writer_.request_stop();
      receive_done(done_in, connection, flushed);  // DONEs it forwarded meanwhile
      break;
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

    pace(connection, now, wait, stopping);

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
      receive_done(done_in, connection, flushed);  // held while there is no connection
    } else {
      send_done(connection);  // retries a DONE that found the broker's queue full
    }
    if (count == 2 && (items[1].revents & ZMQ_POLLIN) != 0) {
      handle_broker_message(connection, stopping);
    }
  }

  if (connection.socket) {
    send_done(connection);
    send(connection, Command::kBye, encode_empty());
    // Closing with linger 0 would drop the last DONE and the BYE still in the socket's queue.
    connection.socket->set(zmq::sockopt::linger, kFinalLingerMs);
    if (forced) {
      // The process is about to _Exit without terminating the context (kernels that ignore
      // their stop token would hold it), which would drop what ZeroMQ's IO thread has not
      // sent yet: give it a moment, so the broker requeues at once rather than after the lease.
      std::this_thread::sleep_for(milliseconds(kForcedLingerMs));
    }
  }
  connection.socket.reset();
  if (!forced) {
    writer_.join();  // after a give-up, once its Redis call in progress times out
    for (auto& slot : slots_) slot.join();
  }
  if (gave_up && abandoned_ > 0) {
    spdlog::warn(
        "{} finished jobs were not written to Redis at {} within the stop grace of {} ms: their "
        "results are abandoned and the broker will run them again",
        abandoned_, options_.redis.url(), options_.stop_grace_ms);
  }
  spdlog::info(
      "stopped: {} jobs succeeded, {} failed, {} retried, {} cancelled, {} handed back; {} "
      "results fenced; {} malformed messages",
      stats_.succeeded.load(), stats_.failed.load(), stats_.retried.load(), stats_.cancelled.load(),
      stats_.handed_back.load(), stats_.fenced.load(), stats_.malformed.load());
  return kernels_broken_.load() ? kExitJobsFailed : kExitOk;
}

// ---------------------------------------------------------------------------------------
// Slot threads

void Worker::slot_loop(size_t slot, const std::stop_token& stop) {
  std::optional<ProcessRunner> runner;  // process isolation: the slot's kernel processes
  if (options_.isolation == Isolation::kProcess) {
    runner.emplace(options_.process);
    runner->prepare();  // so that the first job need not wait for it
  }
  while (const auto job = jobs_.pop(stop)) {
    // Every job taken ends in exactly one report (a DONE) unless a stop hands it back: a job
    // left without one would stay in flight on the broker, and busy after a reconnection.
    hop_stamp(hop::kSlotStarted, job->sweep, job->index);
    const std::stop_token job_stop = running_.take(slot, *job);
    if (stop.stop_requested()) running_.stop_unstarted();  // a stop came between pop and take
    Outcome outcome;
    const auto start = Clock::now();
    try {
      outcome = run_job(slot, *job, job_stop, runner ? &*runner : nullptr);
    } catch (const std::exception& e) {
      // Not the kernel (run_job catches those): out of memory building a record, say.
      ++stats_.failed;
      const std::string error = fmt::format("job {} failed outside its kernel: {}",
                                            job_id(job->sweep, job->index), e.what());
      spdlog::error("{}", error);
      outcome.retry_after_ms.reset();
      try {
        outcome.write = failed_job(*job, "", error);
      } catch (const std::exception&) {
        outcome.write = JobWrite{*job, false, {}, false};  // reported DONE without a record
      }
    }
    hop_stamp(hop::kSlotFinished, job->sweep, job->index);
    running_.release(slot);
    finished_ns_.fetch_add(
        static_cast<uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count()),
        std::memory_order_relaxed);
    finished_jobs_.fetch_add(1, std::memory_order_relaxed);
    if (!outcome.write) {
      jobs_.settled(1);  // handed back: by DRAIN (unstartable_), or requeued on BYE
    } else if (outcome.retry_after_ms) {
      writes_.push_retry(std::move(*outcome.write), *outcome.retry_after_ms);
    } else {
      writes_.push_finished(std::move(*outcome.write));
    }
    // After the result is on its way: replaced or started now. Not once kernel processes
    // cannot start: the worker is stopping, and a slot takes no more jobs.
    if (kernels_broken_.load()) break;
    if (runner) runner->prepare();
  }
  slots_running_.fetch_sub(1);
}

Worker::SpecLookup Worker::lookup_sweep(const std::string& sweep, const std::stop_token& stop) {
  if (auto spec = cached_spec(sweep)) return SpecLookup::found(std::move(spec));
  milliseconds delay(options_.redis_retry_min_ms);
  for (;;) {
    {
      // One fetch at a time: slots after the same sweep wait for it rather than fetch it again,
      // and slots whose spec is cached do not wait at all.
      const std::lock_guard lock(spec_store_mutex_);
      if (auto spec = cached_spec(sweep)) return SpecLookup::found(std::move(spec));
      if (stop.stop_requested()) return SpecLookup{};  // the wait for the lock may have been long
      try {
        return fetch_sweep(sweep);
      } catch (const ConnectError& e) {  // Redis is unreachable: it may come back
        spdlog::warn("cannot read sweep {} from Redis at {}: {}; retrying in {} ms", sweep,
                     options_.redis.url(), e.what(), delay.count());
      } catch (const std::exception& e) {  // Redis answered, but not with a sweep record
        return SpecLookup::unreadable(
            fmt::format("cannot read sweep {} from Redis: {}", sweep, e.what()), "");
      }
    }
    if (!sleep_unless_stopped(delay, stop)) return SpecLookup{};
    delay = doubled(delay, options_.redis_retry_max_ms);
  }
}

std::shared_ptr<const SweepSpec> Worker::cached_spec(const std::string& sweep) {
  const std::lock_guard lock(specs_mutex_);
  const auto it = specs_.find(sweep);
  return it != specs_.end() ? it->second : nullptr;
}

Worker::SpecLookup Worker::fetch_sweep(const std::string& sweep) {
  uint64_t news = 0;
  {
    const std::lock_guard lock(specs_mutex_);
    news = spec_news_;
  }
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
  cache_spec(sweep, spec, news);
  return SpecLookup::found(std::move(spec));
}

void Worker::forget_cached_spec(const std::string& sweep) {
  const std::lock_guard lock(specs_mutex_);
  ++spec_news_;
  if (specs_.erase(sweep) > 0) std::erase(spec_order_, sweep);
}

void Worker::cache_spec(const std::string& sweep, std::shared_ptr<const SweepSpec> spec,
                        std::optional<uint64_t> news) {
  const std::lock_guard lock(specs_mutex_);
  if (!news) {
    ++spec_news_;  // from a DISPATCH
  } else if (*news != spec_news_) {
    return;  // read from Redis before a DISPATCH said something of specs: read it again
  }
  if (options_.max_cached_sweeps == 0) return;
  if (const auto [it, added] = specs_.try_emplace(sweep, spec); !added) {
    it->second = std::move(spec);
    return;
  }
  spec_order_.push_back(sweep);
  if (specs_.size() > options_.max_cached_sweeps) {
    specs_.erase(spec_order_.front());
    spec_order_.pop_front();
  }
}

std::string Worker::job_record(const JobRef& job, const char* status, const std::string& kernel,
                               const Json& params, const Json& result, const std::string* error,
                               double started_at, double finished_at, double elapsed_s,
                               const ProcessReport* process,
                               std::optional<uint32_t> dead_letter_runs) const {
  std::string out;
  out.reserve(256);
  out += "{\"job\":";
  append_json_string(out, job_id(job.sweep, job.index));
  out += ",\"sweep\":";
  append_json_string(out, job.sweep);
  out += ",\"index\":";
  out += std::to_string(job.index);
  out += ",\"status\":";
  append_json_string(out, status);
  out += ",\"kernel\":";
  append_json_string(out, kernel);
  out += ",\"params\":";
  out += dump_lenient(params);
  out += ",\"result\":";
  out += error == nullptr ? dump_lenient(result) : "null";
  out += ",\"error\":";
  if (error == nullptr) {
    out += "null";
  } else {
    append_json_string(out, *error);
  }
  out += ",\"attempts\":";
  append_json_integer(out, dead_letter_runs.value_or(job.attempt));
  out += ",\"worker\":";
  append_json_string(out, options_.name);
  out += ",\"started_at\":";
  append_json_number(out, started_at);
  out += ",\"finished_at\":";
  append_json_number(out, finished_at);
  out += ",\"elapsed_s\":";
  append_json_number(out, elapsed_s);
  if (process != nullptr) {
    out += ",\"kernel_pid\":";
    append_json_integer(out, process->pid);
    out += ",\"peak_rss_kib\":";
    append_json_integer(out, static_cast<int64_t>(process->peak_rss_kib));
    if (process->signal != 0) {
      out += ",\"signal\":";
      append_json_integer(out, process->signal);
    }
  }
  if (dead_letter_runs) out += ",\"dead_letter\":true";
  out += '}';
  return out;
}

JobWrite Worker::failed_job(const JobRef& job, const std::string& kernel,
                            const std::string& error) {
  const double now = unix_time();
  return JobWrite{job, false,
                  job_record(job, "failed", kernel, Json::object(), Json(), &error, now, now, 0),
                  false};
}

Worker::Outcome Worker::stopped_before_start(size_t slot, const JobRef& job) {
  if (running_.stopped(slot) == RunningJobs::Stop::kCancel) {
    ++stats_.cancelled;
    spdlog::debug("job {}: its sweep is cancelled: not run", job_id(job.sweep, job.index));
    return Outcome{JobWrite{job, false, {}, false}, std::nullopt};  // reported without a record
  }
  ++stats_.handed_back;  // the worker is stopping
  return Outcome{};
}

std::optional<LostRecord> Worker::lookup_lost(const JobRef& job, const std::stop_token& stop) {
  milliseconds delay(options_.redis_retry_min_ms);
  for (;;) {
    {
      const std::lock_guard lock(spec_store_mutex_);  // the slots share spec_store_
      if (stop.stop_requested()) return std::nullopt;
      try {
        return spec_store_.lost_record(job.sweep, job.index).value_or(LostRecord{});
      } catch (const ConnectError& e) {  // Redis is unreachable: it may come back
        spdlog::warn("cannot read job {}'s lost record from Redis at {}: {}; retrying in {} ms",
                     job_id(job.sweep, job.index), options_.redis.url(), e.what(), delay.count());
      } catch (const std::exception& e) {  // unreadable: only the message is less precise
        spdlog::warn("cannot read job {}'s lost record: {}", job_id(job.sweep, job.index),
                     e.what());
        return LostRecord{};
      }
    }
    if (!sleep_unless_stopped(delay, stop)) return std::nullopt;
    delay = doubled(delay, options_.redis_retry_max_ms);
  }
}

Worker::Outcome Worker::dead_letter(const JobRef& job, const std::string& kernel,
                                    const Json& params, uint32_t max_attempts,
                                    const std::stop_token& stop, size_t slot) {
  const auto lost = lookup_lost(job, stop);
  if (!lost) return stopped_before_start(slot, job);
  const std::string error =
      lost->count > 0
          ? fmt::format("worker lost {} {}: last seen running on {} (attempt {})", lost->count,
                        lost->count == 1 ? "time" : "times", lost->worker, lost->attempt)
          : fmt::format("dead-lettered: attempt {} exceeds max_attempts {}", job.attempt,
                        max_attempts);
  const double now = unix_time();
  // `attempts`: the runs made; this one is not.
  std::string record = job_record(job, "failed", kernel, params, Json(), &error, now, now, 0,
                                  nullptr, job.attempt - 1);
  ++stats_.failed;
  ++stats_.dead_lettered;
  spdlog::warn("job {} dead-lettered: {}", job_id(job.sweep, job.index), error);
  return Outcome{JobWrite{job, false, std::move(record), false}, std::nullopt};
}

Worker::Outcome Worker::run_job(size_t slot, const JobRef& job, const std::stop_token& stop,
                                ProcessRunner* runner) {
  const std::string id = job_id(job.sweep, job.index);
  if (stop.stop_requested()) return stopped_before_start(slot, job);
  const SpecLookup lookup = lookup_sweep(job.sweep, stop);
  if (lookup.missing) {
    missing_sweeps_.warn_once(job.sweep);
    spdlog::debug("job {}: sweep {} is not in Redis at {}: no record can be written", id, job.sweep,
                  options_.redis.url());
    ++stats_.failed;
    return Outcome{JobWrite{job, false, {}, false}, std::nullopt};
  }
  if (!lookup.spec && lookup.error.empty()) {
    return stopped_before_start(slot, job);  // stopped while Redis was unreachable
  }
  if (lookup.spec && job.index >= lookup.spec->total()) {
    // A broker bug, not the job's fault: a record would count a job the sweep does not have.
    spdlog::error("job {}: index out of range, sweep {} has {} jobs: no record is written", id,
                  job.sweep, lookup.spec->total());
    ++stats_.failed;
    return Outcome{JobWrite{job, false, {}, false}, std::nullopt};
  }

  double started_at = unix_time();
  auto start = Clock::now();
  const std::string& kernel_name = lookup.spec ? lookup.spec->kernel : lookup.kernel;
  Json params = Json::object();
  Json result;
  std::optional<std::string> error;
  bool retryable = false;                // the kernel failed in a way worth another attempt
  std::optional<uint32_t> max_attempts;  // the job's limits, known once its params are
  double timeout_s = 0;
  const Kernel* kernel = nullptr;
  if (!lookup.spec) {
    error = lookup.error;
  } else {
    try {
      params = lookup.spec->params_at(job.index);
    } catch (const std::exception& e) {
      error = fmt::format("cannot derive params of job {}: {}", id, e.what());
    }
    if (!error) {
      try {
        max_attempts = lookup.spec->max_attempts_of(params);
        timeout_s = lookup.spec->timeout_of(params);
      } catch (const std::exception& e) {  // a per-job limit whose parameter is not a number
        error = e.what();
      }
    }
    // The broker runs a job again after a lost worker or a retryable failure; past the limit
    // it is this worker that ends it.
    if (max_attempts && job.attempt > *max_attempts) {
      return dead_letter(job, kernel_name, params, *max_attempts, stop, slot);
    }
    kernel = kernels_.find(kernel_name);
    if (!error && kernel == nullptr) {
      error = fmt::format("unknown kernel '{}' (this worker has: {})", kernel_name, kernel_list_);
    }
  }
  auto stopped = RunningJobs::Stop::kNone;
  bool cut_short = false;                  // the kernel threw after its stop was requested
  const ProcessReport* process = nullptr;  // the kernel process that ran it, if one did
  if (!error) {
    started_at = unix_time();
    start = Clock::now();
    std::optional<Clock::time_point> deadline;
    if (timeout_s > 0) {
      deadline = start + std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double>(timeout_s));
    }
    if (!running_.start_kernel(slot, deadline)) return stopped_before_start(slot, job);
    spdlog::debug("job {}: kernel '{}' started (attempt {})", id, kernel_name, job.attempt);
    try {
      const KernelContext context{job, stop};
      result = runner != nullptr ? runner->run(kernel_name, params, context)
                                 : kernel->run(params, context);
      if (!result.is_object()) {
        error = fmt::format("kernel '{}' returned {}, expected an object", kernel_name,
                            describe_value(result));
      }
    } catch (const KernelCancelled& e) {
      cut_short = stop.stop_requested();
      // Not ours to drop: nothing would ever requeue it.
      error = fmt::format("kernel '{}' cancelled itself without a stop request: {}", kernel_name,
                          e.what());
      retryable = lookup.spec->options.retry_errors;
    } catch (const KernelStartError& e) {
      // The job never reached a kernel, and this worker cannot run kernels: the job goes back
      // to the broker at once (DRAIN, same attempt) and the worker stops (run()).
      unstartable_.add(job);
      if (!kernels_broken_.exchange(true)) {
        spdlog::error(
            "{}: this worker takes no more jobs, hands them back to the broker, lets its "
            "running kernels finish and exits 1",
            e.what());
      }
      ++stats_.handed_back;
      return Outcome{};
    } catch (const RetryableError& e) {
      cut_short = stop.stop_requested();
      error = e.what();
      retryable = true;
    } catch (const KernelProcessError& e) {  // it crashed, exited or overran: not retried
      cut_short = stop.stop_requested();
      error = e.what();
      spdlog::warn("job {}: {}", id, e.what());
    } catch (const std::exception& e) {
      cut_short = stop.stop_requested();  // most likely the stop made it fail
      error = *e.what() != '\0' ? std::string(e.what())
                                : fmt::format("kernel '{}' failed without a message", kernel_name);
      retryable = lookup.spec->options.retry_errors;
    } catch (...) {
      cut_short = stop.stop_requested();
      error = fmt::format("kernel '{}' threw something that is not a std::exception", kernel_name);
      retryable = lookup.spec->options.retry_errors;
    }
    stopped = running_.stopped(slot);
    if (runner != nullptr && runner->report().pid != 0) process = &runner->report();
  }
  const double finished_at = unix_time();
  const double elapsed_s = std::chrono::duration<double>(Clock::now() - start).count();

  if (stopped == RunningJobs::Stop::kShutdown && cut_short) {
    ++stats_.handed_back;  // let it run elsewhere
    return Outcome{};
  }
  if (stopped == RunningJobs::Stop::kCancel && cut_short) {
    const std::string cancelled = "cancelled by simq cancel";
    ++stats_.cancelled;
    spdlog::debug("job {}: cancelled while running", id);
    return Outcome{JobWrite{job, false,
                            job_record(job, "cancelled", kernel_name, params, Json(), &cancelled,
                                       started_at, finished_at, elapsed_s, process),
                            true},
                   std::nullopt};
  }
  if (stopped == RunningJobs::Stop::kTimeout) {  // even if it returned a result, late
    error = fmt::format("timed out after {} s", timeout_s);
    retryable = false;
    ++stats_.timed_out;
  }

  if (error && retryable && max_attempts && job.attempt < *max_attempts) {
    const SweepOptions& options = lookup.spec->options;
    const double delay_s =
        std::min(options.backoff_max_s, options.backoff_s * std::exp2(job.attempt - 1)) * jitter();
    const auto delay_ms = static_cast<uint64_t>(std::llround(delay_s * 1000));
    Json mark = Json::object();
    mark["job"] = id;
    mark["sweep"] = job.sweep;
    mark["index"] = job.index;
    mark["status"] = "retrying";
    mark["attempts"] = job.attempt;
    mark["worker"] = options_.name;
    mark["error"] = *error;
    mark["retry_after_s"] = static_cast<double>(delay_ms) / 1000;
    mark["finished_at"] = finished_at;
    ++stats_.retried;
    spdlog::debug("job {} failed (attempt {} of {}): {}; the broker retries it in {} ms", id,
                  job.attempt, *max_attempts, *error, delay_ms);
    return Outcome{JobWrite{job, false, dump_lenient(mark), false}, delay_ms};
  }

  // A failure after earlier attempts says which attempt it was.
  const auto with_attempt = [&](std::string text) {
    if (job.attempt <= 1) return text;
    return max_attempts ? fmt::format("{} (attempt {} of {})", text, job.attempt, *max_attempts)
                        : fmt::format("{} (attempt {})", text, job.attempt);
  };
  if (error) error = with_attempt(std::move(*error));
  std::string record =
      job_record(job, error ? "failed" : "succeeded", kernel_name, params, result,
                 error ? &*error : nullptr, started_at, finished_at, elapsed_s, process);
  if (options_.max_result_bytes > 0 && record.size() > options_.max_result_bytes) {
    error = with_attempt(fmt::format("the job record is {} bytes, more than the limit of {} bytes",
                                     record.size(), options_.max_result_bytes));
    record = job_record(job, "failed", kernel_name, Json::object(), Json(), &*error, started_at,
                        finished_at, elapsed_s, process);
  }
  if (error) {
    ++stats_.failed;
    spdlog::debug("job {} failed: {}", id, *error);
  } else {
    ++stats_.succeeded;
  }
  return Outcome{JobWrite{job, !error, std::move(record), false}, std::nullopt};
}

// ---------------------------------------------------------------------------------------
// Writer thread

namespace {

void stamp_hops(const char* point, const std::vector<JobWrite>& writes) {
  if (!hop_tracing()) return;
  for (const auto& write : writes) hop_stamp(point, write.job.sweep, write.job.index);
}

}  // namespace

void Worker::writer_loop(const std::stop_token& stop) {
  zmq::socket_t done_out(context_, zmq::socket_type::pair);
  configure_socket(done_out);
  done_out.set(zmq::sockopt::sndtimeo, static_cast<int>(kPairSendTimeout.count()));
  done_out.connect(kDoneEndpoint);
  // Blocks while the IO thread is behind, but never past a stop request. `body` empty: the
  // one-frame "all flushed" message.
  const auto forward = [&](uint64_t jobs, std::string_view body) {
    const std::string count = std::to_string(jobs);
    while (!stop.stop_requested()) {
      if (body.empty()) {
        if (done_out.send(zmq::buffer(body), zmq::send_flags::none)) return;
      } else if (done_out.send(zmq::buffer(count), zmq::send_flags::sndmore)) {
        // Once the first frame is queued, ZeroMQ takes the rest of the message whole.
        done_out.send(zmq::buffer(body), zmq::send_flags::none);
        return;
      }
    }
  };

  std::vector<JobWrite> marks;
  std::vector<JobWrite> finished;
  std::vector<DoneJob> retries;  // reported once the marks before them are written
  bool closed = false;
  milliseconds delay(options_.redis_retry_min_ms);
  int refusals = 0;    // batches in a row that Redis answered with an error
  bool retry = false;  // the last attempt failed: this batch may be in Redis in part
  while (!stop.stop_requested()) {
    if (marks.empty() && finished.empty() && retries.empty()) {
      if (closed) {
        forward(0, {});  // everything is written and reported
        return;
      }
      if (!writes_.take(stop, marks, finished, retries, closed)) break;
    } else {
      // A retry also writes what came meanwhile.
      writes_.take_now(marks, finished, retries, closed);
    }
    if (marks.empty() && finished.empty() && retries.empty()) continue;

    bool written = false;
    try {
      stamp_hops(hop::kWriterWriting, finished);
      write_batch(marks, finished, retry, refusals >= kMaxRefusals);
      stamp_hops(hop::kWriterWritten, finished);
      written = true;
    } catch (const StoreError& e) {  // keep the batch and retry; then each sweep on its own
      ++refusals;
      spdlog::warn("Redis at {} refused {} records: {}; retrying in {} ms", options_.redis.url(),
                   finished.size() + marks.size(), e.what(), delay.count());
    } catch (const Error& e) {  // ConnectError: keep the batch and retry until Redis is back
      spdlog::warn("cannot write {} records to Redis at {}: {}; retrying in {} ms",
                   finished.size() + marks.size(), options_.redis.url(), e.what(), delay.count());
    }
    if (!written) {
      retry = true;
      if (!sleep_unless_stopped(delay, stop)) break;
      delay = doubled(delay, options_.redis_retry_max_ms);
      continue;
    }
    retry = false;
    refusals = 0;
    if (delay != milliseconds(options_.redis_retry_min_ms)) {
      spdlog::info("writing to Redis at {} again", options_.redis.url());
      delay = milliseconds(options_.redis_retry_min_ms);
    }

    if (!finished.empty() || !retries.empty()) {
      DoneMsg done;
      done.jobs.reserve(finished.size() + retries.size());
      for (auto& w : finished) done.jobs.push_back(DoneJob{std::move(w.job), w.ok, std::nullopt});
      std::move(retries.begin(), retries.end(), std::back_inserter(done.jobs));
      forward(done.jobs.size(), encode(done));
      finished.clear();
      retries.clear();
    }
  }
  // Stopped before everything was written: the stop grace ran out, or the Worker is going.
  writes_.take_now(marks, finished, retries, closed);
  abandoned_ = finished.size() + retries.size();
}

void Worker::write_batch(std::vector<JobWrite>& marks, std::vector<JobWrite>& finished, bool retry,
                         bool apart) {
  // Marks first: a job's running mark and its terminal record may be in one batch, and the
  // record must win (finish deletes the mark).
  if (!marks.empty()) {
    if (!apart) {
      writer_store_.mark_running(marks);
    } else {
      for_each_sweep(marks, [&](const std::string& sweep, const std::vector<JobWrite>& group) {
        try {
          writer_store_.mark_running(group);
        } catch (const StoreError& e) {  // marks only inform `simq status` and recovery
          spdlog::warn("Redis refuses the running marks of sweep {}: {}; {} marks dropped", sweep,
                       e.what(), group.size());
        }
      });
    }
    marks.clear();
  }
  if (finished.empty()) return;

  if (!apart) {
    const bool all_recorded = std::all_of(finished.begin(), finished.end(),
                                          [](const JobWrite& w) { return !w.record.empty(); });
    if (all_recorded) {
      finish(finished, retry);
    } else {
      std::vector<JobWrite> records;
      std::copy_if(finished.begin(), finished.end(), std::back_inserter(records),
                   [](const JobWrite& w) { return !w.record.empty(); });
      finish(records, retry);
    }
    return;
  }
  // Redis keeps refusing this batch: most likely one sweep's record is corrupt. Each sweep is
  // written on its own, and the jobs of a sweep Redis still refuses are reported without a
  // record: held back, they would stay in flight forever and hold back every other sweep.
  for_each_sweep(finished, [&](const std::string& sweep, const std::vector<JobWrite>& group) {
    try {
      finish(group, /*retry=*/true);  // apart: only after refused attempts
    } catch (const StoreError& e) {
      spdlog::error("Redis refuses the results of sweep {}: {}; {} jobs reported without a record",
                    sweep, e.what(), group.size());
      for (auto& w : finished) {
        if (w.job.sweep == sweep) w.record.clear();  // not written again on a retry
      }
    }
  });
}

void Worker::finish(const std::vector<JobWrite>& records, bool retry) {
  const FinishCounts counts = writer_store_.finish(records);
  if (counts.duplicates > 0 && retry) {
    // Most likely this batch's own records, stored by an earlier attempt whose reply was lost
    // (a timeout) or by the scripts Redis ran before it refused the batch: nothing to report.
    spdlog::debug(
        "{} results were recorded already, most likely by an earlier attempt of this batch",
        counts.duplicates);
  } else if (counts.duplicates > 0) {
    spdlog::info("{} results discarded: another attempt of those jobs was recorded first",
                 counts.duplicates);
  }
  if (counts.fenced > 0) {
    // This worker was presumed lost while it ran them, and the broker gave them to another.
    stats_.fenced += counts.fenced;
    spdlog::info("{} results discarded: a newer attempt of those jobs owns them", counts.fenced);
  }
  if (counts.orphans > 0) warn_missing_sweeps(records);
}

void Worker::warn_missing_sweeps(const std::vector<JobWrite>& written) {
  // The store counts discarded records, not their sweeps: ask Redis which sweeps of the batch
  // are gone, except those warned about already.
  std::vector<std::string> sweeps;
  for (const auto& w : written) {
    if (std::find(sweeps.begin(), sweeps.end(), w.job.sweep) == sweeps.end() &&
        !missing_sweeps_.known(w.job.sweep)) {
      sweeps.push_back(w.job.sweep);
    }
  }
  try {
    for (const auto& sweep : sweeps) {
      if (!writer_store_.sweep_exists(sweep)) {
        missing_sweeps_.warn_once(sweep);
      }
    }
  } catch (const Error& e) {  // only a log line is lost: the records were handled
    spdlog::debug("cannot tell which sweeps are gone from Redis: {}", e.what());
  }
}

}  // namespace simq
