// LocalCluster: starts redis-server, simq-broker and simq-workers, checks each is ready by a
// PING against a deadline, watches them, stops them in order. Not thread-safe, except
// LocalCluster::failure().
#include "cluster.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <system_error>
#include <utility>

#include "client.h"
#include "simq/errors.h"
#include "simq/redis.h"
#include "simq/signals.h"

namespace simq {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kPollInterval{20};    // readiness checks while starting
constexpr milliseconds kReapInterval{10};    // waitpid checks while stopping
constexpr milliseconds kWatchInterval{200};  // the watcher's checks of the children
constexpr milliseconds kBrokerProbeTimeout{250};
constexpr milliseconds kExternalRedisTimeout{2000};
constexpr milliseconds kKillTimeout{10000};  // reaping after SIGKILL
// Broker starts: another process may take a port between its probe and the broker's bind.
constexpr int kBrokerAttempts = 3;

double seconds(milliseconds ms) { return static_cast<double>(ms.count()) / 1000.0; }

// Two different free loopback ports (free a moment ago).
std::pair<int, int> two_free_ports() {
  const int first = free_loopback_port();
  int second = free_loopback_port();
  while (second == first) second = free_loopback_port();
  return {first, second};
}

bool is_executable(const std::filesystem::path& path) {
  std::error_code error;
  return std::filesystem::is_regular_file(path, error) && ::access(path.c_str(), X_OK) == 0;
}

// `name` in `bin_dir` (or, if that is "", beside this program when `beside_self`), else on
// $PATH. Throws ConfigError naming where it looked.
std::string find_program(const std::string& name, const std::string& bin_dir, bool beside_self,
                         std::string_view hint) {
  std::string looked;
  std::filesystem::path dir = bin_dir;
  if (dir.empty() && beside_self) {
    std::error_code error;
    const auto self = std::filesystem::read_symlink("/proc/self/exe", error);
    if (!error) dir = self.parent_path();
  }
  if (!dir.empty()) {
    if (is_executable(dir / name)) return (dir / name).string();
    looked = fmt::format("in {} and ", dir.string());
  }
  const char* path = std::getenv("PATH");
  std::string_view entries = path != nullptr ? path : "";
  while (!entries.empty()) {
    const auto colon = entries.find(':');
    const auto entry = entries.substr(0, colon);
    const std::filesystem::path candidate =
        std::filesystem::path(entry.empty() ? "." : std::string(entry)) / name;
    if (is_executable(candidate)) return candidate.string();
    entries = colon == std::string_view::npos ? "" : entries.substr(colon + 1);
  }
  throw ConfigError(fmt::format("cannot find {}: looked {}on $PATH{}", name, looked, hint));
}

void check_interrupted(std::string_view starting) {
  if (stop_requested()) throw Error(fmt::format("interrupted while starting {}", starting));
}

std::string describe(const std::string& name, const ChildProcess& process, int status) {
  return fmt::format("{} (pid {}) {}", name, process.pid(), ChildProcess::describe_status(status));
}

// The exit status of a child that has ended, without reaping it (waitid WNOWAIT), so that a
// watcher thread can look while the owner's thread alone reaps.
std::optional<int> peek(const ChildProcess& process) {
  siginfo_t info{};
  if (::waitid(P_PID, static_cast<id_t>(process.pid()), &info, WEXITED | WNOHANG | WNOWAIT) != 0 ||
      info.si_pid == 0) {
    return std::nullopt;
  }
  return info.si_code == CLD_EXITED ? info.si_status : 128 + info.si_status;
}

}  // namespace

// ---- LocalCluster ----

LocalCluster::LocalCluster(ClusterOptions options) : options_(std::move(options)) {}

LocalCluster::~LocalCluster() { stop(); }

