// The broker's scheduling decisions: queued jobs, worker credit, jobs in flight.
// Plain logic, no sockets and no clocks, so unit tests drive it directly.
// Not thread-safe: owned by the broker's socket loop.
#pragma once

#include <cstdint>
#include <deque>
#include <list>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "simq/job.h"

namespace simq {

using WorkerId = std::string;  // the worker's ZeroMQ routing id

struct Assignment {
  WorkerId worker;
  std::vector<JobRef> jobs;  // never more than the worker's free credit
};

// Jobs [first, first+count) of one sweep, to be queued at `attempt`.
struct JobRun {
  uint64_t first = 0;
  uint64_t count = 0;
  uint32_t attempt = 1;
  bool operator==(const JobRun&) const = default;
};

// The jobs of [0, total) in none of the `covered` ranges ((first, count), in any order, may
// overlap), in index order: runs at attempt 1, except the jobs `fences` lists ((index,
// attempt), in any order; of a job listed twice, the higher attempt), each a run of its own
// at its attempt.
std::vector<JobRun> uncovered_runs(std::vector<std::pair<uint64_t, uint64_t>> covered,
                                   uint64_t total,
                                   std::vector<std::pair<uint64_t, uint32_t>> fences = {});

class Dispatcher {
 public:
  // Queues jobs [first, first+count) of a sweep behind everything already queued (FIFO
  // across sweeps). A range costs O(1) memory however large it is.
  void add_range(const std::string& sweep, uint64_t first, uint64_t count);

  // Queues single jobs (recovered from Redis or requeued) behind everything queued.
  void add_job(const JobRef& job);

  // A worker joins with `credit` slots; it has none in flight. `busy` of its slots are still
  // taken by jobs from an earlier session (their DONEs will come later, see release_busy).
  void add_worker(const WorkerId& worker, uint32_t credit, uint32_t busy = 0);
  bool has_worker(const WorkerId& worker) const;

  // What happens to the jobs in flight on a worker that is removed.
  enum class Handback {
    kLost,      // it died running them: FRONT of the queue with attempt+1
    kReturned,  // it handed them back unfinished (BYE): FRONT of the queue, same attempt
    kHeld,      // it died, but the caller must fence attempt+1 first: not queued (see
                // requeue_front)
  };

  // A worker is gone (missed heartbeats, BYE). Its in-flight jobs are returned, in the order
  // they were dispatched, with the attempt they will run as, and queued as `how` says. A lost
  // worker runs its jobs in dispatch order, so only the oldest `slots` (its credit at
  // add_worker) may have started: those are returned as `how` says; the others, held beyond
  // its slots (CREDIT) and never started, go to the front of the queue with the same attempt
  // and are not returned (but appended to `unstarted`, if given).
  std::vector<JobRef> remove_worker(const WorkerId& worker, Handback how = Handback::kLost,
                                    std::vector<JobRef>* unstarted = nullptr);

  // A worker is stopping: it gets no more jobs (its credit becomes 0), and those of `jobs`
  // in flight on it with that attempt go back to the FRONT of the queue, same attempt (it
  // never started them). Returns how many were requeued; the others are ignored.
  uint64_t drain(const WorkerId& worker, const std::vector<JobRef>& jobs);

  // A worker asks for `credit` jobs in flight from now on (its slots plus the jobs it asked to
  // hold beyond them), unless it is draining (its credit stays 0). Those of `jobs` in flight
  // on it with that attempt go back to the FRONT of the queue, same attempt (it never started
  // them). Returns how many were requeued; the others are ignored.
  uint64_t set_credit(const WorkerId& worker, uint32_t credit, const std::vector<JobRef>& jobs);

  // Queues jobs at the FRONT of the queue, in the order given, with their attempts as given
  // (held jobs once their fences are up, retries once their delay is over).
  void requeue_front(const std::vector<JobRef>& jobs);

  // A worker reports a job finished. Returns false (and changes nothing) if that job is not
  // in flight on that worker with that attempt: a late or duplicate report.
  bool complete(const WorkerId& worker, const JobRef& job);

  // After complete() returned false: if the worker still has busy slots from an earlier
  // session, one of them is free now (its old job reported). Returns whether it had one.
  bool release_busy(const WorkerId& worker);

  // Hands queued jobs to workers with free credit, at most `max_batch` per worker per
  // call, FIFO in job order, spreading across workers (the worker served longest ago first).
  std::vector<Assignment> dispatch(uint32_t max_batch);

  // Drops every queued job of a sweep (not those in flight). Returns how many.
  // in_flight_of(sweep) counts its jobs still in flight.
  uint64_t drop_sweep(const std::string& sweep);

