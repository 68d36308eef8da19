// Helpers for integration tests: a real redis-server on a free loopback port in a temp dir,
// simq programs as real child processes, commands run to completion, polling with
// deadlines instead of sleeps. Not thread-safe: one test thread.
#pragma once

#include <chrono>
#include <csignal>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "simq/child_process.h"
#include "simq/embedded_redis.h"
#include "simq/json.h"
#include "simq/redis.h"
#include "simq/temp_dir.h"

namespace simq::test {

using namespace std::chrono_literals;

// Path of a simq program in the build's bin folder ($SIMQ_BIN_DIR, set by ctest).
std::string bin(const std::string& name);

// A fresh directory "<$TMPDIR or /tmp>/simq-test-XXXXXX", removed with everything in it when
// this goes away.
class TempDir : public simq::TempDir {
 public:
  TempDir() : simq::TempDir("simq-test-") {}
};

// A redis-server of its own (simq/embedded_redis.h: 127.0.0.1, a free port, a temp dir, no
// persistence), stopped in the destructor.
class RedisServer : public EmbeddedRedis {
 public:
  RedisServer() = default;
  explicit RedisServer(EmbeddedRedisOptions options) : EmbeddedRedis(std::move(options)) {}
  ~RedisServer();
  std::unique_ptr<Redis> connect() const;  // a new connection to it

  // Shuts it down cleanly (SIGTERM: Redis fsyncs its AOF and exits), then starts a new
  // redis-server on the same port and data dir, with `--appendonly yes --appendfsync
  // everysec` when `appendonly`, and waits until it answers PING. `down` is how long it stays
  // down in between. Throws std::runtime_error (with its log) if it does not come back.
  void restart(bool appendonly, std::chrono::milliseconds down = 0ms);

  // Pid of the running redis-server (-1 if none).
  int pid() const;

 private:
  std::unique_ptr<ChildProcess> restarted_;  // the server after restart(), if any
};

// Polls `ready` every few milliseconds until it is true or `timeout` passes.
bool wait_until(const std::function<bool()>& ready, std::chrono::milliseconds timeout);

struct CommandResult {
  int status = -1;  // exit code, 128+signal, or -1 if it had to be killed at the timeout
  std::string out;
  std::string err;
};

// Pid -> command line of processes a program started.
using ProcessMap = std::map<int, std::string>;

// Runs a program to completion (killed after `timeout`), capturing stdout and stderr. With
// `children`, also notes the processes it starts (polling /proc while it runs, with the last
// command line seen of each), so that a test can check that none outlives it.
CommandResult run_command(const std::vector<std::string>& argv,
                          std::chrono::milliseconds timeout = 60s, ProcessMap* children = nullptr);

// Reads a whole file ("" if it cannot be read).
std::string read_file(const std::string& path);
// `text` without the newlines and spaces it ends with (a command's output, say).
std::string trim(std::string text);

// The broker's status snapshot (docs/redis-schema.md); null if there is none, or none readable
// within `wait`.
Json broker_status(Redis& redis, std::chrono::milliseconds wait = std::chrono::milliseconds(0));

// Pids of processes whose command line contains `needle` (to prove none was left behind).
// redis-server rewrites its command line to "redis-server 127.0.0.1:<port>".
std::vector<int> processes_matching(const std::string& needle);

// Pids of the running (not zombie) children of process `parent`.
std::vector<int> child_processes(int parent);

// Pids of the children of process `parent` that ended and were not reaped (zombies).
std::vector<int> zombie_children(int parent);

// Adds the running children of `parent` to `children`, with their current command lines.
void note_children(int parent, ProcessMap& children);

// The processes of `started` that still run the same command line (so not a reused pid).
std::vector<int> still_running(const ProcessMap& started);

// The command line of a running process, arguments separated by spaces ("" if it is gone or a
// zombie).
std::string command_line(int pid);

// Memory of a running process from /proc/<pid>/status, in KiB: resident now (VmRSS) and its
// peak (VmHWM). -1 if the process is gone.
long long rss_kib(int pid);
long long peak_rss_kib(int pid);

// A number from the environment (`fallback` when unset or not a number).
double env_number(const char* name, double fallback);

// What a sweep's completion stream says (docs/redis-schema.md), read with XRANGE: job
// announcements in all, distinct jobs announced, and final ("sweep ...") entries.
struct StreamCount {
  long long announced = 0;
  long long distinct = 0;
  long long finals = 0;
};
StreamCount stream_count(Redis& redis, const std::string& sweep);
// Expects the sweep's stream to announce each of its `total` jobs once, and its end once.
void expect_each_job_announced_once(Redis& redis, const std::string& sweep, long long total);

}  // namespace simq::test

namespace simq::test {

// A real cluster for integration tests: its own redis-server, a simq-broker and workers as
// processes on free loopback ports, with fast heartbeats so worker loss is seen quickly.
class TestCluster {
 public:
  struct Options {
    int workers = 2;         // worker processes started at once
    int slots = 2;           // slots per worker
    int heartbeat_ms = 200;  // broker <-> worker heartbeat interval
    int liveness = 3;        // missed heartbeats before a worker is dead
    // More flags for simq-broker (e.g. {"--max-queued", "100"}) and for each simq-worker.
    std::vector<std::string> broker_args = {};
    std::vector<std::string> worker_args = {};
    bool redis_appendonly = false;  // Redis with an AOF (appendfsync everysec)
  };

  TestCluster();  // default Options
  explicit TestCluster(Options options);
  ~TestCluster();

  RedisServer& redis() { return redis_; }
  const std::string& frontend() const { return frontend_; }
  const std::string& backend() const { return backend_; }

  ChildProcess& broker() { return *broker_; }
  // Kills the broker with `signal` and starts a new one on the same endpoints and Redis.
  void restart_broker(int signal);
  ChildProcess& worker(size_t i) { return *workers_.at(i); }
  size_t add_worker();  // returns its number
  size_t workers() const { return workers_.size(); }
  // Kills worker `i` with `signal` (unless it has ended already), reaps it, and starts a new
  // one with the same options as worker `i` (its log goes on in the same file).
  void restart_worker(size_t i, int signal = SIGKILL);

  // Connected workers according to the broker's status snapshot in Redis.
  int connected_workers();

  // Runs `simq ARGS --redis URL --broker EP`.
  CommandResult simq(std::vector<std::string> args, std::chrono::milliseconds timeout = 120s);
  // The command line simq() runs, for running it from another thread with run_command().
  std::vector<std::string> simq_argv(std::vector<std::string> args) const;

  // `simq verify SWEEP --format json`: its exit status and the report it printed (null if its
  // output was not one JSON object).
  struct Verified {
    CommandResult command;
    Json report;
  };
  Verified verify(const std::string& sweep, std::chrono::milliseconds timeout = 120s);

  // Everything the broker and workers logged so far.
  std::string logs() const;

 private:
  void start_broker();
  std::unique_ptr<ChildProcess> start_worker(size_t n);

  Options options_;
  RedisServer redis_;
  TempDir dir_;
  std::string frontend_;
  std::string backend_;
  std::unique_ptr<ChildProcess> broker_;
  std::vector<std::unique_ptr<ChildProcess>> workers_;
};

}  // namespace simq::test
