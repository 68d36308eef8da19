// Process isolation on a real cluster (redis-server, simq-broker, simq-worker --isolation
// process): a kernel that segfaults, aborts, runs out of its memory limit or ignores its stop
// request ends only its own job, FAILED (or cancelled) with the reason, while the worker and
// its other slots carry on; kernel processes are recycled after N jobs or above an RSS; and
// process-only flags are refused with thread isolation.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "simq/json.h"
#include "test_support.h"

namespace simq::test {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

// Whether job 0 of the sweep has started its kernel within 10 s (the worker logs it).
bool kernel_started(TestCluster& cluster, const std::string& sweep) {
  return wait_until(
      [&] {
        return cluster.logs().find(fmt::format("job {}:0: kernel 'fault' started", sweep)) !=
               std::string::npos;
      },
      10s);
}

// A cluster of one worker with process isolation and `slots` slots, plus `flags`; its kill
// grace is short, so that tests of kernels that ignore their stop do not wait long.
TestCluster::Options isolated(int slots, std::vector<std::string> flags = {}) {
  std::vector<std::string> args = {"--isolation", "process",     "--kill-grace-ms",
                                   "300",         "--log-level", "debug"};
  args.insert(args.end(), flags.begin(), flags.end());
  return {.workers = 1, .slots = slots, .worker_args = args};
}

class Isolation : public ::testing::Test {
 protected:
  // Submits the sweep in `toml`; returns its id.
  std::string submit(TestCluster& cluster, const std::string& toml) {
    const std::string file = dir_.file(fmt::format("sweep{}.toml", ++sweeps_));
    std::ofstream(file) << toml;
    const auto submitted = cluster.simq({"submit", file});
    EXPECT_EQ(submitted.status, 0) << submitted.err << cluster.logs();
    return trim(submitted.out);
  }

  // Waits for the sweep to end; `simq wait` exits 0 if every job succeeded, 1 if not.
  int wait(TestCluster& cluster, const std::string& sweep) {
    const auto waited = cluster.simq({"wait", sweep, "--timeout", "60"});
    EXPECT_TRUE(waited.status == 0 || waited.status == 1) << waited.err << cluster.logs();
    return waited.status;
  }

  // The sweep's job records, by index.
  std::map<uint64_t, Json> records(TestCluster& cluster, const std::string& sweep) {
    std::map<uint64_t, Json> out;
    const auto reply =
        cluster.redis().connect()->command({"HGETALL", "simq:sweep:" + sweep + ":jobs"});
    for (size_t i = 0; i + 1 < reply.elements.size(); i += 2) {
      out[std::stoull(reply.elements[i].str)] = Json::parse(reply.elements[i + 1].str);
    }
    return out;
  }

  // The kernel pids of the sweep's jobs, in the order they started.
  std::vector<int64_t> pids_in_order(TestCluster& cluster, const std::string& sweep) {
    std::vector<Json> started;
    for (auto& [index, record] : records(cluster, sweep)) started.push_back(record);
    std::sort(started.begin(), started.end(), [](const Json& a, const Json& b) {
      return a["started_at"].get<double>() < b["started_at"].get<double>();
    });
    std::vector<int64_t> pids;
    for (const auto& record : started) pids.push_back(record.value("kernel_pid", int64_t{0}));
    return pids;
  }

  // The worker serves on: alive, one kernel process per slot and no zombie, and a sweep of
  // `jobs` no-op jobs succeeds.
  void expect_serving(TestCluster& cluster, int slots, int jobs = 4) {
    EXPECT_EQ(cluster.worker(0).poll(), std::nullopt) << cluster.logs();
    const auto sweep = submit(
        cluster, fmt::format("kernel = \"noop\"\n[grid]\ni = {{ range = [0, {}] }}\n", jobs));
    EXPECT_EQ(wait(cluster, sweep), 0) << cluster.logs();
    for (const auto& [index, record] : records(cluster, sweep)) {
      EXPECT_EQ(record["status"], "succeeded") << record.dump();
    }
    const int worker = cluster.worker(0).pid();
    EXPECT_TRUE(wait_until(
        [&] {
          return child_processes(worker).size() == static_cast<size_t>(slots) &&
                 zombie_children(worker).empty();
        },
        5s))
        << child_processes(worker).size() << " kernel processes, " << zombie_children(worker).size()
        << " zombies\n"
        << cluster.logs();
  }

