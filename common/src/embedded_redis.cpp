// EmbeddedRedis: start redis-server on a free loopback port, poll PING against a deadline, stop
// it with SIGTERM then SIGKILL. Not thread-safe.
#include "simq/embedded_redis.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <csignal>
#include <deque>
#include <fstream>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "simq/errors.h"
#include "simq/signals.h"

namespace simq {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kPollInterval{20};    // PING attempts while starting, checks while stopping
constexpr milliseconds kProbeTimeout{500};   // one PING
constexpr milliseconds kKillTimeout{10000};  // reaping after SIGKILL
constexpr size_t kLogTailLines = 10;

double seconds(milliseconds ms) { return static_cast<double>(ms.count()) / 1000.0; }

// The last lines of a log file, indented, after a heading; "" if it is missing or empty.
std::string log_tail(const std::string& path) {
  std::ifstream file(path);
  std::deque<std::string> lines;
  for (std::string line; std::getline(file, line);) {
    lines.push_back(std::move(line));
    if (lines.size() > kLogTailLines) lines.pop_front();
  }
  if (lines.empty()) return "";
  std::string text = "\nits log ends:";
  for (const auto& line : lines) text += "\n  " + line;
  return text;
}

// True once Redis at `address` answers PING (false while it is not listening or still loading).
bool answers_ping(const RedisAddress& address) {
  try {
    Redis redis(address, kProbeTimeout);
    redis.command({"PING"});
    return true;
  } catch (const ConnectError&) {  // not listening yet
  } catch (const StoreError&) {    // listening, still loading
  }
  return false;
}

}  // namespace

EmbeddedRedis::EmbeddedRedis(EmbeddedRedisOptions options)
    : options_(std::move(options)), dir_("simq-redis-") {
  const auto check_interrupted = [&] {
    if (options_.stop_on_signal && stop_requested()) {
      stop();
      throw Error("interrupted while starting redis-server");
    }
  };
  const std::string log = log_path();
  std::string failure;
  const int attempts = std::max(1, options_.attempts);
  for (int attempt = 1; attempt <= attempts; ++attempt) {
    check_interrupted();
    address_ = RedisAddress{};
    address_.port = free_loopback_port();
    std::ofstream(log, std::ios::trunc).close();  // the tail in errors is this attempt's
    // Its stdout and stderr go to the log too: errors before it opens --logfile land there.
    process_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{options_.program, "--bind", "127.0.0.1", "--port",
                                 std::to_string(address_.port), "--dir", dir_.path(), "--save", "",
                                 "--appendonly", options_.appendonly ? "yes" : "no", "--daemonize",
                                 "no", "--logfile", log},
        log);
    const auto deadline = Clock::now() + options_.start_timeout;
    for (;;) {
      if (const auto status = process_->poll()) {
        failure = fmt::format("redis-server (pid {}) {} at start", process_->pid(),
                              ChildProcess::describe_status(*status));
        break;
      }
      if (answers_ping(address_)) {
        spdlog::info("redis-server (pid {}) is up at {}", process_->pid(), url());
        return;
      }
      if (Clock::now() >= deadline) {
        const std::string message =
            fmt::format("redis-server (pid {}) did not answer PING at {} within {:g} s{}",
                        process_->pid(), url(), seconds(options_.start_timeout), log_tail(log));
        stop();
        throw ConnectError(message);
      }
      check_interrupted();
      std::this_thread::sleep_for(kPollInterval);
    }
    spdlog::info("{} (attempt {} of {})", failure, attempt, attempts);
    process_.reset();
  }
  throw ConnectError(failure + log_tail(log));
}

EmbeddedRedis::~EmbeddedRedis() { stop(); }

std::optional<int> EmbeddedRedis::stop() {
  if (!process_) return std::nullopt;
  auto status = process_->poll();
  if (!status) {
    process_->signal(SIGTERM);
    const auto deadline = Clock::now() + options_.stop_timeout;
    const auto forced = [&] { return options_.stop_on_signal && stop_signals() >= 2; };
    while (!(status = process_->poll()) && Clock::now() < deadline && !forced()) {
      std::this_thread::sleep_for(kPollInterval / 2);
    }
    if (!status) {
      spdlog::warn("redis-server (pid {}) did not stop in time; killing it", process_->pid());
      process_->signal(SIGKILL);
      status = process_->wait(kKillTimeout);
    }
  }
  process_.reset();
  return status;
}

}  // namespace simq
