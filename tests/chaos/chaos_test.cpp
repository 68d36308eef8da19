// The chaos suite (issue 3): real redis-server, simq-broker and simq-worker processes on
// loopback, and the failures a cluster meets in production — workers SIGKILLed or frozen,
// the broker killed mid-sweep, Redis restarted, a poison job, a flood of submissions, and
// garbage on the sockets. Each scenario ends with `simq verify` and a look at Redis itself
// (one terminal record per job, counters equal to the total), and prints its figures on one
// line starting "[chaos]".
//
// SIMQ_CHAOS_SCALE (default 1) scales the 10^6 jobs of the flood scenario, the one whose
// length is its job count, for slow builds (sanitizers: 0.1). The others are timed by their
// chaos (a kill every 2 s, ...) and keep their counts.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <zmq.hpp>

#include "simq/json.h"
#include "simq/protocol.h"
#include "test_support.h"

namespace simq::test {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using Clock = std::chrono::steady_clock;

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

// ASan keeps freed memory in quarantine (256 MiB by default) and adds shadow memory: a
// sanitized process's RSS says little about leaks, so its bounds get this much headroom.
constexpr long long kSanitizerSlackKib = kSanitized ? 384 * 1024 : 0;

// A job count scaled by $SIMQ_CHAOS_SCALE, rounded to a multiple of `unit`, at least `unit`.
uint64_t scaled(uint64_t jobs, uint64_t unit = 1) {
  const double scale = env_number("SIMQ_CHAOS_SCALE", 1.0);
  const auto n = static_cast<uint64_t>(static_cast<double>(jobs) * scale) / unit * unit;
  return std::max(n, unit);
}

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string write_file(const TempDir& dir, const std::string& name, const std::string& text) {
  std::ofstream(dir.file(name)) << text;
  return dir.file(name);
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// Prints the last lines of the cluster's logs if the test failed by the time this goes away
// (after an ASSERT too).
class LogsOnFailure {
 public:
  explicit LogsOnFailure(TestCluster& cluster) : cluster_(cluster) {}
  ~LogsOnFailure() {
    if (!::testing::Test::HasFailure()) return;
    std::istringstream logs(cluster_.logs());
    std::deque<std::string> tail;
    for (std::string line; std::getline(logs, line);) {
      tail.push_back(std::move(line));
      if (tail.size() > 300) tail.pop_front();
    }
    std::cerr << "--- last lines of the cluster's logs\n";
    for (const auto& line : tail) std::cerr << line << '\n';
  }

 private:
  TestCluster& cluster_;
};

// Submits a sweep file; returns the sweep id (empty, with a test failure, if refused).
std::string submit(TestCluster& cluster, const std::string& file) {
  const auto submitted = cluster.simq({"submit", file});
  EXPECT_EQ(submitted.status, 0) << submitted.err;
  return submitted.status == 0 ? first_line(submitted.out) : "";
}

// Submits a sweep of `jobs` sleep jobs of `seconds` each; returns its id ("" on failure).
std::string submit_sleeps(TestCluster& cluster, const TempDir& dir, double seconds, uint64_t jobs) {
  return submit(cluster, write_file(dir, "sleep.toml",
                                    fmt::format("kernel = \"sleep\"\n[grid]\nseconds = [{}]\n"
                                                "i = {{ range = [0, {}] }}\n",
                                                seconds, jobs)));
}

uint64_t field(Redis& redis, const std::string& sweep, const std::string& name) {
  const auto reply = redis.command({"HGET", "simq:sweep:" + sweep, name});
  return reply.is_nil() || reply.str.empty() ? 0 : std::stoull(reply.str);
}

std::string sweep_status(Redis& redis, const std::string& sweep) {
  return redis.command({"HGET", "simq:sweep:" + sweep, "status"}).str;
}

// Waits for a sweep to end, via `simq wait` (exit 0: every job succeeded).
void wait_for(TestCluster& cluster, const std::string& sweep, int timeout_s, int expected = 0) {
  const auto waited = cluster.simq({"wait", sweep, "--timeout", std::to_string(timeout_s)},
                                   std::chrono::seconds(timeout_s + 30));
  EXPECT_EQ(waited.status, expected) << "simq wait " << sweep << ": " << waited.err;
}

// What Redis says of an ended sweep of `total` jobs, checked against "nothing lost, nothing
// twice": one terminal record per job, counters summing to the total, no running mark, one
// stream entry per job plus "sweep done".
struct Tally {
  uint64_t records = 0;
  uint64_t succeeded = 0;
  uint64_t failed = 0;
  uint64_t duplicates = 0;  // results discarded because the job had a record already
  uint64_t fenced = 0;      // results discarded because a newer attempt owned the job
  uint64_t lost = 0;        // jobs without a terminal record
};

Tally expect_one_record_per_job(Redis& redis, const std::string& sweep, uint64_t total) {
  Tally tally;
  const auto key = "simq:sweep:" + sweep;
  tally.records = static_cast<uint64_t>(redis.command({"HLEN", key + ":jobs"}).integer);
  tally.succeeded = field(redis, sweep, "succeeded");
  tally.failed = field(redis, sweep, "failed");
  tally.duplicates = field(redis, sweep, "duplicates");
  tally.fenced = field(redis, sweep, "fenced");
  tally.lost = total - std::min(total, tally.records);
  EXPECT_EQ(tally.records, total) << sweep;
  EXPECT_EQ(tally.succeeded + tally.failed + field(redis, sweep, "cancelled"), total) << sweep;
  EXPECT_EQ(field(redis, sweep, "total"), total) << sweep;
  EXPECT_EQ(sweep_status(redis, sweep), "done") << sweep;
  EXPECT_EQ(redis.command({"HLEN", key + ":running"}).integer, 0) << sweep;
  expect_each_job_announced_once(redis, sweep, static_cast<long long>(total));
  return tally;
}

// `simq verify SWEEP` must pass: nothing lost, duplicated or unexpected. Returns its report's
// figures (-1 where it gave none).
struct Verdict {
  long long lost = -1;
  long long duplicated = -1;
  long long unexpected = -1;
};

Verdict expect_verified(TestCluster& cluster, const std::string& sweep) {
  const auto verified = cluster.verify(sweep);
  EXPECT_EQ(verified.command.status, 0)
      << "simq verify " << sweep << ": " << verified.command.out << verified.command.err;
  Verdict verdict;
  const auto& report = verified.report;
  const auto number = [&](const char* key) {
    return report.is_object() && report.contains(key) && report[key].is_number_integer()
               ? report[key].get<long long>()
               : -1;
  };
  verdict.lost = number("lost");
  verdict.duplicated = number("duplicated");
  verdict.unexpected = number("unexpected");
  EXPECT_EQ(verdict.lost, 0) << verified.command.out;
  EXPECT_EQ(verdict.duplicated, 0) << verified.command.out;
  EXPECT_EQ(verdict.unexpected, 0) << verified.command.out;
  return verdict;
}

// A record's string field ("" if the record or the field is missing or not a string).
std::string text_of(const Json& record, const char* key) {
  return record.is_object() && record.contains(key) && record[key].is_string()
             ? record[key].get<std::string>()
             : "";
}

uint32_t attempts_of(const Json& record) {
  return record.is_object() && record.contains("attempts") &&
                 record["attempts"].is_number_unsigned()
             ? record["attempts"].get<uint32_t>()
             : 0;
}

Json job_record(Redis& redis, const std::string& sweep, uint64_t index) {
  const auto reply =
      redis.command({"HGET", "simq:sweep:" + sweep + ":jobs", std::to_string(index)});
  return reply.is_nil() ? Json() : Json::parse(reply.str, nullptr, false);
}

// The running marks of a sweep, by job index.
std::map<uint64_t, Json> running_marks(Redis& redis, const std::string& sweep) {
  std::map<uint64_t, Json> marks;
  const auto reply = redis.command({"HGETALL", "simq:sweep:" + sweep + ":running"});
  for (size_t i = 0; i + 1 < reply.elements.size(); i += 2) {
    marks[std::stoull(reply.elements[i].str)] =
        Json::parse(reply.elements[i + 1].str, nullptr, false);
  }
  return marks;
}

bool run_by(const Json& mark, int pid) {
  return mark.is_object() && mark.contains("worker") && mark["worker"].is_string() &&
         mark["worker"].get<std::string>().ends_with(fmt::format(":{}", pid));
}

// -------------------------------------------------------------------------------------------
// 1. A random worker is SIGKILLed every 2 s (and restarted): nothing lost, nothing twice, and
// the killed worker's jobs run again within heartbeat x liveness + 1 s.
TEST(Chaos, WorkersKilledEveryTwoSeconds) {
  constexpr int kHeartbeatMs = 200;
  constexpr int kLiveness = 3;
  constexpr uint64_t jobs = 8000;
  TestCluster cluster(
      {.workers = 3, .slots = 4, .heartbeat_ms = kHeartbeatMs, .liveness = kLiveness});
  LogsOnFailure logs(cluster);
  TempDir dir;
  const auto start = Clock::now();
  // 20 ms jobs: long enough for running marks (written once a kernel has run 10 ms), which
  // tell what a killed worker was running.
  const auto sweep = submit_sleeps(cluster, dir, 0.02, jobs);
  ASSERT_FALSE(sweep.empty());
  auto redis = cluster.redis().connect();

  // A job that was running on a killed worker, until it is seen running again.
  struct Orphan {
    uint64_t index = 0;
    uint32_t attempt = 0;
    double killed_at = 0;  // Unix time of the SIGKILL
    double rerun_at = -1;  // started_at of its next attempt, once seen
  };
  std::vector<Orphan> orphans;
  std::mt19937 random(20240611);
  int kills = 0;
  auto next_kill = Clock::now() + 2s;
  // Looks for each orphan's next attempt: its running mark, or its record if it finished
  // between two looks. Both carry the worker's started_at.
  const auto look_for_reruns = [&] {
    std::vector<RedisArgs> commands;
    std::vector<Orphan*> pending;
    for (auto& orphan : orphans) {
      if (orphan.rerun_at >= 0) continue;
      const auto index = std::to_string(orphan.index);
      commands.push_back({"HGET", "simq:sweep:" + sweep + ":running", index});
      commands.push_back({"HGET", "simq:sweep:" + sweep + ":jobs", index});
      pending.push_back(&orphan);
    }
    if (commands.empty()) return;
    const auto replies = redis->pipeline(commands);
    for (size_t i = 0; i < pending.size(); ++i) {
      for (const auto& reply : {replies[2 * i], replies[2 * i + 1]}) {
        if (reply.is_nil() || reply.str.empty()) continue;
        const auto seen = Json::parse(reply.str, nullptr, false);
        if (seen.is_object() && attempts_of(seen) > pending[i]->attempt) {
          pending[i]->rerun_at = seen.value("started_at", 0.0);
          break;
        }
      }
    }
  };
  const bool done = wait_until(
      [&] {
        look_for_reruns();
        if (sweep_status(*redis, sweep) == "done") return true;
        if (Clock::now() >= next_kill) {
          const auto victim = static_cast<size_t>(random() % cluster.workers());
          const int pid = cluster.worker(victim).pid();
          const double killed_at = unix_now();
          cluster.restart_worker(victim, SIGKILL);
          ++kills;
          // Its marks stay until another attempt of the job finishes: they say what it ran.
          for (const auto& [index, mark] : running_marks(*redis, sweep)) {
            if (run_by(mark, pid)) {
              orphans.push_back(Orphan{.index = index,
                                       .attempt = attempts_of(mark),
                                       .killed_at = killed_at,
                                       .rerun_at = -1});
            }
          }
          next_kill = Clock::now() + 2s;
        }
        return false;
      },
      kSanitized ? 600s : 240s);
  ASSERT_TRUE(done) << "sweep did not finish; " << field(*redis, sweep, "succeeded") << " of "
                    << jobs << " succeeded";
  wait_for(cluster, sweep, 60);
  look_for_reruns();
  const double wall_s = seconds_since(start);

  const auto tally = expect_one_record_per_job(*redis, sweep, jobs);
  EXPECT_EQ(tally.succeeded, jobs);
  // Refused writes may happen (a worker killed after storing a record but before the broker
  // heard DONE: the job runs again and its second result is refused); kept records may not.
  const auto verdict = expect_verified(cluster, sweep);

  const double bound_ms = kHeartbeatMs * kLiveness + 1000;
  double redispatch_max_ms = 0;
  int rerun = 0;
  for (const auto& orphan : orphans) {
    if (orphan.rerun_at < 0) {
      ADD_FAILURE() << "job " << orphan.index << " (attempt " << orphan.attempt
                    << ") of a killed worker was never seen running again";
      continue;
    }
    ++rerun;
    const double ms = (orphan.rerun_at - orphan.killed_at) * 1000;
    redispatch_max_ms = std::max(redispatch_max_ms, ms);
    EXPECT_LE(ms, bound_ms) << "job " << orphan.index << " ran again " << ms
                            << " ms after its worker was killed";
  }
  EXPECT_GE(kills, 2) << "the sweep ended before the chaos began";
  EXPECT_GE(orphans.size(), 1u) << "no killed worker was running a job";
  fmt::print(
      "[chaos] workers_killed: kills={} jobs={} lost={} duplicate_writes={} orphans={} rerun={} "
      "redispatch_max_ms={:.0f} bound_ms={:.0f} verify_lost={} verify_duplicated={} "
      "wall_s={:.1f}\n",
      kills, jobs, tally.lost, tally.duplicates, orphans.size(), rerun, redispatch_max_ms, bound_ms,
      verdict.lost, verdict.duplicated, wall_s);
}

// -------------------------------------------------------------------------------------------
// 2. The broker is SIGKILLed 3 times mid-sweep (and restarted) while a client keeps
// submitting: every sweep it acknowledged completes, nothing twice.
TEST(Chaos, BrokerKilledThreeTimesMidSweep) {
  constexpr uint64_t jobs = 6000;
  TestCluster cluster({.workers = 2, .slots = 4, .heartbeat_ms = 200, .liveness = 3});
  LogsOnFailure logs(cluster);
  TempDir dir;
  const auto start = Clock::now();
  const auto sweep = submit_sleeps(cluster, dir, 0.003, jobs);
  ASSERT_FALSE(sweep.empty());
  auto redis = cluster.redis().connect();

  // Meanwhile a client submits small sweeps one after the other; some meet a dead broker.
  // Those `simq submit` acknowledged (exit 0, an id) must complete; the others may not exist.
  constexpr uint64_t kSmall = 50;
  const auto small_file =
      write_file(dir, "small.toml",
                 fmt::format("kernel = \"noop\"\n[grid]\ni = {{ range = [0, {}] }}\n", kSmall));
  const auto submit_argv = cluster.simq_argv({"submit", small_file});
  std::atomic<bool> stop_submitting{false};
  std::vector<std::string> acknowledged;
  int refused = 0;
  std::thread submitter([&] {
    while (!stop_submitting) {
      const auto result = run_command(submit_argv, 60s);
      if (result.status == 0) {
        acknowledged.push_back(first_line(result.out));
      } else {
        ++refused;
      }
    }
  });

  int kills = 0;
  for (int k = 1; k <= 3; ++k) {
    const uint64_t target = jobs * static_cast<uint64_t>(k) / 4;
    const bool reached =
        wait_until([&] { return field(*redis, sweep, "succeeded") >= target; }, 120s);
    EXPECT_TRUE(reached) << "stuck below " << target << " succeeded before kill " << k;
    if (!reached) break;
    cluster.restart_broker(SIGKILL);
    ++kills;
  }
  wait_for(cluster, sweep, kSanitized ? 300 : 120);
  stop_submitting = true;
  submitter.join();
  const double wall_s = seconds_since(start);

  const auto tally = expect_one_record_per_job(*redis, sweep, jobs);
  EXPECT_EQ(tally.succeeded, jobs);
  const auto verdict = expect_verified(cluster, sweep);
  // Every acknowledged sweep ends complete; `simq verify` checks the last one too.
  uint64_t small_lost = 0;
  EXPECT_TRUE(wait_until(
      [&] {
        for (const auto& id : acknowledged) {
          if (sweep_status(*redis, id) != "done") return false;
        }
        return true;
      },
      60s))
      << "an acknowledged sweep did not finish";
  for (const auto& id : acknowledged) {
    const auto small = expect_one_record_per_job(*redis, id, kSmall);
    EXPECT_EQ(small.succeeded, kSmall) << id;
    small_lost += small.lost;
  }
  if (!acknowledged.empty()) expect_verified(cluster, acknowledged.back());
  EXPECT_EQ(kills, 3);
  EXPECT_GE(acknowledged.size(), 1u);
  fmt::print(
      "[chaos] broker_killed: kills={} jobs={} lost={} duplicate_writes={} acknowledged_sweeps={} "
      "acknowledged_jobs={} acknowledged_lost={} refused_submits={} verify_lost={} "
      "wall_s={:.1f}\n",
      kills, jobs, tally.lost, tally.duplicates, acknowledged.size(), acknowledged.size() * kSmall,
      small_lost, refused, verdict.lost, wall_s);
}

// -------------------------------------------------------------------------------------------
// 3. A worker is SIGSTOPped for longer than its lease, then SIGCONTed: the jobs it held ran
// elsewhere, and its late results are fenced off (not stored, counted in `fenced`).
TEST(Chaos, WorkerFrozenPastItsLeaseIsFencedOff) {
  constexpr int kHeartbeatMs = 200;
  constexpr int kLiveness = 3;  // lease: 600 ms without a heartbeat
  TestCluster cluster(
      {.workers = 2, .slots = 2, .heartbeat_ms = kHeartbeatMs, .liveness = kLiveness});
  LogsOnFailure logs(cluster);
  TempDir dir;
  constexpr uint64_t kJobs = 24;
  const auto start = Clock::now();
  const auto sweep = submit_sleeps(cluster, dir, 0.4, kJobs);
  ASSERT_FALSE(sweep.empty());
  auto redis = cluster.redis().connect();

  const int frozen = cluster.worker(0).pid();
  std::map<uint64_t, uint32_t> held;  // its jobs when it froze: index -> attempt
  ASSERT_TRUE(wait_until(
      [&] {
        for (const auto& [index, mark] : running_marks(*redis, sweep)) {
          if (run_by(mark, frozen)) return true;
        }
        return false;
      },
      20s))
      << "worker 0 never ran a job";
  cluster.worker(0).signal(SIGSTOP);
  const auto frozen_at = Clock::now();
  for (const auto& [index, mark] : running_marks(*redis, sweep)) {
    if (run_by(mark, frozen)) held[index] = attempts_of(mark);
  }
  ASSERT_FALSE(held.empty());

  // While it is frozen, every job it held runs to the end on the other worker.
  const bool ran_elsewhere = wait_until(
      [&] {
        for (const auto& [index, attempt] : held) {
          if (job_record(*redis, sweep, index).is_null()) return false;
        }
        return true;
      },
      60s);
  // Frozen for 3 leases at least, so the broker has surely given its jobs away.
  wait_until([&] { return Clock::now() - frozen_at >= 3 * kHeartbeatMs * kLiveness * 1ms; }, 10s);
  const auto stopped_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - frozen_at).count();
  cluster.worker(0).signal(SIGCONT);
  EXPECT_TRUE(ran_elsewhere) << "the frozen worker's jobs did not run elsewhere";

  wait_for(cluster, sweep, 60);
  // Its kernels finish once it runs again; the results it then reports are refused.
  uint64_t fenced = 0;
  const bool refused = wait_until(
      [&] {
        fenced = field(*redis, sweep, "fenced");
        return fenced >= 1;
      },
      20s);
  EXPECT_TRUE(refused) << "no late result of the frozen worker was fenced off (duplicates: "
                       << field(*redis, sweep, "duplicates") << ")";
  const double wall_s = seconds_since(start);

  const auto tally = expect_one_record_per_job(*redis, sweep, kJobs);
  EXPECT_EQ(tally.succeeded, kJobs);
  for (const auto& [index, attempt] : held) {
    const auto record = job_record(*redis, sweep, index);
    EXPECT_FALSE(run_by(record, frozen))
        << "the frozen worker's result was kept: " << record.dump();
    EXPECT_GT(attempts_of(record), attempt) << record.dump();
  }
  const auto verdict = expect_verified(cluster, sweep);
  // It is not dead: it comes back and serves again.
  EXPECT_EQ(cluster.worker(0).poll(), std::nullopt) << "the frozen worker exited";
  EXPECT_TRUE(wait_until([&] { return cluster.connected_workers() == 2; }, 15s))
      << "the frozen worker did not rejoin";
  fmt::print(
      "[chaos] worker_frozen: stopped_ms={} lease_ms={} held={} ran_elsewhere={} fenced={} "
      "duplicates={} jobs={} lost={} verify_lost={} wall_s={:.1f}\n",
      stopped_ms, kHeartbeatMs * kLiveness, held.size(), ran_elsewhere ? held.size() : 0, fenced,
      tally.duplicates, kJobs, tally.lost, verdict.lost, wall_s);
}

// -------------------------------------------------------------------------------------------
// 4. Poison jobs that crash their worker every time (a segfault, an abort) are dead-lettered
// after max_attempts; workers are restarted as they die; the rest of the sweep completes.
TEST(Chaos, PoisonJobsAreDeadLettered) {
  // One slot per worker: a crash takes no innocent job with it.
  TestCluster cluster({.workers = 3, .slots = 1, .heartbeat_ms = 200, .liveness = 3});
  LogsOnFailure logs(cluster);
  TempDir dir;
  constexpr uint64_t kJobs = 100;
  constexpr int kMaxAttempts = 3;
  std::string modes = "\"segv\", \"abort\"";
  for (uint64_t i = 2; i < kJobs; ++i) modes += ", \"ok\"";
  const auto start = Clock::now();
  const auto sweep =
      submit(cluster, write_file(dir, "fault.toml",
                                 fmt::format("kernel = \"fault\"\n[options]\nmax_attempts = {}\n"
                                             "[grid]\nmode = [{}]\n",
                                             kMaxAttempts, modes)));
  ASSERT_FALSE(sweep.empty());
  auto redis = cluster.redis().connect();

  int deaths = 0;
  std::map<std::string, int> how;  // "killed by signal 11 (SIGSEGV)" -> count
  const bool done = wait_until(
      [&] {
        for (size_t i = 0; i < cluster.workers(); ++i) {
          if (const auto status = cluster.worker(i).poll()) {
            ++deaths;
            ++how[ChildProcess::describe_status(*status)];
            cluster.restart_worker(i);
          }
        }
        return sweep_status(*redis, sweep) == "done";
      },
      kSanitized ? 300s : 120s);
  ASSERT_TRUE(done) << "sweep did not finish: " << field(*redis, sweep, "succeeded")
                    << " succeeded, " << field(*redis, sweep, "failed") << " failed";
  wait_for(cluster, sweep, 30, 1);  // failed jobs: exit 1
  const double wall_s = seconds_since(start);

  const auto tally = expect_one_record_per_job(*redis, sweep, kJobs);
  EXPECT_EQ(tally.succeeded, kJobs - 2);
  EXPECT_EQ(tally.failed, 2u);
  for (const uint64_t index : {uint64_t{0}, uint64_t{1}}) {
    const auto record = job_record(*redis, sweep, index);
    EXPECT_EQ(text_of(record, "status"), "failed") << record.dump();
    EXPECT_TRUE(record.is_object() && record.contains("dead_letter") &&
                record["dead_letter"] == true)
        << record.dump();
    EXPECT_THAT(text_of(record, "error"),
                StartsWith(fmt::format("worker lost {} times", kMaxAttempts)))
        << record.dump();
  }
  for (uint64_t index = 2; index < kJobs; ++index) {
    const auto record = job_record(*redis, sweep, index);
    EXPECT_EQ(text_of(record, "status"), "succeeded") << record.dump();
  }
  EXPECT_EQ(deaths, 2 * kMaxAttempts) << "each poison job kills one worker per attempt";
  const auto verdict = expect_verified(cluster, sweep);
  std::string causes;
  for (const auto& [cause, count] : how)
    causes += fmt::format("{}{}x {}", causes.empty() ? "" : ", ", count, cause);
  fmt::print(
      "[chaos] poison: jobs={} poison=2 max_attempts={} worker_deaths={} ({}) dead_lettered={} "
      "succeeded={} lost={} verify_lost={} wall_s={:.1f}\n",
      kJobs, kMaxAttempts, deaths, causes, tally.failed, tally.succeeded, tally.lost, verdict.lost,
      wall_s);
}

// -------------------------------------------------------------------------------------------
// 5. redis-server is shut down cleanly mid-sweep and started again on the same port and data
// (AOF, appendfsync everysec): nothing lost.
TEST(Chaos, RedisRestartedMidSweep) {
  constexpr uint64_t jobs = 4000;
  TestCluster cluster(
      {.workers = 2, .slots = 4, .heartbeat_ms = 200, .liveness = 3, .redis_appendonly = true});
  LogsOnFailure logs(cluster);
  TempDir dir;
  const auto start = Clock::now();
  // 10 ms jobs: the 3000 left at the restart take ~4 s on 8 slots, longer than the broker takes
  // to see Redis again (its status retry, 2 s), so it looks into a sweep still running.
  const auto sweep = submit_sleeps(cluster, dir, 0.01, jobs);
  ASSERT_FALSE(sweep.empty());
  {
    auto redis = cluster.redis().connect();
    ASSERT_TRUE(wait_until([&] { return field(*redis, sweep, "succeeded") >= jobs / 4; }, 60s));
  }
  constexpr auto kDown = 1500ms;
  const auto before = Clock::now();
  cluster.redis().restart(/*appendonly=*/true, kDown);
  const auto outage_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - before).count();
  auto redis = cluster.redis().connect();
  const auto succeeded_after_restart = field(*redis, sweep, "succeeded");
  EXPECT_GE(succeeded_after_restart, jobs / 4) << "records written before the shutdown are gone";

