// Dispatcher benchmarks: jobs through dispatch + complete by workers and credit (items =
// jobs), requeueing a lost worker's jobs, a drain, and the O(1) cost of queueing a range.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bench_data.h"
#include "dispatcher.h"
#include "heap_counter.h"

namespace simq::bench {
namespace {

constexpr uint64_t kRange = 10'000'000;
constexpr uint32_t kMaxBatch = 256;  // the broker's default BrokerOptions::max_batch

std::string worker_name(uint64_t n) {
  std::string name = "worker-";
  name += std::to_string(n);
  return name;
}

// Args: {workers, credit}. A 10^7-job range queued, then cycles of dispatch(256) and a
// complete() for every job handed out: the broker's steady state under a big sweep.
void BM_DispatchCompleteCycle(benchmark::State& state) {
  const auto workers = static_cast<uint64_t>(state.range(0));
  const auto credit = static_cast<uint32_t>(state.range(1));
  Dispatcher d;
  uint64_t queued_up_to = 0;
  d.add_range(kSweepId, queued_up_to, kRange);
  queued_up_to += kRange;
  for (uint64_t w = 0; w < workers; ++w) d.add_worker(worker_name(w), credit);

  uint64_t jobs = 0;
  uint64_t rejected = 0;
  for (auto _ : state) {
    // Never run dry, however long the benchmark runs: one more O(1) range.
    if (d.queued() < workers * credit) {
      d.add_range(kSweepId, queued_up_to, kRange);
      queued_up_to += kRange;
    }
    const std::vector<Assignment> assignments = d.dispatch(kMaxBatch);
    for (const Assignment& assignment : assignments) {
      for (const JobRef& job : assignment.jobs) {
        if (!d.complete(assignment.worker, job)) ++rejected;
      }
      jobs += assignment.jobs.size();
    }
  }
  if (rejected != 0 || d.in_flight() != 0) state.SkipWithError("a complete() was rejected");
  if (jobs == 0) state.SkipWithError("nothing was dispatched");
  state.SetItemsProcessed(static_cast<int64_t>(jobs));
  state.counters["jobs_per_call"] =
      benchmark::Counter(static_cast<double>(jobs), benchmark::Counter::kAvgIterations);
  state.counters["per_job"] = benchmark::Counter(
      static_cast<double>(jobs), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_DispatchCompleteCycle)
    ->ArgsProduct({{2, 16, 256}, {1, 4, 100}})
    ->ArgNames({"workers", "credit"});

// A worker with Arg(0) jobs in flight is lost: remove_worker() requeues them all at the
// front with attempt + 1 (timed); dispatching them again is not.
void BM_RemoveWorkerRequeue(benchmark::State& state) {
  const auto in_flight = static_cast<uint32_t>(state.range(0));
  Dispatcher d;
  d.add_range(kSweepId, 0, kRange);
  std::vector<Assignment> assignments;
  uint64_t requeued = 0;
  for (auto _ : state) {
    state.PauseTiming();
    d.add_worker("lost", in_flight);
    assignments = d.dispatch(in_flight);
    state.ResumeTiming();
    const std::vector<JobRef> jobs = d.remove_worker("lost", Dispatcher::Handback::kLost);
    requeued += jobs.size();
    benchmark::DoNotOptimize(jobs.data());
  }
  if (requeued != in_flight * static_cast<uint64_t>(state.iterations())) {
    state.SkipWithError("remove_worker did not requeue every job in flight");
  }
  state.SetItemsProcessed(static_cast<int64_t>(requeued));
}
BENCHMARK(BM_RemoveWorkerRequeue)->Arg(1000)->ArgName("in_flight");

// A stopping worker hands back all Arg(0) of its jobs unstarted: drain() (timed) takes its
// credit away and requeues them at the front, same attempt.
void BM_Drain(benchmark::State& state) {
  const auto in_flight = static_cast<uint32_t>(state.range(0));
  Dispatcher d;
  d.add_range(kSweepId, 0, kRange);
  std::vector<Assignment> assignments;
  uint64_t requeued = 0;
  for (auto _ : state) {
    state.PauseTiming();
    if (d.has_worker("stopping")) d.remove_worker("stopping");
    d.add_worker("stopping", in_flight);
    assignments = d.dispatch(in_flight);
    state.ResumeTiming();
    requeued += d.drain("stopping", assignments.at(0).jobs);
  }
  if (requeued != in_flight * static_cast<uint64_t>(state.iterations())) {
    state.SkipWithError("drain did not requeue every job handed back");
  }
  state.SetItemsProcessed(static_cast<int64_t>(requeued));
}
BENCHMARK(BM_Drain)->Arg(1000)->ArgName("in_flight");

// Queueing a range of Arg(0) jobs and dropping it again: time and heap bytes are the same
// for 1 job and for 10^7, because a range is one queue entry.
void BM_AddRangeAndDrop(benchmark::State& state) {
  const auto count = static_cast<uint64_t>(state.range(0));
  Dispatcher d;
  d.add_range("warm-up", 0, 1);  // the queue's first block is not what is measured
  d.drop_sweep("warm-up");
  const uint64_t heap_before = heap_bytes();
  for (auto _ : state) {
    d.add_range(kSweepId, 0, count);
    benchmark::DoNotOptimize(d.queued());
    d.drop_sweep(kSweepId);
  }
  state.counters["heap_bytes"] = benchmark::Counter(static_cast<double>(heap_bytes() - heap_before),
                                                    benchmark::Counter::kAvgIterations);
  if (d.queued() != 0) state.SkipWithError("drop_sweep left jobs queued");
}
BENCHMARK(BM_AddRangeAndDrop)->Arg(1)->Arg(10'000'000)->ArgName("jobs");

}  // namespace
}  // namespace simq::bench
