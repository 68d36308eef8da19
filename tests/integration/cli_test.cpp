// The simq command as a user meets it: `simq run` on an example prints the results table and
// leaves nothing running; bad sweep files are refused before anything is submitted;
// an unreachable Redis is named, exit 3, no hang.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include "test_support.h"

namespace simq::test {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string examples() { return std::string(SIMQ_SOURCE_DIR) + "/examples"; }

std::vector<int> simq_processes() {
  std::vector<int> pids;
  for (const auto* name : {"simq-broker", "simq-worker", "redis-server --bind 127.0.0.1"}) {
    const auto found = processes_matching(name);
    pids.insert(pids.end(), found.begin(), found.end());
  }
  std::sort(pids.begin(), pids.end());
  return pids;
}

TEST(Cli, RunPrintsResultsTableAndLeavesNoProcess) {
  const auto before = simq_processes();
  const auto run = run_command({bin("simq"), "run", examples() + "/fib.toml", "--workers", "2"});
  ASSERT_EQ(run.status, 0) << run.err;
  // Header, separator, one row a job: fib.toml has n = 20..30.
  EXPECT_THAT(run.out, HasSubstr("job"));
  EXPECT_THAT(run.out, HasSubstr("status"));
  EXPECT_THAT(run.out, HasSubstr("value"));
  EXPECT_THAT(run.out, HasSubstr("832040"));  // fib(30)
  EXPECT_THAT(run.out, HasSubstr("6765"));    // fib(20)
  EXPECT_EQ(std::count(run.out.begin(), run.out.end(), '\n'), 2 + 11);
  EXPECT_THAT(run.out, Not(HasSubstr("failed")));
  EXPECT_TRUE(wait_until([&] { return simq_processes() == before; }, 5s))
      << "simq run left processes behind";
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
  for (const auto* command : {"run", "up", "submit", "wait", "results", "get", "status"}) {
    const auto help = run_command({bin("simq"), command, "--help"});
    EXPECT_EQ(help.status, 0) << command;
    EXPECT_THAT(help.out, HasSubstr("--redis")) << command;
  }
  EXPECT_EQ(run_command({bin("simq")}).status, 2);
  EXPECT_EQ(run_command({bin("simq"), "frobnicate"}).status, 2);
  EXPECT_EQ(run_command({bin("simq-worker"), "--slots", "0"}).status, 2);
  EXPECT_EQ(run_command({bin("simq-broker"), "--heartbeat-ms", "x"}).status, 2);
  const auto format = run_command({bin("simq"), "results", "abc", "--format", "xml"});
  EXPECT_EQ(format.status, 2);
  EXPECT_THAT(format.err, HasSubstr("--format"));
}

}  // namespace
}  // namespace simq::test
