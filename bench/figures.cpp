// The figures of issue 4 (figures.h): each starts a LocalCluster, drives it through the same
// client and consumer code as the simq CLI, and stops it. Not thread-safe.
#include "figures.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <ostream>
#include <streambuf>
#include <thread>
#include <unordered_map>
#include <utility>

#include "client.h"
#include "cluster.h"
#include "consumer.h"
#include "proc_stats.h"
#include "simq/errors.h"
#include "simq/hop_trace.h"
#include "simq/signals.h"
#include "simq/store.h"
#include "simq/sweep.h"
#include "simq/temp_dir.h"

namespace simq::bench {

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr auto kSubmitTimeout = 120s;        // a 10^7-job SUBMIT on a loaded machine
constexpr auto kLatencyBlock = 10s;          // one XREAD BLOCK of the latency consumer
constexpr auto kStreamSilence = 60s;         // follow_stream(): no completion for this long
constexpr size_t kStreamBatch = 10000;       // follow_stream(): entries per XREAD
constexpr auto kIdleSettle = 500ms;          // after start, before idle CPU time is counted
constexpr auto kMemorySampleInterval = 2ms;  // broker RSS samples during the grid submit
constexpr const char* kWhat = "simq-bench";

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A started cluster of `workers` x `slots`, stopped when it goes out of scope.
std::unique_ptr<LocalCluster> start_cluster(const FigureOptions& options, unsigned workers,
                                            unsigned slots) {
  ClusterOptions cluster_options;
  cluster_options.workers = workers;
  cluster_options.slots = slots;
  cluster_options.log_level = options.log_level;
  cluster_options.bin_dir = options.bin_dir;
  auto cluster = std::make_unique<LocalCluster>(std::move(cluster_options));
  cluster->start();
  return cluster;
}

void check_healthy(const LocalCluster& cluster, std::string_view figure) {
  if (const auto failure = cluster.failure()) {
    throw Error(fmt::format("{}: the cluster broke: {}", figure, *failure));
  }
}

SweepSpec make_spec(std::string_view kernel, Json params, std::string_view axis, uint64_t jobs) {
  Json spec = {{"name", fmt::format("bench-{}", kernel)}, {"kernel", kernel}, {"params", params}};
  if (jobs != 1 || !axis.empty()) spec["grid"] = {{axis, {{"range", {0, jobs}}}}};
  return SweepSpec::from_json(spec, kWhat);
}

// Submits `spec`; returns its sweep id. Stamps job 0's submit (simq/hop_trace.h: one branch
// unless the latency figure traces hops).
std::string submit(BrokerClient& client, const SweepSpec& spec) {
  return submit_under_fresh_id(
             [&](const std::string& id) {
               hop_stamp(hop::kSubmit, id, 0);
               return client.submit(id, spec, kWhat, kSubmitTimeout);
             },
             new_sweep_id)
      .sweep_id;
}

// Follows the sweep to its end as `simq wait` does, silently; throws unless all succeeded.
void wait_quietly(Store& store, const std::string& sweep, std::string_view figure) {
  WaitOptions wait;
  wait.progress = false;
  wait.quiet = true;
  wait.stall_notice = 0ms;
  if (wait_sweep(store, sweep, wait) != kExitOk) {
    throw Error(fmt::format("{}: sweep {} did not succeed in full", figure, sweep));
  }
}

// Follows the sweep's completion stream in XREAD BLOCK until its final entry, with no pause
// between reads (wait_sweep() waits 50 ms after each read that returned completions, which
// would blur a figure of a few seconds by up to 2%); throws if a job failed or the stream
// stays silent for kStreamSilence.
void follow_stream(Store& store, const std::string& sweep, std::string_view figure) {
  std::string cursor = "0";
  for (;;) {
    const auto events = store.read_events(sweep, cursor, kStreamSilence, kStreamBatch);
    if (events.empty()) {
      throw Error(fmt::format("{}: no completion of sweep {} for {} s", figure, sweep,
                              kStreamSilence.count()));
    }
    for (const auto& event : events) {
      if (event.sweep_done) {
        if (event.cancelled) throw Error(fmt::format("{}: sweep {} was cancelled", figure, sweep));
        return;
      }
      if (!event.ok) throw Error(fmt::format("{}: a job of sweep {} failed", figure, sweep));
    }
    cursor = events.back().id;
  }
}

// Counts the lines written to it and throws the text away.
class LineCounter final : public std::streambuf {
 public:
  uint64_t lines() const { return lines_; }

