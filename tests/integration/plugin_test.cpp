// Integration tests of plug-in kernels in a real simq-worker: `--plugin LIB --list-kernels`
// shows the plug-in's kernels, a bad plug-in stops the worker with exit 2 and the message, and a
// sweep (examples/plugin/rosenbrock.toml) runs on workers that loaded the example plug-in.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "simq/json.h"
#include "test_support.h"

namespace simq::test {
namespace {

// The line of `--list-kernels` output for kernel `name`, with the padding after the name
// squeezed to one space ("" if there is none).
std::string listed_line(const std::string& out, const std::string& name) {
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(name + " ", 0) != 0) continue;
    const size_t help = line.find_first_not_of(' ', name.size());
    return name + " " + (help == std::string::npos ? "" : line.substr(help));
  }
  return "";
}

TEST(Plugin, ListKernelsShowsThePluginsKernelsWithTheirHelp) {
  const auto listed =
      run_command({bin("simq-worker"), "--plugin", SIMQ_EXAMPLE_PLUGIN, "--list-kernels"});
  ASSERT_EQ(listed.status, 0) << listed.err;
  EXPECT_EQ(listed_line(listed.out, "rosenbrock"),
            "rosenbrock x, y, a = 1, b = 100 -> value = (a - x)^2 + b (y - x^2)^2")
      << listed.out;
  EXPECT_EQ(listed_line(listed.out, "collatz"),
            "collatz n (1 to 2^53) -> steps to reach 1, peak of the sequence")
      << listed.out;
  EXPECT_NE(listed_line(listed.out, "fib"), "") << listed.out;  // the built-ins too
}

TEST(Plugin, WithoutThePluginItsKernelsAreNotListed) {
  const auto listed = run_command({bin("simq-worker"), "--list-kernels"});
  ASSERT_EQ(listed.status, 0) << listed.err;
  EXPECT_EQ(listed_line(listed.out, "rosenbrock"), "") << listed.out;
}

TEST(Plugin, MissingPluginExitsTwoWithTheMessage) {
  const auto listed =
      run_command({bin("simq-worker"), "--plugin", "/nonexistent.so", "--list-kernels"});
  EXPECT_EQ(listed.status, 2);
  EXPECT_EQ(listed.err.rfind("simq-worker: --plugin /nonexistent.so: cannot load: ", 0), 0u)
      << listed.err;
  EXPECT_EQ(listed.out, "");
}

TEST(Plugin, WrongAbiExitsTwoBeforeServing) {
  const auto started = run_command({bin("simq-worker"), "--plugin", SIMQ_TEST_PLUGIN_ABI99});
  EXPECT_EQ(started.status, 2);
  EXPECT_NE(started.err.find(": ABI version 99, this worker speaks 1"), std::string::npos)
      << started.err;
}

// `simq run` of the example sweep with the example plug-in and `flags`: every one of its 25
// rows succeeded with the Rosenbrock value of its params; `check(row)` looks at each too.
void expect_rosenbrock_sweep(const std::vector<std::string>& flags,
                             const std::function<void(const Json&)>& check) {
  std::vector<std::string> argv{bin("simq"),
                                "run",
                                std::string(SIMQ_SOURCE_DIR) + "/examples/plugin/rosenbrock.toml",
                                "--plugin",
                                SIMQ_EXAMPLE_PLUGIN,
                                "--format",
                                "jsonl"};
  argv.insert(argv.end(), flags.begin(), flags.end());
  const auto ran = run_command(argv, 120s);
  ASSERT_EQ(ran.status, 0) << ran.out << ran.err;
  std::istringstream lines(ran.out);
  int rows = 0;
  for (std::string line; std::getline(lines, line); ++rows) {
    const Json row = Json::parse(line);
    ASSERT_EQ(row["status"], "succeeded") << line;
    check(row);
    const double x = row["params"]["x"];
    const double y = row["params"]["y"];
    const double expected = (1 - x) * (1 - x) + 100 * (y - x * x) * (y - x * x);
    EXPECT_DOUBLE_EQ(row["result"]["value"].get<double>(), expected) << line;
  }
  EXPECT_EQ(rows, 25);
}

// `simq run --plugin` hands the plug-in to the workers of its local cluster (redis-server,
// broker, worker: real processes), which run examples/plugin/rosenbrock.toml with it.
TEST(Plugin, ExampleSweepRunsOnALocalClusterWithThePlugin) {
  expect_rosenbrock_sweep({}, [](const Json&) {});
}

// With process isolation the kernel processes load the plug-in too, and run its kernels.
TEST(Plugin, ExampleSweepRunsInKernelProcesses) {
  expect_rosenbrock_sweep({"--isolation", "process"}, [](const Json& row) {
    EXPECT_GT(row["kernel_pid"].get<int64_t>(), 0) << row.dump();
  });
}

TEST(Plugin, LocalClusterWithABadPluginFailsAtStart) {
  const auto ran = run_command(
      {bin("simq"), "run", std::string(SIMQ_SOURCE_DIR) + "/examples/plugin/rosenbrock.toml",
       "--plugin", "/nonexistent.so"},
      120s);
  EXPECT_NE(ran.status, 0);
  EXPECT_NE(ran.err.find("simq-worker: --plugin /nonexistent.so: cannot load: "), std::string::npos)
      << ran.err;
}

}  // namespace
}  // namespace simq::test
