// Integration-test helpers: real redis-server, real processes, deadlines.
#include "test_support.h"

#include <dirent.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "simq/errors.h"
#include "simq/json.h"
#include "simq/store.h"

namespace simq::test {

std::string bin(const std::string& name) {
  const char* dir = std::getenv("SIMQ_BIN_DIR");
  return fmt::format("{}/{}", dir != nullptr ? dir : own_directory(), name);
}

std::unique_ptr<Redis> RedisServer::connect() const { return std::make_unique<Redis>(address()); }

RedisServer::~RedisServer() {
  if (restarted_) restarted_->stop(5s);
}

void RedisServer::restart(bool appendonly, std::chrono::milliseconds down) {
  if (restarted_) {
    restarted_->stop(10s);
    restarted_.reset();
  } else {
    stop();
  }
  std::this_thread::sleep_for(down);
  // The same flags EmbeddedRedis starts it with, on the same port and dir (so the AOF there
  // is loaded).
  std::vector<std::string> argv{
      "redis-server", "--bind", "127.0.0.1", "--port",       std::to_string(port()),   "--dir",
      dir(),          "--save", "",          "--appendonly", appendonly ? "yes" : "no"};
  if (appendonly) argv.insert(argv.end(), {"--appendfsync", "everysec"});
  argv.insert(argv.end(), {"--daemonize", "no", "--logfile", log_path()});
  restarted_ = std::make_unique<ChildProcess>(argv, log_path());
  const bool up = wait_until(
      [&] {
        if (restarted_->poll()) return true;
        try {
          Redis redis(address(), 500ms);
          redis.command({"PING"});
          return true;
        } catch (const Error&) {
          return false;  // not listening yet, or still loading its AOF
        }
      },
      30s);
  if (!up || restarted_->poll()) {
    throw std::runtime_error(fmt::format("redis-server did not come back on port {}:\n{}", port(),
                                         read_file(log_path())));
  }
}

int RedisServer::pid() const {
  if (restarted_) return restarted_->pid();
  return process() != nullptr ? process()->pid() : -1;
}

bool wait_until(const std::function<bool()>& ready, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (ready()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
}

CommandResult run_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
                          ProcessMap* children) {
  TempDir dir;
  CommandResult result;
  {
    ChildProcess child(argv, dir.file("out"), dir.file("err"));
    std::optional<int> status;
    if (children == nullptr) {
      status = child.wait(timeout);
    } else {
      wait_until(
          [&] {
            note_children(child.pid(), *children);
            status = child.poll();
            return status.has_value();
          },
          timeout);
    }
    if (status) {
      result.status = *status;
    } else {
      child.stop(2s);
      result.status = -1;
    }
  }
  result.out = read_file(dir.file("out"));
  result.err = read_file(dir.file("err"));
  return result;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string trim(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

Json broker_status(Redis& redis, std::chrono::milliseconds wait) {
  Json status;
  wait_until(
      [&] {
        const auto reply = redis.command({"GET", "simq:broker"});
        status = reply.is_nil() ? Json() : Json::parse(reply.str, nullptr, false);
        return status.is_object();
      },
      wait);
  return status.is_object() ? status : Json();
}

std::string command_line(int pid) {
  auto cmdline = read_file(fmt::format("/proc/{}/cmdline", pid));
  for (auto& c : cmdline) {
    if (c == '\0') c = ' ';
  }
  return cmdline;  // zombies have an empty command line
}

namespace {

// A "Name:   1234 kB" line of /proc/<pid>/status, in KiB; -1 if missing.
long long status_kib(int pid, const std::string& name) {
  std::istringstream status(read_file(fmt::format("/proc/{}/status", pid)));
  for (std::string line; std::getline(status, line);) {
    if (line.starts_with(name + ":")) return std::stoll(line.substr(name.size() + 1));
  }
  return -1;
}

}  // namespace

long long rss_kib(int pid) { return status_kib(pid, "VmRSS"); }
long long peak_rss_kib(int pid) { return status_kib(pid, "VmHWM"); }

double env_number(const char* name, double fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  char* end = nullptr;
  const double value = std::strtod(text, &end);
  return *end == '\0' ? value : fallback;
}

StreamCount stream_count(Redis& redis, const std::string& sweep) {
  StreamCount count;
  std::set<uint64_t> jobs;
  const RedisReply entries = redis.command({"XRANGE", events_key(sweep), "-", "+"});
  for (const auto& entry : entries.elements) {
    const std::string end = parse_stream_entry(entry.elements.at(1), [&](uint64_t index, auto) {
      ++count.announced;
      jobs.insert(index);
    });
    if (!end.empty()) ++count.finals;
  }
  count.distinct = static_cast<long long>(jobs.size());
  return count;
}

void expect_each_job_announced_once(Redis& redis, const std::string& sweep, long long total) {
  const StreamCount stream = stream_count(redis, sweep);
  EXPECT_EQ(stream.announced, total) << sweep;
  EXPECT_EQ(stream.distinct, total) << sweep;
  EXPECT_EQ(stream.finals, 1) << sweep;
}

namespace {

// Pids in /proc, except this process.
std::vector<int> all_processes() {
  std::vector<int> pids;
  const int self = ::getpid();
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const auto name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const int pid = std::stoi(name);
    if (pid != self) pids.push_back(pid);
  }
  return pids;
}

}  // namespace

std::vector<int> processes_matching(const std::string& needle) {
  std::vector<int> pids;
  for (const int pid : all_processes()) {
    const auto cmdline = command_line(pid);
    if (!cmdline.empty() && cmdline.find(needle) != std::string::npos) pids.push_back(pid);
  }
  return pids;
}

namespace {

// Pids of the children of `parent` whose state is (`zombies`) or is not (!`zombies`) 'Z'.
std::vector<int> children_of(int parent, bool zombies) {
  std::vector<int> pids;
  for (const int pid : all_processes()) {
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so parse after the last
    // ')'.
    const auto stat = read_file(fmt::format("/proc/{}/stat", pid));
    const auto close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream fields(stat.substr(close + 1));
    char state = '?';
    int ppid = 0;
    if (fields >> state >> ppid && ppid == parent && (state == 'Z') == zombies) {
      pids.push_back(pid);
    }
  }
  return pids;
}

}  // namespace

std::vector<int> child_processes(int parent) { return children_of(parent, false); }

std::vector<int> zombie_children(int parent) { return children_of(parent, true); }

void note_children(int parent, ProcessMap& children) {
  for (const int pid : child_processes(parent)) {
    auto line = command_line(pid);
    if (!line.empty()) children[pid] = std::move(line);
  }
}

std::vector<int> still_running(const ProcessMap& started) {
  std::vector<int> pids;
  for (const auto& [pid, line] : started) {
    if (command_line(pid) == line) pids.push_back(pid);
  }
  return pids;
}

}  // namespace simq::test

namespace simq::test {

TestCluster::TestCluster() : TestCluster(Options{}) {}

TestCluster::TestCluster(Options options)
    : options_(std::move(options)),
      redis_(EmbeddedRedisOptions{.program = "redis-server",
                                  .appendonly = options_.redis_appendonly,
                                  .start_timeout = 10s,
                                  .stop_timeout = 5s,
                                  .attempts = 5,
                                  .stop_on_signal = false}) {
  frontend_ = fmt::format("tcp://127.0.0.1:{}", free_loopback_port());
  backend_ = fmt::format("tcp://127.0.0.1:{}", free_loopback_port());
  start_broker();
  for (int i = 0; i < options_.workers; ++i) add_worker();
  if (!wait_until([&] { return connected_workers() == options_.workers; }, 10s)) {
    throw std::runtime_error("workers did not connect: " + logs());
  }
}

void TestCluster::start_broker() {
  auto redis = redis_.connect();
  redis->command({"DEL", "simq:broker"});
  std::vector<std::string> argv{bin("simq-broker"),
                                "--frontend",
                                frontend_,
                                "--backend",
                                backend_,
                                "--redis",
                                redis_.url(),
                                "--heartbeat-ms",
                                std::to_string(options_.heartbeat_ms),
                                "--liveness",
                                std::to_string(options_.liveness)};
  argv.insert(argv.end(), options_.broker_args.begin(), options_.broker_args.end());
  broker_ = std::make_unique<ChildProcess>(argv, dir_.file("broker.log"));
  if (!wait_until([&] { return !redis->command({"GET", "simq:broker"}).is_nil(); }, 10s)) {
    throw std::runtime_error("broker did not start: " + logs());
  }
}

void TestCluster::restart_broker(int signal) {
  broker_->signal(signal);
  broker_->wait(10s);
  start_broker();
}

TestCluster::~TestCluster() {
  for (auto& worker : workers_) worker->stop(5s);
  if (broker_) broker_->stop(5s);
}

size_t TestCluster::add_worker() {
  const size_t n = workers_.size();
  workers_.push_back(start_worker(n));
  return n;
}

std::unique_ptr<ChildProcess> TestCluster::start_worker(size_t n) {
  std::vector<std::string> argv{bin("simq-worker"),
                                "--broker",
                                backend_,
                                "--redis",
                                redis_.url(),
                                "--slots",
                                std::to_string(options_.slots),
                                "--heartbeat-ms",
                                std::to_string(options_.heartbeat_ms),
                                "--liveness",
                                std::to_string(options_.liveness)};
  argv.insert(argv.end(), options_.worker_args.begin(), options_.worker_args.end());
  return std::make_unique<ChildProcess>(argv, dir_.file(fmt::format("worker{}.log", n)));
}

void TestCluster::restart_worker(size_t i, int signal) {
  auto& worker = workers_.at(i);
  worker->signal(signal);
  if (!worker->wait(10s)) throw std::runtime_error(fmt::format("worker {} did not end", i));
  worker = start_worker(i);
}

int TestCluster::connected_workers() {
  auto redis = redis_.connect();
  const Json status = broker_status(*redis);
  if (!status.is_object() || !status.contains("workers")) return -1;
  return static_cast<int>(status["workers"].size());
}

CommandResult TestCluster::simq(std::vector<std::string> args, std::chrono::milliseconds timeout) {
  return run_command(simq_argv(std::move(args)), timeout);
}

std::vector<std::string> TestCluster::simq_argv(std::vector<std::string> args) const {
  args.insert(args.begin(), bin("simq"));
  args.insert(args.end(), {"--redis", redis_.url(), "--broker", frontend_});
  return args;
}

TestCluster::Verified TestCluster::verify(const std::string& sweep,
                                          std::chrono::milliseconds timeout) {
  Verified verified{.command = simq({"verify", sweep, "--format", "json"}, timeout),
                    .report = Json()};
  const auto report = Json::parse(verified.command.out, nullptr, false);
  if (report.is_object()) verified.report = report;
  return verified;
}

std::string TestCluster::logs() const {
  std::string text = "--- broker\n" + read_file(dir_.file("broker.log"));
  for (size_t i = 0; i < workers_.size(); ++i) {
    text +=
        fmt::format("--- worker {}\n", i) + read_file(dir_.file(fmt::format("worker{}.log", i)));
  }
  return text;
}

}  // namespace simq::test
