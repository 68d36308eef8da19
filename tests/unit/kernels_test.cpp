// Unit tests of the built-in kernels and the registry: known answers, cancellation, and the
// exact messages users see for bad parameters. No sockets, no Redis.
#include <gtest/gtest.h>

#include <chrono>
#include <numbers>
#include <stop_token>
#include <string>
#include <thread>

#include "kernel.h"
#include "kernel_fixture.h"

namespace simq {
namespace {

using namespace std::chrono_literals;

using KernelsTest = KernelFixture;

TEST_F(KernelsTest, RegistryListsBuiltinsSorted) {
  EXPECT_EQ(registry_.names(),
            (std::vector<std::string>{"beam", "constrained_sample", "exec", "fault", "fib", "mc_pi",
                                      "noop", "sleep"}));
  for (const auto& name : registry_.names()) {
    ASSERT_NE(registry_.find(name), nullptr) << name;
    EXPECT_EQ(registry_.find(name)->name(), name);
    EXPECT_FALSE(registry_.find(name)->params_help().empty()) << name;
  }
}

TEST_F(KernelsTest, UnknownKernelIsNull) {
  EXPECT_EQ(registry_.find("xyz"), nullptr);
  EXPECT_EQ(registry_.find(""), nullptr);
  EXPECT_EQ(registry_.find("FIB"), nullptr);
}

TEST_F(KernelsTest, AddingADuplicateNameThrows) {
  KernelRegistry registry;
  add_builtin_kernels(registry);
  EXPECT_THROW(add_builtin_kernels(registry), ConfigError);
}

TEST_F(KernelsTest, FibKnownAnswers) {
  EXPECT_EQ(run("fib", {{"n", 0}}), (Json{{"value", 0}}));
  EXPECT_EQ(run("fib", {{"n", 1}}), (Json{{"value", 1}}));
  EXPECT_EQ(run("fib", {{"n", 2}}), (Json{{"value", 1}}));
  EXPECT_EQ(run("fib", {{"n", 10}}), (Json{{"value", 55}}));
  EXPECT_EQ(run("fib", {{"n", 90}}).at("value").get<uint64_t>(), 2880067194370816120ull);
  EXPECT_EQ(run("fib", {{"n", 92}}).at("value").get<uint64_t>(), 7540113804746346429ull);
}

TEST_F(KernelsTest, FibResultIsAnInteger) {
  const Json result = run("fib", {{"n", 90}});
  EXPECT_TRUE(result.at("value").is_number_integer());
  EXPECT_EQ(result.dump(), R"({"value":2880067194370816120})");
}

TEST_F(KernelsTest, FibAcceptsAnIntegralFloatAndExtraParams) {
  EXPECT_EQ(run("fib", {{"n", 10.0}, {"label", "a"}}), (Json{{"value", 55}}));
}

TEST_F(KernelsTest, FibBadParams) {
  EXPECT_EQ(error_of("fib", {{"n", "x"}}), R"(param 'n': expected integer, got string "x")");
  EXPECT_EQ(error_of("fib", {{"n", 2.5}}), "param 'n': expected integer, got float 2.5");
  EXPECT_EQ(error_of("fib", {{"n", true}}), "param 'n': expected integer, got boolean true");
  EXPECT_EQ(error_of("fib", {{"n", nullptr}}), "param 'n': expected integer, got null");
  EXPECT_EQ(error_of("fib", {{"n", 100}}), "param 'n': expected 0 to 92, got 100");
  EXPECT_EQ(error_of("fib", {{"n", -1}}), "param 'n': expected 0 to 92, got -1");
  EXPECT_EQ(error_of("fib", {{"n", 18446744073709551615ull}}),
            "param 'n': expected 0 to 92, got 18446744073709551615");
  EXPECT_EQ(error_of("fib", Json::object()), "param 'n' is missing");
  EXPECT_EQ(error_of("fib", {{"m", 3}}), "param 'n' is missing");
  EXPECT_EQ(error_of("fib", Json::array({1})), "params: expected object, got array [1]");
}

TEST_F(KernelsTest, McPiIsCloseToPi) {
  const Json result = run("mc_pi", {{"samples", 1'000'000}, {"seed", 7}});
  const double pi = result.at("pi").get<double>();
  EXPECT_NEAR(pi, std::numbers::pi, 0.01);
  EXPECT_DOUBLE_EQ(result.at("abs_error").get<double>(), std::abs(pi - std::numbers::pi));
}

TEST_F(KernelsTest, McPiIsDeterministicForASeed) {
  const Json first = run("mc_pi", {{"samples", 1'000'000}, {"seed", 42}});
  const Json second = run("mc_pi", {{"samples", 1'000'000}, {"seed", 42}});
  EXPECT_EQ(first.dump(), second.dump());
  const Json other = run("mc_pi", {{"samples", 1'000'000}, {"seed", 43}});
  EXPECT_NE(first.at("pi"), other.at("pi"));
}

TEST_F(KernelsTest, McPiSeedDefaultsToZero) {
  EXPECT_EQ(run("mc_pi", {{"samples", 1000}}).dump(),
            run("mc_pi", {{"samples", 1000}, {"seed", 0}}).dump());
}

TEST_F(KernelsTest, McPiBadParams) {
  EXPECT_EQ(error_of("mc_pi", Json::object()), "param 'samples' is missing");
  EXPECT_EQ(error_of("mc_pi", {{"samples", 0}}),
            "param 'samples': expected 1 to 10000000000, got 0");
  EXPECT_EQ(error_of("mc_pi", {{"samples", 10'000'000'001}}),
            "param 'samples': expected 1 to 10000000000, got 10000000001");
  EXPECT_EQ(error_of("mc_pi", {{"samples", "many"}}),
            R"(param 'samples': expected integer, got string "many")");
  EXPECT_EQ(error_of("mc_pi", {{"samples", 10}, {"seed", 1.5}}),
            "param 'seed': expected integer, got float 1.5");
  EXPECT_EQ(error_of("mc_pi", {{"samples", 10}, {"seed", Json::array({1, 2})}}),
            "param 'seed': expected integer, got array [1,2]");
}

TEST_F(KernelsTest, McPiStopsWhenAsked) {
  std::stop_source stop;
  stop.request_stop();
  const KernelContext ctx{JobRef{"s1", 0, 1}, stop.get_token()};
  EXPECT_THROW(kernel("mc_pi").run({{"samples", 10'000'000'000}}, ctx), KernelCancelled);
}

TEST_F(KernelsTest, NoopEchoesParams) {
  const Json params = {{"b", 1}, {"a", "x"}, {"nested", {{"list", {1, 2.5, nullptr}}}}};
  const Json result = run("noop", params);
  EXPECT_EQ(result, params);
  EXPECT_EQ(result.dump(), params.dump());  // same key order too
  EXPECT_EQ(run("noop", Json::object()), Json::object());
}

TEST_F(KernelsTest, SleepReturnsAfterTheTime) {
  const auto start = std::chrono::steady_clock::now();
  const Json result = run("sleep", {{"seconds", 0.05}});
  EXPECT_GE(std::chrono::steady_clock::now() - start, 50ms);
  EXPECT_EQ(result, (Json{{"slept_s", 0.05}}));
  EXPECT_EQ(run("sleep", {{"seconds", 0}}), (Json{{"slept_s", 0}}));
}

TEST_F(KernelsTest, SleepIsCutShortByAStopRequest) {
  std::stop_source stop;
  const KernelContext ctx{JobRef{"s1", 0, 1}, stop.get_token()};
  std::jthread stopper([&stop] {
    std::this_thread::sleep_for(50ms);
    stop.request_stop();
  });
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(kernel("sleep").run({{"seconds", 3600}}, ctx), KernelCancelled);
  // An hour's sleep ended by the stop: generous bound, it only has to be far below an hour.
  EXPECT_LT(std::chrono::steady_clock::now() - start, 30s);
}

TEST_F(KernelsTest, SleepBadParams) {
  EXPECT_EQ(error_of("sleep", Json::object()), "param 'seconds' is missing");
  EXPECT_EQ(error_of("sleep", {{"seconds", -1}}),
            "param 'seconds': expected a number >= 0, got -1");
  EXPECT_EQ(error_of("sleep", {{"seconds", "1s"}}),
            R"(param 'seconds': expected number, got string "1s")");
}

TEST_F(KernelsTest, FaultFailsTheWayItIsAsked) {
  EXPECT_EQ(run("fault", Json::object()), (Json{{"mode", "ok"}}));
  EXPECT_EQ(run("fault", {{"mode", "ok"}, {"seconds", 0.01}}), (Json{{"mode", "ok"}}));
  EXPECT_EQ(error_of("fault", {{"mode", "error"}}), "fault: asked to fail");
  try {
    run("fault", {{"mode", "retryable"}});
    FAIL() << "no error";
  } catch (const RetryableError& e) {
    EXPECT_EQ(std::string(e.what()), "fault: asked to fail (retryable)");
  }
  // A plain error is not retryable: the worker tells them apart by type.
  try {
    run("fault", {{"mode", "error"}});
    FAIL() << "no error";
  } catch (const KernelError& e) {
    EXPECT_EQ(dynamic_cast<const RetryableError*>(&e), nullptr);
  }
}

TEST_F(KernelsTest, FaultBadParams) {
  EXPECT_EQ(
      error_of("fault", {{"mode", "crash"}}),
      R"(param 'mode': expected one of ok, error, retryable, segv, abort, exit, alloc, leak, hang, got string "crash")");
  EXPECT_EQ(error_of("fault", {{"mode", 1}}), "param 'mode': expected string, got integer 1");
  EXPECT_EQ(error_of("fault", {{"seconds", -1}}),
            "param 'seconds': expected a number >= 0, got -1");
  EXPECT_EQ(error_of("fault", {{"mode", "alloc"}, {"mib", -1}}),
            "param 'mib': expected 0 to 1048576, got -1");
}

TEST_F(KernelsTest, FaultAllocLeakAndHangReturnTheirMode) {
  EXPECT_EQ(run("fault", {{"mode", "alloc"}, {"mib", 2}}), (Json{{"mode", "alloc"}}));
  EXPECT_EQ(run("fault", {{"mode", "leak"}, {"mib", 1}}), (Json{{"mode", "leak"}}));
  // hang ignores a stop request: it sleeps its seconds all the same.
  std::stop_source stop;
  stop.request_stop();
  const KernelContext ctx{JobRef{"s1", 0, 1}, stop.get_token()};
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(kernel("fault").run({{"mode", "hang"}, {"seconds", 0.2}}, ctx),
            (Json{{"mode", "hang"}}));
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(200));
  // The other modes honour it.
  EXPECT_THROW(kernel("fault").run({{"mode", "alloc"}, {"mib", 1}, {"hold_s", 3600}}, ctx),
               KernelCancelled);
}

TEST_F(KernelsTest, FaultSleepIsCutShortByAStopRequest) {
  std::stop_source stop;
  stop.request_stop();
  const KernelContext ctx{JobRef{"s1", 0, 1}, stop.get_token()};
  EXPECT_THROW(kernel("fault").run({{"mode", "error"}, {"seconds", 3600}}, ctx), KernelCancelled);
}

TEST(ParamHelpers, LongValuesAreShortenedInMessages) {
  const Json params = {{"n", std::string(100, 'x')}};
  try {
    int_param(params, "n", 0, 1);
    FAIL() << "no error";
  } catch (const KernelError& e) {
    EXPECT_EQ(std::string(e.what()),
              "param 'n': expected integer, got string \"" + std::string(36, 'x') + "...");
  }
}

TEST(ParamHelpers, OptionalIntUsesFallbackOnlyWhenAbsent) {
  EXPECT_EQ(int_param_or(Json::object(), "seed", 5, 0, 10), 5);
  EXPECT_EQ(int_param_or({{"seed", 7}}, "seed", 5, 0, 10), 7);
  EXPECT_THROW(int_param_or({{"seed", 11}}, "seed", 5, 0, 10), KernelError);
}

}  // namespace
}  // namespace simq