 protected:
  int_type overflow(int_type c) override {
    if (c == '\n') ++lines_;
    return traits_type::not_eof(c);
  }
  std::streamsize xsputn(const char* text, std::streamsize count) override {
    lines_ += static_cast<uint64_t>(std::count(text, text + count, '\n'));
    return count;
  }

 private:
  uint64_t lines_ = 0;
};

// Sweep of `spec` on the cluster, timed from before SUBMIT until a consumer blocked on the
// completion stream reads its final entry.
double timed_sweep(LocalCluster& cluster, const SweepSpec& spec, std::string_view figure) {
  Store store(RedisAddress::parse(cluster.redis_url()));
  BrokerClient client(cluster.frontend());
  const auto start = Clock::now();
  const std::string sweep = submit(client, spec);
  follow_stream(store, sweep, figure);
  const double elapsed = seconds_since(start);
  check_healthy(cluster, figure);
  return elapsed;
}

double percentile(const std::vector<double>& sorted, double fraction) {
  const auto last = static_cast<double>(sorted.size() - 1);
  return sorted[static_cast<size_t>(std::min(last, fraction * last + 0.5))];
}

void signal_all(const std::vector<pid_t>& pids, int signal_number) {
  for (const pid_t pid : pids) ::kill(pid, signal_number);
}

}  // namespace

FigureOptions FigureOptions::smoke() {
  FigureOptions options;
  options.jobs = 2000;
  options.latency_jobs = 50;
  options.cpu_jobs = 4;
  options.cpu_samples = 1'000'000;
  options.cpu_repeats = 1;
  options.io_jobs = 100;
  options.io_slots = 20;
  options.grid_jobs = 100'000;
  options.grid_watch_s = 0.2;
  options.idle_seconds = 1.0;
  return options;
}

Json throughput(const FigureOptions& options) {
  const auto cluster = start_cluster(options, options.throughput_workers, options.throughput_slots);
  const SweepSpec spec = make_spec("noop", Json::object(), "i", options.jobs);
  Store store(RedisAddress::parse(cluster->redis_url()));
  BrokerClient client(cluster->frontend());
  LineCounter counter;
  std::ostream sink(&counter);

  const auto start = Clock::now();
  const std::string sweep = submit(client, spec);
  wait_quietly(store, sweep, "throughput");
  if (print_results(store, sweep, ResultFormat::kJsonl, sink) != kExitOk) {
    throw Error("throughput: reading the results failed");
  }
  const double elapsed = seconds_since(start);
  check_healthy(*cluster, "throughput");
  if (counter.lines() != options.jobs) {
    throw Error(
        fmt::format("throughput: read {} results of {} jobs", counter.lines(), options.jobs));
  }
  return {{"jobs", options.jobs},
          {"workers", cluster->workers()},
          {"slots", cluster->slots()},
          {"seconds", elapsed},
          {"jobs_per_s", static_cast<double>(options.jobs) / elapsed}};
}

