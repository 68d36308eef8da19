// The figures of issue 4, each measured on an embedded cluster of its own (LocalCluster) that
// is started, measured and stopped by one call. Each returns its measurements as a JSON object
// (report.h turns them into the table). Not thread-safe: one figure at a time, from one thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "simq/json.h"

namespace simq::bench {

// Sizes and shapes of the figures. Defaults are issue 4's; smoke() gives tiny ones.
struct FigureOptions {
  uint64_t jobs = 1'000'000;  // throughput: no-op jobs in the sweep
  unsigned throughput_workers = 2;
  // Slots per worker. Workers hold more jobs than slots while jobs are short (CREDIT), so a
  // slot per core is enough: 10^6 jobs gave 118.8k jobs/s at 2, 113.2k at 4, 111.7k at 64
  // (2026-11-22, one run). --throughput-slots changes it.
  unsigned throughput_slots = 2;
  unsigned latency_jobs = 1000;  // latency: sequential one-job sweeps
  unsigned latency_workers = 2;
  bool hops = false;  // latency: stamp each hop of every job (simq/hop_trace.h) and report them
  std::vector<unsigned> scaling_workers = {1, 2};  // cpu: one run per count, 1 slot each
  unsigned cpu_jobs = 24;             // cpu: mc_pi jobs per run (24: even for 1,2,3,4,6,8)
  uint64_t cpu_samples = 16'000'000;  // cpu: mc_pi samples per job (~0.2 s here: the run on
                                      // one worker takes ~5 s)
  unsigned cpu_repeats = 3;           // cpu: runs per worker count; the fastest is kept
  unsigned io_jobs = 1000;            // io: sleep jobs
  double io_seconds = 0.1;            // io: each one's sleep
  unsigned io_workers = 2;
  unsigned io_slots = 100;          // io: slots in all, split over io_workers
  uint64_t grid_jobs = 10'000'000;  // grid: jobs of the sweep submitted to paused workers
  double grid_watch_s = 1.0;        // grid: broker RSS sampled this long after SUBMITTED
  double idle_seconds = 2.0;        // idle: how long CPU time is counted
  std::string log_level = "warn";   // of the cluster's programs
  std::string bin_dir;              // simq-broker, simq-worker; "" = beside simq-bench

  // Tiny sizes for the smoke test: seconds in all, figures not comparable to the targets.
  static FigureOptions smoke();
};

// No-op grid sweep of options.jobs: from before SUBMIT until a consumer has followed the
// completion stream to the end (as `simq wait`) and read every record in job order (as
// `simq results --format jsonl`). {jobs, workers, slots, seconds, jobs_per_s}.
Json throughput(const FigureOptions& options);

// options.latency_jobs one-job no-op sweeps, one after another: from before SUBMIT until the
// job's completion is returned to a consumer blocked in XREAD BLOCK on the sweep's stream.
// {samples, workers, p50_ms, p99_ms, mean_ms, max_ms}; with options.hops also
// hops: [{point, after, samples, median_us (since submit), step_us (since `after`)}].
Json latency(const FigureOptions& options);

// The same CPU-bound sweep (mc_pi) on 1, then 2, ... workers of 1 slot each.
// {kernel, jobs, samples_per_job, points: [{workers, seconds, speedup, efficiency}]}.
Json cpu(const FigureOptions& options);

// options.io_jobs sleep jobs on options.io_slots slots in all. {jobs, sleep_s, workers,
// slots, wall_s, ideal_s}.
Json io(const FigureOptions& options);

// A grid sweep of options.grid_jobs submitted while every worker is paused (SIGSTOP): time
// from SUBMIT to SUBMITTED, the broker's memory sampled during and after; then cancelled.
// {jobs, submit_s, queued, in_flight, broker_rss_before_mib, broker_rss_max_mib,
// broker_peak_mib, broker_rss_after_mib}.
Json grid(const FigureOptions& options);

// A cluster of 2 workers left idle for options.idle_seconds: memory of the broker and of the
// larger worker, and the CPU each used meanwhile, in % of one core.
// {seconds, broker_rss_mib, worker_rss_mib, broker_cpu_pct, worker_cpu_pct}.
Json idle(const FigureOptions& options);

}  // namespace simq::bench
