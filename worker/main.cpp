// simq-worker: parses options, checks Redis, runs a Worker until SIGINT/SIGTERM; run_main()
// maps errors to exit codes (2 usage, 3 Redis unreachable, 1 other). As `simq-worker
// --kernel-host`, a kernel process of process isolation (kernel_host.h) instead.
// Single-threaded here.
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "kernel.h"
#include "kernel_host.h"
#include "plugin.h"
#include "simq/config.h"
#include "simq/errors.h"
#include "simq/log.h"
#include "simq/main_support.h"
#include "simq/redis.h"
#include "simq/signals.h"
#include "worker.h"

namespace {

constexpr auto kRedisCheckTimeout = std::chrono::milliseconds(2000);

void print_kernels(const simq::KernelRegistry& kernels) {
  size_t width = 0;
  for (const auto& name : kernels.names()) width = std::max(width, name.size());
  for (const auto& name : kernels.names()) {
    fmt::print("{:<{}}  {}\n", name, width, kernels.find(name)->params_help());
  }
}

// One PING, so a wrong address fails now with exit 3 rather than at the first result.
void check_redis(const simq::RedisAddress& address) {
  simq::Redis redis(address, kRedisCheckTimeout);
  try {
    redis.command({"PING"});
  } catch (const simq::StoreError& e) {  // NOAUTH and the like: reachable but refusing us
    throw simq::ConnectError(fmt::format("cannot use Redis at {}: {}", address.url(), e.what()));
  }
}

// `simq-worker --kernel-host [--plugin LIB]...`, as a worker slot starts it (kernel_process.h)
// with its sockets as descriptors kKernelHostFd and kKernelHostStopFd. Not in --help: not for
// starting by hand.
int run_kernel_host(int argc, char** argv) {
  for (const int fd : {simq::kKernelHostFd, simq::kKernelHostStopFd}) {
    struct stat socket {};
    if (::fstat(fd, &socket) != 0 || !S_ISSOCK(socket.st_mode)) {
      throw simq::ConfigError(fmt::format(
          "{}: descriptor {} is not a socket; simq-worker --isolation process starts kernel "
          "processes itself",
          simq::kKernelHostFlag, fd));
    }
  }
  ::prctl(PR_SET_NAME, "simq-kernel");  // in top and ps -o comm, rather than "exe"
  simq::KernelRegistry kernels = simq::KernelRegistry::with_builtins();
  for (int i = 2; i < argc; i += 2) {
    if (std::string_view(argv[i]) != "--plugin" || i + 1 == argc) {
      throw simq::ConfigError(
          fmt::format("{}: unexpected argument \"{}\"", simq::kKernelHostFlag, argv[i]));
    }
    simq::load_plugin(argv[i + 1], kernels);
  }
  return simq::serve_kernel_host(simq::kKernelHostFd, simq::kKernelHostStopFd, kernels);
}

int run(int argc, char** argv) {
  CLI::App app{"simq-worker: runs jobs from a simq broker and writes their results to Redis",
               "simq-worker"};
  std::string broker;
  std::string redis;
  std::string name;
  std::string log_level = "info";
  unsigned slots = std::max(1u, std::thread::hardware_concurrency());
  int heartbeat_ms = simq::kDefaultHeartbeatMs;
  int liveness = simq::kDefaultLiveness;
  int stop_grace_ms = simq::WorkerOptions{}.stop_grace_ms;
  uint32_t max_prefetch = simq::WorkerOptions{}.max_prefetch;
  bool list_kernels = false;
  std::vector<std::string> plugins;
  std::string isolation = "thread";
  simq::ProcessOptions process;
  app.add_option(
      "--broker", broker,
      fmt::format("broker backend endpoint [env SIMQ_BACKEND, default {}]", simq::kDefaultBackend));
  app.add_option(
      "--redis", redis,
      fmt::format("Redis for results [env SIMQ_REDIS, default {}]", simq::kDefaultRedis));
  app.add_option("--slots", slots, "jobs run at once [default: number of CPUs]")
      ->check(CLI::Range(1u, 100000u));
  app.add_option("--name", name, "worker name in logs and job records [default host:pid]");
  app.add_option("--heartbeat-ms", heartbeat_ms,
                 "heartbeat interval until the broker sets it, in ms")
      ->check(CLI::Range(10, 3'600'000))
      ->capture_default_str();
  app.add_option("--liveness", liveness,
                 "heartbeats the broker may miss before it is presumed dead, until it sets it")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--stop-grace-ms", stop_grace_ms,
                 "on SIGTERM or SIGINT, how long running jobs may take to finish and their "
                 "results to reach Redis, in ms; jobs still running are then stopped and left "
                 "to the broker to run again (a second signal stops them at once)")
      ->check(CLI::Range(0, 3'600'000))
      ->capture_default_str();
  app.add_option("--max-prefetch", max_prefetch,
                 "most jobs to hold beyond the slots while jobs are short (asked of the broker "
                 "for ~5 ms of work per slot; none once a kernel runs 20 ms); 0 = never")
      ->check(CLI::Range(0u, simq::kMaxPrefetch))
      ->capture_default_str();
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->capture_default_str();
  app.add_option("--plugin", plugins,
                 "a shared library of more kernels (simq/plugin.h); repeat for several")
      ->allow_extra_args(false);
  app.add_flag("--list-kernels", list_kernels, "print the kernels and their parameters, then exit");
  app.add_option("--isolation", isolation,
                 "where kernels run: thread (in the worker's slot threads; fastest, but a crash "
                 "ends the worker) or process (each slot runs them in a kernel process of its "
                 "own: a crash, an abort or the memory limit fails only the job)")
      ->check(CLI::IsMember({"thread", "process"}))
      ->capture_default_str();
  // Process isolation only.
  const std::vector<CLI::Option*> process_options = {
      app.add_option("--kill-grace-ms", process.kill_grace_ms,
                     "process isolation: after a job's stop request (its time limit, a cancel, a "
                     "stop), how long its kernel may take to stop before its kernel process is "
                     "killed, in ms")
          ->check(CLI::Range(0, 3'600'000))
          ->capture_default_str(),
      app.add_option("--memory-limit-mib", process.memory_limit_mib,
                     "process isolation: a kernel process whose RSS goes above N MiB is killed "
                     "and its job fails (0: no limit)")
          ->check(CLI::Range(uint64_t{0}, uint64_t{1} << 30))
          ->option_text("N")
          ->capture_default_str(),
      app.add_option("--recycle-jobs", process.recycle_jobs,
                     "process isolation: replace a slot's kernel process after N jobs (0: never)")
          ->check(CLI::Range(uint64_t{0}, uint64_t{1} << 40))
          ->option_text("N")
          ->capture_default_str(),
      app.add_option("--recycle-rss-mib", process.recycle_rss_mib,
                     "process isolation: replace a slot's kernel process after a job leaves its "
                     "RSS above N MiB (0: never)")
          ->check(CLI::Range(uint64_t{0}, uint64_t{1} << 30))
          ->option_text("N")
          ->capture_default_str(),
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? simq::kExitOk : simq::kExitUsage;  // --help exits 0
  }
  if (isolation == "thread") {
    for (const CLI::Option* option : process_options) {
      if (option->count() > 0) {
        throw simq::ConfigError(
            fmt::format("{} needs --isolation process (kernels run in the worker's threads "
                        "with --isolation thread)",
                        option->get_name()));
      }
    }
  }

