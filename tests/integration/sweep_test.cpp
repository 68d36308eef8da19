// End to end on a real cluster (redis-server, simq-broker, simq-worker processes on
// loopback): sweeps complete with correct results in Redis, and a worker killed mid-sweep
// loses no job.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <csignal>
#include <fstream>
#include <map>
#include <sstream>

#include "simq/json.h"
#include "test_support.h"

namespace simq::test {
namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;

uint64_t fib(uint64_t n) {
  uint64_t a = 0, b = 1;
  for (uint64_t i = 0; i < n; ++i) {
    const uint64_t next = a + b;
    a = b;
    b = next;
  }
  return a;
}

std::string write_file(const TempDir& dir, const std::string& name, const std::string& text) {
  std::ofstream(dir.file(name)) << text;
  return dir.file(name);
}

std::vector<Json> jsonl(const std::string& text) {
  std::vector<Json> rows;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) rows.push_back(Json::parse(line));
  return rows;
}

// Submits a sweep file with `simq submit`; returns the sweep id it printed.
std::string submit(TestCluster& cluster, const std::string& file) {
  const auto submitted = cluster.simq({"submit", file});
  EXPECT_EQ(submitted.status, 0) << submitted.err << cluster.logs();
  return trim(submitted.out);
}

uint64_t counter(Redis& redis, const std::string& sweep, const std::string& field) {
  const auto reply = redis.command({"HGET", "simq:sweep:" + sweep, field});
  return reply.is_nil() ? 0 : std::stoull(reply.str);
}

// What "nothing lost, nothing twice" looks like in Redis once a sweep of `total` jobs ended.
void expect_one_record_per_job(Redis& redis, const std::string& sweep, long long total) {
  EXPECT_EQ(counter(redis, sweep, "succeeded"), static_cast<uint64_t>(total));
  EXPECT_EQ(redis.command({"HLEN", "simq:sweep:" + sweep + ":jobs"}).integer, total);
  EXPECT_EQ(redis.command({"HLEN", "simq:sweep:" + sweep + ":running"}).integer, 0);
  // Each job announced once in the stream, then the final "sweep done" entry.
  expect_each_job_announced_once(redis, sweep, total);
}

TEST(Sweep, ThousandFibJobsOnTwoWorkersAllCorrect) {
  TestCluster cluster;
  TempDir dir;
  const auto file = write_file(dir, "fib.toml", R"(
kernel = "fib"
[grid]
n = { range = [0, 50] }
repeat = { range = [0, 20] }
)");
  const auto sweep = submit(cluster, file);
  ASSERT_FALSE(sweep.empty());

  const auto waited = cluster.simq({"wait", sweep});
  ASSERT_EQ(waited.status, 0) << waited.err << cluster.logs();

  const auto results = cluster.simq({"results", sweep, "--format", "jsonl"});
  ASSERT_EQ(results.status, 0) << results.err;
  const auto rows = jsonl(results.out);
  ASSERT_EQ(rows.size(), 1000u);
  std::map<std::string, int> workers;
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& row = rows[i];
    ASSERT_EQ(row["job"], fmt::format("{}:{}", sweep, i));
    ASSERT_EQ(row["status"], "succeeded") << row.dump();
    const auto n = row["params"]["n"].get<uint64_t>();
    ASSERT_EQ(n, i / 20);  // last axis varies fastest
    ASSERT_EQ(row["result"]["value"].get<uint64_t>(), fib(n)) << row.dump();
    ASSERT_TRUE(row["error"].is_null());
    ASSERT_EQ(row["attempts"], 1);
    ++workers[row["worker"].get<std::string>()];
  }
  EXPECT_EQ(workers.size(), 2u) << "both workers should have taken jobs";

  auto redis = cluster.redis().connect();
  expect_one_record_per_job(*redis, sweep, 1000);
  EXPECT_EQ(counter(*redis, sweep, "failed"), 0u);
  EXPECT_EQ(redis->command({"HGET", "simq:sweep:" + sweep, "status"}).str, "done");
  // Finished sweeps expire (7 days by default).
  const auto ttl = redis->command({"TTL", "simq:sweep:" + sweep}).integer;
  EXPECT_GT(ttl, 6 * 24 * 3600);
  EXPECT_LE(ttl, 7 * 24 * 3600);
}