  uint64_t queued() const;     // jobs waiting, ranges counted by their length
  uint64_t in_flight() const;  // jobs dispatched and not completed
  uint32_t free_credit(const WorkerId& worker) const;  // 0 for unknown workers
  uint32_t in_flight(const WorkerId& worker) const;    // 0 for unknown workers
  uint32_t busy(const WorkerId& worker) const;  // slots still held by earlier jobs; 0 if unknown
  uint64_t in_flight_of(const std::string& sweep) const;
  bool has_sweep(const std::string& sweep) const;  // any job of it queued or in flight
  // Appends the jobs of a sweep queued or in flight as [first, first+count) ranges, in no
  // particular order. O(queue entries + jobs in flight).
  void held_of(const std::string& sweep, std::vector<std::pair<uint64_t, uint64_t>>& ranges) const;
  // A sweep's jobs in flight, with their attempts, in no particular order. O(jobs in flight).
  std::vector<JobRef> in_flight_of_sweep(const std::string& sweep) const;
  size_t workers() const;

 private:
  // Memory is O(queue entries + in-flight jobs + workers + live sweeps); per-job work is O(1)
  // amortised and, once warm, dispatch/complete allocate nothing but the JobRef strings.

  // Queued jobs [first, first+count) of one sweep, all at the same attempt. A range is one
  // entry; single jobs are entries of count 1 (merged with a neighbour when contiguous).
  struct Entry {
    uint64_t first = 0;
    uint64_t count = 0;
    uint32_t sweep = 0;  // handle into sweeps_
    uint32_t attempt = 1;
  };

  // An interned sweep id. `refs` counts the queue entries and in-flight jobs naming it; at 0
  // the handle is recycled, so a long-running broker does not keep every sweep id ever seen.
  struct Sweep {
    std::string name;
    uint64_t refs = 0;
  };

  struct JobKey {
    uint32_t sweep = 0;
    uint64_t index = 0;
    bool operator==(const JobKey&) const = default;
  };
  struct JobKeyHash {
    size_t operator()(const JobKey& key) const noexcept;
  };

  struct Worker;
  struct InFlight;
  using InFlightEntry = std::pair<const JobKey, InFlight>;
  // One dispatched job. Records of one worker form a doubly linked list in dispatch order
  // (unordered_map nodes do not move), so complete() unlinks in O(1) and remove_worker()
  // requeues in dispatch order.
  struct InFlight {
    Worker* worker = nullptr;
    uint32_t attempt = 1;
    InFlightEntry* prev = nullptr;
    InFlightEntry* next = nullptr;
  };
  using InFlightMap = std::unordered_map<JobKey, InFlight, JobKeyHash>;

  struct Worker {
    WorkerId id;
    uint32_t credit = 0;
    uint32_t slots = 0;  // its credit when it joined: jobs it runs at once
    uint32_t in_flight = 0;
    uint32_t busy = 0;                // slots taken by jobs of an earlier session
    bool draining = false;            // drain() was called: no more jobs, whatever it asks
    bool served = false;              // in served_ (else in unserved_)
    InFlightEntry* oldest = nullptr;  // head of this worker's in-flight list
    InFlightEntry* newest = nullptr;  // tail

    uint32_t free() const { return credit > in_flight + busy ? credit - in_flight - busy : 0; }
  };
  using WorkerList = std::list<Worker>;

  // A dispatch candidate: how many jobs it may take this call and how many it gets.
  struct Share {
    WorkerList::iterator worker;
    uint32_t cap = 0;
    uint32_t count = 0;
  };

  uint32_t intern(const std::string& sweep);
  void unref(uint32_t sweep, uint64_t count = 1);
  void push_back(uint32_t sweep, uint64_t first, uint64_t count, uint32_t attempt);
  void push_front(uint32_t sweep, uint64_t index, uint32_t attempt);
  bool track(Worker& worker, const JobKey& key, uint32_t attempt);
  uint64_t hand_back(Worker& worker, const std::vector<JobRef>& jobs);
  void untrack(InFlightMap::iterator it);
  void split_evenly(uint64_t jobs);
  void add_shares(WorkerList& workers, uint32_t max_batch, uint64_t& capacity);

  std::deque<Entry> queue_;
  uint64_t queued_ = 0;

  std::deque<Sweep> sweeps_;           // by handle; a deque so names never move (views below)
  std::vector<uint32_t> free_sweeps_;  // recycled handles
  std::unordered_map<std::string_view, uint32_t> sweep_handles_;  // keys view Sweep::name

  // Serving order: unserved_ in joining order, then served_ least recently served first; a
  // worker served by dispatch() moves to the back of served_. List nodes never move (splice
  // keeps them), so the index's keys view Worker::id and in-flight records point at workers.
  WorkerList unserved_;
  WorkerList served_;
  std::unordered_map<std::string_view, WorkerList::iterator> worker_index_;
  uint64_t free_credit_ = 0;  // sum over workers, lets an idle dispatch() return at once

  InFlightMap in_flight_;
  std::vector<InFlightMap::node_type> spare_nodes_;  // completed nodes, reused by track()
  std::vector<Share> shares_;                        // dispatch() scratch
};

}  // namespace simq