  simq::KernelRegistry kernels = simq::KernelRegistry::with_builtins();
  for (const auto& plugin : plugins) simq::load_plugin(plugin, kernels);
  if (list_kernels) {
    print_kernels(kernels);
    return simq::kExitOk;
  }

  simq::install_stop_handlers();
  simq::init_logging("simq-worker", log_level);
  simq::WorkerOptions options;
  options.broker = simq::setting(broker, "SIMQ_BACKEND", simq::kDefaultBackend);
  options.redis =
      simq::RedisAddress::parse(simq::setting(redis, "SIMQ_REDIS", simq::kDefaultRedis));
  options.slots = slots;
  options.name = name.empty() ? simq::process_name() : name;
  options.heartbeat_ms = heartbeat_ms;
  options.liveness = liveness;
  options.stop_grace_ms = stop_grace_ms;
  options.max_prefetch = max_prefetch;
  options.isolation = isolation == "process" ? simq::Isolation::kProcess : simq::Isolation::kThread;
  process.plugins = plugins;
  options.process = std::move(process);
  check_redis(options.redis);

  simq::Worker worker(std::move(options), std::move(kernels));
  const int code = worker.run();
  if (simq::stop_signals() >= 2) {
    // Forced stop: do not wait (in ~Worker) for kernels that ignore their stop token.
    spdlog::default_logger()->flush();
    std::fflush(stdout);
    std::_Exit(code);
  }
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string_view(argv[1]) == simq::kKernelHostFlag) {
    return simq::run_main("simq-worker", [&] { return run_kernel_host(argc, argv); });
  }
  return simq::run_main("simq-worker", [&] { return run(argc, argv); });
}
