// simq-broker: parse options, build the Broker, run it; run_main() maps errors to exit codes.
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include "broker.h"
#include "simq/config.h"
#include "simq/errors.h"
#include "simq/log.h"
#include "simq/main_support.h"
#include "simq/signals.h"

int main(int argc, char** argv) {
  CLI::App app{
      "simq-broker: queues sweeps, dispatches jobs to workers by credit, "
      "tracks heartbeats"};
  simq::BrokerOptions options;
  std::string redis;
  std::string log_level = "info";
  app.add_option("--frontend", options.frontend, "endpoint clients connect to")
      ->capture_default_str();
  app.add_option("--backend", options.backend, "endpoint workers connect to")
      ->capture_default_str();
  app.add_option("--redis", redis, "Redis URL (default: $SIMQ_REDIS, then redis://127.0.0.1:6379)");
  app.add_option("--heartbeat-ms", options.heartbeat_ms, "heartbeat interval, milliseconds")
      ->check(CLI::Range(10, 60000))
      ->capture_default_str();
  app.add_option("--liveness", options.liveness, "missed heartbeats after which a worker is dead")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  app.add_option("--result-ttl", options.result_ttl_s,
                 "seconds a finished sweep's records are kept in Redis; 0 = for ever")
      ->capture_default_str();
  app.add_option("--max-batch", options.max_batch, "most jobs in one DISPATCH message")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--max-queued", options.max_queued,
                 "jobs waiting in the queue at which SUBMIT is refused with queue_full (clients "
                 "wait and resend); bounds the broker's memory")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 40))
      ->capture_default_str();
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? simq::kExitOk : simq::kExitUsage;
  }
  return simq::run_main("simq-broker", [&] {
    simq::init_logging("simq-broker", log_level);
    options.redis =
        simq::RedisAddress::parse(simq::setting(redis, "SIMQ_REDIS", simq::kDefaultRedis));
    simq::install_stop_handlers();
    zmq::context_t context(1);
    simq::Broker broker(context, options);
    broker.run();
    return simq::kExitOk;
  });
}