namespace {

// Sets $SIMQ_HOP_TRACE for this process and the programs it starts, while it lives.
class HopTraceEnv {
 public:
  explicit HopTraceEnv(const std::string& path) {
    ::setenv("SIMQ_HOP_TRACE", path.c_str(), 1);
    hop_trace_to(path.c_str());  // this process may have stamped untraced before
  }
  ~HopTraceEnv() {
    ::unsetenv("SIMQ_HOP_TRACE");
    hop_trace_to(nullptr);
  }
  HopTraceEnv(const HopTraceEnv&) = delete;
  HopTraceEnv& operator=(const HopTraceEnv&) = delete;
};

// The stamps of the latency figure's jobs (simq/hop_trace.h), from every process, grouped by
// job: the median time of each point since the job's "submit" and since the point it follows
// on the path. A point's first stamp for a job counts; jobs without "submit" are not counted.
Json hop_breakdown(const std::string& path) {
  struct Point {
    const char* name;
    size_t after;  // the point it follows
  };
  // "written" and "seen" both follow "writing": Redis answers the writer and wakes the
  // consumer for the same write, in either order.
  const std::vector<Point> points = {{hop::kSubmit, 0},         {hop::kBrokerReceived, 0},
                                     {hop::kBrokerRecorded, 1}, {hop::kBrokerDispatched, 2},
                                     {hop::kWorkerReceived, 3}, {hop::kSlotStarted, 4},
                                     {hop::kSlotFinished, 5},   {hop::kWriterWriting, 6},
                                     {hop::kWriterWritten, 7},  {hop::kSeen, 7}};
  std::unordered_map<std::string, std::vector<std::optional<int64_t>>> jobs;
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("latency --hops: cannot read the hop trace {}", path));
  int64_t at = 0;
  std::string name;
  std::string sweep;
  uint64_t index = 0;
  while (in >> at >> name >> sweep >> index) {
    const auto point =
        std::find_if(points.begin(), points.end(), [&](const Point& p) { return name == p.name; });
    if (point == points.end()) continue;
    auto& stamps = jobs[sweep + " " + std::to_string(index)];
    stamps.resize(points.size());
    auto& stamp = stamps[static_cast<size_t>(point - points.begin())];
    if (!stamp || at < *stamp) stamp = at;
  }
  if (!in.eof()) {
    throw Error(fmt::format(
        "latency --hops: the hop trace {} has a line that is not \"<ns> <point> <sweep> <index>\" "
        "after {} jobs' stamps",
        path, jobs.size()));
  }
  if (jobs.empty()) {
    throw Error(
        fmt::format("latency --hops: the hop trace {} has no stamps ($SIMQ_HOP_TRACE did "
                    "not reach the processes?)",
                    path));
  }

  std::vector<std::vector<double>> since(points.size());
  std::vector<std::vector<double>> step(points.size());
  const auto us = [](int64_t nanoseconds) { return static_cast<double>(nanoseconds) / 1e3; };
  for (const auto& [job, stamps] : jobs) {
    if (!stamps[0]) continue;
    for (size_t i = 1; i < points.size(); ++i) {
      if (!stamps[i]) continue;
      since[i].push_back(us(*stamps[i] - *stamps[0]));
      if (const auto& before = stamps[points[i].after]) step[i].push_back(us(*stamps[i] - *before));
    }
  }

  Json hops = Json::array();
  for (size_t i = 1; i < points.size(); ++i) {
    if (since[i].empty()) continue;
    std::sort(since[i].begin(), since[i].end());
    std::sort(step[i].begin(), step[i].end());
    hops.push_back({{"point", points[i].name},
                    {"after", points[points[i].after].name},
                    {"samples", since[i].size()},
                    {"median_us", percentile(since[i], 0.50)},
                    {"step_us", step[i].empty() ? 0.0 : percentile(step[i], 0.50)}});
  }
  return hops;
}

}  // namespace

