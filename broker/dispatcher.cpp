// The broker's scheduling decisions: a FIFO of job ranges, worker credit, jobs in flight.
// Not thread-safe: owned by the broker's socket loop.
#include "dispatcher.h"

#include <algorithm>
#include <cassert>
#include <iterator>
#include <limits>

namespace simq {

size_t Dispatcher::JobKeyHash::operator()(const JobKey& key) const noexcept {
  // Indices of one sweep are dense; a multiplicative mix spreads them and the sweep handle.
  uint64_t h = (key.index ^ (uint64_t{key.sweep} << 40)) * 0x9E3779B97F4A7C15ULL;
  h ^= h >> 29;
  return static_cast<size_t>(h);
}

void Dispatcher::add_range(const std::string& sweep, uint64_t first, uint64_t count) {
  if (count == 0) return;
  assert(count - 1 <= std::numeric_limits<uint64_t>::max() - first);
  push_back(intern(sweep), first, count, 1);
}

void Dispatcher::add_job(const JobRef& job) {
  push_back(intern(job.sweep), job.index, 1, job.attempt);
}

void Dispatcher::add_worker(const WorkerId& worker, uint32_t credit, uint32_t busy) {
  if (auto known = worker_index_.find(worker); known != worker_index_.end()) {
    // Joined again under the same id: take the new credit, keep what is in flight on it.
    Worker& w = *known->second;
    free_credit_ -= w.free();
    w.credit = credit;
    w.slots = credit;
    w.busy = busy;
    w.draining = false;
    free_credit_ += w.free();
    return;
  }
  // Never served, so served before every worker that was, in joining order.
  unserved_.push_back(Worker{.id = worker, .credit = credit, .slots = credit, .busy = busy});
  worker_index_.emplace(unserved_.back().id, std::prev(unserved_.end()));
  free_credit_ += unserved_.back().free();
}

bool Dispatcher::release_busy(const WorkerId& worker) {
  auto known = worker_index_.find(worker);
  if (known == worker_index_.end() || known->second->busy == 0) return false;
  Worker& w = *known->second;
  free_credit_ -= w.free();
  --w.busy;
  free_credit_ += w.free();
  return true;
}

bool Dispatcher::has_worker(const WorkerId& worker) const { return worker_index_.contains(worker); }

std::vector<JobRef> Dispatcher::remove_worker(const WorkerId& worker, Handback how,
                                              std::vector<JobRef>* unstarted) {
  auto known = worker_index_.find(worker);
  if (known == worker_index_.end()) return {};
  auto w = known->second;

  // Walk newest to oldest, pushing each to the front, so the oldest ends up first. Requeue
  // before untracking: untracking may release the last reference to the sweep's handle.
  const uint32_t may_have_started =
      how == Handback::kReturned ? w->in_flight : std::min(w->in_flight, w->slots);
  std::vector<JobRef> requeued(may_have_started);
  size_t slot = w->in_flight;
  for (InFlightEntry* entry = w->newest; entry != nullptr;) {
    InFlightEntry* older = entry->second.prev;
    const JobKey key = entry->first;
    --slot;
    if (slot >= may_have_started) {
      push_front(key.sweep, key.index, entry->second.attempt);  // waited behind the others
      if (unstarted != nullptr) {
        unstarted->push_back(JobRef{sweeps_[key.sweep].name, key.index, entry->second.attempt});
      }
    } else {
      const uint32_t attempt = entry->second.attempt + (how == Handback::kReturned ? 0 : 1);
      requeued[slot] = JobRef{sweeps_[key.sweep].name, key.index, attempt};
      if (how != Handback::kHeld) push_front(key.sweep, key.index, attempt);
    }
    untrack(in_flight_.find(key));
    entry = older;
  }
  assert(slot == 0 && w->in_flight == 0);

  free_credit_ -= w->free();
  worker_index_.erase(known);
  (w->served ? served_ : unserved_).erase(w);
  return requeued;
}

uint64_t Dispatcher::drain(const WorkerId& worker, const std::vector<JobRef>& jobs) {
  auto known = worker_index_.find(worker);
  if (known == worker_index_.end()) return 0;
  Worker& w = *known->second;
  free_credit_ -= w.free();
  w.credit = 0;
  w.draining = true;
  return hand_back(w, jobs);
}

uint64_t Dispatcher::set_credit(const WorkerId& worker, uint32_t credit,
                                const std::vector<JobRef>& jobs) {
  auto known = worker_index_.find(worker);
  if (known == worker_index_.end()) return 0;
  Worker& w = *known->second;
  if (!w.draining) {
    free_credit_ -= w.free();
    w.credit = credit;
    free_credit_ += w.free();
  }
  return hand_back(w, jobs);
}

uint64_t Dispatcher::hand_back(Worker& w, const std::vector<JobRef>& jobs) {
  uint64_t requeued = 0;
  for (auto job = jobs.rbegin(); job != jobs.rend(); ++job) {
    const auto sweep = sweep_handles_.find(job->sweep);
    if (sweep == sweep_handles_.end()) continue;
    const auto it = in_flight_.find(JobKey{sweep->second, job->index});
    if (it == in_flight_.end() || it->second.worker != &w || it->second.attempt != job->attempt) {
      continue;
    }
    // Queue before untracking: untracking may release the last reference to the sweep.
    push_front(it->first.sweep, job->index, job->attempt);
    untrack(it);
    ++requeued;
  }
  return requeued;
}

void Dispatcher::requeue_front(const std::vector<JobRef>& jobs) {
  for (auto job = jobs.rbegin(); job != jobs.rend(); ++job) {
    push_front(intern(job->sweep), job->index, job->attempt);
  }
}

bool Dispatcher::complete(const WorkerId& worker, const JobRef& job) {
  auto known = worker_index_.find(worker);
  if (known == worker_index_.end()) return false;
  auto sweep = sweep_handles_.find(job.sweep);
  if (sweep == sweep_handles_.end()) return false;
  auto it = in_flight_.find(JobKey{sweep->second, job.index});
  if (it == in_flight_.end()) return false;
  if (it->second.worker != &*known->second || it->second.attempt != job.attempt) return false;
  untrack(it);
  return true;
}

std::vector<Assignment> Dispatcher::dispatch(uint32_t max_batch) {
  std::vector<Assignment> assignments;
  if (max_batch == 0 || queued_ == 0 || free_credit_ == 0) return assignments;

  shares_.clear();
  uint64_t capacity = 0;
  add_shares(unserved_, max_batch, capacity);
  add_shares(served_, max_batch, capacity);
  if (queued_ >= capacity) {
    for (Share& share : shares_) share.count = share.cap;
  } else {
    split_evenly(queued_);
  }

  for (Share& share : shares_) {
    if (share.count == 0) continue;
    Assignment assignment{.worker = share.worker->id, .jobs = {}};
    assignment.jobs.reserve(share.count);
    while (assignment.jobs.size() < share.count && !queue_.empty()) {
      Entry& front = queue_.front();
      const JobKey key{front.sweep, front.first};
      const uint32_t attempt = front.attempt;
      ++front.first;
      --front.count;
      --queued_;
      // A job already in flight (queued twice, e.g. by recovery) is dropped, not sent twice:
      // its running attempt will either complete or be requeued with its worker.
      const bool tracked = track(*share.worker, key, attempt);
      if (front.count == 0) {
        queue_.pop_front();
        unref(key.sweep);
      }
      if (tracked) assignment.jobs.push_back(JobRef{sweeps_[key.sweep].name, key.index, attempt});
    }
    if (assignment.jobs.empty()) continue;
    // Served now: last in line.
    served_.splice(served_.end(), share.worker->served ? served_ : unserved_, share.worker);
    share.worker->served = true;
    assignments.push_back(std::move(assignment));
  }
  return assignments;
}

uint64_t Dispatcher::drop_sweep(const std::string& sweep) {
  auto known = sweep_handles_.find(sweep);
  if (known == sweep_handles_.end()) return 0;
  const uint32_t handle = known->second;
  uint64_t dropped = 0;
  uint64_t entries = 0;
  std::erase_if(queue_, [&](const Entry& entry) {
    if (entry.sweep != handle) return false;
    dropped += entry.count;
    ++entries;
    return true;
  });
  queued_ -= dropped;
  if (entries > 0) unref(handle, entries);
  return dropped;
}

uint64_t Dispatcher::queued() const { return queued_; }

uint32_t Dispatcher::busy(const WorkerId& worker) const {
  auto known = worker_index_.find(worker);
  return known == worker_index_.end() ? 0 : known->second->busy;
}

uint64_t Dispatcher::in_flight_of(const std::string& sweep) const {
  const auto known = sweep_handles_.find(sweep);
  if (known == sweep_handles_.end()) return 0;
  uint64_t count = 0;
  for (const auto& [key, record] : in_flight_)
    if (key.sweep == known->second) ++count;
  return count;
}

std::vector<JobRun> uncovered_runs(std::vector<std::pair<uint64_t, uint64_t>> covered,
                                   uint64_t total,
                                   std::vector<std::pair<uint64_t, uint32_t>> fences) {
  std::sort(covered.begin(), covered.end());
  std::sort(fences.begin(), fences.end());  // a job's repeats end with its highest attempt
  std::vector<JobRun> runs;
  auto fence = fences.begin();
  const auto add_gap = [&](uint64_t first, uint64_t end) {
    for (; fence != fences.end() && fence->first < end; ++fence) {
      if (fence->first < first) continue;  // covered
      const auto last = std::next(fence);
      if (last != fences.end() && last->first == fence->first) continue;  // a higher one follows
      if (fence->first > first) runs.push_back(JobRun{first, fence->first - first, 1});
      runs.push_back(JobRun{fence->first, 1, fence->second});
      first = fence->first + 1;
    }
    if (end > first) runs.push_back(JobRun{first, end - first, 1});
  };
  uint64_t next = 0;
  for (const auto& [first, count] : covered) {
    if (first >= total) break;
    if (first > next) add_gap(next, first);
    next = std::max(next, count > total - first ? total : first + count);
  }
  if (next < total) add_gap(next, total);
  return runs;
}

void Dispatcher::held_of(const std::string& sweep,
                         std::vector<std::pair<uint64_t, uint64_t>>& ranges) const {
  const auto known = sweep_handles_.find(sweep);
  if (known == sweep_handles_.end()) return;
  for (const auto& entry : queue_)
    if (entry.sweep == known->second) ranges.emplace_back(entry.first, entry.count);
  for (const auto& [key, record] : in_flight_)
    if (key.sweep == known->second) ranges.emplace_back(key.index, 1);
}

std::vector<JobRef> Dispatcher::in_flight_of_sweep(const std::string& sweep) const {
  std::vector<JobRef> jobs;
  const auto known = sweep_handles_.find(sweep);
  if (known == sweep_handles_.end()) return jobs;
  for (const auto& [key, record] : in_flight_)
    if (key.sweep == known->second) jobs.push_back(JobRef{sweep, key.index, record.attempt});
  return jobs;
}

bool Dispatcher::has_sweep(const std::string& sweep) const {
  return sweep_handles_.contains(sweep);  // interned while entries or in-flight jobs name it
}

uint64_t Dispatcher::in_flight() const { return in_flight_.size(); }

uint32_t Dispatcher::free_credit(const WorkerId& worker) const {
  auto known = worker_index_.find(worker);
  return known == worker_index_.end() ? 0 : known->second->free();
}

uint32_t Dispatcher::in_flight(const WorkerId& worker) const {
  auto known = worker_index_.find(worker);
  return known == worker_index_.end() ? 0 : known->second->in_flight;
}

size_t Dispatcher::workers() const { return unserved_.size() + served_.size(); }

// The handle of a sweep id, interning it if new. A new handle has no references: the caller
// adds one (a queue entry or an in-flight record) at once.
uint32_t Dispatcher::intern(const std::string& sweep) {
  if (auto known = sweep_handles_.find(sweep); known != sweep_handles_.end()) return known->second;
  uint32_t handle = 0;
  if (free_sweeps_.empty()) {
    assert(sweeps_.size() < std::numeric_limits<uint32_t>::max());
    handle = static_cast<uint32_t>(sweeps_.size());
    sweeps_.push_back(Sweep{.name = sweep, .refs = 0});
  } else {
    handle = free_sweeps_.back();
    free_sweeps_.pop_back();
    sweeps_[handle].name = sweep;
  }
  sweep_handles_.emplace(sweeps_[handle].name, handle);
  return handle;
}

void Dispatcher::unref(uint32_t sweep, uint64_t count) {
  Sweep& s = sweeps_[sweep];
  assert(s.refs >= count);
  s.refs -= count;
  if (s.refs > 0) return;
  sweep_handles_.erase(s.name);
  s.name.clear();
  free_sweeps_.push_back(sweep);
}

void Dispatcher::push_back(uint32_t sweep, uint64_t first, uint64_t count, uint32_t attempt) {
  queued_ += count;
  if (!queue_.empty()) {
    Entry& back = queue_.back();
    if (back.sweep == sweep && back.attempt == attempt && back.first + back.count == first) {
      back.count += count;
      return;
    }
  }
  queue_.push_back(Entry{.first = first, .count = count, .sweep = sweep, .attempt = attempt});
  ++sweeps_[sweep].refs;
}

void Dispatcher::push_front(uint32_t sweep, uint64_t index, uint32_t attempt) {
  ++queued_;
  if (!queue_.empty()) {
    Entry& front = queue_.front();
    if (front.sweep == sweep && front.attempt == attempt && index + 1 == front.first) {
      front.first = index;
      ++front.count;
      return;
    }
  }
  queue_.push_front(Entry{.first = index, .count = 1, .sweep = sweep, .attempt = attempt});
  ++sweeps_[sweep].refs;
}

// Records a job as in flight on `worker`, reusing a completed node when there is one.
// Returns false, changing nothing, when that job is already in flight.
bool Dispatcher::track(Worker& worker, const JobKey& key, uint32_t attempt) {
  const InFlight record{.worker = &worker, .attempt = attempt, .prev = worker.newest};
  InFlightEntry* entry = nullptr;
  if (spare_nodes_.empty()) {
    auto [it, inserted] = in_flight_.try_emplace(key, record);
    if (!inserted) return false;
    entry = &*it;
  } else {
    InFlightMap::node_type& node = spare_nodes_.back();
    node.key() = key;
    node.mapped() = record;
    auto result = in_flight_.insert(std::move(node));
    if (!result.inserted) {
      node = std::move(result.node);
      return false;
    }
    spare_nodes_.pop_back();
    entry = &*result.position;
  }
  if (worker.newest != nullptr) {
    worker.newest->second.next = entry;
  } else {
    worker.oldest = entry;
  }
  worker.newest = entry;
  assert(worker.in_flight + worker.busy < worker.credit);
  ++worker.in_flight;
  --free_credit_;
  ++sweeps_[key.sweep].refs;
  return true;
}

void Dispatcher::untrack(InFlightMap::iterator it) {
  assert(it != in_flight_.end());
  const InFlight& record = it->second;
  Worker& worker = *record.worker;
  if (record.prev != nullptr) {
    record.prev->second.next = record.next;
  } else {
    worker.oldest = record.next;
  }
  if (record.next != nullptr) {
    record.next->second.prev = record.prev;
  } else {
    worker.newest = record.prev;
  }
  free_credit_ -= worker.free();
  --worker.in_flight;
  free_credit_ += worker.free();
  const uint32_t sweep = it->first.sweep;
  spare_nodes_.push_back(in_flight_.extract(it));
  unref(sweep);
}

// Appends a share for each worker of `workers` with free credit, in list order.
void Dispatcher::add_shares(WorkerList& workers, uint32_t max_batch, uint64_t& capacity) {
  for (auto w = workers.begin(); w != workers.end(); ++w) {
    const uint32_t cap = std::min(w->free(), max_batch);
    if (cap == 0) continue;
    shares_.push_back(Share{.worker = w, .cap = cap, .count = 0});
    capacity += cap;
  }
}

// Sets each share's count so `jobs` (fewer than the shares' total cap) are dealt out as if
// one at a time in serving order: the largest level L with sum(min(cap, L)) <= jobs, then
// one more each for the first workers that can take it.
void Dispatcher::split_evenly(uint64_t jobs) {
  auto dealt = [this](uint32_t level) {
    uint64_t total = 0;
    for (const Share& share : shares_) total += std::min(share.cap, level);
    return total;
  };
  uint32_t low = 0;   // dealt(low) <= jobs
  uint32_t high = 0;  // dealt(high) > jobs
  for (const Share& share : shares_) high = std::max(high, share.cap);
  while (high - low > 1) {
    const uint32_t mid = low + (high - low) / 2;
    if (dealt(mid) <= jobs) {
      low = mid;
    } else {
      high = mid;
    }
  }
  uint64_t extra = jobs - dealt(low);
  for (Share& share : shares_) {
    share.count = std::min(share.cap, low);
    if (share.cap > low && extra > 0) {
      ++share.count;
      --extra;
    }
  }
  assert(extra == 0);
}

}  // namespace simq
