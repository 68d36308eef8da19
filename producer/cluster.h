// LocalCluster: the embedded default (DESIGN.md principle 7) — a redis-server on a free
// loopback port in a temp dir (simq/embedded_redis.h), a simq-broker and N simq-workers, as
// child processes (simq/child_process.h) that die with this process. Not thread-safe: one
// thread starts and stops a cluster (the one whose end should end the children); failure() is
// thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "simq/child_process.h"
#include "simq/embedded_redis.h"

namespace simq {

struct ClusterOptions {
  unsigned workers = 1;              // simq-worker processes, at least 1
  unsigned slots = 0;                // slots per worker; 0 = cores / workers, at least 1
  std::string redis;                 // Redis URL to use; "" = start our own redis-server
  std::string log_level = "warn";    // --log-level of simq-broker and simq-worker
  std::vector<std::string> plugins;  // kernel plug-ins each simq-worker loads (--plugin)
  std::string isolation = "thread";  // --isolation of each simq-worker: thread or process
  std::string bin_dir;  // where simq-broker and simq-worker are; "" = beside this program, then
                        // on $PATH
  std::chrono::milliseconds start_timeout{10000};  // each service must answer within this
  std::chrono::milliseconds stop_timeout{5000};    // SIGTERM to SIGKILL, per group of children
  bool stop_on_failure = false;  // call simq::request_stop() when redis, the broker or every
                                 // worker dies, so waiting loops (wait_sweep, `simq up`) end
};

class LocalCluster {
 public:
  explicit LocalCluster(ClusterOptions options);
  ~LocalCluster();  // stop()
  LocalCluster(const LocalCluster&) = delete;
  LocalCluster& operator=(const LocalCluster&) = delete;

  // Starts redis-server (unless options.redis), the broker, then the workers, each once the
  // previous answers a PING; returns when every worker has said HELLO to the broker.
  // Throws ConfigError if a program is missing, ConnectError if a service does not come up
  // (with its exit status or the end of its log), Error if a stop signal arrives meanwhile.
  // On failure, whatever was started is stopped again.
  void start();

  // SIGTERM to the workers, then the broker, then redis-server, each group waited for up to
  // options.stop_timeout before SIGKILL; reaps every child and removes the temp dir.
  // Idempotent; never throws.
  void stop();

  const std::string& redis_url() const { return redis_url_; }
  const std::string& frontend() const { return frontend_; }  // clients (BrokerClient)
  const std::string& backend() const { return backend_; }    // workers
  unsigned workers() const { return options_.workers; }
  unsigned slots() const { return slots_; }  // per worker, resolved
  bool owns_redis() const { return !redis_url_.empty() && options_.redis.empty(); }
  // After start(): process ids of the broker and of each worker (for measuring them, as
  // simq-bench does: memory and CPU time from /proc, pausing workers with SIGSTOP).
  pid_t broker_pid() const;
  std::vector<pid_t> worker_pids() const;

  // After start(): why the cluster broke (redis-server, the broker or every worker died), or
  // std::nullopt while it is healthy. Thread-safe.
  std::optional<std::string> failure() const;

 private:
  // A child and the name it has in messages ("simq-worker 2").
  struct Child {
    std::string name;
    std::unique_ptr<ChildProcess> process;
  };

  void start_redis(const std::string& program);
  // Starts the broker on two free ports; on new ones if it exits at start (a port was taken).
  void start_broker(const std::string& program);
  // Until the broker answers PING (true) or exits (false); throws ConnectError at the timeout.
  bool wait_for_broker();
  void start_workers(const std::string& program);
  void watch(const std::stop_token& token);
  // SIGTERM to every child of a group at once, then waits for each until one shared deadline
  // (or a second stop signal: Ctrl-C pressed twice), then SIGKILL. Reaps them all.
  static void stop_group(const std::vector<const Child*>& group, std::chrono::milliseconds timeout);

  ClusterOptions options_;
  unsigned slots_ = 1;
  std::string redis_url_;
  std::string frontend_;
  std::string backend_;
  std::optional<EmbeddedRedis> redis_;  // unless options_.redis
  Child broker_;
  std::vector<Child> workers_;

  mutable std::mutex mutex_;
  std::condition_variable_any wake_;  // interrupts the watcher's sleep
  std::string failure_;               // guarded by mutex_
  std::jthread watcher_;              // reads the children without reaping; joined by stop()
};

}  // namespace simq