TEST(Sweep, WorkerKilledMidSweepLosesNoJob) {
  TestCluster cluster;
  TempDir dir;
  const auto file = write_file(dir, "sleep.toml", R"(
kernel = "sleep"
[grid]
seconds = [0.1, 0.15]
i = { range = [0, 40] }
)");
  const auto sweep = submit(cluster, file);
  auto redis = cluster.redis().connect();
  ASSERT_TRUE(wait_until([&] { return counter(*redis, sweep, "succeeded") >= 12; }, 30s))
      << cluster.logs();
  // Kill worker 0 while it is running jobs: its running marks say so. A mark comes within a
  // few tens of ms of a job's start, and a job runs 100 ms or more: the kill finds it running.
  const auto victim = std::to_string(cluster.worker(0).pid());
  const auto victim_is_running = [&] {
    const auto running = redis->command({"HVALS", "simq:sweep:" + sweep + ":running"});
    for (const auto& mark : running.elements) {
      if (Json::parse(mark.str)["worker"].get<std::string>().ends_with(":" + victim)) return true;
    }
    return false;
  };
  ASSERT_TRUE(wait_until(victim_is_running, 10s)) << "worker 0 never ran a job";
  cluster.worker(0).signal(SIGKILL);

  const auto waited = cluster.simq({"wait", sweep});
  ASSERT_EQ(waited.status, 0) << waited.err << cluster.logs();
  expect_one_record_per_job(*redis, sweep, 80);
  const auto rows = jsonl(cluster.simq({"results", sweep, "--format", "jsonl"}).out);
  ASSERT_EQ(rows.size(), 80u);
  int retried = 0;
  for (const auto& row : rows) {
    EXPECT_EQ(row["status"], "succeeded");
    if (row["attempts"].get<int>() > 1) ++retried;
  }
  EXPECT_GE(retried, 1) << "jobs running on the killed worker must have run again";
  // The broker notices either way round: the worker's heartbeats stop, or the kernel closes its
  // TCP connection first and the next DISPATCH or heartbeat to it cannot be routed.
  EXPECT_THAT(cluster.logs(), ContainsRegex(":" + victim + " (missed heartbeats|is unreachable)"));
}

TEST(Sweep, BrokerKilledMidSweepIsRebuiltFromRedis) {
  TestCluster cluster;
  TempDir dir;
  const auto file = write_file(dir, "sleep.toml", R"(
kernel = "sleep"
[grid]
seconds = [0.01]
i = { range = [0, 400] }
)");
  const auto sweep = submit(cluster, file);
  auto redis = cluster.redis().connect();
  ASSERT_TRUE(wait_until([&] { return counter(*redis, sweep, "succeeded") >= 50; }, 30s))
      << cluster.logs();
  cluster.restart_broker(SIGKILL);  // its queue and in-flight table are gone with it

  // The new broker queues what Redis says is unfinished; the workers find it by themselves.
  const auto waited = cluster.simq({"wait", sweep, "--timeout", "60"});
  ASSERT_EQ(waited.status, 0) << waited.err << cluster.logs();
  expect_one_record_per_job(*redis, sweep, 400);
  EXPECT_EQ(cluster.worker(0).poll(), std::nullopt);
  EXPECT_EQ(cluster.worker(1).poll(), std::nullopt);
  EXPECT_THAT(cluster.logs(), HasSubstr("recovered sweep " + sweep));
}

