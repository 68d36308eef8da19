// The simq worker: an IO thread talking to the broker, slot threads running kernels (in the slot
// thread, or in a kernel process per slot with process isolation), and a writer thread putting
// results in Redis before the broker hears DONE. Thread-safety: run() is called once, from one
// thread (it becomes the IO thread); the rest is internal.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>
#include <zmq.hpp>

#include "kernel.h"
#include "kernel_process.h"
#include "running_jobs.h"
#include "simq/config.h"
#include "simq/job.h"
#include "simq/protocol.h"
#include "simq/redis.h"
#include "simq/store.h"
#include "simq/sweep.h"

namespace simq {

// Where a slot runs kernels.
enum class Isolation {
  kThread,   // in the slot's own thread: no cost per job, but a crash ends the worker and a
             // kernel that ignores its stop token keeps its slot
  kProcess,  // in a kernel process of the slot's own (kernel_process.h)
};

struct WorkerOptions {
  std::string broker = std::string(kDefaultBackend);  // the broker's backend endpoint
  RedisAddress redis;                                 // where results are written
  unsigned slots = 1;  // jobs run at once, the credit announced in HELLO; >= 1
  std::string name;    // in logs and job records; "" = process_name() (host:pid)
  int heartbeat_ms = kDefaultHeartbeatMs;  // ms between heartbeats until WELCOME sets it; > 0
  int liveness = kDefaultLiveness;         // the broker is dead after heartbeat_ms * liveness of
                                           // silence; until WELCOME sets it; > 0
  int reconnect_min_ms = 500;     // first wait before reconnecting to a silent broker, in ms;
                                  // doubles on each failure
  int reconnect_max_ms = 5000;    // longest wait between reconnections, in ms
  int redis_retry_min_ms = 100;   // first wait before retrying a failed Redis write, in ms;
                                  // doubles on each failure
  int redis_retry_max_ms = 2000;  // longest wait between Redis retries, in ms
  size_t max_result_bytes = size_t{16} << 20;  // a larger job record fails the job; 0 = no limit
  size_t max_cached_sweeps = 256;  // sweep specs kept in memory; 0 = fetch for every job
  // How long a stop lets running jobs finish and their results reach Redis, in ms from the
  // stop request; kernels still running are then stopped and unwritten results abandoned (the
  // broker runs those jobs again); 0 = do not wait; >= 0.
  int stop_grace_ms = 30000;
  // Most jobs the worker asks the broker to keep dispatched to it beyond its slots. It asks
  // for them only while its jobs are short (enough for ~5 ms of work per slot) and for none
  // once a kernel runs 20 ms, handing back what waits then; 0 = credit is the slots, always.
  uint32_t max_prefetch = 1024;
  Isolation isolation = Isolation::kThread;
  ProcessOptions process;  // the kernel processes, with Isolation::kProcess
};

// Counters for logs and tests. Each is read and written atomically.
struct WorkerStats {
  std::atomic<uint64_t> succeeded{0};      // jobs that ended with a succeeded record
  std::atomic<uint64_t> failed{0};         // jobs that ended failed (or whose sweep was missing),
                                           // dead-lettered and timed out ones included
  std::atomic<uint64_t> dead_lettered{0};  // jobs failed unrun: attempt past max_attempts
  std::atomic<uint64_t> timed_out{0};      // jobs failed because they ran past timeout_s
  std::atomic<uint64_t> retried{0};        // failures reported for a retry, without a record
  std::atomic<uint64_t> cancelled{0};      // jobs of sweeps cancelled by `simq cancel`: running
                                           // ones recorded "cancelled", queued ones dropped
  std::atomic<uint64_t> handed_back{0};    // jobs stopped by a worker stop, not recorded (the
                                           // broker runs them again)
  std::atomic<uint64_t> fenced{0};         // results Redis refused: a newer attempt owns the job
  std::atomic<uint64_t> malformed{0};      // messages from the broker that could not be understood
  std::atomic<uint64_t> reconnects{0};     // times a silent broker was given up and reconnected
};

class Worker {
 public:
  // Connects to Redis (throws ConnectError if it cannot) but not yet to the broker.
  Worker(WorkerOptions options, KernelRegistry kernels);
  // Stops and joins the threads if run() did not (an exception, or a second stop signal).
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Serves the broker until stop_requested() (simq/signals.h). Then it stops taking jobs
  // (those not started are left to the broker, which requeues them on BYE with the same
  // attempt), lets running kernels finish within options.stop_grace_ms of the stop request,
  // writes their results to Redis and reports them DONE, sends BYE and returns 0. Kernels
  // still running when the grace ends are stopped and their jobs not recorded (handed back);
  // results still unwritten then (Redis is down) are abandoned: the broker runs those jobs
  // again. A second stop signal stops the kernels at once and returns without waiting for
  // them or for writes. A worker whose kernel processes cannot be started (KernelStartError)
  // hands that job back and stops the same way by itself, and returns kExitJobsFailed: its
  // jobs run elsewhere rather than fail here. Throws ConfigError for a bad broker endpoint.
  int run();

  const WorkerStats& stats() const { return stats_; }