  wait_for(cluster, sweep, kSanitized ? 300 : 120);
  const double wall_s = seconds_since(start);
  const auto tally = expect_one_record_per_job(*redis, sweep, jobs);
  EXPECT_EQ(tally.succeeded, jobs);
  const auto verdict = expect_verified(cluster, sweep);
  EXPECT_EQ(cluster.broker().poll(), std::nullopt) << "the broker must survive the outage";
  for (size_t i = 0; i < cluster.workers(); ++i) {
    EXPECT_EQ(cluster.worker(i).poll(), std::nullopt) << "worker " << i << " exited";
  }
  // A clean shutdown loses nothing: looking for lost records in the running sweep finds none.
  EXPECT_THAT(cluster.logs(), HasSubstr("looking for records it lost (running sweeps: 1)"));
  const Json status = broker_status(*redis, 10s);
  ASSERT_TRUE(status.is_object()) << "no broker status";
  EXPECT_EQ(status.value("records_lost", -1), 0) << status.dump();
  fmt::print(
      "[chaos] redis_restart: jobs={} outage_ms={} succeeded_at_restart={} lost={} "
      "duplicate_writes={} verify_lost={} wall_s={:.1f}\n",
      jobs, outage_ms, succeeded_after_restart, tally.lost, tally.duplicates, verdict.lost, wall_s);
}

