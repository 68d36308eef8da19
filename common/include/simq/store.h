// simq's Redis schema (docs/redis-schema.md is its specification): sweep records, job
// records, running marks, per-sweep completion streams, the broker's status snapshot.
// Every key name is built here and nowhere else. Not thread-safe: one Store per thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "simq/job.h"
#include "simq/json.h"
#include "simq/redis.h"
#include "simq/sweep.h"

namespace simq {

inline constexpr uint64_t kDefaultResultTtlSeconds = uint64_t{7} * 24 * 3600;

// Key names (docs/redis-schema.md).
std::string sweep_key(const std::string& sweep);          // HASH   the sweep record
std::string jobs_key(const std::string& sweep);           // HASH   index -> terminal job record
std::string running_key(const std::string& sweep);        // HASH   index -> running mark
std::string events_key(const std::string& sweep);         // STREAM completions
std::string fence_key(const std::string& sweep);          // HASH   index -> current attempt
std::string lost_key(const std::string& sweep);           // HASH   index -> workers lost with it
inline constexpr const char* kSweepsKey = "simq:sweeps";  // ZSET id -> created_at
inline constexpr const char* kActiveKey = "simq:active";  // SET  unfinished sweep ids
inline constexpr const char* kBrokerKey = "simq:broker";  // STRING broker status JSON

// Seconds since the Unix epoch, with sub-millisecond precision.
double unix_time();

// A new sweep id: time-ordered, 12 characters of [0-9a-z].
std::string new_sweep_id();

struct SweepInfo {
  std::string id;
  std::string name;
  std::string kernel;
  std::string status;  // "running", "done" or "cancelled"
  std::string spec;    // SweepSpec::to_json() as text
  uint64_t total = 0;
  uint64_t succeeded = 0;
  uint64_t failed = 0;
  uint64_t cancelled = 0;   // jobs with a "cancelled" record (jobs of a cancelled sweep that
                            // never ran have no record at all)
  uint64_t fenced = 0;      // results refused because a newer attempt owned the job
  uint64_t duplicates = 0;  // results refused because the job had a terminal record already
  double created_at = 0;    // unix seconds
  double finished_at = 0;   // unix seconds, 0 while running
  uint64_t ttl_s = 0;       // records expire this long after the sweep finished; 0 = never

  uint64_t done() const { return succeeded + failed + cancelled; }
  // Jobs that will never run: a cancelled sweep's jobs without a record.
  uint64_t unrun() const { return status == "cancelled" && total > done() ? total - done() : 0; }
};

// A job that started or finished, with its record as JSON text (docs/redis-schema.md).
struct JobWrite {
  JobRef job;              // job.attempt is the fencing token of the write
  bool ok = true;          // finished: succeeded or failed; unused for running marks
  std::string record;      // JSON object
  bool cancelled = false;  // finished: stopped by `simq cancel` (status "cancelled")

  const char* status() const { return cancelled ? "cancelled" : ok ? "succeeded" : "failed"; }
};

// A job queued again with a new attempt number (its fence).
struct Requeue {
  JobRef job;           // the job with the attempt it will run as
  std::string lost_on;  // the worker it was lost with ("host:pid"); "" if it was not lost
};

// The workers a job was lost with (docs/redis-schema.md, the lost hash).
struct LostRecord {
  uint32_t count = 0;    // times a worker running it was declared dead
  std::string worker;    // the last of them
  uint32_t attempt = 0;  // the attempt that worker was running
};

enum class CancelOutcome { kCancelled, kNotRunning, kNoSweep };

struct FinishCounts {
  uint64_t stored = 0;      // new terminal records
  uint64_t duplicates = 0;  // a terminal record existed already: discarded
  uint64_t orphans = 0;     // the sweep does not exist (expired or never recorded): discarded
  uint64_t fenced = 0;      // written by an attempt older than the job's fence: discarded
};

// A job index as the store writes it (the jobs hash's fields, stream entries): decimal, no
// sign, no leading zero. std::nullopt for anything else.
std::optional<uint64_t> parse_job_index(std::string_view text);

// Reads the field/value list of one completion-stream entry (docs/redis-schema.md): calls
// on_job(index, status) for each job the entry announces, status "succeeded", "failed" or
// "cancelled", in the entry's order. Returns the sweep's end for the final entry ("done" or
// "cancelled"), "" for a jobs entry. Throws StoreError naming what is malformed: an odd list,
// an unknown field, an index that is not a decimal job index, a final entry that also lists jobs.
std::string parse_stream_entry(const RedisReply& fields,
                               const std::function<void(uint64_t, std::string_view)>& on_job);

// One job of the completion stream, or its final entry.
struct StreamEvent {
  std::string id;           // stream entry id
  uint64_t index = 0;       // job index
  bool ok = true;           // succeeded
  bool sweep_done = false;  // the final entry: every job has a terminal record, or (with
                            // `cancelled`) the sweep was cancelled
  bool cancelled = false;   // the final entry says the sweep was cancelled
};

class Store {
 public:
  // Connects; `timeout` bounds the connection and every reply. Throws ConnectError.
  explicit Store(RedisAddress address,
                 std::chrono::milliseconds timeout = std::chrono::milliseconds(5000));