void LocalCluster::start() {
  assert(!broker_.process && "LocalCluster::start() runs once");
  if (options_.workers == 0) throw ConfigError("--workers: expected at least 1, got 0");
  slots_ = options_.slots;
  if (slots_ == 0) slots_ = std::max(1U, std::thread::hardware_concurrency() / options_.workers);

  // Find every program before starting anything.
  const std::string broker_program =
      find_program("simq-broker", options_.bin_dir, true, " (it is built and installed with simq)");
  const std::string worker_program =
      find_program("simq-worker", options_.bin_dir, true, " (it is built and installed with simq)");
  std::string redis_program;
  if (options_.redis.empty()) {
    redis_program =
        find_program("redis-server", "", false,
                     "; install Redis (e.g. apt-get install redis-server) or pass --redis URL");
  }

  try {
    if (options_.redis.empty()) {
      start_redis(redis_program);
    } else {
      Redis probe(RedisAddress::parse(options_.redis), kExternalRedisTimeout);
      probe.command({"PING"});
      redis_url_ = options_.redis;
    }
    start_broker(broker_program);
    start_workers(worker_program);
  } catch (...) {
    stop();
    throw;
  }
  watcher_ = std::jthread([this](const std::stop_token& token) { watch(token); });
}

void LocalCluster::start_redis(const std::string& program) {
  EmbeddedRedisOptions redis_options;
  redis_options.program = program;
  redis_options.start_timeout = options_.start_timeout;
  redis_options.stop_timeout = options_.stop_timeout;
  redis_options.stop_on_signal = true;
  redis_.emplace(std::move(redis_options));
  redis_url_ = redis_->url();
}

void LocalCluster::start_broker(const std::string& program) {
  std::string failure;
  for (int attempt = 1; attempt <= kBrokerAttempts; ++attempt) {
    check_interrupted("simq-broker");
    const auto [frontend_port, backend_port] = two_free_ports();
    frontend_ = fmt::format("tcp://127.0.0.1:{}", frontend_port);
    backend_ = fmt::format("tcp://127.0.0.1:{}", backend_port);
    broker_ = Child{"simq-broker", std::make_unique<ChildProcess>(std::vector<std::string>{
                                       program, "--frontend", frontend_, "--backend", backend_,
                                       "--redis", redis_url_, "--log-level", options_.log_level})};
    if (wait_for_broker()) return;
    failure = describe(broker_.name, *broker_.process, *broker_.process->poll());
    spdlog::info("{} at start (attempt {} of {})", failure, attempt, kBrokerAttempts);
    broker_.process.reset();  // reaped
  }
  throw ConnectError(failure + " at start (its messages are above)");
}

bool LocalCluster::wait_for_broker() {
  BrokerClient client(frontend_);
  const auto deadline = Clock::now() + options_.start_timeout;
  for (;;) {
    if (broker_.process->poll()) return false;
    try {
      client.ping(kBrokerProbeTimeout);
      spdlog::info("simq-broker (pid {}) is up at {}", broker_.process->pid(), frontend_);
      return true;
    } catch (const ConnectError&) {  // not answering yet
    }
    if (Clock::now() >= deadline) {
      throw ConnectError(fmt::format("simq-broker (pid {}) did not answer PING at {} within {:g} s",
                                     broker_.process->pid(), frontend_,
                                     seconds(options_.start_timeout)));
    }
    check_interrupted("simq-broker");
  }
}

void LocalCluster::start_workers(const std::string& program) {
  for (unsigned i = 1; i <= options_.workers; ++i) {
    std::vector<std::string> argv{program, "--broker", backend_, "--redis", redis_url_, "--slots",
                                  std::to_string(slots_), "--log-level", options_.log_level,
                                  // The whole cluster, Redis too, is going away: results of
                                  // jobs still running would have nowhere to go.
                                  "--stop-grace-ms", "0", "--isolation", options_.isolation};
    for (const auto& plugin : options_.plugins) {
      argv.push_back("--plugin");
      argv.push_back(plugin);
    }
    workers_.push_back(
        Child{fmt::format("simq-worker {}", i), std::make_unique<ChildProcess>(std::move(argv))});
  }
  BrokerClient client(frontend_);
  const auto deadline = Clock::now() + options_.start_timeout;
  uint64_t connected = 0;
  for (;;) {
    for (const auto& worker : workers_) {
      if (const auto status = worker.process->poll()) {
        throw ConnectError(describe(worker.name, *worker.process, *status) +
                           " at start (its messages are above)");
      }
    }
    if (const auto status = broker_.process->poll()) {
      throw ConnectError(describe(broker_.name, *broker_.process, *status) +
                         " while the workers started");
    }
    try {
      connected = client.ping(kBrokerProbeTimeout).workers;
      if (connected >= options_.workers) {
        spdlog::info("{} simq-worker(s) with {} slot(s) each are connected", connected, slots_);
        return;
      }
    } catch (const ConnectError&) {  // a busy broker; try again
    }
    if (Clock::now() >= deadline) {
      throw ConnectError(fmt::format("only {} of {} workers said HELLO to the broker within {:g} s",
                                     connected, options_.workers, seconds(options_.start_timeout)));
    }
    check_interrupted("simq-worker");
    std::this_thread::sleep_for(kPollInterval);
  }
}