Json latency(const FigureOptions& options) {
  std::optional<TempDir> trace_dir;
  std::string trace;
  std::optional<HopTraceEnv> trace_env;  // the cluster's programs inherit it; this process
  if (options.hops) {                    // stamps too (its first stamp opens the file)
    trace_dir.emplace("simq-hops-");
    trace = trace_dir->file("hops.txt");
    trace_env.emplace(trace);
  }
  auto cluster = start_cluster(options, options.latency_workers, 0);
  Store store(RedisAddress::parse(cluster->redis_url()));
  BrokerClient client(cluster->frontend());
  std::vector<double> samples_ms;
  samples_ms.reserve(options.latency_jobs);
  for (unsigned i = 0; i < options.latency_jobs; ++i) {
    if (stop_requested()) throw Error("latency: interrupted");
    const SweepSpec spec = make_spec("noop", {{"x", i}}, "", 1);
    const auto start = Clock::now();
    const std::string sweep = submit(client, spec);
    bool seen = false;
    while (!seen) {
      const auto events = store.read_events(sweep, "0", kLatencyBlock, 16);
      if (events.empty()) throw Error(fmt::format("latency: no result for sweep {}", sweep));
      for (const auto& event : events) {
        if (event.sweep_done) continue;
        if (!event.ok) throw Error(fmt::format("latency: the job of sweep {} failed", sweep));
        seen = true;
      }
    }
    samples_ms.push_back(seconds_since(start) * 1e3);
    hop_stamp(hop::kSeen, sweep, 0);
  }
  check_healthy(*cluster, "latency");
  double sum = 0;
  for (const double sample : samples_ms) sum += sample;
  std::sort(samples_ms.begin(), samples_ms.end());
  Json result = {{"samples", options.latency_jobs},
                 {"workers", cluster->workers()},
                 {"p50_ms", percentile(samples_ms, 0.50)},
                 {"p99_ms", percentile(samples_ms, 0.99)},
                 {"mean_ms", sum / static_cast<double>(samples_ms.size())},
                 {"max_ms", samples_ms.back()}};
  if (options.hops) {
    // Stopped first: its workers write their last stamps (the writer's reply to the last job
    // may come after the consumer saw it) before they exit.
    cluster.reset();
    result["hops"] = hop_breakdown(trace);
  }
  return result;
}

Json cpu(const FigureOptions& options) {
  std::vector<unsigned> counts = options.scaling_workers;
  counts.push_back(1);  // speed-up is against one worker
  std::sort(counts.begin(), counts.end());
  counts.erase(std::unique(counts.begin(), counts.end()), counts.end());
  const SweepSpec spec =
      make_spec("mc_pi", {{"samples", options.cpu_samples}}, "seed", options.cpu_jobs);

  Json points = Json::array();
  double one_worker_s = 0;
  for (const unsigned workers : counts) {
    const auto cluster = start_cluster(options, workers, 1);
    // The best of a few runs: the machine is shared, and other work only ever slows a run.
    double elapsed = 0;
    for (unsigned run = 0; run < std::max(1U, options.cpu_repeats); ++run) {
      const double seconds = timed_sweep(*cluster, spec, "cpu");
      elapsed = run == 0 ? seconds : std::min(elapsed, seconds);
    }
    if (workers == 1) one_worker_s = elapsed;
    const double speedup = one_worker_s / elapsed;
    points.push_back({{"workers", workers},
                      {"seconds", elapsed},
                      {"speedup", speedup},
                      {"efficiency", speedup / workers}});
  }
  return {{"kernel", "mc_pi"},
          {"jobs", options.cpu_jobs},
          {"samples_per_job", options.cpu_samples},
          {"repeats", std::max(1U, options.cpu_repeats)},
          {"cores", std::thread::hardware_concurrency()},
          {"points", points}};
}

Json io(const FigureOptions& options) {
  const unsigned workers = std::max(1U, std::min(options.io_workers, options.io_slots));
  const unsigned slots = (options.io_slots + workers - 1) / workers;
  const auto cluster = start_cluster(options, workers, slots);
  const SweepSpec spec =
      make_spec("sleep", {{"seconds", options.io_seconds}}, "i", options.io_jobs);
  const double elapsed = timed_sweep(*cluster, spec, "io");
  const unsigned all_slots = workers * slots;
  // Whole rounds of sleeps: the ceiling of jobs / slots (an integer, as the jobs are).
  const unsigned whole_rounds = (options.io_jobs + all_slots - 1) / all_slots;
  const auto rounds = static_cast<double>(whole_rounds);
  return {{"jobs", options.io_jobs}, {"sleep_s", options.io_seconds},
          {"workers", workers},      {"slots", all_slots},
          {"wall_s", elapsed},       {"ideal_s", rounds * options.io_seconds}};
}