  // Records a sweep (record, index, active set) atomically. Returns false if the id exists:
  // then nothing is written (resubmission is idempotent).
  bool create_sweep(const std::string& id, const SweepSpec& spec, uint64_t ttl_s);

  std::optional<SweepInfo> sweep(const std::string& id);
  bool sweep_exists(const std::string& id);
  uint64_t running_count(const std::string& sweep);  // running marks of the sweep
  std::vector<SweepInfo> sweeps(size_t limit);  // newest first; drops expired ids from the index
  std::vector<std::string> active_sweeps();

  // Running marks, one pipelined round trip for the batch (one script per sweep). No mark is
  // set for a job that already has a terminal record, whose sweep is not recorded, or whose
  // fence is above job.attempt.
  void mark_running(const std::vector<JobWrite>& jobs);

  // Terminal records: one atomic script per sweep in the batch, all pipelined. A record is
  // stored only if the job has none yet and job.attempt is not below its fence; counters and
  // the stream are updated with it.
  FinishCounts finish(const std::vector<JobWrite>& jobs);

  // Before jobs run again with a higher attempt: raises their fences (so the older attempts'
  // results are refused) and counts the losses. Pipelined, one script per sweep.
  void requeue(const std::vector<Requeue>& jobs);
  std::optional<LostRecord> lost_record(const std::string& sweep, uint64_t index);

  // Marks a running sweep cancelled (status, active set, a final stream entry, expiry).
  CancelOutcome cancel_sweep(const std::string& id);

  std::optional<std::string> job_record(const std::string& sweep, uint64_t index);
  std::optional<std::string> running_record(const std::string& sweep, uint64_t index);
  // Terminal records of jobs [first, first+count), std::nullopt where none.
  std::vector<std::optional<std::string>> job_records(const std::string& sweep, uint64_t first,
                                                      uint64_t count);

  // Visits every field of a hash with HSCAN (batches of 10,000), so a hash of 10^7 fields
  // never has to fit in one reply. Fields may be visited twice if the hash changes meanwhile.
  void scan_hash(
      const std::string& key,
      const std::function<void(const std::string& field, const std::string& value)>& visit);

  // Completion events after `after` ("0" = from the start), waiting up to `block` for the
  // first one. Empty on timeout.
  std::vector<StreamEvent> read_events(const std::string& sweep, const std::string& after,
                                       std::chrono::milliseconds block, size_t count);

  // Id of the newest completion event, std::nullopt if there is none.
  std::optional<std::string> newest_event_id(const std::string& sweep);

  // The Redis server process's run_id (INFO server): another one after a restart or a
  // failover. "" if Redis does not say (INFO refused or renamed). Throws ConnectError.
  std::string server_run_id();

  void put_broker_status(const Json& status, std::chrono::milliseconds ttl);
  void clear_broker_status();
  std::optional<Json> broker_status();

  Redis& redis() { return redis_; }

 private:
  std::string load_script(const char* source);
  std::vector<RedisReply> run_scripts(std::vector<RedisArgs> calls, std::string& sha,
                                      const char* source);

  Redis redis_;
  std::string create_sha_;
  std::string running_sha_;
  std::string finish_sha_;
  std::string requeue_sha_;
  std::string cancel_sha_;
};

}  // namespace simq