void LocalCluster::watch(const std::stop_token& token) {
  // Only peek(): the owner's thread reaps, after joining this one.
  std::vector<const Child*> ended;
  const auto has_ended = [&](const Child* child) {
    return std::find(ended.begin(), ended.end(), child) != ended.end();
  };
  const auto fail = [&](const std::string& why) {
    {
      const std::lock_guard lock(mutex_);
      if (!failure_.empty()) return;
      failure_ = why;
    }
    spdlog::info("cluster failure: {}", why);
    if (options_.stop_on_failure) request_stop();
  };
  bool redis_ended = false;
  while (!token.stop_requested()) {
    if (const ChildProcess* redis = redis_ ? redis_->process() : nullptr; redis && !redis_ended) {
      if (const auto status = peek(*redis)) {
        redis_ended = true;
        fail(describe("redis-server", *redis, *status));
      }
    }
    if (broker_.process && !has_ended(&broker_)) {
      if (const auto status = peek(*broker_.process)) {
        ended.push_back(&broker_);
        fail(describe(broker_.name, *broker_.process, *status));
      }
    }
    for (const auto& worker : workers_) {
      if (has_ended(&worker)) continue;
      if (const auto status = peek(*worker.process)) {
        ended.push_back(&worker);
        const auto left = std::count_if(workers_.begin(), workers_.end(),
                                        [&](const Child& other) { return !has_ended(&other); });
        const auto what = describe(worker.name, *worker.process, *status);
        if (left > 0) {
          spdlog::warn("{}; {} worker(s) left", what, left);
        } else {
          fail("every simq-worker has ended; the last: " + what);
        }
      }
    }
    std::unique_lock lock(mutex_);
    wake_.wait_for(lock, token, kWatchInterval, [] { return false; });
  }
}

void LocalCluster::stop_group(const std::vector<const Child*>& group, milliseconds timeout) {
  for (const auto* child : group) {
    if (child->process && !child->process->poll()) child->process->signal(SIGTERM);
  }
  const auto deadline = Clock::now() + timeout;
  for (const auto* child : group) {
    const auto& process = child->process;
    if (!process) continue;
    while (!process->poll() && Clock::now() < deadline && stop_signals() < 2) {
      std::this_thread::sleep_for(kReapInterval);
    }
    auto status = process->poll();
    if (!status) {
      spdlog::warn("{} (pid {}) did not stop in time; killing it", child->name, process->pid());
      process->signal(SIGKILL);
      status = process->wait(kKillTimeout);
    }
    if (status) spdlog::debug("{}", describe(child->name, *process, *status));
  }
}

pid_t LocalCluster::broker_pid() const { return broker_.process ? broker_.process->pid() : -1; }

std::vector<pid_t> LocalCluster::worker_pids() const {
  std::vector<pid_t> pids;
  for (const auto& worker : workers_) pids.push_back(worker.process->pid());
  return pids;
}

std::optional<std::string> LocalCluster::failure() const {
  const std::lock_guard lock(mutex_);
  if (failure_.empty()) return std::nullopt;
  return failure_;
}

void LocalCluster::stop() {
  if (watcher_.joinable()) {
    watcher_.request_stop();
    watcher_.join();
  }
  std::vector<const Child*> workers;
  for (const auto& worker : workers_) workers.push_back(&worker);
  stop_group(workers, options_.stop_timeout);
  stop_group({&broker_}, options_.stop_timeout);
  if (redis_) {
    const ChildProcess* process = redis_->process();
    const pid_t pid = process != nullptr ? process->pid() : -1;
    if (const auto status = redis_->stop()) {
      spdlog::debug("redis-server (pid {}) {}", pid, ChildProcess::describe_status(*status));
    }
    redis_.reset();  // and its temp dir
  }
  workers_.clear();
  broker_.process.reset();
}

}  // namespace simq
