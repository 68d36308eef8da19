// The simq subcommands: load and validate input first, then reach the services, then act.
// Not thread-safe: meant for the program's main thread.
#include "commands.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <optional>
#include <system_error>
#include <thread>

#include "client.h"
#include "cluster.h"
#include "consumer.h"
#include "simq/config.h"
#include "simq/errors.h"
#include "simq/redis.h"
#include "simq/signals.h"
#include "simq/store.h"
#include "simq/sweep.h"
#include "verify.h"

namespace simq {

namespace {

constexpr std::chrono::milliseconds kRedisConnectTimeout{2000};
constexpr std::chrono::milliseconds kUpCheckInterval{200};
constexpr const char* kEmbeddedNote =
    "(results lived in the embedded Redis, now stopped; use --output or `simq up` to keep "
    "them)";

std::string redis_url(const CommonOptions& common) {
  return setting(common.redis, "SIMQ_REDIS", kDefaultRedis);
}

std::string broker_endpoint(const CommonOptions& common) {
  return setting(common.broker, "SIMQ_BROKER", kDefaultFrontend);
}

// True if the user named a Redis (flag or environment): then `run` and `up` start no
// redis-server of their own.
bool redis_given(const CommonOptions& common) {
  const char* env = std::getenv("SIMQ_REDIS");
  return !common.redis.empty() || (env != nullptr && *env != '\0');
}

// A Store on `url`, after a PING that fails within kRedisConnectTimeout if Redis is not there
// (the Store's own connection waits longer).
Store open_store(const std::string& url) {
  RedisAddress address = RedisAddress::parse(url);
  {
    Redis probe(address, kRedisConnectTimeout);
    probe.command({"PING"});
  }
  return Store(std::move(address));
}

// Where results go: stdout, or a file opened (and truncated) before any work starts, so a bad
// path fails at once rather than after the sweep.
class ResultsOutput {
 public:
  explicit ResultsOutput(std::string path) : path_(std::move(path)) {
    if (path_.empty()) return;
    file_.open(path_, std::ios::out | std::ios::trunc);
    if (!file_) {
      throw ConfigError(fmt::format("--output: cannot open {}: {}", path_,
                                    std::generic_category().message(errno)));
    }
  }

  std::ostream& stream() { return path_.empty() ? std::cout : file_; }

  void finish() {
    stream().flush();
    if (!stream()) {
      throw Error(fmt::format("cannot write the results to {}", path_.empty() ? "stdout" : path_));
    }
  }

