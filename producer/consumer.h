// The consumer side of the simq CLI: everything that only reads Redis (wait, results, get,
// status). A consumer never talks to the broker, so results stay readable when it is down.
// Not thread-safe: each function uses the Store it is given.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>

#include "simq/json.h"
#include "simq/store.h"

namespace simq {

struct WaitOptions {
  double timeout_s = 0;  // give up after this long (exit 3 is not used: returns kExitJobsFailed
                         // with a message); 0 = wait for ever
  bool progress = true;  // draw a progress bar on stderr (only redrawn in place on a tty)
  bool quiet = false;    // print nothing but errors
  // After this long without a job finishing, say so on stderr with the broker's snapshot
  // (stall_note()), then again every stall_repeat; 0 = never.
  std::chrono::milliseconds stall_notice{30000};
  std::chrono::milliseconds stall_repeat{60000};
};

// When `simq wait` says that it sees no progress: once `first` has passed since the last
// progress (or the start), then every `repeat` until progress is made. A plain value driven by
// the caller's clock. Not thread-safe.
class StallTimer {
 public:
  using Clock = std::chrono::steady_clock;

  // `first` = 0: never due.
  StallTimer(Clock::duration first, Clock::duration repeat, Clock::time_point start);

  // Progress was made at `now`: the next notice is `first` after it.
  void progressed(Clock::time_point now);

  // If a notice is due at `now`: how long there has been no progress (and the next notice is
  // `repeat` later). std::nullopt if none is due.
  std::optional<Clock::duration> due(Clock::time_point now);

 private:
  Clock::duration first_;
  Clock::duration repeat_;
  Clock::time_point last_progress_;
  Clock::time_point next_notice_;
};

// The line (without '\n') `simq wait` prints after `stalled` without progress, from the
// broker's snapshot in Redis (Store::broker_status(); std::nullopt if there is none):
// "simq: no progress for 30 s; broker: 0 workers connected", "...; broker: 2 workers connected
// (8 slots), 0 queued, 8 in flight", or "simq: no progress for 30 s; no broker status in Redis
// (is simq-broker running against redis://...?)".
std::string stall_note(std::chrono::steady_clock::duration stalled,
                       const std::optional<Json>& broker_status, std::string_view redis_url);

// Follows the sweep's completion stream (XREAD BLOCK) until every job has a terminal record or
// the sweep is cancelled. Progress: "[#####-----] 512/1000  failed 3  1234 jobs/s  ETA 0:00:05"
// on stderr. The first read throws ConnectError if Redis is unreachable; once the sweep has
// been read, an unreachable Redis is retried (200 ms doubling to 5 s) with one notice
// "simq: Redis at <url> unreachable: ...; retrying", and the stream resumes where it stopped.
// Returns kExitOk if all succeeded, kExitJobsFailed if some failed, the sweep was cancelled
// ("sweep <id> was cancelled: a succeeded, b failed, c cancelled, d never ran") or is unknown
// (message "sweep <id> not found in Redis at <url>" on stderr).
int wait_sweep(Store& store, const std::string& sweep, const WaitOptions& options);

enum class ResultFormat { kTable, kCsv, kJsonl };

// Parses "table", "csv" or "jsonl"; throws ConfigError naming --format otherwise.
ResultFormat parse_result_format(const std::string& text);

// Writes the terminal records of a sweep in job order. table/csv: columns job, status, one
// per parameter (in sweep order), one per top-level result key, attempts, error. jsonl: one
// JSON object per job with at least job, status, params, result, error, attempts. In a
// cancelled sweep, jobs without a record are shown with status "cancelled" and error "never
// ran: the sweep was cancelled". Otherwise jobs without a terminal record yet are left out,
// with a note on stderr
// "simq: N of M jobs of sweep <id> have no result yet".
// Returns kExitOk, or kExitJobsFailed if the sweep is not found.
int print_results(Store& store, const std::string& sweep, ResultFormat format, std::ostream& out);

// One job ("<sweep>:<index>"): status, params, result or error, attempts, worker, timings.
// Queued and running jobs are shown too (params derived from the sweep spec), and a cancelled
// sweep's jobs that never ran as "cancelled". A dead-lettered record shows "failed
// (dead-lettered)". Returns kExitOk, kExitJobsFailed if the job failed or was cancelled (its
// record is printed all the same; also for an unreadable "corrupt" record) or is not found,
// kExitUsage if the id is malformed.
int print_job(Store& store, const std::string& job_id, bool json, std::ostream& out);

// No sweep: the newest sweeps (id, name, kernel, done/failed/total, status, age) and the
// broker's snapshot (workers, slots, queued, in flight, its Redis outages; or "broker: no
// status in Redis ..."). With a sweep: its counts (cancelled, never ran, refused results where
// there are any). Returns kExitOk, or kExitJobsFailed if the sweep is not found.
int print_status(Store& store, const std::optional<std::string>& sweep, std::ostream& out);

}  // namespace simq
