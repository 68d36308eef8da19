// The jobs the worker's slots hold, each with its own stop source for its spec lookups and its
// kernel: requested when the job's time limit passes (a watchdog thread watches deadlines),
// when `simq cancel` stops its sweep, or when the worker stops. Each stop has a reason, set
// before the stop is requested, so the slot knows what becomes of the job.
// Thread-safety: every method may be called from any thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "simq/job.h"

namespace simq {

class RunningJobs {
 public:
  using Clock = std::chrono::steady_clock;

  // Why a job's stop was requested. The first reason wins.
  enum class Stop {
    kNone,      // not stopped
    kTimeout,   // its kernel ran past the job's time limit: it fails
    kCancel,    // its sweep was cancelled
    kShutdown,  // the worker is stopping: the job goes back to the broker unrecorded
  };

  // `slots`: slot numbers are 0 to slots - 1. `max_cancelled`: cancelled sweeps remembered.
  // Starts the watchdog thread.
  RunningJobs(size_t slots, size_t max_cancelled);
  ~RunningJobs();  // stops and joins the watchdog
  RunningJobs(const RunningJobs&) = delete;
  RunningJobs& operator=(const RunningJobs&) = delete;

  // Slot `slot` takes `job`; returns the stop token its lookups and kernel use. Already
  // stopped (kCancel) if the job's sweep was cancelled recently, (kShutdown) after stop_all().
  std::stop_token take(size_t slot, const JobRef& job);
  // The slot's kernel starts now and is stopped (kTimeout) at `deadline`, if it has one.
  // Returns false if the job was stopped already (stopped() says why).
  bool start_kernel(size_t slot, std::optional<Clock::time_point> deadline);
  // Why the slot's job was stopped; kNone if it was not.
  Stop stopped(size_t slot);
  // The slot's job has ended: the slot holds nothing.
  void release(size_t slot);

  // `simq cancel`: stops the sweep's jobs (kCancel) and remembers the sweep, so a job of it
  // taken later is stopped at once. Returns how many of its jobs the slots held.
  size_t cancel(const std::string& sweep);
  // The sweep is among the recently cancelled ones.
  bool cancelled(const std::string& sweep);

  // What the worker's IO thread looks at every few milliseconds while kernels run.
  struct Look {
    Clock::duration longest{};  // how long the longest-running kernel has run
    size_t held = 0;            // slots holding a job, its kernel started or not
  };
  // Kernels that have run for `mark_after` or more and were not passed to an earlier look's
  // `mark` get running marks: mark(to_mark) gets their jobs, each with the Unix time its kernel
  // started. It is called before the lock is released (when there is something to mark), so a
  // slot cannot end the job and queue its next write (a retry's mark) in between.
  Look look(Clock::time_point now, Clock::duration mark_after,
            const std::function<void(const std::vector<std::pair<JobRef, double>>&)>& mark);

  // The worker stops taking jobs: those whose kernel has not started are stopped (kShutdown).
  void stop_unstarted();
  // Stops every job, and every job taken from now on (kShutdown). Returns how many kernels
  // were running.
  size_t stop_all();

 private:
  struct Slot {
    bool held = false;     // the slot holds a job
    bool started = false;  // its kernel has started
    bool marked = false;   // look() returned it in to_mark
    JobRef job;
    Clock::time_point started_at;  // when its kernel started
    double started_unix = 0;
    std::optional<Clock::time_point> deadline;
    std::stop_source source;
    Stop reason = Stop::kNone;
  };

  // Sets the reason under mutex_ and collects the source; requested after unlocking, so no
  // stop callback ever runs under mutex_.
  static void stop(Slot& slot, Stop reason, std::vector<std::stop_source>& to_request);
  static void request(std::vector<std::stop_source>& sources);
  void watch(const std::stop_token& stop);

  std::mutex mutex_;
  std::condition_variable_any deadlines_changed_;
  bool changed_ = false;  // a deadline was set since the watchdog last looked
  std::vector<Slot> slots_;
  bool stop_all_ = false;
  size_t max_cancelled_;
  std::unordered_set<std::string> cancelled_;
  std::deque<std::string> cancelled_order_;  // oldest first, for forgetting past the limit
  std::jthread watchdog_;                    // declared last: joined before the rest goes
};

}  // namespace simq
