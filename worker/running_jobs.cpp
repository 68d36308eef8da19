// Per-job stop sources, the cancelled-sweep memory and the deadline watchdog.
// Thread-safety: all state under mutex_; stop sources are requested outside it.
#include "running_jobs.h"

#include <algorithm>
#include <cassert>
#include <utility>

#include "simq/store.h"

namespace simq {

RunningJobs::RunningJobs(size_t slots, size_t max_cancelled)
    : slots_(slots), max_cancelled_(max_cancelled) {
  watchdog_ = std::jthread([this](const std::stop_token& stop) { watch(stop); });
}

RunningJobs::~RunningJobs() {
  watchdog_.request_stop();  // wakes its wait
  watchdog_.join();
}

void RunningJobs::stop(Slot& slot, Stop reason, std::vector<std::stop_source>& to_request) {
  if (slot.reason != Stop::kNone) return;
  slot.reason = reason;
  to_request.push_back(slot.source);
}

void RunningJobs::request(std::vector<std::stop_source>& sources) {
  for (auto& source : sources) source.request_stop();
}

std::stop_token RunningJobs::take(size_t slot_number, const JobRef& job) {
  const std::lock_guard lock(mutex_);
  Slot& slot = slots_.at(slot_number);
  assert(!slot.held && "a slot takes one job at a time");
  slot.held = true;
  slot.started = false;
  slot.marked = false;
  slot.job = job;
  slot.deadline.reset();
  // A stop state costs a heap allocation: reuse the last job's when no stop was ever decided
  // for it (its kernel has returned; and with no reason set, stop() made no copy of the source
  // that could still be requested after this point).
  if (slot.reason != Stop::kNone || slot.source.stop_requested()) {
    slot.source = std::stop_source();
  }
  slot.reason = Stop::kNone;
  if (stop_all_) {
    slot.reason = Stop::kShutdown;
  } else if (cancelled_.contains(job.sweep)) {
    slot.reason = Stop::kCancel;
  }
  // No kernel holds this source's token yet: requesting under the lock runs no callback.
  if (slot.reason != Stop::kNone) slot.source.request_stop();
  return slot.source.get_token();
}

bool RunningJobs::start_kernel(size_t slot_number, std::optional<Clock::time_point> deadline) {
  {
    const std::lock_guard lock(mutex_);
    Slot& slot = slots_.at(slot_number);
    assert(slot.held);
    if (slot.reason != Stop::kNone) return false;
    slot.started = true;
    slot.started_at = Clock::now();
    slot.started_unix = unix_time();
    slot.deadline = deadline;
    if (!deadline) return true;
    changed_ = true;
  }
  deadlines_changed_.notify_one();
  return true;
}

RunningJobs::Stop RunningJobs::stopped(size_t slot_number) {
  const std::lock_guard lock(mutex_);
  return slots_.at(slot_number).reason;
}

void RunningJobs::release(size_t slot_number) {
  const std::lock_guard lock(mutex_);
  Slot& slot = slots_.at(slot_number);
  slot.held = false;
  slot.started = false;
  slot.deadline.reset();
}

size_t RunningJobs::cancel(const std::string& sweep) {
  std::vector<std::stop_source> to_request;
  size_t held = 0;
  {
    const std::lock_guard lock(mutex_);
    if (cancelled_.insert(sweep).second) {
      cancelled_order_.push_back(sweep);
      if (cancelled_order_.size() > max_cancelled_) {
        cancelled_.erase(cancelled_order_.front());
        cancelled_order_.pop_front();
      }
    }
    for (auto& slot : slots_) {
      if (slot.held && slot.job.sweep == sweep) {
        ++held;
        stop(slot, Stop::kCancel, to_request);
      }
    }
  }
  request(to_request);
  return held;
}

bool RunningJobs::cancelled(const std::string& sweep) {
  const std::lock_guard lock(mutex_);
  return cancelled_.contains(sweep);
}

RunningJobs::Look RunningJobs::look(
    Clock::time_point now, Clock::duration mark_after,
    const std::function<void(const std::vector<std::pair<JobRef, double>>&)>& mark) {
  Look look;
  std::vector<std::pair<JobRef, double>> to_mark;
  const std::lock_guard lock(mutex_);
  for (auto& slot : slots_) {
    if (slot.held) ++look.held;
    if (!slot.held || !slot.started) continue;
    look.longest = std::max(look.longest, now - slot.started_at);
    if (slot.marked) continue;
    if (slot.started_at + mark_after <= now) {
      slot.marked = true;
      to_mark.emplace_back(slot.job, slot.started_unix);
    }
  }
  if (!to_mark.empty()) mark(to_mark);
  return look;
}

void RunningJobs::stop_unstarted() {
  std::vector<std::stop_source> to_request;
  {
    const std::lock_guard lock(mutex_);
    for (auto& slot : slots_) {
      if (slot.held && !slot.started) stop(slot, Stop::kShutdown, to_request);
    }
  }
  request(to_request);
}

size_t RunningJobs::stop_all() {
  std::vector<std::stop_source> to_request;
  size_t running = 0;
  {
    const std::lock_guard lock(mutex_);
    stop_all_ = true;
    for (auto& slot : slots_) {
      if (!slot.held) continue;
      if (slot.started) ++running;
      stop(slot, Stop::kShutdown, to_request);
    }
  }
  request(to_request);
  return running;
}

void RunningJobs::watch(const std::stop_token& stop_token) {
  std::unique_lock lock(mutex_);
  while (!stop_token.stop_requested()) {
    const auto now = Clock::now();
    auto next = Clock::time_point::max();
    std::vector<std::stop_source> due;
    for (auto& slot : slots_) {
      if (!slot.held || !slot.deadline || slot.reason != Stop::kNone) continue;
      if (*slot.deadline <= now) {
        stop(slot, Stop::kTimeout, due);
      } else {
        next = std::min(next, *slot.deadline);
      }
    }
    if (!due.empty()) {
      lock.unlock();
      request(due);
      lock.lock();
      continue;
    }
    changed_ = false;
    const auto changed = [this] { return changed_; };
    if (next == Clock::time_point::max()) {
      deadlines_changed_.wait(lock, stop_token, changed);
    } else {
      deadlines_changed_.wait_until(lock, stop_token, next, changed);
    }
  }
}

}  // namespace simq