// -------------------------------------------------------------------------------------------
// 6. Producers submit 10^6 jobs (1,000-job sweeps, several at once) to a broker bounded by
// --max-queued: it refuses with queue_full while full, `simq submit` retries, the broker's
// memory stays bounded and every job completes. The workers join only once the broker has
// refused a SUBMIT: running jobs may drain the queue faster than producers fill it (they did
// under the sanitizers), and the bound must be met in every run, not in most.
TEST(Chaos, FloodOfSubmissionsAgainstMaxQueued) {
  constexpr uint64_t kSweepJobs = 1000;
  constexpr uint64_t kMaxQueued = 2000;
  constexpr int kProducers = 4;
  const uint64_t jobs = scaled(1000000, kSweepJobs);
  const uint64_t sweeps = jobs / kSweepJobs;
  // The broker holds queued ranges, in-flight jobs and live sweeps, not the jobs submitted.
  const long long bound_kib = 32 * 1024 + kSanitizerSlackKib;
  constexpr int kWorkers = 2;
  TestCluster cluster({.workers = 0,
                       .slots = 4,
                       .heartbeat_ms = 200,
                       .liveness = 3,
                       .broker_args = {"--max-queued", std::to_string(kMaxQueued)}});
  LogsOnFailure logs(cluster);
  TempDir dir;
  auto redis = cluster.redis().connect();
  const int broker = cluster.broker().pid();
  const long long rss_at_start = rss_kib(broker);
  const auto start = Clock::now();

  std::mutex mutex;
  std::vector<std::string> submitted;  // sweep ids acknowledged
  std::vector<std::string> failures;
  std::atomic<uint64_t> next{0};
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      const auto file = write_file(
          dir, fmt::format("p{}.toml", p),
          fmt::format("kernel = \"noop\"\n[grid]\ni = {{ range = [0, {}] }}\n", kSweepJobs));
      for (uint64_t n = next++; n < sweeps; n = next++) {
        const auto result = run_command(cluster.simq_argv({"submit", file}), 300s);
        std::lock_guard lock(mutex);
        if (result.status != 0) {
          failures.push_back(fmt::format("submit {}: exit {}: {}", n, result.status, result.err));
          next = sweeps;  // give up
        } else {
          submitted.push_back(first_line(result.out));
        }
      }
    });
  }

  // Meanwhile: the broker's memory and queue length, and sweeps confirmed done.
  long long most_queued = 0;
  long long refusals = 0;  // SUBMITs answered queue_full
  std::set<std::string> finished;
  size_t checked = 0;  // submitted[0, checked) are in `finished` or still running
  std::vector<std::string> running;
  const auto confirm = [&] {
    {
      std::lock_guard lock(mutex);
      running.insert(running.end(), submitted.begin() + static_cast<long>(checked),
                     submitted.end());
      checked = submitted.size();
    }
    if (running.empty()) return;
    std::vector<RedisArgs> commands;
    for (const auto& id : running) commands.push_back({"HGET", "simq:sweep:" + id, "status"});
    const auto replies = redis->pipeline(commands);
    std::vector<std::string> still;
    for (size_t i = 0; i < running.size(); ++i) {
      if (replies[i].str == "done") {
        finished.insert(running[i]);
      } else {
        still.push_back(running[i]);
      }
    }
    running = std::move(still);
  };
  const auto watch = [&] {
    const auto snapshot = redis->command({"GET", "simq:broker"});
    if (!snapshot.is_nil()) {
      const auto status = Json::parse(snapshot.str, nullptr, false);
      if (status.is_object()) {
        most_queued = std::max(most_queued, status.value("queued", 0LL));
        refusals = std::max(refusals, status.value("queue_full", 0LL));
      }
    }
    confirm();
  };
  // Two sweeps fill the queue; the third is refused until workers take jobs.
  const bool refused = wait_until(
      [&] {
        watch();
        std::lock_guard lock(mutex);
        return refusals >= 1 || !failures.empty();
      },
      60s);
  EXPECT_TRUE(refused) << "no SUBMIT was refused with " << kMaxQueued << " jobs queued";
  EXPECT_LE(most_queued, static_cast<long long>(kMaxQueued))
      << "SUBMIT accepted with the queue full";
  for (int w = 0; w < kWorkers; ++w) cluster.add_worker();

  const auto timeout =
      std::chrono::seconds(static_cast<long>(jobs / (kSanitized ? 500 : 2000)) + 120);
  const bool submitted_all = wait_until(
      [&] {
        watch();
        std::lock_guard lock(mutex);
        return submitted.size() + failures.size() >= sweeps || !failures.empty();
      },
      timeout);
  for (auto& producer : producers) producer.join();
  ASSERT_TRUE(failures.empty()) << failures.front();
  ASSERT_TRUE(submitted_all);
  const double submit_s = seconds_since(start);
  const bool all_done = wait_until(
      [&] {
        watch();
        return finished.size() == sweeps;
      },
      timeout);
  const double wall_s = seconds_since(start);
  const long long peak_kib = peak_rss_kib(broker);
  EXPECT_TRUE(all_done) << finished.size() << " of " << sweeps << " sweeps done";

  uint64_t succeeded = 0;
  {
    std::vector<RedisArgs> commands;
    for (const auto& id : submitted) commands.push_back({"HGET", "simq:sweep:" + id, "succeeded"});
    for (const auto& reply : redis->pipeline(commands)) {
      succeeded += reply.is_nil() ? 0 : std::stoull(reply.str);
    }
  }
  EXPECT_EQ(succeeded, jobs);
  EXPECT_EQ(std::set<std::string>(submitted.begin(), submitted.end()).size(), sweeps)
      << "two submissions got the same sweep id";
  // Two sweeps checked in full; `simq verify` on a few.
  expect_one_record_per_job(*redis, submitted.front(), kSweepJobs);
  expect_one_record_per_job(*redis, submitted.back(), kSweepJobs);
  const auto verdict = expect_verified(cluster, submitted.back());
  EXPECT_LT(most_queued, static_cast<long long>(kMaxQueued + kSweepJobs))
      << "SUBMIT was accepted with the queue full";
  EXPECT_LE(peak_kib, bound_kib) << "broker peak RSS";
  EXPECT_EQ(cluster.broker().poll(), std::nullopt);
  fmt::print(
      "[chaos] backpressure: jobs={} sweeps={} producers={} max_queued={} most_queued_seen={} "
      "queue_full_refusals={} "
      "broker_rss_start_kib={} broker_peak_rss_kib={} bound_kib={} succeeded={} "
      "verify_lost={} submit_s={:.1f} wall_s={:.1f} jobs_per_s={:.0f}\n",
      jobs, sweeps, kProducers, kMaxQueued, most_queued, refusals, rss_at_start, peak_kib,
      bound_kib, succeeded, verdict.lost, submit_s, wall_s, static_cast<double>(jobs) / wall_s);
}