  TempDir dir_;
  int sweeps_ = 0;
};

TEST_F(Isolation, AKernelThatSegfaultsOrAbortsFailsOnlyItsOwnJob) {
  TestCluster cluster(isolated(2));
  // One slot runs a long job meanwhile: it must not notice the crashes beside it.
  const auto beside = submit(cluster, "kernel = \"fault\"\n[params]\nseconds = 1.5\n");
  const auto crashes = submit(cluster,
                              "kernel = \"fault\"\n[grid]\nmode = [\"ok\", \"segv\", \"ok\", "
                              "\"abort\", \"ok\", \"segv\", \"ok\"]\n");
  EXPECT_EQ(wait(cluster, crashes), 1) << cluster.logs();
  EXPECT_EQ(wait(cluster, beside), 0) << cluster.logs();

  const auto jobs = records(cluster, crashes);
  ASSERT_EQ(jobs.size(), 7u) << cluster.logs();
  for (const auto& [index, record] : jobs) {
    SCOPED_TRACE(record.dump());
    const std::string mode = record["params"]["mode"];
    EXPECT_GT(record["kernel_pid"].get<int64_t>(), 0);
    EXPECT_GT(record["peak_rss_kib"].get<int64_t>(), 0);
    if (mode == "ok") {
      EXPECT_EQ(record["status"], "succeeded");
      EXPECT_FALSE(record.contains("signal"));
    } else {
      const int signal = mode == "segv" ? 11 : 6;
      EXPECT_EQ(record["status"], "failed");
      EXPECT_EQ(record["signal"], signal);
      EXPECT_EQ(record["attempts"], 1) << "a crash is not retried";
      EXPECT_THAT(record["error"].get<std::string>(),
                  MatchesRegex(fmt::format("kernel process killed by signal {} \\(SIG{}\\), "
                                           "peak RSS [0-9]+\\.[0-9] MiB",
                                           signal, mode == "segv" ? "SEGV" : "ABRT")));
    }
  }
  const Json long_job = records(cluster, beside).at(0);
  EXPECT_EQ(long_job["status"], "succeeded") << long_job.dump();
  EXPECT_THAT(cluster.logs(), HasSubstr("kernel process killed by signal 11 (SIGSEGV)"));
  expect_serving(cluster, 2);
}

TEST_F(Isolation, AKernelIgnoringItsStopTimesOutAndItsSlotRunsTheNextJob) {
  TestCluster cluster(isolated(1));
  const auto start = std::chrono::steady_clock::now();
  const auto hung = submit(cluster,
                           "kernel = \"fault\"\n[params]\nmode = \"hang\"\nseconds = 60\n"
                           "[options]\ntimeout_s = 1\n");
  const auto next = submit(cluster, "kernel = \"noop\"\n[grid]\ni = [1, 2, 3]\n");
  EXPECT_EQ(wait(cluster, next), 0) << cluster.logs();
  EXPECT_EQ(wait(cluster, hung), 1) << cluster.logs();
  // 1 s of time limit, 0.3 s of kill grace: not the 60 s the kernel would have taken.
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);

  const Json record = records(cluster, hung).at(0);
  EXPECT_EQ(record["status"], "failed") << record.dump();
  EXPECT_EQ(record["error"], "timed out after 1 s") << record.dump();
  EXPECT_EQ(record["signal"], 9) << record.dump();
  EXPECT_LT(record["elapsed_s"].get<double>(), 5) << record.dump();
  EXPECT_THAT(cluster.logs(),
              HasSubstr("kernel 'fault' ignored its stop request for 300 ms: kernel process"));
  expect_serving(cluster, 1);
}

TEST_F(Isolation, CancellingAKernelThatIgnoresItsStopFreesItsSlot) {
  TestCluster cluster(isolated(1));
  const auto hung =
      submit(cluster, "kernel = \"fault\"\n[params]\nmode = \"hang\"\nseconds = 60\n");
  ASSERT_TRUE(kernel_started(cluster, hung)) << cluster.logs();
  const auto cancelled = cluster.simq({"cancel", hung});
  ASSERT_EQ(cancelled.status, 0) << cancelled.err;

  Json record;
  ASSERT_TRUE(wait_until(
      [&] {
        const auto jobs = records(cluster, hung);
        if (jobs.empty()) return false;
        record = jobs.at(0);
        return true;
      },
      10s))
      << cluster.logs();
  EXPECT_EQ(record["status"], "cancelled") << record.dump();
  EXPECT_EQ(record["error"], "cancelled by simq cancel") << record.dump();
  EXPECT_EQ(record["signal"], 9) << record.dump();
  expect_serving(cluster, 1);
}

