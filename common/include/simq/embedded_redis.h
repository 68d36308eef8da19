// EmbeddedRedis: a redis-server of our own on 127.0.0.1 and a free port, with its data and log
// in a temp dir; started by the constructor (ready once it answers PING), stopped by stop() or
// the destructor. Used by `simq run`/`simq up` (LocalCluster) and the integration tests.
// Not thread-safe: one owner; another thread may only look at process() while it runs.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "simq/child_process.h"
#include "simq/redis.h"
#include "simq/temp_dir.h"

namespace simq {

struct EmbeddedRedisOptions {
  std::string program = "redis-server";  // a path, or a name looked up on $PATH
  bool appendonly = false;  // --appendonly yes|no; RDB snapshots (--save) are always off
  std::chrono::milliseconds start_timeout{10000};  // to answer PING, per attempt
  std::chrono::milliseconds stop_timeout{5000};    // from SIGTERM to SIGKILL
  int attempts = 5;  // starts on another free port when one was taken between probe and bind
  bool stop_on_signal = false;  // a stop signal (simq/signals.h) ends the start with an Error,
                                // and a second one makes stop() kill at once
};

class EmbeddedRedis {
 public:
  // Starts redis-server and waits until it answers PING. Throws ConnectError if it exits or
  // does not answer (with the last lines of its log), Error if it cannot be started at all
  // or a stop signal arrives meanwhile (with options.stop_on_signal).
  explicit EmbeddedRedis(EmbeddedRedisOptions options = {});
  ~EmbeddedRedis();  // stop(); then the temp dir goes
  EmbeddedRedis(const EmbeddedRedis&) = delete;
  EmbeddedRedis& operator=(const EmbeddedRedis&) = delete;

  int port() const { return address_.port; }
  const RedisAddress& address() const { return address_; }
  std::string url() const { return address_.url(); }  // "redis://127.0.0.1:<port>"
  const std::string& dir() const { return dir_.path(); }
  std::string log_path() const { return dir_.file("redis.log"); }

  // The running redis-server, or nullptr after stop().
  const ChildProcess* process() const { return process_.get(); }

  // SIGTERM, then SIGKILL after options.stop_timeout; reaps it. Returns its exit status
  // (ChildProcess::poll()), std::nullopt if it was stopped already. Never throws.
  std::optional<int> stop();

 private:
  EmbeddedRedisOptions options_;
  TempDir dir_;
  RedisAddress address_;
  std::unique_ptr<ChildProcess> process_;
};

}  // namespace simq