// -------------------------------------------------------------------------------------------
// 7. 10,000 malformed messages on both broker endpoints, mixed into valid sweeps and sweeps
// whose jobs cannot run: no process dies, memory stays put, valid jobs succeed and every
// invalid job has a FAILED record saying why.

// A DEALER that sends whatever it is given and never reads (a hostile peer; the broker must
// not block on it).
class RawPeer {
 public:
  RawPeer(zmq::context_t& context, const std::string& endpoint)
      : socket_(context, zmq::socket_type::dealer) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.connect(endpoint);
  }
  void send(const std::vector<std::string>& frames) {
    for (size_t i = 0; i < frames.size(); ++i) {
      (void)socket_.send(zmq::buffer(frames[i]),
                         i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }

 private:
  zmq::socket_t socket_;
};

std::string msgpack(const Json& value) {
  const auto bytes = Json::to_msgpack(value);
  return std::string(bytes.begin(), bytes.end());
}

// The k-th malformed message for a frontend (client) or backend (worker) socket.
std::vector<std::string> malformed(uint64_t k, bool frontend, std::mt19937_64& random) {
  const std::string proto(kProtocol);
  const auto random_bytes = [&](size_t most) {
    std::string bytes(random() % (most + 1), '\0');
    for (auto& c : bytes) c = static_cast<char>(random());
    return bytes;
  };
  const std::string command = frontend ? "SUBMIT" : (k % 2 ? "DONE" : "HELLO");
  switch (k % 7) {
    case 0: {  // random frames
      std::vector<std::string> frames(1 + random() % 4);
      for (auto& frame : frames) frame = random_bytes(64);
      return frames;
    }
    case 1: {  // truncated MessagePack
      const auto body =
          frontend
              ? encode(SubmitMsg{k, "chaos", Json{{"kernel", "fib"}, {"grid", {{"n", {1, 2}}}}}})
              : encode(HelloMsg{"rogue", 4, {}});
      return {proto, command, body.substr(0, random() % body.size())};
    }
    case 2:  // 10k-deep nesting
      return {proto, command, std::string(10000, '\x91') + "\xc0"};
    case 3: {  // headers claiming 4 GiB
      static const std::string kHuge[] = {
          std::string("\xdd\xff\xff\xff\xff", 5), std::string("\xdf\xff\xff\xff\xff", 5),
          std::string("\xdb\xff\xff\xff\xff", 5), std::string("\xc6\xff\xff\xff\xff", 5)};
      return {proto, command, kHuge[random() % 4] + random_bytes(16)};
    }
    case 4: {  // well-formed MessagePack, wrong types
      static const Json kFrontend[] = {
          Json{{"req", "one"}, {"sweep_id", "x"}, {"spec", {{"kernel", "fib"}}}},
          Json{{"req", 1}, {"sweep_id", 7}, {"spec", {{"kernel", "fib"}}}},
          Json{{"req", 1}, {"sweep_id", "x"}, {"spec", Json::array({1, 2})}},
          Json{{"req", 1}, {"sweep_id", "x"}, {"spec", {{"kernel", 42}}}},
          Json{{"req", 1}, {"sweep_id", "x"}, {"spec", {{"kernel", "fib"}, {"grid", "n"}}}},
          Json::array({1, 2, 3})};
      static const Json kBackend[] = {Json{{"name", 5}, {"slots", 1}},
                                      Json{{"name", "rogue"}, {"slots", "many"}},
                                      Json{{"name", "rogue"}, {"slots", -3}},
                                      Json{{"jobs", {{"a", 1}}}},
                                      Json{{"jobs", Json::array({Json::array({"s", "i", "a"})})}},
                                      Json("just a string")};
      return {proto, command, msgpack(frontend ? kFrontend[random() % 6] : kBackend[random() % 6])};
    }
    case 5:  // a version or command that does not exist
      return {random() % 2 ? "SIMQ9" : proto, random() % 2 ? "EXPLODE" : "submit",
              msgpack(Json{{"req", 1}})};
    default:  // the right frames, a body of random bytes
      return {proto, command, random_bytes(48)};
  }
}

TEST(Chaos, MalformedMessagesMixedIntoValidSweeps) {
  constexpr int kRounds = 10;
  constexpr int kMessagesPerRound = 1000;  // half to each endpoint
  constexpr uint64_t kValidJobs = 300;     // per round
  // Growth allowed between a warmed-up broker and the end: a leak of even 100 bytes per
  // malformed message would pass it, so it is checked per half too (see below).
  const long long growth_kib = 16 * 1024 + kSanitizerSlackKib;
  TestCluster cluster({.workers = 2, .slots = 2, .heartbeat_ms = 200, .liveness = 3});
  LogsOnFailure logs(cluster);
  TempDir dir;
  auto redis = cluster.redis().connect();
  const auto start = Clock::now();

  const auto valid_file = write_file(
      dir, "valid.toml",
      fmt::format(
          "kernel = \"fib\"\n[grid]\nn = {{ range = [0, 60] }}\nrepeat = {{ range = [0, {}] }}\n",
          kValidJobs / 60));
  const auto unknown_file =
      write_file(dir, "unknown.toml", "kernel = \"warp_drive\"\n[grid]\nx = [1, 2, 3]\n");
  const auto wrong_type_file =
      write_file(dir, "wrong.toml", "kernel = \"fib\"\n[grid]\nn = [\"x\", 7, \"ten\"]\n");

  // Warm up (allocator arenas, Redis scripts), then measure.
  const auto warm = submit(cluster, valid_file);
  wait_for(cluster, warm, 60);
  const int broker = cluster.broker().pid();
  const long long rss_before = rss_kib(broker);
  std::vector<long long> worker_rss_before;
  for (size_t i = 0; i < cluster.workers(); ++i)
    worker_rss_before.push_back(rss_kib(cluster.worker(i).pid()));

  zmq::context_t context;
  RawPeer client(context, cluster.frontend());
  RawPeer rogue(context, cluster.backend());
  std::mt19937_64 random(7);
  std::vector<std::string> valid, unknown, wrong_type;
  long long rss_half = 0;
  uint64_t sent = 0;
  for (int round = 0; round < kRounds; ++round) {
    for (int m = 0; m < kMessagesPerRound; ++m, ++sent) {
      const bool frontend = m % 2 == 0;
      (frontend ? client : rogue).send(malformed(sent / 2, frontend, random));
    }
    valid.push_back(submit(cluster, valid_file));
    (round % 2 ? unknown : wrong_type)
        .push_back(submit(cluster, round % 2 ? unknown_file : wrong_type_file));
    if (round == kRounds / 2 - 1) rss_half = rss_kib(broker);
  }

  for (const auto& id : valid) wait_for(cluster, id, 120);
  for (const auto& id : unknown) wait_for(cluster, id, 60, 1);
  for (const auto& id : wrong_type) wait_for(cluster, id, 60, 1);
  const double wall_s = seconds_since(start);
  const long long rss_after = rss_kib(broker);

  EXPECT_EQ(cluster.broker().poll(), std::nullopt) << "the broker died";
  for (size_t i = 0; i < cluster.workers(); ++i) {
    EXPECT_EQ(cluster.worker(i).poll(), std::nullopt) << "worker " << i << " died";
  }
  uint64_t valid_lost = 0;
  for (const auto& id : valid) {
    const auto tally = expect_one_record_per_job(*redis, id, kValidJobs);
    EXPECT_EQ(tally.succeeded, kValidJobs) << id;
    valid_lost += tally.lost;
  }
  uint64_t invalid_jobs = 0, precise = 0;
  for (const auto& id : unknown) {
    expect_one_record_per_job(*redis, id, 3);
    for (uint64_t i = 0; i < 3; ++i, ++invalid_jobs) {
      const auto record = job_record(*redis, id, i);
      EXPECT_EQ(text_of(record, "status"), "failed") << record.dump();
      EXPECT_THAT(text_of(record, "error"), HasSubstr("unknown kernel 'warp_drive'"));
      if (text_of(record, "error").find("unknown kernel 'warp_drive'") != std::string::npos) {
        ++precise;
      }
    }
  }
  for (const auto& id : wrong_type) {
    expect_one_record_per_job(*redis, id, 3);
    for (const uint64_t i : {uint64_t{0}, uint64_t{2}}) {
      ++invalid_jobs;
      const auto record = job_record(*redis, id, i);
      EXPECT_EQ(text_of(record, "status"), "failed") << record.dump();
      EXPECT_THAT(text_of(record, "error"), HasSubstr("param 'n': expected integer, got string"));
      if (text_of(record, "error").find("param 'n': expected integer") != std::string::npos) {
        ++precise;
      }
    }
    EXPECT_EQ(text_of(job_record(*redis, id, 1), "status"), "succeeded");
  }
  const auto verdict = expect_verified(cluster, valid.back());

  // The broker counts what it refused (frontend and backend alike).
  long long counted = 0;
  wait_until(
      [&] {
        const auto snapshot = redis->command({"GET", "simq:broker"});
        if (snapshot.is_nil()) return false;
        const auto status = Json::parse(snapshot.str, nullptr, false);
        if (!status.is_object()) return false;
        counted = status.value("malformed", 0LL);
        return counted >= static_cast<long long>(sent / 2);
      },
      5s);
  EXPECT_GE(counted, static_cast<long long>(sent / 2)) << "malformed messages not counted";
  EXPECT_LE(rss_after, rss_before + growth_kib) << "broker RSS grew";
  EXPECT_LE(rss_after, rss_half + growth_kib / 2) << "broker RSS kept growing in the second half";
  std::string workers_rss;
  for (size_t i = 0; i < cluster.workers(); ++i) {
    const long long now = rss_kib(cluster.worker(i).pid());
    workers_rss += fmt::format("{}{}->{}", i ? "," : "", worker_rss_before[i], now);
    EXPECT_LE(now, worker_rss_before[i] + growth_kib) << "worker " << i << " RSS grew";
  }
  fmt::print(
      "[chaos] malformed: messages={} counted={} valid_jobs={} valid_lost={} invalid_jobs={} "
      "invalid_with_precise_error={} broker_rss_kib={}->{}->{} worker_rss_kib={} verify_lost={} "
      "wall_s={:.1f}\n",
      sent, counted, valid.size() * kValidJobs, valid_lost, invalid_jobs, precise, rss_before,
      rss_half, rss_after, workers_rss, verdict.lost, wall_s);
}

}  // namespace
}  // namespace simq::test
