// Unit tests of the broker's scheduling core: Dispatcher (queue, credit, in-flight jobs) and
// Liveness (heartbeats against a fake clock). No sockets, no clocks.
#include "dispatcher.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <new>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "liveness.h"

// Counts heap allocations so tests can check the memory claims (O(1) ranges, no per-job
// allocation). Single-threaded tests read the counters around the code under test.
namespace {
std::atomic<uint64_t> g_allocations{0};
std::atomic<uint64_t> g_allocated_bytes{0};
}  // namespace

// Out of line: inlined into callers, GCC would pair malloc/free against new/delete and warn.
[[gnu::noinline]] void* operator new(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  g_allocated_bytes.fetch_add(size, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace simq {

void PrintTo(const JobRun& run, std::ostream* os) {
  *os << "[" << run.first << ", +" << run.count << ")@" << run.attempt;
}

void PrintTo(const JobRef& job, std::ostream* os) {
  *os << job.sweep << "#" << job.index << "@" << job.attempt;
}

namespace {

std::vector<JobRef> jobs_of(const std::vector<Assignment>& assignments, const WorkerId& worker) {
  for (const Assignment& a : assignments) {
    if (a.worker == worker) return a.jobs;
  }
  return {};
}

// "s" + std::to_string(n) without operator+, which trips GCC 12's -Wrestrict at -O3.
std::string numbered(const char* prefix, uint64_t n) {
  std::string name = prefix;
  name += std::to_string(n);
  return name;
}

std::vector<JobRef> all_jobs(const std::vector<Assignment>& assignments) {
  std::vector<JobRef> jobs;
  for (const Assignment& a : assignments) jobs.insert(jobs.end(), a.jobs.begin(), a.jobs.end());
  return jobs;
}

TEST(Dispatcher, StartsEmptyAndTracksWorkers) {
  Dispatcher d;
  EXPECT_EQ(d.workers(), 0u);
  EXPECT_EQ(d.queued(), 0u);
  EXPECT_EQ(d.in_flight(), 0u);
  EXPECT_TRUE(d.dispatch(8).empty());

  d.add_worker("w1", 3);
  d.add_worker("w2", 5);
  EXPECT_EQ(d.workers(), 2u);
  EXPECT_TRUE(d.has_worker("w1"));
  EXPECT_FALSE(d.has_worker("w3"));
  EXPECT_EQ(d.free_credit("w2"), 5u);
  EXPECT_EQ(d.free_credit("w3"), 0u);
  EXPECT_EQ(d.in_flight("w3"), 0u);
  EXPECT_TRUE(d.dispatch(8).empty());  // no jobs

  EXPECT_TRUE(d.remove_worker("w3").empty());
  EXPECT_TRUE(d.remove_worker("w1").empty());
  EXPECT_EQ(d.workers(), 1u);
  EXPECT_FALSE(d.has_worker("w1"));
}

TEST(Dispatcher, NeverExceedsWorkerCredit) {
  std::mt19937_64 rng(20240611);
  auto pick = [&rng](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };

  Dispatcher d;
  std::map<WorkerId, uint32_t> credit;
  // The model: job (sweep, index) -> (worker, attempt) for every job in flight.
  std::map<std::pair<std::string, uint64_t>, std::pair<WorkerId, uint32_t>> in_flight;
  std::map<std::string, uint64_t> next_index;
  uint64_t queued = 0;
  uint64_t completed = 0;
  int next_worker = 0;

  auto add_worker = [&] {
    const WorkerId id = numbered("w", static_cast<uint64_t>(next_worker++));
    const auto c = static_cast<uint32_t>(1 + pick(4));
    d.add_worker(id, c);
    credit[id] = c;
  };
  for (int i = 0; i < 4; ++i) add_worker();

  for (int step = 0; step < 20000; ++step) {
    SCOPED_TRACE(testing::Message() << "step " << step);
    const uint64_t op = pick(100);
    if (op < 15) {
      const std::string sweep = numbered("s", pick(4));
      const uint64_t count = pick(20);
      d.add_range(sweep, next_index[sweep], count);
      next_index[sweep] += count;
      queued += count;
    } else if (op < 25) {
      const std::string sweep = numbered("s", pick(4));
      d.add_job(JobRef{sweep, next_index[sweep]++, 1});
      ++queued;
    } else if (op < 55) {
      const auto max_batch = static_cast<uint32_t>(1 + pick(5));
      std::map<WorkerId, uint32_t> free_before;
      for (const auto& [w, c] : credit) free_before[w] = d.free_credit(w);
      const std::vector<Assignment> assignments = d.dispatch(max_batch);
      for (const Assignment& a : assignments) {
        ASSERT_TRUE(credit.contains(a.worker));
        ASSERT_FALSE(a.jobs.empty());
        ASSERT_LE(a.jobs.size(), std::min(free_before[a.worker], max_batch));
        for (const JobRef& job : a.jobs) {
          const bool fresh =
              in_flight.emplace(std::pair{job.sweep, job.index}, std::pair{a.worker, job.attempt})
                  .second;
          ASSERT_TRUE(fresh) << "dispatched twice: " << job.sweep << "#" << job.index;
          --queued;
        }
      }
      // Work conserving: jobs stay queued only if no worker could take one more.
      if (d.queued() > 0) {
        for (const auto& [w, c] : credit) {
          ASSERT_TRUE(d.free_credit(w) == 0 || jobs_of(assignments, w).size() == max_batch) << w;
        }
      }
    } else if (op < 85) {
      if (in_flight.empty()) continue;
      auto it = std::next(in_flight.begin(), static_cast<long>(pick(in_flight.size())));
      const auto& [key, holder] = *it;
      const JobRef job{key.first, key.second, holder.second};
      ASSERT_FALSE(d.complete(holder.first, JobRef{job.sweep, job.index, job.attempt + 1}));
      ASSERT_TRUE(d.complete(holder.first, job));
      ASSERT_FALSE(d.complete(holder.first, job));
      in_flight.erase(it);
      ++completed;
    } else if (op < 93) {
      if (credit.empty()) continue;
      auto victim = std::next(credit.begin(), static_cast<long>(pick(credit.size())));
      const WorkerId w = victim->first;
      std::vector<JobRef> expected;
      for (auto it = in_flight.begin(); it != in_flight.end();) {
        if (it->second.first == w) {
          expected.push_back(JobRef{it->first.first, it->first.second, it->second.second + 1});
          it = in_flight.erase(it);
        } else {
          ++it;
        }
      }
      std::vector<JobRef> requeued = d.remove_worker(w);
      ASSERT_EQ(requeued.size(), expected.size());
      auto by_key = [](const JobRef& a, const JobRef& b) {
        return std::tie(a.sweep, a.index) < std::tie(b.sweep, b.index);
      };
      std::sort(requeued.begin(), requeued.end(), by_key);
      ASSERT_EQ(requeued, expected);
      queued += expected.size();
      credit.erase(victim);
    } else {
      add_worker();
    }

    // Invariants after every step.
    uint64_t total = 0;
    for (const auto& [w, c] : credit) {
      ASSERT_LE(d.in_flight(w), c) << w;
      ASSERT_EQ(d.in_flight(w) + d.free_credit(w), c) << w;
      total += d.in_flight(w);
    }
    ASSERT_EQ(total, d.in_flight());
    ASSERT_EQ(d.in_flight(), in_flight.size());
    ASSERT_EQ(d.queued(), queued);
    ASSERT_EQ(d.workers(), credit.size());
  }
  EXPECT_GT(completed, 1000u);  // the run exercised the paths it claims to
}

TEST(Dispatcher, HasASweepWhileAJobOfItIsQueuedOrInFlight) {
  Dispatcher d;
  EXPECT_FALSE(d.has_sweep("s"));
  d.add_range("s", 0, 2);
  EXPECT_TRUE(d.has_sweep("s"));
  d.add_worker("w", 2);
  const auto out = d.dispatch(8);
  ASSERT_EQ(out.size(), 1u);
  ASSERT_EQ(out[0].jobs.size(), 2u);
  EXPECT_EQ(d.queued(), 0u);
  EXPECT_TRUE(d.has_sweep("s"));  // in flight only
  EXPECT_TRUE(d.complete("w", out[0].jobs[0]));
  EXPECT_TRUE(d.has_sweep("s"));
  EXPECT_TRUE(d.complete("w", out[0].jobs[1]));
  EXPECT_FALSE(d.has_sweep("s"));
  d.add_range("t", 0, 1);
  EXPECT_EQ(d.drop_sweep("t"), 1u);
  EXPECT_FALSE(d.has_sweep("t"));
}

TEST(Dispatcher, HeldOfListsTheSweepsQueuedAndInFlightJobs) {
  using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;
  const auto held = [](const Dispatcher& d, const std::string& sweep) {
    Ranges ranges;
    d.held_of(sweep, ranges);
    std::sort(ranges.begin(), ranges.end());
    return ranges;
  };
  Dispatcher d;
  EXPECT_EQ(held(d, "s"), Ranges{});
  d.add_range("s", 0, 10);
  d.add_range("t", 0, 5);
  d.add_job(JobRef{"s", 20, 2});
  d.add_worker("w", 3);
  const auto out = d.dispatch(8);  // s#0..2 in flight
  ASSERT_EQ(jobs_of(out, "w").size(), 3u);
  EXPECT_TRUE(d.complete("w", JobRef{"s", 1, 1}));
  EXPECT_EQ(held(d, "s"), (Ranges{{0, 1}, {2, 1}, {3, 7}, {20, 1}}));
  EXPECT_EQ(held(d, "t"), (Ranges{{0, 5}}));
  d.drop_sweep("t");
  EXPECT_EQ(held(d, "t"), Ranges{});
}

TEST(UncoveredRuns, AreTheGapsBetweenCoveredRangesWithFencedJobsOnTheirOwn) {
  using Runs = std::vector<JobRun>;
  EXPECT_EQ(uncovered_runs({}, 0), Runs{});
  EXPECT_EQ(uncovered_runs({}, 5), (Runs{{0, 5, 1}}));
  // Unsorted, overlapping, nested and repeated ranges; one past the end.
  EXPECT_EQ(uncovered_runs({{6, 2}, {1, 3}, {2, 1}, {6, 2}, {12, 5}}, 14),
            (Runs{{0, 1, 1}, {4, 2, 1}, {8, 4, 1}}));
  EXPECT_EQ(uncovered_runs({{0, 10}}, 10), Runs{});
  // Fenced jobs in a gap are runs of their own at their attempt; fences of covered jobs and
  // repeated fences (HSCAN may visit a field twice) change nothing.
  EXPECT_EQ(uncovered_runs({{3, 2}}, 10, {{1, 2}, {3, 4}, {5, 3}, {5, 3}, {9, 2}}),
            (Runs{{0, 1, 1}, {1, 1, 2}, {2, 1, 1}, {5, 1, 3}, {6, 3, 1}, {9, 1, 2}}));
  EXPECT_EQ(uncovered_runs({}, 3, {{0, 2}, {1, 2}, {2, 2}}),
            (Runs{{0, 1, 2}, {1, 1, 2}, {2, 1, 2}}));
  // Fences in any order; a job fenced twice runs at the higher attempt.
  EXPECT_EQ(uncovered_runs({}, 4, {{2, 5}, {1, 3}, {2, 4}}),
            (Runs{{0, 1, 1}, {1, 1, 3}, {2, 1, 5}, {3, 1, 1}}));
  // A range whose end does not fit in 64 bits covers the rest.
  EXPECT_EQ(uncovered_runs({{2, UINT64_MAX}, {0, 1}}, 10), (Runs{{1, 1, 1}}));
}

TEST(Dispatcher, FifoWithinAndAcrossSweeps) {
  Dispatcher d;
  d.add_range("a", 0, 3);
  d.add_job(JobRef{"b", 7, 1});
  d.add_range("c", 10, 2);
  d.add_job(JobRef{"a", 5, 2});
  d.add_range("b", 0, 1);
  EXPECT_EQ(d.queued(), 8u);

  d.add_worker("w", 2);
  std::vector<JobRef> order;
  for (int round = 0; round < 10 && d.queued() > 0; ++round) {
    const std::vector<Assignment> assignments = d.dispatch(16);
    ASSERT_EQ(assignments.size(), 1u);
    ASSERT_EQ(assignments[0].worker, "w");
    ASSERT_EQ(assignments[0].jobs.size(), 2u);
    for (const JobRef& job : assignments[0].jobs) {
      order.push_back(job);
      ASSERT_TRUE(d.complete("w", job));
    }
  }
  const std::vector<JobRef> expected{{"a", 0, 1},  {"a", 1, 1},  {"a", 2, 1}, {"b", 7, 1},
                                     {"c", 10, 1}, {"c", 11, 1}, {"a", 5, 2}, {"b", 0, 1}};
  EXPECT_EQ(order, expected);
  EXPECT_EQ(d.queued(), 0u);
  EXPECT_EQ(d.in_flight(), 0u);
}

TEST(Dispatcher, HugeRangeCostsConstantMemory) {
  constexpr uint64_t kJobs = 10'000'000;
  Dispatcher d;
  d.add_range("warm-up", 0, 1);  // the queue's first block is not what is measured
  ASSERT_EQ(d.drop_sweep("warm-up"), 1u);

  const uint64_t bytes_before = g_allocated_bytes.load();
  d.add_range("big", 0, kJobs);
  const uint64_t bytes = g_allocated_bytes.load() - bytes_before;
  EXPECT_LT(bytes, 4096u);
  EXPECT_EQ(d.queued(), kJobs);

  d.add_worker("w", 5);
  const std::vector<Assignment> assignments = d.dispatch(100);
  ASSERT_EQ(assignments.size(), 1u);
  const std::vector<JobRef> expected{
      {"big", 0, 1}, {"big", 1, 1}, {"big", 2, 1}, {"big", 3, 1}, {"big", 4, 1}};
  EXPECT_EQ(assignments[0].jobs, expected);
  EXPECT_EQ(d.queued(), kJobs - 5);
  EXPECT_EQ(d.in_flight(), 5u);

  ASSERT_TRUE(d.complete("w", expected[1]));
  EXPECT_EQ(all_jobs(d.dispatch(100)), (std::vector<JobRef>{{"big", 5, 1}}));
  EXPECT_EQ(d.drop_sweep("big"), kJobs - 6);
  EXPECT_EQ(d.queued(), 0u);
}

TEST(Dispatcher, SteadyStateAllocatesOnlyTheResult) {
  Dispatcher d;
  d.add_range("s", 0, 1'000'000);
  d.add_worker("w", 64);
  auto cycle = [&d] {
    const std::vector<Assignment> assignments = d.dispatch(64);
    EXPECT_EQ(all_jobs(assignments).size(), 64u);
    for (const JobRef& job : all_jobs(assignments)) EXPECT_TRUE(d.complete("w", job));
  };
  for (int i = 0; i < 3; ++i) cycle();  // warm up: node pool, buckets

  const uint64_t before = g_allocations.load();
  const std::vector<Assignment> assignments = d.dispatch(64);
  const uint64_t dispatch_allocations = g_allocations.load() - before;
  ASSERT_EQ(all_jobs(assignments).size(), 64u);
  // The outer vector and the one job vector; the short sweep id needs no heap.
  EXPECT_EQ(dispatch_allocations, 2u);

  const uint64_t before_complete = g_allocations.load();
  for (const JobRef& job : assignments[0].jobs) ASSERT_TRUE(d.complete("w", job));
  EXPECT_EQ(g_allocations.load() - before_complete, 0u);
}

TEST(Dispatcher, RequeuesLostWorkersJobsAtTheFrontWithNextAttempt) {
  Dispatcher d;
  d.add_worker("a", 3);
  d.add_range("s", 0, 10);
  EXPECT_EQ(jobs_of(d.dispatch(3), "a"),
            (std::vector<JobRef>{{"s", 0, 1}, {"s", 1, 1}, {"s", 2, 1}}));
  ASSERT_TRUE(d.complete("a", JobRef{"s", 1, 1}));
  EXPECT_EQ(jobs_of(d.dispatch(3), "a"), (std::vector<JobRef>{{"s", 3, 1}}));
  d.add_job(JobRef{"t", 0, 1});  // at the back: requeued jobs must overtake it
  ASSERT_EQ(d.queued(), 7u);

  // In flight on a, in dispatch order: 0, 2, 3.
  const std::vector<JobRef> requeued = d.remove_worker("a");
  const std::vector<JobRef> expected{{"s", 0, 2}, {"s", 2, 2}, {"s", 3, 2}};
  EXPECT_EQ(requeued, expected);
  EXPECT_FALSE(d.has_worker("a"));
  EXPECT_EQ(d.in_flight(), 0u);
  EXPECT_EQ(d.queued(), 10u);

  d.add_worker("b", 4);
  EXPECT_EQ(jobs_of(d.dispatch(4), "b"),
            (std::vector<JobRef>{{"s", 0, 2}, {"s", 2, 2}, {"s", 3, 2}, {"s", 4, 1}}));
  EXPECT_EQ(d.in_flight("b"), 4u);

  // Lost again: attempt 3, and still ahead of everything else.
  EXPECT_EQ(d.remove_worker("b"),
            (std::vector<JobRef>{{"s", 0, 3}, {"s", 2, 3}, {"s", 3, 3}, {"s", 4, 2}}));
  d.add_worker("c", 100);
  EXPECT_EQ(all_jobs(d.dispatch(100)), (std::vector<JobRef>{{"s", 0, 3},
                                                            {"s", 2, 3},
                                                            {"s", 3, 3},
                                                            {"s", 4, 2},
                                                            {"s", 5, 1},
                                                            {"s", 6, 1},
                                                            {"s", 7, 1},
                                                            {"s", 8, 1},
                                                            {"s", 9, 1},
                                                            {"t", 0, 1}}));
}

TEST(Dispatcher, HandedBackJobsKeepTheirAttemptAndGoFirst) {
  Dispatcher d;
  d.add_worker("a", 2);
  d.add_range("s", 0, 5);
  ASSERT_EQ(jobs_of(d.dispatch(2), "a"), (std::vector<JobRef>{{"s", 0, 1}, {"s", 1, 1}}));
  // BYE: never finished, so no attempt was used up.
  EXPECT_EQ(d.remove_worker("a", Dispatcher::Handback::kReturned),
            (std::vector<JobRef>{{"s", 0, 1}, {"s", 1, 1}}));
  EXPECT_EQ(d.queued(), 5u);
  d.add_worker("b", 3);
  EXPECT_EQ(jobs_of(d.dispatch(3), "b"),
            (std::vector<JobRef>{{"s", 0, 1}, {"s", 1, 1}, {"s", 2, 1}}));
}

TEST(Dispatcher, HeldJobsWaitUntilRequeuedThenRunFirst) {
  Dispatcher d;
  d.add_worker("a", 2);
  d.add_range("s", 0, 4);
  ASSERT_EQ(jobs_of(d.dispatch(2), "a"), (std::vector<JobRef>{{"s", 0, 1}, {"s", 1, 1}}));
  const auto held = d.remove_worker("a", Dispatcher::Handback::kHeld);
  EXPECT_EQ(held, (std::vector<JobRef>{{"s", 0, 2}, {"s", 1, 2}}));
  EXPECT_EQ(d.queued(), 2u) << "held jobs are not queued until their fences are up";
  d.add_worker("b", 4);
  EXPECT_EQ(jobs_of(d.dispatch(4), "b"), (std::vector<JobRef>{{"s", 2, 1}, {"s", 3, 1}}));
  d.requeue_front(held);
  EXPECT_EQ(d.queued(), 2u);
  EXPECT_EQ(jobs_of(d.dispatch(4), "b"), (std::vector<JobRef>{{"s", 0, 2}, {"s", 1, 2}}));
  EXPECT_EQ(d.in_flight_of("s"), 4u);
  EXPECT_EQ(d.in_flight_of("t"), 0u);
}

TEST(Dispatcher, DropSweepLeavesOtherSweepsAndInFlightJobs) {
  Dispatcher d;
  d.add_worker("a", 1);
  d.add_range("s", 0, 100);
  d.add_range("t", 0, 3);
  ASSERT_EQ(jobs_of(d.dispatch(1), "a"), (std::vector<JobRef>{{"s", 0, 1}}));
  EXPECT_EQ(d.drop_sweep("s"), 99u);
  EXPECT_EQ(d.queued(), 3u);
  EXPECT_EQ(d.in_flight_of("s"), 1u);
  ASSERT_TRUE(d.complete("a", JobRef{"s", 0, 1}));
  EXPECT_EQ(jobs_of(d.dispatch(1), "a"), (std::vector<JobRef>{{"t", 0, 1}}));
}

TEST(Dispatcher, ADrainingWorkerGetsNothingMoreAndItsUnstartedJobsRunElsewhere) {
  Dispatcher d;
  d.add_worker("a", 3);
  d.add_range("s", 0, 5);
  ASSERT_EQ(jobs_of(d.dispatch(3), "a"),
            (std::vector<JobRef>{{"s", 0, 1}, {"s", 1, 1}, {"s", 2, 1}}));
  // a is stopping: job 0 runs on, jobs 1 and 2 never started; a stale entry is ignored.
  EXPECT_EQ(d.drain("a", {{"s", 1, 1}, {"s", 2, 1}, {"s", 4, 1}, {"s", 0, 7}}), 2u);
  EXPECT_EQ(d.free_credit("a"), 0u);
  EXPECT_EQ(d.in_flight("a"), 1u);
  ASSERT_TRUE(d.complete("a", JobRef{"s", 0, 1}));
  EXPECT_TRUE(d.dispatch(10).empty()) << "a draining worker gets no more jobs";
  d.add_worker("b", 10);
  EXPECT_EQ(jobs_of(d.dispatch(10), "b"),
            (std::vector<JobRef>{{"s", 1, 1}, {"s", 2, 1}, {"s", 3, 1}, {"s", 4, 1}}));
}

TEST(Dispatcher, CreditBeyondTheSlotsIsHeldAndHandedBackJobsRunElsewhere) {
  Dispatcher d;
  d.add_worker("a", 2);
  d.add_range("s", 0, 10);
  ASSERT_EQ(d.dispatch(100).at(0).jobs.size(), 2u);
  // Short jobs: a asks to hold 4 more than its 2 slots.
  EXPECT_EQ(d.set_credit("a", 6, {}), 0u);
  EXPECT_EQ(d.free_credit("a"), 4u);
  EXPECT_EQ(jobs_of(d.dispatch(100), "a"),
            (std::vector<JobRef>{{"s", 2, 1}, {"s", 3, 1}, {"s", 4, 1}, {"s", 5, 1}}));
  // A long kernel: a holds nothing beyond its slots again and hands back the four it had not
  // started (and a stale entry, ignored); they go to the front of the queue, in order.
  EXPECT_EQ(d.set_credit("a", 2, {{"s", 2, 1}, {"s", 3, 1}, {"s", 4, 1}, {"s", 5, 1}, {"s", 9, 1}}),
            4u);
  EXPECT_EQ(d.in_flight("a"), 2u);
  EXPECT_EQ(d.free_credit("a"), 0u);
  EXPECT_TRUE(d.dispatch(100).empty());
  d.add_worker("b", 3);
  EXPECT_EQ(jobs_of(d.dispatch(100), "b"),
            (std::vector<JobRef>{{"s", 2, 1}, {"s", 3, 1}, {"s", 4, 1}}));
  // A draining worker's credit stays 0, whatever a late CREDIT asks.
  EXPECT_EQ(d.drain("b", {}), 0u);
  EXPECT_EQ(d.set_credit("b", 50, {}), 0u);
  EXPECT_EQ(d.free_credit("b"), 0u);
  EXPECT_EQ(d.set_credit("nobody", 5, {{"s", 5, 1}}), 0u);
}

TEST(Dispatcher, ALostWorkersJobsBeyondItsSlotsNeverStartedAndKeepTheirAttempt) {
  Dispatcher d;
  d.add_worker("a", 2);
  d.add_range("s", 0, 6);
  ASSERT_EQ(d.set_credit("a", 5, {}), 0u);
  ASSERT_EQ(d.dispatch(100).at(0).jobs.size(), 5u);
  // Jobs 0 and 1 may have been running; 2, 3, 4 waited in its queue.
  std::vector<JobRef> unstarted;
  EXPECT_EQ(d.remove_worker("a", Dispatcher::Handback::kHeld, &unstarted),
            (std::vector<JobRef>{{"s", 0, 2}, {"s", 1, 2}}));
  EXPECT_EQ(unstarted, (std::vector<JobRef>{{"s", 4, 1}, {"s", 3, 1}, {"s", 2, 1}}));
  d.add_worker("b", 10);
  EXPECT_EQ(jobs_of(d.dispatch(10), "b"),
            (std::vector<JobRef>{{"s", 2, 1}, {"s", 3, 1}, {"s", 4, 1}, {"s", 5, 1}}))
      << "the unstarted ones first, in order, same attempt; the held ones wait for their fence";
}

TEST(Dispatcher, LateCompleteAfterRequeueIsRejected) {
  Dispatcher d;
  d.add_worker("a", 1);
  d.add_range("s", 0, 1);
  ASSERT_EQ(jobs_of(d.dispatch(1), "a"), (std::vector<JobRef>{{"s", 0, 1}}));
  ASSERT_EQ(d.remove_worker("a"), (std::vector<JobRef>{{"s", 0, 2}}));

  d.add_worker("b", 1);
  ASSERT_EQ(jobs_of(d.dispatch(1), "b"), (std::vector<JobRef>{{"s", 0, 2}}));

  // The presumed-dead worker reports late, even after rejoining under the same id.
  EXPECT_FALSE(d.complete("a", JobRef{"s", 0, 1}));
  d.add_worker("a", 1);
  EXPECT_FALSE(d.complete("a", JobRef{"s", 0, 1}));
  EXPECT_FALSE(d.complete("a", JobRef{"s", 0, 2}));  // right attempt, wrong worker
  EXPECT_FALSE(d.complete("b", JobRef{"s", 0, 1}));  // right worker, old attempt
  EXPECT_EQ(d.in_flight("b"), 1u);
  EXPECT_EQ(d.free_credit("b"), 0u);
  EXPECT_EQ(d.free_credit("a"), 1u);
  EXPECT_EQ(d.in_flight(), 1u);

  EXPECT_TRUE(d.complete("b", JobRef{"s", 0, 2}));
  EXPECT_EQ(d.in_flight(), 0u);
  EXPECT_EQ(d.free_credit("b"), 1u);
}

TEST(Dispatcher, DuplicateCompleteIsRejected) {
  Dispatcher d;
  d.add_worker("w", 2);
  d.add_range("s", 0, 2);
  ASSERT_EQ(all_jobs(d.dispatch(2)).size(), 2u);
  EXPECT_TRUE(d.complete("w", JobRef{"s", 0, 1}));
  EXPECT_EQ(d.free_credit("w"), 1u);
  EXPECT_FALSE(d.complete("w", JobRef{"s", 0, 1}));
  EXPECT_EQ(d.free_credit("w"), 1u);
  EXPECT_EQ(d.in_flight("w"), 1u);
  EXPECT_FALSE(d.complete("w", JobRef{"nope", 1, 1}));   // unknown sweep
  EXPECT_FALSE(d.complete("w", JobRef{"s", 5, 1}));      // never dispatched
  EXPECT_FALSE(d.complete("ghost", JobRef{"s", 1, 1}));  // unknown worker
  EXPECT_TRUE(d.complete("w", JobRef{"s", 1, 1}));
  EXPECT_EQ(d.in_flight(), 0u);
}

TEST(Dispatcher, BusySlotsFromAnEarlierSessionHoldCreditUntilReported) {
  Dispatcher d;
  d.add_range("s", 0, 10);
  d.add_worker("w", 3, 2);  // reconnected while two old jobs still run
  EXPECT_EQ(d.free_credit("w"), 1u);
  auto first = d.dispatch(100);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].jobs, (std::vector<JobRef>{{"s", 0, 1}}));
  EXPECT_TRUE(d.dispatch(100).empty());
  // An old job's DONE is not in flight here; it frees one busy slot.
  EXPECT_FALSE(d.complete("w", JobRef{"old", 7, 1}));
  EXPECT_TRUE(d.release_busy("w"));
  EXPECT_EQ(d.free_credit("w"), 1u);
  EXPECT_EQ(d.dispatch(100).at(0).jobs, (std::vector<JobRef>{{"s", 1, 1}}));
  EXPECT_TRUE(d.release_busy("w"));
  EXPECT_FALSE(d.release_busy("w"));  // no busy slot left: a later stray DONE frees nothing
  EXPECT_EQ(d.free_credit("w"), 1u);
  EXPECT_EQ(d.in_flight("w"), 2u);
}

TEST(Dispatcher, SpreadsFewJobsAcrossIdleWorkersRoundRobin) {
  Dispatcher d;
  d.add_worker("a", 4);
  d.add_worker("b", 4);

  d.add_range("s", 0, 2);
  std::vector<Assignment> assignments = d.dispatch(16);
  ASSERT_EQ(assignments.size(), 2u);
  EXPECT_EQ(assignments[0].worker, "a");
  EXPECT_EQ(assignments[0].jobs, (std::vector<JobRef>{{"s", 0, 1}}));
  EXPECT_EQ(assignments[1].worker, "b");
  EXPECT_EQ(assignments[1].jobs, (std::vector<JobRef>{{"s", 1, 1}}));

  // One job at a time alternates: a was served before b, so a is next, then b.
  std::vector<WorkerId> served;
  for (uint64_t i = 2; i < 6; ++i) {
    d.add_job(JobRef{"s", i, 1});
    assignments = d.dispatch(16);
    ASSERT_EQ(assignments.size(), 1u);
    served.push_back(assignments[0].worker);
  }
  EXPECT_EQ(served, (std::vector<WorkerId>{"a", "b", "a", "b"}));

  // Three jobs for free credit 1 (a) and 1 (b) and 4 (c): c, never served, goes first.
  d.add_worker("c", 4);
  ASSERT_EQ(d.free_credit("a"), 1u);
  ASSERT_EQ(d.free_credit("b"), 1u);
  d.add_range("t", 0, 3);
  assignments = d.dispatch(16);
  ASSERT_EQ(assignments.size(), 3u);
  EXPECT_EQ(assignments[0].worker, "c");
  EXPECT_EQ(assignments[0].jobs, (std::vector<JobRef>{{"t", 0, 1}}));
  EXPECT_EQ(assignments[1].worker, "a");
  EXPECT_EQ(assignments[1].jobs, (std::vector<JobRef>{{"t", 1, 1}}));
  EXPECT_EQ(assignments[2].worker, "b");
  EXPECT_EQ(assignments[2].jobs, (std::vector<JobRef>{{"t", 2, 1}}));
}

TEST(Dispatcher, SplitsEvenlyThenFillsToCreditAndBatch) {
  Dispatcher d;
  d.add_worker("a", 4);
  d.add_worker("b", 4);
  d.add_worker("c", 1);

  d.add_range("s", 0, 5);  // free credit 9: dealt a, b, c, a, b
  std::vector<Assignment> assignments = d.dispatch(16);
  EXPECT_EQ(jobs_of(assignments, "a"), (std::vector<JobRef>{{"s", 0, 1}, {"s", 1, 1}}));
  EXPECT_EQ(jobs_of(assignments, "b"), (std::vector<JobRef>{{"s", 2, 1}, {"s", 3, 1}}));
  EXPECT_EQ(jobs_of(assignments, "c"), (std::vector<JobRef>{{"s", 4, 1}}));

  // More jobs than free credit: everyone fills up, but no more than max_batch per call.
  d.add_range("s", 5, 100);
  assignments = d.dispatch(1);
  EXPECT_EQ(all_jobs(assignments).size(), 2u);  // c is full
  assignments = d.dispatch(16);
  EXPECT_EQ(jobs_of(assignments, "a").size(), 1u);
  EXPECT_EQ(jobs_of(assignments, "b").size(), 1u);
  EXPECT_TRUE(jobs_of(assignments, "c").empty());
  EXPECT_EQ(d.free_credit("a"), 0u);
  EXPECT_EQ(d.free_credit("b"), 0u);
  EXPECT_EQ(d.queued(), 96u);
  EXPECT_TRUE(d.dispatch(16).empty());
  EXPECT_TRUE(d.dispatch(0).empty());
}

TEST(Dispatcher, DropSweepRemovesOnlyItsQueuedJobs) {
  Dispatcher d;
  d.add_range("a", 0, 5);
  d.add_job(JobRef{"b", 1, 1});
  d.add_range("a", 10, 3);
  d.add_job(JobRef{"a", 20, 1});
  d.add_range("c", 0, 2);
  d.add_worker("w", 2);
  ASSERT_EQ(all_jobs(d.dispatch(2)), (std::vector<JobRef>{{"a", 0, 1}, {"a", 1, 1}}));

  EXPECT_EQ(d.drop_sweep("a"), 3u + 3u + 1u);
  EXPECT_EQ(d.drop_sweep("a"), 0u);
  EXPECT_EQ(d.drop_sweep("unknown"), 0u);
  EXPECT_EQ(d.queued(), 3u);
  EXPECT_EQ(d.in_flight("w"), 2u);  // in flight jobs stay

  EXPECT_TRUE(d.complete("w", JobRef{"a", 0, 1}));
  EXPECT_TRUE(d.complete("w", JobRef{"a", 1, 1}));
  d.add_worker("v", 10);
  EXPECT_EQ(all_jobs(d.dispatch(10)), (std::vector<JobRef>{{"b", 1, 1}, {"c", 0, 1}, {"c", 1, 1}}));
}

TEST(Dispatcher, SweepIdIsReusableAfterItsJobsAreGone) {
  Dispatcher d;
  d.add_worker("w", 1);
  d.add_range("a", 0, 1);
  ASSERT_EQ(all_jobs(d.dispatch(1)), (std::vector<JobRef>{{"a", 0, 1}}));
  ASSERT_TRUE(d.complete("w", JobRef{"a", 0, 1}));
  d.add_range("b", 0, 1);  // may take a's recycled handle
  d.add_range("a", 7, 1);
  ASSERT_EQ(all_jobs(d.dispatch(1)), (std::vector<JobRef>{{"b", 0, 1}}));
  EXPECT_FALSE(d.complete("w", JobRef{"a", 0, 1}));
  ASSERT_TRUE(d.complete("w", JobRef{"b", 0, 1}));
  EXPECT_EQ(all_jobs(d.dispatch(1)), (std::vector<JobRef>{{"a", 7, 1}}));
}

TEST(Liveness, ExpiresStrictlyAfterIntervalTimesLiveness) {
  Liveness live(1000, 3);
  live.touch("p", 0);
  live.touch("q", 500);
  EXPECT_TRUE(live.knows("p"));
  EXPECT_TRUE(live.expire(3000).empty());  // exactly 3000 ms of silence: still alive
  EXPECT_TRUE(live.knows("p"));
  EXPECT_EQ(live.expire(3001), std::vector<std::string>{"p"});
  EXPECT_FALSE(live.knows("p"));
  EXPECT_TRUE(live.knows("q"));
  EXPECT_TRUE(live.expire(3001).empty());  // forgotten: reported once

  live.touch("q", 3400);  // heard again: the clock restarts
  EXPECT_TRUE(live.expire(6400).empty());
  EXPECT_EQ(live.expire(6401), std::vector<std::string>{"q"});

  live.touch("r", 0);
  live.forget("r");
  EXPECT_FALSE(live.knows("r"));
  EXPECT_TRUE(live.expire(100000).empty());
}

TEST(Liveness, TouchAllRestartsEveryClockButNeverTurnsOneBack) {
  Liveness live(1000, 3);
  live.touch("p", 0);
  live.touch("q", 5000);
  live.touch_all(4000);  // the owner stalled until 4000: p is not held to its silence
  EXPECT_TRUE(live.expire(7000).empty());
  EXPECT_EQ(live.expire(7001), std::vector<std::string>{"p"});
  EXPECT_TRUE(live.expire(8000).empty());  // q was heard at 5000, later than the touch
  EXPECT_EQ(live.expire(8001), std::vector<std::string>{"q"});
}

TEST(Liveness, HeartbeatsAreDueOneIntervalAfterTheLastSend) {
  Liveness live(1000, 3);
  EXPECT_EQ(live.interval_ms(), 1000);
  live.touch("p", 0);
  live.touch("q", 200);
  EXPECT_TRUE(live.due_heartbeats(999).empty());
  EXPECT_EQ(live.due_heartbeats(1000), std::vector<std::string>{"p"});
  EXPECT_TRUE(live.due_heartbeats(1100).empty());  // p marked sent at 1000
  EXPECT_EQ(live.due_heartbeats(1200), std::vector<std::string>{"q"});

  live.sent("p", 1900);  // a DISPATCH counts: no HEARTBEAT needed until 2900
  EXPECT_EQ(live.due_heartbeats(2200), std::vector<std::string>{"q"});
  EXPECT_TRUE(live.due_heartbeats(2899).empty());
  EXPECT_EQ(live.due_heartbeats(2900), std::vector<std::string>{"p"});

  live.touch("p", 2950);  // hearing from a peer does not change when we owe it a heartbeat
  EXPECT_TRUE(live.due_heartbeats(3100).empty());
  std::vector<std::string> due = live.due_heartbeats(3900);
  std::sort(due.begin(), due.end());
  EXPECT_EQ(due, (std::vector<std::string>{"p", "q"}));

  live.sent("stranger", 0);  // sending to an unknown peer does not make it known
  EXPECT_FALSE(live.knows("stranger"));
}

}  // namespace
}  // namespace simq