 private:
  struct Connection;
  struct SpecLookup;

  // How a slot's job ended.
  struct Outcome {
    // The terminal record to store and report DONE (an empty record: report only); for a
    // retry, the retry mark. nullopt: handed back to the broker, neither recorded nor reported.
    std::optional<JobWrite> write;
    std::optional<uint64_t> retry_after_ms;  // a retry: no terminal record, report DONE with this
  };

  // Jobs dispatched by the broker and not yet taken by a slot (IO thread -> slots), and how
  // many taken jobs are still unsettled: running, being written, or DONE not yet handed to a
  // broker socket. HELLO announces those as busy after a reconnection.
  class JobQueue {
   public:
    // Queues jobs behind the others; `front`: ahead of them, in the order given.
    void push(const std::vector<JobRef>& jobs, bool front = false);
    // The next job, counted as taken (under the same lock as clear(), so a job is either
    // dropped or counted); nullopt once stop is requested.
    std::optional<JobRef> pop(const std::stop_token& stop);
    std::vector<JobRef> clear();  // drops the jobs not taken yet; returns them
    // Removes the sweep's jobs not taken yet and returns them, counted as taken (each must
    // be reported DONE).
    std::vector<JobRef> take_sweep(const std::string& sweep);
    uint64_t taken() const { return taken_.load(); }
    bool empty();  // no job waits for a slot
    // `jobs` taken jobs were reported DONE to the broker, or handed back (never reported).
    void settled(uint64_t jobs);

   private:
    std::mutex mutex_;
    std::condition_variable_any ready_;
    std::deque<JobRef> jobs_;
    std::atomic<uint64_t> taken_{0};
  };

  // Sweeps found missing from Redis, remembered so that each is warned about once. Any thread.
  class MissingSweeps {
   public:
    bool known(const std::string& sweep);
    void warn_once(const std::string& sweep);  // logs the warning the first time only

   private:
    std::mutex mutex_;
    std::unordered_set<std::string> ids_;
    std::deque<std::string> order_;  // oldest first, for forgetting past a limit
  };

  // Running marks (from the IO thread) and finished jobs (from the slots), for the writer.
  // A finished job with an empty record is only reported DONE (its sweep is missing, or it was
  // cancelled before it started). A retry is a mark, then a DONE with retry_after_ms.
  class WriteQueue {
   public:
    void push_marks(std::vector<JobWrite> marks);
    void push_finished(JobWrite finished);
    void push_retry(JobWrite mark, uint64_t retry_after_ms);
    // Stopping: running marks are useless once their jobs are left to the broker, and only
    // informative for the jobs finishing in the grace, so the queued ones go, later ones are
    // ignored, and take*() empty the writer's `marks` too.
    void drop_marks();
    void close();  // no more items: the writer flushes what it has and says so
    // Waits until something is queued or the queue is closed; moves everything queued to the
    // end of `marks`, `finished` and `retries`. Returns false if `stop` was requested.
    bool take(const std::stop_token& stop, std::vector<JobWrite>& marks,
              std::vector<JobWrite>& finished, std::vector<DoneJob>& retries, bool& closed);
    // Same, without waiting.
    void take_now(std::vector<JobWrite>& marks, std::vector<JobWrite>& finished,
                  std::vector<DoneJob>& retries, bool& closed);

   private:
    std::mutex mutex_;
    std::condition_variable_any ready_;
    std::vector<JobWrite> marks_;
    std::vector<JobWrite> finished_;
    std::vector<DoneJob> retries_;
    bool marks_dropped_ = false;
    bool closed_ = false;
  };

  // IO thread.
  void connect(Connection& connection);
  void disconnect(Connection& connection);
  void send_hello(Connection& connection);
  bool send(Connection& connection, Command command, std::string_view body);
  void receive_done(zmq::socket_t& done_in, Connection& connection, bool& flushed);
  void send_done(Connection& connection);
  void handle_broker_message(Connection& connection, bool stopping);
  void on_unknown_worker(Connection& connection, bool stopping);
  void on_dispatch(Connection& connection, std::string_view body, bool stopping);
  void on_cancel(const std::string& sweep);
  // Every few ms: running marks for kernels that have run kMarkAfter, and the prefetch asked
  // of the broker (CREDIT) from how long jobs take. Lowers `wait` to when it should look again.
  void pace(Connection& connection, std::chrono::steady_clock::time_point now,
            std::chrono::milliseconds& wait, bool stopping);
  // Stops taking jobs: tells the broker (DRAIN) and hands back the queued ones.
  void begin_stop(Connection& connection);