TEST_F(Isolation, AKernelOverTheMemoryLimitFailsAndTheWorkerCarriesOn) {
  TestCluster cluster(isolated(1, {"--memory-limit-mib", "160"}));
  // It would hold 400 MiB for 30 s: killed as soon as it is seen above the limit.
  const auto start = std::chrono::steady_clock::now();
  const auto held = submit(cluster,
                           "kernel = \"fault\"\n[params]\nmode = \"alloc\"\nmib = 400\n"
                           "hold_s = 30\n");
  EXPECT_EQ(wait(cluster, held), 1) << cluster.logs();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 15s) << "not the 30 s the job holds";
  const Json over = records(cluster, held).at(0);
  EXPECT_EQ(over["status"], "failed") << over.dump();
  EXPECT_THAT(over["error"].get<std::string>(),
              MatchesRegex("memory limit exceeded: RSS [0-9]+\\.[0-9] MiB above the limit of "
                           "160 MiB \\(kernel process killed\\)"));
  EXPECT_EQ(over["signal"], 9) << over.dump();
  EXPECT_GT(over["peak_rss_kib"].get<int64_t>(), 160 * 1024) << over.dump();

  // Within the limit a job succeeds; one that goes over and returns at once fails all the same
  // (seen by a sample, or by the peak its kernel process reports).
  const auto quick = submit(cluster,
                            "kernel = \"fault\"\n[params]\nmode = \"alloc\"\n[grid]\n"
                            "mib = [16, 400]\n");
  EXPECT_EQ(wait(cluster, quick), 1) << cluster.logs();
  const auto jobs = records(cluster, quick);
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs.at(0)["status"], "succeeded") << jobs.at(0).dump();
  EXPECT_EQ(jobs.at(1)["status"], "failed") << jobs.at(1).dump();
  EXPECT_THAT(jobs.at(1)["error"].get<std::string>(), HasSubstr("above the limit of 160 MiB"));
  expect_serving(cluster, 1);
}

TEST_F(Isolation, AKernelProcessLeftAboveTheRecycleRssIsReplaced) {
  // Each job leaks 300 MiB: the second leaves its process above 450 MiB, so the third starts
  // in a new one, whose second job leaves it above again. (A kernel process holds about 6 MiB
  // before its first job, 35 under AddressSanitizer.)
  TestCluster cluster(isolated(1, {"--recycle-rss-mib", "450"}));
  const auto sweep = submit(cluster,
                            "kernel = \"fault\"\n[params]\nmode = \"leak\"\nmib = 300\n"
                            "[grid]\ni = { range = [0, 4] }\n");
  EXPECT_EQ(wait(cluster, sweep), 0) << cluster.logs();
  const auto pids = pids_in_order(cluster, sweep);
  ASSERT_EQ(pids.size(), 4u);
  EXPECT_EQ(pids[0], pids[1]);
  EXPECT_NE(pids[1], pids[2]) << "replaced after a job left it above 450 MiB";
  EXPECT_EQ(pids[2], pids[3]);
  EXPECT_GT(records(cluster, sweep).at(0)["peak_rss_kib"].get<int64_t>(), 300 * 1024);
  expect_serving(cluster, 1);
}

TEST_F(Isolation, AKernelProcessIsReplacedAfterRecycleJobs) {
  TestCluster cluster(isolated(1, {"--recycle-jobs", "3"}));
  const auto sweep = submit(cluster, "kernel = \"noop\"\n[grid]\ni = { range = [0, 7] }\n");
  EXPECT_EQ(wait(cluster, sweep), 0) << cluster.logs();
  const auto pids = pids_in_order(cluster, sweep);
  ASSERT_EQ(pids.size(), 7u);
  EXPECT_EQ(std::set<int64_t>(pids.begin(), pids.begin() + 3).size(), 1u);
  EXPECT_EQ(std::set<int64_t>(pids.begin() + 3, pids.begin() + 6).size(), 1u);
  EXPECT_EQ(std::set<int64_t>(pids.begin(), pids.end()).size(), 3u)
      << "three kernel processes for 7 jobs, 3 each";
  expect_serving(cluster, 1);
}

TEST_F(Isolation, AStopHandsBackAJobWhoseKernelIgnoresItAndLeavesNoKernelProcess) {
  TestCluster cluster(isolated(1, {"--stop-grace-ms", "200"}));
  const int worker = cluster.worker(0).pid();
  const auto hung =
      submit(cluster, "kernel = \"fault\"\n[params]\nmode = \"hang\"\nseconds = 60\n");
  ASSERT_TRUE(kernel_started(cluster, hung)) << cluster.logs();
  const std::vector<int> kernel_processes = child_processes(worker);
  ASSERT_EQ(kernel_processes.size(), 1u);

  const auto start = std::chrono::steady_clock::now();
  cluster.worker(0).signal(SIGTERM);
  EXPECT_EQ(cluster.worker(0).wait(10s), 0) << cluster.logs();
  // 200 ms of stop grace, then 300 ms of kill grace.
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_THAT(cluster.logs(), HasSubstr("1 handed back"));
  EXPECT_TRUE(records(cluster, hung).empty()) << "handed back to the broker, not recorded";
  EXPECT_TRUE(wait_until([&] { return command_line(kernel_processes[0]).empty(); }, 5s))
      << "kernel process " << kernel_processes[0] << " outlived its worker";
}