Json grid(const FigureOptions& options) {
  const auto cluster = start_cluster(options, 1, 1);
  const pid_t broker = cluster->broker_pid();
  const std::vector<pid_t> workers = cluster->worker_pids();
  const auto before = memory_of(broker);
  signal_all(workers, SIGSTOP);  // the sweep stays queued: only the broker's side is measured
  std::atomic<double> rss_max{before ? before->rss_mib : 0.0};
  std::jthread sampler([&](const std::stop_token& token) {
    while (!token.stop_requested()) {
      if (const auto now = memory_of(broker)) {
        rss_max = std::max(rss_max.load(), now->rss_mib);
      }
      std::this_thread::sleep_for(kMemorySampleInterval);
    }
  });

  Json result;
  try {
    const SweepSpec spec = make_spec("noop", Json::object(), "i", options.grid_jobs);
    BrokerClient client(cluster->frontend());
    const auto start = Clock::now();
    const std::string sweep = submit(client, spec);
    const double submit_s = seconds_since(start);
    std::this_thread::sleep_for(std::chrono::duration<double>(options.grid_watch_s));
    // The broker holds the sweep: all its jobs queued but the paused worker's credit.
    const PongMsg pong = client.ping();
    const auto after = memory_of(broker);
    sampler.request_stop();
    sampler.join();
    client.cancel(sweep, 30s);
    check_healthy(*cluster, "grid");
    if (!after) throw Error("grid: the broker's /proc/<pid>/status cannot be read");
    if (pong.queued + pong.in_flight != options.grid_jobs) {
      throw Error(fmt::format("grid: the broker holds {} queued and {} in flight of {} jobs",
                              pong.queued, pong.in_flight, options.grid_jobs));
    }
    result = {{"jobs", options.grid_jobs},
              {"submit_s", submit_s},
              {"queued", pong.queued},
              {"in_flight", pong.in_flight},
              {"broker_rss_before_mib", before ? before->rss_mib : 0.0},
              {"broker_rss_max_mib", std::max(rss_max.load(), after->rss_mib)},
              {"broker_peak_mib", after->peak_mib},
              {"broker_rss_after_mib", after->rss_mib}};
  } catch (...) {
    signal_all(workers, SIGCONT);
    throw;
  }
  signal_all(workers, SIGCONT);  // so that they can stop
  return result;
}

Json idle(const FigureOptions& options) {
  const auto cluster = start_cluster(options, 2, 0);
  std::this_thread::sleep_for(kIdleSettle);
  const pid_t broker = cluster->broker_pid();
  const std::vector<pid_t> workers = cluster->worker_pids();
  const auto cpu_of = [](pid_t pid) {
    const auto seconds = cpu_seconds_of(pid);
    if (!seconds) throw Error(fmt::format("idle: process {} is gone", pid));
    return *seconds;
  };
  const double broker_before = cpu_of(broker);
  std::vector<double> workers_before;
  workers_before.reserve(workers.size());
  for (const pid_t pid : workers) workers_before.push_back(cpu_of(pid));
  const auto start = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(options.idle_seconds));
  const double elapsed = seconds_since(start);
  const auto percent = [&](double used) { return 100.0 * used / elapsed; };

  double worker_cpu = 0;
  double worker_rss = 0;
  for (size_t i = 0; i < workers.size(); ++i) {
    worker_cpu = std::max(worker_cpu, percent(cpu_of(workers[i]) - workers_before[i]));
    if (const auto memory = memory_of(workers[i])) {
      worker_rss = std::max(worker_rss, memory->rss_mib);
    }
  }
  const double broker_cpu = percent(cpu_of(broker) - broker_before);
  const auto broker_memory = memory_of(broker);
  check_healthy(*cluster, "idle");
  if (!broker_memory) throw Error("idle: the broker's /proc/<pid>/status cannot be read");
  return {{"seconds", elapsed},
          {"workers", workers.size()},
          {"broker_rss_mib", broker_memory->rss_mib},
          {"worker_rss_mib", worker_rss},
          {"broker_cpu_pct", broker_cpu},
          {"worker_cpu_pct", worker_cpu}};
}

}  // namespace simq::bench