TEST(Sweep, LongJobsKeepTheirLeaseAndNeverExceedCredit) {
  // Heartbeats every 100 ms, dead after 300 ms of silence: jobs of 1.2 s only survive if the
  // worker keeps heartbeating while its kernels run.
  TestCluster cluster({.workers = 1, .slots = 2, .heartbeat_ms = 100, .liveness = 3});
  TempDir dir;
  const auto file = write_file(dir, "long.toml",
                               "kernel = \"sleep\"\n[grid]\nseconds = [1.2]\n"
                               "i = { range = [0, 4] }\n");
  const auto sweep = submit(cluster, file);
  auto redis = cluster.redis().connect();
  long long most_running = 0;
  ASSERT_TRUE(wait_until(
      [&] {
        most_running = std::max(
            most_running, redis->command({"HLEN", "simq:sweep:" + sweep + ":running"}).integer);
        return redis->command({"HGET", "simq:sweep:" + sweep, "status"}).str == "done";
      },
      30s))
      << cluster.logs();
  EXPECT_EQ(most_running, 2) << "a worker with 2 slots ran more (or fewer) than 2 jobs at once";
  for (const auto& row : jsonl(cluster.simq({"results", sweep, "--format", "jsonl"}).out)) {
    EXPECT_EQ(row["status"], "succeeded");
    EXPECT_EQ(row["attempts"], 1) << "a long job was run twice: " << row.dump();
  }
  const auto status = Json::parse(redis->command({"GET", "simq:broker"}).str);
  EXPECT_EQ(status["workers_lost"], 0);
  EXPECT_EQ(status["late_done"], 0);
}

TEST(Sweep, UnknownKernelAndBadParamsEndFailedAndWorkerKeepsServing) {
  TestCluster cluster({.workers = 1});
  TempDir dir;
  const auto unknown = cluster.simq(
      {"submit", write_file(dir, "unknown.toml", "kernel = \"warp_drive\"\n[grid]\nx = [1, 2]\n")});
  ASSERT_EQ(unknown.status, 0) << unknown.err;
  const auto unknown_id = trim(unknown.out);
  const auto bad_type = cluster.simq(
      {"submit", write_file(dir, "bad.toml", "kernel = \"fib\"\n[grid]\nn = [\"ten\", 5]\n")});
  ASSERT_EQ(bad_type.status, 0) << bad_type.err;
  const auto bad_id = trim(bad_type.out);

  EXPECT_EQ(cluster.simq({"wait", unknown_id}).status, 1);
  EXPECT_EQ(cluster.simq({"wait", bad_id}).status, 1);

  const auto unknown_rows = jsonl(cluster.simq({"results", unknown_id, "--format", "jsonl"}).out);
  ASSERT_EQ(unknown_rows.size(), 2u);
  for (const auto& row : unknown_rows) {
    EXPECT_EQ(row["status"], "failed");
    EXPECT_THAT(row["error"].get<std::string>(), HasSubstr("unknown kernel 'warp_drive'"));
  }
  const auto bad_rows = jsonl(cluster.simq({"results", bad_id, "--format", "jsonl"}).out);
  ASSERT_EQ(bad_rows.size(), 2u);
  EXPECT_EQ(bad_rows[0]["status"], "failed");
  EXPECT_THAT(bad_rows[0]["error"].get<std::string>(),
              HasSubstr("param 'n': expected integer, got string"));
  EXPECT_EQ(bad_rows[1]["status"], "succeeded");
  EXPECT_EQ(bad_rows[1]["result"]["value"], 5);

  // The same worker still serves a good sweep.
  const auto good = cluster.simq(
      {"submit", write_file(dir, "good.toml", "kernel = \"fib\"\n[grid]\nn = [10, 20]\n"),
       "--wait"});
  EXPECT_EQ(good.status, 0) << good.err << cluster.logs();
  EXPECT_EQ(cluster.worker(0).poll(), std::nullopt) << "the worker must still be running";

  const auto get = cluster.simq({"get", unknown_id + ":1"});
  EXPECT_EQ(get.status, 1);  // a failed job: printed, and exit 1
  EXPECT_THAT(get.out, HasSubstr("failed"));
  EXPECT_THAT(get.out, HasSubstr("unknown kernel 'warp_drive'"));
}

}  // namespace
}  // namespace simq::test