  // Slot threads. `slot` numbers the slot (0 to slots - 1) in running_.
  void slot_loop(size_t slot, const std::stop_token& stop);
  // Runs the job with `stop`, its own stop token from running_; its kernel in the slot's thread,
  // or through `runner` (the slot's kernel processes) if there is one.
  Outcome run_job(size_t slot, const JobRef& job, const std::stop_token& stop,
                  ProcessRunner* runner);
  // A job stopped before its kernel started: reported without a record if its sweep was
  // cancelled, else handed back.
  Outcome stopped_before_start(size_t slot, const JobRef& job);
  // A job dispatched past its max_attempts: failed unrun, saying why.
  Outcome dead_letter(const JobRef& job, const std::string& kernel, const Json& params,
                      uint32_t max_attempts, const std::stop_token& stop, size_t slot);
  // The job's lost record (count 0 if it has none); nullopt if stopped while Redis was
  // unreachable.
  std::optional<LostRecord> lookup_lost(const JobRef& job, const std::stop_token& stop);
  JobWrite failed_job(const JobRef& job, const std::string& kernel, const std::string& error);
  SpecLookup lookup_sweep(const std::string& sweep, const std::stop_token& stop);
  std::shared_ptr<const SweepSpec> cached_spec(const std::string& sweep);
  // A DISPATCH says a kept spec may be another sweep's: the next job of the sweep reads it
  // from Redis.
  void forget_cached_spec(const std::string& sweep);
  // Keeps a spec: one a DISPATCH carried (no `news`), or one read from Redis, unless a DISPATCH
  // said anything of specs since `news` (spec_news_ before the read). The oldest goes past
  // options_.max_cached_sweeps.
  void cache_spec(const std::string& sweep, std::shared_ptr<const SweepSpec> spec,
                  std::optional<uint64_t> news = std::nullopt);
  // Reads a sweep from Redis and caches its spec; throws as Store::sweep() does. Called under
  // spec_store_mutex_.
  SpecLookup fetch_sweep(const std::string& sweep);
  // A terminal record as compact JSON text (docs/redis-schema.md), written field by field
  // rather than built as a Json (that was most of a no-op job's instructions); `status`
  // "succeeded" needs error == nullptr. `process`: the kernel process that ran the job, with
  // process isolation. `dead_letter_runs`: the job was dead-lettered after that many runs.
  std::string job_record(const JobRef& job, const char* status, const std::string& kernel,
                         const Json& params, const Json& result, const std::string* error,
                         double started_at, double finished_at, double elapsed_s,
                         const ProcessReport* process = nullptr,
                         std::optional<uint32_t> dead_letter_runs = std::nullopt) const;

  // Writer thread.
  void writer_loop(const std::stop_token& stop);
  // Writes running marks, then terminal records (those that have one). Throws ConnectError, or
  // StoreError if Redis refuses; `retry`: an earlier attempt at this batch failed; `apart`:
  // each sweep on its own, and a sweep Redis refuses has its jobs' records cleared so that
  // they are reported without one.
  void write_batch(std::vector<JobWrite>& marks, std::vector<JobWrite>& finished, bool retry,
                   bool apart);
  // Stores terminal records and logs what was discarded; `retry` as for write_batch().
  void finish(const std::vector<JobWrite>& records, bool retry);
  void warn_missing_sweeps(const std::vector<JobWrite>& written);

  WorkerOptions options_;
  const KernelRegistry kernels_;
  std::string kernel_list_;  // "fault, fib, mc_pi, noop, sleep" for unknown-kernel errors
  WorkerStats stats_;

  zmq::context_t context_;  // destroyed after every socket (declared before the threads)
  JobQueue jobs_;
  WriteQueue writes_;
  MissingSweeps missing_sweeps_;
  std::atomic<unsigned> slots_running_{0};
  std::atomic<bool> kernels_broken_{false};  // a kernel process could not be started
  // Jobs slots could not start (KernelStartError), for the IO thread to hand back.
  class Unstartable {
   public:
    void add(const JobRef& job) { add(std::vector<JobRef>{job}); }
    void add(const std::vector<JobRef>& jobs) {
      const std::lock_guard lock(mutex_);
      jobs_.insert(jobs_.end(), jobs.begin(), jobs.end());
    }
    std::vector<JobRef> take() {
      const std::lock_guard lock(mutex_);
      return std::exchange(jobs_, {});
    }

   private:
    std::mutex mutex_;
    std::vector<JobRef> jobs_;
  } unstartable_;
  std::atomic<uint64_t> finished_jobs_{0};  // jobs the slots ended since the last estimate
  std::atomic<uint64_t> finished_ns_{0};    // their time in the slots, in ns
  RunningJobs running_;                     // the slots' jobs and their stop sources

  // Sweep specs by id, under specs_mutex_ (never held across a Redis call). The Store fetches
  // specs for the slots, one at a time under spec_store_mutex_ (taken before specs_mutex_).
  std::mutex specs_mutex_;
  std::unordered_map<std::string, std::shared_ptr<const SweepSpec>> specs_;
  std::deque<std::string> spec_order_;  // insertion order, for eviction
  // Counts what a DISPATCH said of specs (kept, dropped): a spec read from Redis before is not
  // kept, since it may be the older sweep's of a reused id.
  uint64_t spec_news_ = 0;
  std::mutex spec_store_mutex_;
  Store spec_store_;

  Store writer_store_;    // used by the writer thread only
  size_t abandoned_ = 0;  // finished jobs the writer stopped before reporting; read after join

  bool started_ = false;
  // Declared last: destroyed (stopped and joined) before everything above they use.
  std::jthread writer_;
  std::vector<std::jthread> slots_;
};

}  // namespace simq