 private:
  std::string path_;
  std::ofstream file_;
};

// Submits under a fresh sweep id (another one if that id is taken); returns the id. `what`
// names the spec in errors (the sweep file).
// `timeout_s` 0 = keep trying for ever. std::nullopt (after saying so) if a stop signal ended
// the wait for the broker.
std::optional<std::string> submit_sweep(BrokerClient& client, const SweepSpec& spec,
                                        std::string_view what, double timeout_s) {
  const auto timeout = std::chrono::milliseconds(std::llround(timeout_s * 1000.0));
  try {
    const SubmittedMsg reply = submit_under_fresh_id(
        [&](const std::string& id) { return client.submit(id, spec, what, timeout); },
        new_sweep_id);
    spdlog::info("sweep {}: {} jobs queued{}", reply.sweep_id, reply.total,
                 reply.existed ? " (answered to a resent SUBMIT)" : "");
    return reply.sweep_id;
  } catch (const Interrupted& e) {
    std::cerr << "simq: " << e.what() << "\n";
    return std::nullopt;
  }
}

// Sends the client's notices (why it waits for the broker) to stderr as "simq: ...".
void print_notices(BrokerClient& client) {
  client.set_notice([](const std::string& line) {
    std::cerr << "simq: " << line << std::endl;  // flushed: a script may watch for it
  });
}

// Waits for the sweep, then prints its results (also after Ctrl-C or a broken cluster: the
// jobs done so far, while their Redis is still there).
int wait_and_print(Store& store, const std::string& sweep, ResultFormat format,
                   ResultsOutput& output, const LocalCluster* cluster) {
  const int waited = wait_sweep(store, sweep, WaitOptions{});
  const bool interrupted = stop_requested();
  const auto failure = cluster != nullptr ? cluster->failure() : std::nullopt;
  if (failure) {
    std::cerr << "simq: the local cluster broke: " << *failure << "\n";
  } else if (interrupted) {
    std::cerr << "simq: interrupted; the results so far follow\n";
  }
  const int printed = print_results(store, sweep, format, output.stream());
  output.finish();
  if (failure) return kExitJobsFailed;
  if (interrupted) return kExitInterrupted;
  return waited != kExitOk ? waited : printed;
}

// Quotes a value for a POSIX shell if it needs it.
std::string shell_word(const std::string& value) {
  if (!value.empty() &&
      value.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                              ":/._-@+=,") == std::string::npos) {
    return value;
  }
  std::string quoted = "'";
  for (const char c : value) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

// Starts the cluster; false (after saying so) if a stop signal interrupted the start.
bool start_cluster(LocalCluster& cluster) {
  try {
    cluster.start();
    return true;
  } catch (const Error& e) {
    if (!stop_requested()) throw;
    std::cerr << "simq: " << e.what() << "\n";
    return false;
  }
}

}  // namespace

int run_command(const CommonOptions& common, const RunOptions& options) {
  // Input first: a bad file or flag starts nothing.
  const SweepSpec spec = load_sweep_file(options.sweep_file);
  const ResultFormat format = parse_result_format(options.format);
  ResultsOutput output(options.output);
  install_stop_handlers();

  if (redis_given(common)) {
    if (!options.plugins.empty()) {
      std::cerr << "simq: --plugin is ignored with --redis or $SIMQ_REDIS: the workers that are "
                   "already running load their own\n";
    }
    if (options.isolation != "thread") {
      std::cerr << "simq: --isolation is ignored with --redis or $SIMQ_REDIS: the workers that "
                   "are already running have their own\n";
    }
    Store store = open_store(redis_url(common));
    BrokerClient client(broker_endpoint(common));
    print_notices(client);
    const auto sweep = submit_sweep(client, spec, options.sweep_file, options.submit_timeout_s);
    if (!sweep) return kExitInterrupted;
    return wait_and_print(store, *sweep, format, output, nullptr);
  }

  if (!common.broker.empty()) {
    std::cerr << "simq: --broker is ignored without --redis or $SIMQ_REDIS: `simq run` starts a "
                 "local cluster\n";
  }
  ClusterOptions cluster_options;
  cluster_options.workers = options.workers;
  cluster_options.slots = options.slots;
  cluster_options.plugins = options.plugins;
  cluster_options.isolation = options.isolation;
  cluster_options.log_level = common.log_level;
  cluster_options.stop_on_failure = true;
  LocalCluster cluster(cluster_options);
  if (!start_cluster(cluster)) return kExitInterrupted;
  int code = kExitOk;
  {
    Store store = open_store(cluster.redis_url());
    BrokerClient client(cluster.frontend());
    print_notices(client);
    const auto sweep = submit_sweep(client, spec, options.sweep_file, options.submit_timeout_s);
    code = sweep ? wait_and_print(store, *sweep, format, output, &cluster) : kExitInterrupted;
  }
  cluster.stop();
  std::cerr << kEmbeddedNote << "\n";
  return code;
}

int up_command(const CommonOptions& common, const UpOptions& options) {
  install_stop_handlers();
  ClusterOptions cluster_options;
  cluster_options.workers = options.workers;
  cluster_options.slots = options.slots;
  cluster_options.plugins = options.plugins;
  cluster_options.isolation = options.isolation;
  cluster_options.log_level = common.log_level;
  cluster_options.stop_on_failure = true;
  if (redis_given(common)) cluster_options.redis = redis_url(common);
  if (!common.broker.empty()) {
    std::cerr << "simq: --broker is ignored: `simq up` binds its broker to free loopback ports "
                 "(see the export line)\n";
  }
  LocalCluster cluster(cluster_options);
  if (!start_cluster(cluster)) return kExitInterrupted;

  std::cout << fmt::format("export SIMQ_REDIS={} SIMQ_BROKER={} SIMQ_BACKEND={}\n",
                           shell_word(cluster.redis_url()), shell_word(cluster.frontend()),
                           shell_word(cluster.backend()));
  std::cout << fmt::format(
      "# simq up (pid {}): {}simq-broker and {} simq-worker(s) with {} slot(s) each are running.\n"
      "# Ctrl-C here (or kill {}) stops all of them{}.\n",
      ::getpid(), cluster.owns_redis() ? "redis-server, " : "", cluster.workers(), cluster.slots(),
      ::getpid(), cluster.owns_redis() ? "; the embedded Redis and its results go with them" : "");
  std::cout.flush();

  while (!stop_requested()) std::this_thread::sleep_for(kUpCheckInterval);
  if (const auto failure = cluster.failure()) {
    std::cerr << "simq: " << *failure << "; stopping the cluster\n";
    cluster.stop();
    return kExitJobsFailed;
  }
  std::cerr << "simq: stopping the cluster\n";
  cluster.stop();
  return kExitOk;
}

int submit_command(const CommonOptions& common, const SubmitOptions& options) {
  const SweepSpec spec = load_sweep_file(options.sweep_file);
  Store store = open_store(redis_url(common));
  if (options.wait) install_stop_handlers();
  BrokerClient client(broker_endpoint(common));
  print_notices(client);
  const auto sweep = submit_sweep(client, spec, options.sweep_file, options.submit_timeout_s);
  if (!sweep) return kExitInterrupted;
  std::cout << *sweep << std::endl;  // flushed: a script reading the id need not wait
  if (!options.wait) return kExitOk;
  const int code = wait_sweep(store, *sweep, WaitOptions{});
  return stop_requested() ? kExitInterrupted : code;
}

int wait_command(const CommonOptions& common, const WaitCommandOptions& options) {
  Store store = open_store(redis_url(common));
  install_stop_handlers();
  WaitOptions wait_options;
  wait_options.timeout_s = options.timeout_s;
  const int code = wait_sweep(store, options.sweep, wait_options);
  return stop_requested() ? kExitInterrupted : code;
}

int results_command(const CommonOptions& common, const ResultsOptions& options) {
  const ResultFormat format = parse_result_format(options.format);
  ResultsOutput output(options.output);
  Store store = open_store(redis_url(common));
  const int code = print_results(store, options.sweep, format, output.stream());
  output.finish();
  return code;
}

int get_command(const CommonOptions& common, const GetOptions& options) {
  Store store = open_store(redis_url(common));
  const int code = print_job(store, options.job, options.json, std::cout);
  std::cout.flush();
  return code;
}

int status_command(const CommonOptions& common, const StatusOptions& options) {
  Store store = open_store(redis_url(common));
  const auto sweep = options.sweep.empty() ? std::nullopt : std::optional(options.sweep);
  const int code = print_status(store, sweep, std::cout);
  std::cout.flush();
  return code;
}

int cancel_command(const CommonOptions& common, const CancelOptions& options) {
  BrokerClient client(broker_endpoint(common));
  print_notices(client);
  const CancelledMsg reply = client.cancel(options.sweep);
  if (reply.outcome == "cancelled") {
    std::cout << fmt::format(
        "cancelled sweep {}: {} queued job{} dropped, {} running asked to stop\n", options.sweep,
        reply.dropped, reply.dropped == 1 ? "" : "s", reply.running);
    return kExitOk;
  }
  if (reply.outcome == "not_running") {
    // How it ended is in Redis; the answer stands without it.
    std::string how;
    try {
      Store store = open_store(redis_url(common));
      if (const auto info = store.sweep(options.sweep)) how = " (" + info->status + ")";
    } catch (const Error& e) {
      spdlog::info("cannot read sweep {} from Redis: {}", options.sweep, e.what());
    }
    std::cout << fmt::format("sweep {} had already finished{}\n", options.sweep, how);
    return kExitOk;
  }
  if (reply.outcome == "no_sweep") {
    std::cerr << fmt::format("simq: no sweep {} in Redis\n", options.sweep);
    return kExitJobsFailed;
  }
  throw ProtocolError(fmt::format("the broker at {} answered CANCEL with outcome \"{}\"",
                                  client.endpoint(), reply.outcome));
}

int verify_command(const CommonOptions& common, const VerifyOptions& options) {
  const bool json = parse_verify_format(options.format);
  Store store = open_store(redis_url(common));
  const int code = verify_sweep(store, options.sweep, json, std::cout);
  std::cout.flush();
  return code;
}

}  // namespace simq
