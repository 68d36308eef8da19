// Unit tests of plug-in kernels: the example plug-in (examples/plugin, C) loaded and run through
// the registry with known answers, the adapter's handling of errors, stops and bad results, and
// the exact message of each load error. No sockets, no Redis.
#include "plugin.h"

#include <gtest/gtest.h>

#include <chrono>
#include <stop_token>
#include <string>
#include <thread>

#include "kernel.h"
#include "kernel_fixture.h"

namespace simq {
namespace {

using namespace std::chrono_literals;

class PluginTest : public KernelFixture {
 protected:
  // The ConfigError message load_plugin() throws, or "" if it does not throw one.
  std::string load_error(const std::string& path) {
    try {
      load_plugin(path, registry_);
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  }
};

TEST_F(PluginTest, ExampleAddsItsKernelsWithHelp) {
  load_plugin(SIMQ_EXAMPLE_PLUGIN, registry_);
  ASSERT_NE(registry_.find("rosenbrock"), nullptr);
  ASSERT_NE(registry_.find("collatz"), nullptr);
  EXPECT_NE(registry_.find("fib"), nullptr);  // the built-ins are still there
  EXPECT_EQ(kernel("rosenbrock").params_help(),
            "x, y, a = 1, b = 100 -> value = (a - x)^2 + b (y - x^2)^2");
  EXPECT_EQ(kernel("collatz").name(), "collatz");
}

TEST_F(PluginTest, ExampleKernelsGiveKnownAnswers) {
  load_plugin(SIMQ_EXAMPLE_PLUGIN, registry_);
  EXPECT_EQ(run("rosenbrock", Json{{"x", 1}, {"y", 1}}), (Json{{"value", 0}}));
  EXPECT_EQ(run("rosenbrock", Json{{"x", 0}, {"y", 0}}), (Json{{"value", 1}}));
  EXPECT_DOUBLE_EQ(run("rosenbrock", Json{{"x", 2.0}, {"y", 1}, {"a", 0}, {"b", 1}})["value"],
                   13.0);  // 4 + (1 - 4)^2
  // Labels and nested values beside the parameters are skipped.
  EXPECT_EQ(run("rosenbrock", Json{{"label", "x"}, {"z", {{"x", 5}}}, {"x", 1}, {"y", 1}}),
            (Json{{"value", 0}}));
  const Json collatz = run("collatz", Json{{"n", 27}});
  EXPECT_EQ(collatz["steps"], 111);
  EXPECT_EQ(collatz["peak"], 9232);
  EXPECT_EQ(run("collatz", Json{{"n", 1}})["steps"], 0);
}

TEST_F(PluginTest, ErrorFromPluginIsKernelErrorWithItsMessage) {
  load_plugin(SIMQ_EXAMPLE_PLUGIN, registry_);
  EXPECT_EQ(error_of("rosenbrock", Json{{"y", 1}}), "param 'x' is missing");
  EXPECT_EQ(error_of("rosenbrock", Json{{"x", "one"}, {"y", 1}}), "param 'x': expected a number");
  EXPECT_EQ(error_of("collatz", Json{{"n", 0}}), "param 'n': expected an integer from 1 to 2^53");
  EXPECT_THROW(run("collatz", Json{{"n", 0}}), KernelError);
}

TEST_F(PluginTest, ContextReachesThePlugin) {
  load_plugin(SIMQ_TEST_PLUGIN, registry_);
  const Json out = kernel("test.echo_context")
                       .run(Json{{"k", "v"}}, KernelContext{JobRef{"s9", 4, 3}, std::stop_token{}});
  EXPECT_EQ(out, (Json{{"job_id", "s9:4"}, {"attempt", 3}, {"params", {{"k", "v"}}}}));
}

TEST_F(PluginTest, RetryableErrorStaysRetryable) {
  load_plugin(SIMQ_TEST_PLUGIN, registry_);
  try {
    run("test.flaky", Json::object());
    FAIL() << "no error";
  } catch (const RetryableError& e) {
    EXPECT_STREQ(e.what(), "license server busy");
  }
}

TEST_F(PluginTest, ErrorAfterStopIsCancelled) {
  load_plugin(SIMQ_TEST_PLUGIN, registry_);
  std::stop_source stop;
  std::jthread stopper([&] {
    std::this_thread::sleep_for(50ms);
    stop.request_stop();
  });
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(kernel("test.wait_for_stop")
                   .run(Json::object(), KernelContext{JobRef{"s1", 0, 1}, stop.get_token()}),
               KernelCancelled);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
}

TEST_F(PluginTest, BadResultsArePreciseErrors) {
  load_plugin(SIMQ_TEST_PLUGIN, registry_);
  EXPECT_EQ(error_of("test.not_an_object", Json::object()),
            "kernel 'test.not_an_object' returned array [1,2], expected a JSON object");
  EXPECT_EQ(error_of("test.bad_json", Json::object())
                .rfind("kernel 'test.bad_json' returned invalid JSON: ", 0),
            0u);
  EXPECT_EQ(error_of("test.no_result", Json::object()),
            "kernel 'test.no_result' returned no result");
  EXPECT_EQ(error_of("test.returns_code", Json::object()),
            "kernel 'test.returns_code' failed (returned 5)");
}

TEST_F(PluginTest, MissingFileCannotLoad) {
  const std::string message = load_error("/nonexistent/libnothing.so");
  EXPECT_EQ(message.rfind("--plugin /nonexistent/libnothing.so: cannot load: ", 0), 0u) << message;
  EXPECT_NE(message.find("No such file"), std::string::npos) << message;
}

TEST_F(PluginTest, LibraryWithoutEntryPointIsNotAPlugin) {
  EXPECT_EQ(load_error(SIMQ_TEST_PLUGIN_NO_ENTRY),
            std::string("--plugin ") + SIMQ_TEST_PLUGIN_NO_ENTRY +
                ": no simq_plugin_register_v1 (not a simq plug-in?)");
}

TEST_F(PluginTest, WrongAbiVersionIsRefusedBeforeRegistering) {
  // Its register function aborts if called.
  EXPECT_EQ(load_error(SIMQ_TEST_PLUGIN_ABI99), std::string("--plugin ") + SIMQ_TEST_PLUGIN_ABI99 +
                                                    ": ABI version 99, this worker speaks 1");
}

TEST_F(PluginTest, FailedRegistrationGivesItsCode) {
  EXPECT_EQ(load_error(SIMQ_TEST_PLUGIN_FAILS), std::string("--plugin ") + SIMQ_TEST_PLUGIN_FAILS +
                                                    ": registration failed (returned 3)");
}

TEST_F(PluginTest, LoadingTwiceNamesTheKernelAndAddsNothing) {
  load_plugin(SIMQ_EXAMPLE_PLUGIN, registry_);
  const auto names = registry_.names();
  EXPECT_EQ(load_error(SIMQ_EXAMPLE_PLUGIN), std::string("--plugin ") + SIMQ_EXAMPLE_PLUGIN +
                                                 ": kernel 'rosenbrock' is already registered");
  EXPECT_EQ(registry_.names(), names);
  EXPECT_EQ(run("collatz", Json{{"n", 27}})["steps"], 111);  // still loaded and working
}

TEST_F(PluginTest, ClashWithBuiltinNamesTheKernel) {
  class Fake final : public Kernel {
   public:
    std::string_view name() const override { return "collatz"; }
    std::string_view params_help() const override { return ""; }
    Json run(const Json&, const KernelContext&) const override { return Json::object(); }
  };
  registry_.add(std::make_unique<Fake>());
  EXPECT_EQ(load_error(SIMQ_EXAMPLE_PLUGIN), std::string("--plugin ") + SIMQ_EXAMPLE_PLUGIN +
                                                 ": kernel 'collatz' is already registered");
  EXPECT_EQ(registry_.find("rosenbrock"), nullptr);  // all or none
}

}  // namespace
}  // namespace simq
