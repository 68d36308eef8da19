// The simq command as a user meets it: `simq run` on an example prints the results table and
// leaves nothing running, as does `simq up` after Ctrl-C; bad sweep files are refused before
// anything is submitted; an unreachable Redis is named, exit 3, no hang; `simq get` of a failed
// job exits 1; `simq wait` says why nothing moves, and exits 130 on Ctrl-C.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "simq/json.h"
#include "simq/store.h"
#include "simq/sweep.h"
#include "test_support.h"

namespace simq::test {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string examples() { return std::string(SIMQ_SOURCE_DIR) + "/examples"; }

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// redis-server rewrites its command line: "redis-server 127.0.0.1:<port>".
constexpr const char* kRedisNeedle = "redis-server 127.0.0.1:";

// How many of `started` run a command line containing `needle`.
long count_running(const ProcessMap& started, const std::string& needle) {
  return std::count_if(started.begin(), started.end(), [&](const auto& process) {
    return process.second.find(needle) != std::string::npos;
  });
}

TEST(Cli, RunPrintsResultsTableAndLeavesNoProcess) {
  ProcessMap started;
  const auto run =
      run_command({bin("simq"), "run", examples() + "/fib.toml", "--workers", "2"}, 60s, &started);
  ASSERT_EQ(run.status, 0) << run.err;
  // Header, separator, one row a job: fib.toml has n = 20..30.
  EXPECT_THAT(run.out, HasSubstr("job"));
  EXPECT_THAT(run.out, HasSubstr("status"));
  EXPECT_THAT(run.out, HasSubstr("value"));
  EXPECT_THAT(run.out, HasSubstr("832040"));  // fib(30)
  EXPECT_THAT(run.out, HasSubstr("6765"));    // fib(20)
  EXPECT_EQ(std::count(run.out.begin(), run.out.end(), '\n'), 2 + 11);
  EXPECT_THAT(run.out, Not(HasSubstr("failed")));
  // What it started (seen while it ran) has ended with it.
  EXPECT_EQ(count_running(started, kRedisNeedle), 1) << ::testing::PrintToString(started);
  EXPECT_EQ(count_running(started, "simq-broker"), 1) << ::testing::PrintToString(started);
  EXPECT_EQ(count_running(started, "simq-worker"), 2) << ::testing::PrintToString(started);
  EXPECT_TRUE(wait_until([&] { return still_running(started).empty(); }, 5s))
      << "simq run left processes behind: " << ::testing::PrintToString(still_running(started));
}

TEST(Cli, FindsARunningRedisServerByItsRewrittenCommandLine) {
  RedisServer redis;
  const int pid = static_cast<int>(redis.process()->pid());
  EXPECT_THAT(command_line(pid), HasSubstr(fmt::format("{}{}", kRedisNeedle, redis.port())));
  EXPECT_THAT(processes_matching(kRedisNeedle), ::testing::Contains(pid));
}

TEST(Cli, UpStopsOnCtrlCAndLeavesNoProcess) {
  TempDir dir;
  ChildProcess up({bin("simq"), "up", "--workers", "1"}, dir.file("out"), dir.file("err"));
  const auto err = [&] { return read_file(dir.file("err")); };
  ASSERT_TRUE(wait_until(
      [&] { return contains(read_file(dir.file("out")), "export SIMQ_REDIS=") || up.poll(); }, 30s))
      << "no export line from simq up within 30 s: " << err();
  ASSERT_EQ(up.poll(), std::nullopt) << err();
  EXPECT_THAT(read_file(dir.file("out")), HasSubstr("SIMQ_BROKER=tcp://127.0.0.1:"));

  // Before: what it started, all running (the worker has said HELLO, so all have exec'd).
  ProcessMap started;
  note_children(up.pid(), started);
  EXPECT_EQ(started.size(), 3u) << ::testing::PrintToString(started);
  EXPECT_EQ(count_running(started, kRedisNeedle), 1) << ::testing::PrintToString(started);
  EXPECT_EQ(count_running(started, "simq-broker"), 1) << ::testing::PrintToString(started);
  EXPECT_EQ(count_running(started, "simq-worker"), 1) << ::testing::PrintToString(started);
  EXPECT_EQ(still_running(started).size(), started.size());

  up.signal(SIGINT);
  const auto status = up.wait(10s);
  ASSERT_NE(status, std::nullopt) << "simq up did not stop within 10 s of SIGINT: " << err();
  EXPECT_EQ(*status, 0) << err();
  // After: none of them.
  EXPECT_EQ(still_running(started), std::vector<int>{}) << "simq up left processes behind";
}

TEST(Cli, GetOfAFailedJobPrintsItAndExitsOne) {
  TestCluster cluster({.workers = 1});
  TempDir dir;
  std::ofstream(dir.file("bad.toml")) << "kernel = \"fib\"\n[grid]\nn = [5, 500]\n";
  const auto submit = cluster.simq({"submit", dir.file("bad.toml"), "--wait"});
  ASSERT_EQ(submit.status, 1) << submit.err;
  const auto sweep = trim(submit.out);

  const auto failed = cluster.simq({"get", sweep + ":1"});
  EXPECT_EQ(failed.status, 1) << failed.err;
  EXPECT_THAT(failed.out, HasSubstr("failed"));
  EXPECT_THAT(failed.out, HasSubstr("expected 0 to 92, got 500"));
  const auto failed_json = cluster.simq({"get", sweep + ":1", "--json"});
  EXPECT_EQ(failed_json.status, 1) << failed_json.err;
  EXPECT_EQ(Json::parse(failed_json.out)["status"], "failed");

  const auto succeeded = cluster.simq({"get", sweep + ":0"});
  EXPECT_EQ(succeeded.status, 0) << succeeded.err;
  EXPECT_THAT(succeeded.out, HasSubstr("succeeded"));
}

// Two sweeps where nothing moves: one queued at a broker without workers, one recorded in a
// Redis without a broker. `simq wait` says so after 30 s, keeps waiting, and exits 130 on
// Ctrl-C. (Takes 30 s: the notice's delay is not a flag.)
TEST(Cli, WaitSaysWhyNothingMovesAndExits130OnCtrlC) {
  TestCluster cluster({.workers = 0});
  TempDir dir;
  std::ofstream(dir.file("fib.toml")) << "kernel = \"fib\"\n[grid]\nn = [1, 2]\n";
  const auto submit = cluster.simq({"submit", dir.file("fib.toml")});
  ASSERT_EQ(submit.status, 0) << submit.err;
  const auto sweep = trim(submit.out);
  RedisServer lone;
  ASSERT_TRUE(Store(lone.address()).create_sweep(sweep, load_sweep_file(dir.file("fib.toml")), 0));

  struct Case {
    std::string redis;
    std::string notice;
  };
  const std::vector<Case> cases = {
      {cluster.redis().url(), "simq: no progress for 30 s; broker: 0 workers connected\n"},
      {lone.url(), fmt::format("simq: no progress for 30 s; no broker status in Redis (is "
                               "simq-broker running against {}?)\n",
                               lone.url())}};
  std::vector<std::unique_ptr<ChildProcess>> waits;
  const auto err = [&](size_t i) { return read_file(dir.file(fmt::format("err{}", i))); };
  for (size_t i = 0; i < cases.size(); ++i) {
    waits.push_back(std::make_unique<ChildProcess>(
        std::vector<std::string>{bin("simq"), "wait", sweep, "--redis", cases[i].redis},
        dir.file(fmt::format("out{}", i)), dir.file(fmt::format("err{}", i))));
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_TRUE(
        wait_until([&] { return contains(err(i), cases[i].notice) || waits[i]->poll(); }, 60s))
        << err(i);
    EXPECT_EQ(waits[i]->poll(), std::nullopt) << "it must keep waiting: " << err(i);
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    waits[i]->signal(SIGINT);
    EXPECT_EQ(waits[i]->wait(10s), 130) << err(i);
    EXPECT_THAT(err(i), HasSubstr("interrupted"));
  }
}

TEST(Cli, RunWithFailedJobsExitsOne) {
  TempDir dir;
  std::ofstream(dir.file("bad.toml")) << "kernel = \"fib\"\n[grid]\nn = [5, 500]\n";
  const auto run = run_command({bin("simq"), "run", dir.file("bad.toml"), "--workers", "1"});
  EXPECT_EQ(run.status, 1) << run.err;
  EXPECT_THAT(run.out, HasSubstr("expected 0 to 92, got 500"));
}

struct BadFile {
  const char* name;
  const char* text;
  const char* expected;  // in the message
};

class BadSweepFile : public ::testing::TestWithParam<BadFile> {};

TEST_P(BadSweepFile, IsRefusedBeforeAnythingIsSubmitted) {
  RedisServer redis;
  TempDir dir;
  const auto& bad = GetParam();
  const auto path = dir.file(bad.name);
  std::ofstream(path) << bad.text;
  // No broker is running: a refused file must never get as far as trying to submit.
  const auto result = run_command(
      {bin("simq"), "submit", path, "--redis", redis.url(), "--broker", "tcp://127.0.0.1:1"}, 20s);
  EXPECT_EQ(result.status, 2) << result.err;
  EXPECT_THAT(result.err, HasSubstr(path));
  EXPECT_THAT(result.err, HasSubstr(bad.expected));
  EXPECT_EQ(redis.connect()->command({"ZCARD", "simq:sweeps"}).integer, 0);
}

INSTANTIATE_TEST_SUITE_P(
    Cli, BadSweepFile,
    ::testing::Values(
        BadFile{"syntax.toml", "kernel = \"fib\n[grid]\n", "syntax.toml:1:"},
        BadFile{"unknown_key.toml", "kernal = \"fib\"\n", "kernal"},
        BadFile{"wrong_type.toml", "kernel = 7\n", "kernel: expected"},
        BadFile{"empty_grid.toml", "kernel = \"fib\"\n[grid]\n", "grid: expected at least one"},
        BadFile{"empty_axis.toml", "kernel = \"fib\"\n[grid]\nn = []\n", "grid.n"},
        BadFile{"bad_range.toml", "kernel = \"fib\"\n[grid]\nn = { range = [1, \"x\"] }\n",
                "grid.n.range"},
        BadFile{"bad.json", "{\"kernel\": \"fib\", \"grid\": {\"n\": [1,}}", "bad.json"}),
    [](const auto& test) {
      std::string name = test.param.name;
      std::replace(name.begin(), name.end(), '.', '_');
      return name;
    });

TEST(Cli, MissingSweepFileIsAUsageError) {
  const auto result = run_command({bin("simq"), "submit", "/nonexistent/sweep.toml"});
  EXPECT_EQ(result.status, 2);
  EXPECT_THAT(result.err, HasSubstr("/nonexistent/sweep.toml"));
}

TEST(Cli, UnreachableRedisIsNamedWithExitThree) {
  const int port = free_loopback_port();  // nothing listens there
  const auto url = fmt::format("redis://127.0.0.1:{}", port);
  const auto start = std::chrono::steady_clock::now();
  for (const auto& args :
       std::vector<std::vector<std::string>>{{"status"},
                                             {"wait", "abc"},
                                             {"results", "abc"},
                                             {"get", "abc:1"},
                                             {"verify", "abc"},
                                             {"submit", examples() + "/fib.toml"}}) {
    auto argv = args;
    argv.insert(argv.begin(), bin("simq"));
    argv.insert(argv.end(), {std::string("--redis"), url});
    const auto result = run_command(argv, 20s);
    EXPECT_EQ(result.status, 3) << args[0] << ": " << result.err;
    EXPECT_THAT(result.err, HasSubstr(url)) << args[0];
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 15s);
}

TEST(Cli, UnknownSweepAndJobExitOne) {
  RedisServer redis;
  const auto wait = run_command({bin("simq"), "wait", "nosuchsweep", "--redis", redis.url()});
  EXPECT_EQ(wait.status, 1);
  EXPECT_THAT(wait.err, HasSubstr("nosuchsweep"));
  EXPECT_THAT(wait.err, HasSubstr("not found"));
  const auto get = run_command({bin("simq"), "get", "nosuchsweep:3", "--redis", redis.url()});
  EXPECT_EQ(get.status, 1);
  const auto malformed = run_command({bin("simq"), "get", "no-index", "--redis", redis.url()});
  EXPECT_EQ(malformed.status, 2);
}

TEST(Cli, HelpAndBadFlags) {
  for (const auto* command :
       {"run", "up", "submit", "wait", "results", "get", "status", "cancel", "verify"}) {
    const auto help = run_command({bin("simq"), command, "--help"});
    EXPECT_EQ(help.status, 0) << command;
    EXPECT_THAT(help.out, HasSubstr("--redis")) << command;
  }
  const auto help = run_command({bin("simq"), "--help"});
  EXPECT_EQ(help.status, 0);
  EXPECT_THAT(help.out, HasSubstr("Exit codes: 0 success, 1 jobs failed or not found, 2 usage or "
                                  "input error, 3 cannot reach a service, 130 interrupted"));
  EXPECT_EQ(run_command({bin("simq")}).status, 2);
  EXPECT_EQ(run_command({bin("simq"), "frobnicate"}).status, 2);
  for (const auto* program : {"simq-broker", "simq-worker"}) {
    const auto program_help = run_command({bin(program), "--help"});
    EXPECT_EQ(program_help.status, 0) << program;
    EXPECT_THAT(program_help.out, HasSubstr("--redis")) << program;
  }
  const auto kernels = run_command({bin("simq-worker"), "--list-kernels"});
  EXPECT_EQ(kernels.status, 0);
  for (const auto* kernel : {"noop", "sleep", "fib", "mc_pi", "fault"}) {
    EXPECT_THAT(kernels.out, HasSubstr(kernel));
  }
  EXPECT_EQ(run_command({bin("simq-worker"), "--slots", "0"}).status, 2);
  EXPECT_EQ(run_command({bin("simq-broker"), "--heartbeat-ms", "x"}).status, 2);
  const auto timeout = run_command({bin("simq"), "submit", "x.toml", "--submit-timeout", "-5"});
  EXPECT_EQ(timeout.status, 2);
  EXPECT_THAT(timeout.err, HasSubstr("--submit-timeout: Value -5 not in range 0"));
  EXPECT_THAT(timeout.err, HasSubstr("to 31536000")) << "a readable bound, not DBL_MAX";
  const auto format = run_command({bin("simq"), "results", "abc", "--format", "xml"});
  EXPECT_EQ(format.status, 2);
  EXPECT_THAT(format.err, HasSubstr("--format"));
}

}  // namespace
}  // namespace simq::test