TEST_F(Isolation, AKernelProcessKilledWhileIdleIsReplacedWithoutCostingTheNextJobAnAttempt) {
  TestCluster cluster(isolated(1));
  const int worker = cluster.worker(0).pid();
  ASSERT_TRUE(wait_until([&] { return child_processes(worker).size() == 1; }, 5s))
      << cluster.logs();
  const int idle = child_processes(worker).front();
  ::kill(idle, SIGKILL);  // as the OOM killer would, between jobs
  const auto sweep = submit(cluster, "kernel = \"noop\"\n");
  EXPECT_EQ(wait(cluster, sweep), 0) << cluster.logs();
  const Json record = records(cluster, sweep).at(0);
  EXPECT_EQ(record["status"], "succeeded") << record.dump();
  EXPECT_EQ(record["attempts"], 1) << record.dump();
  EXPECT_NE(record["kernel_pid"], idle) << record.dump();
  EXPECT_THAT(cluster.logs(), HasSubstr("while idle: starting another"));
  expect_serving(cluster, 1);
}

TEST_F(Isolation, AWorkerThatCannotStartKernelProcessesHandsItsJobsBackAndStops) {
  // A plug-in the worker loaded at start that its kernel processes can no longer load (a
  // library removed by an upgrade, say): no job may fail or lose an attempt to that. With
  // --recycle-jobs 1 every job needs a new kernel process.
  const std::string broken = dir_.file("plugin-broken");
  ::setenv("SIMQ_TEST_PLUGIN_FAIL_IF", broken.c_str(), 1);  // inherited by the cluster
  TestCluster cluster(isolated(1, {"--plugin", SIMQ_TEST_PLUGIN, "--recycle-jobs", "1"}));
  ::unsetenv("SIMQ_TEST_PLUGIN_FAIL_IF");
  std::ofstream(broken) << "";
  const auto sweep = submit(cluster, "kernel = \"noop\"\n[grid]\ni = { range = [0, 6] }\n");

  std::optional<int> exited;
  ASSERT_TRUE(wait_until([&] { return (exited = cluster.worker(0).poll()).has_value(); }, 20s))
      << cluster.logs();
  EXPECT_EQ(*exited, 1);
  EXPECT_THAT(cluster.logs(), HasSubstr("before it was ready"));
  EXPECT_THAT(cluster.logs(), HasSubstr("this worker takes no more jobs, hands them back"));
  EXPECT_THAT(cluster.logs(), HasSubstr("stopped: ")) << "exit 1 by its own stop, not a crash";
  for (const auto& [index, record] : records(cluster, sweep)) {
    EXPECT_EQ(record["status"], "succeeded") << record.dump();  // run before the breakage
  }
  EXPECT_LT(records(cluster, sweep).size(), 6u) << "the worker never met the breakage";

  // Repaired, the worker runs every job at its first attempt.
  std::filesystem::remove(broken);
  cluster.restart_worker(0);
  EXPECT_EQ(wait(cluster, sweep), 0) << cluster.logs();
  const auto done = records(cluster, sweep);
  ASSERT_EQ(done.size(), 6u);
  for (const auto& [index, record] : done) {
    EXPECT_EQ(record["status"], "succeeded") << record.dump();
    EXPECT_EQ(record["attempts"], 1) << record.dump();
  }
}

TEST(IsolationFlags, ProcessOnlyFlagsAreRefusedWithThreadIsolation) {
  for (const auto& flag :
       {"--memory-limit-mib", "--recycle-jobs", "--recycle-rss-mib", "--kill-grace-ms"}) {
    const auto started = run_command({bin("simq-worker"), flag, "100"}, 10s);
    EXPECT_EQ(started.status, 2) << flag;
    EXPECT_EQ(started.err, fmt::format("simq-worker: {} needs --isolation process (kernels run in "
                                       "the worker's threads with --isolation thread)\n",
                                       flag));
  }
  const auto bogus = run_command({bin("simq-worker"), "--isolation", "bogus"}, 10s);
  EXPECT_EQ(bogus.status, 2);
  EXPECT_THAT(bogus.err, HasSubstr("--isolation: bogus not in {thread,process}"));
  const auto run = run_command({bin("simq"), "run", "none.toml", "--isolation", "fork"}, 10s);
  EXPECT_EQ(run.status, 2);
  EXPECT_THAT(run.err, HasSubstr("--isolation: fork not in {thread,process}"));
  // The kernel process mode is not for starting by hand.
  const auto host = run_command({bin("simq-worker"), "--kernel-host"}, 10s);
  EXPECT_EQ(host.status, 2);
  EXPECT_THAT(host.err, HasSubstr("descriptor 3 is not a socket"));
}

}  // namespace
}  // namespace simq::test
