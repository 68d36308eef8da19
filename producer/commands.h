// The simq subcommands (DESIGN.md, "The user's interface"): each takes its parsed options,
// does its work and returns an exit code; failures are thrown, and main.cpp maps them to exit
// codes. Not thread-safe: meant for the program's main thread.
#pragma once

#include <string>
#include <vector>

namespace simq {

// Exit code when a stop signal (Ctrl-C) ended the waiting: 128 + SIGINT, as shells report it.
inline constexpr int kExitInterrupted = 130;

// Flags every subcommand takes.
struct CommonOptions {
  std::string redis;   // --redis URL; "" = $SIMQ_REDIS, then kDefaultRedis
  std::string broker;  // --broker: the broker's frontend; "" = $SIMQ_BROKER, then kDefaultFrontend
  std::string log_level = "warn";  // --log-level of simq (and of the programs `run`/`up` start)
};

struct RunOptions {
  std::string sweep_file;
  unsigned workers = 1;              // simq-worker processes of the local cluster
  unsigned slots = 0;                // slots per worker; 0 = cores / workers, at least 1
  std::vector<std::string> plugins;  // --plugin libraries each local worker loads
  std::string isolation = "thread";  // --isolation of each local worker: thread or process
  std::string format = "table";      // table, csv or jsonl
  std::string output;                // file for the results; "" = stdout
  double submit_timeout_s = 60;      // give up submitting after this long (broker full, down or
                                     // without Redis); 0 = keep trying for ever
};

struct UpOptions {
  unsigned workers = 1;              // simq-worker processes
  unsigned slots = 0;                // slots per worker; 0 = cores / workers, at least 1
  std::vector<std::string> plugins;  // --plugin libraries each worker loads
  std::string isolation = "thread";  // --isolation of each worker: thread or process
};

struct SubmitOptions {
  std::string sweep_file;
  bool wait = false;             // then wait as `simq wait` does
  double submit_timeout_s = 60;  // as RunOptions::submit_timeout_s
};

struct WaitCommandOptions {
  std::string sweep;
  double timeout_s = 0;  // seconds; 0 = wait for ever
};

struct ResultsOptions {
  std::string sweep;
  std::string format = "table";  // table, csv or jsonl
  std::string output;            // file for the results; "" = stdout
};

struct GetOptions {
  std::string job;    // "<sweep>:<index>"
  bool json = false;  // one JSON object instead of text
};

struct StatusOptions {
  std::string sweep;  // "" = the newest sweeps and the broker
};

struct CancelOptions {
  std::string sweep;
};

struct VerifyOptions {
  std::string sweep;
  std::string format = "text";  // text or json
};

// With neither --redis nor $SIMQ_REDIS: a local cluster (redis-server, broker, workers) for the
// one sweep, stopped after the results are printed. Otherwise: submit to --broker and wait.
// Returns kExitOk if every job succeeded, kExitJobsFailed if some failed.
int run_command(const CommonOptions& common, const RunOptions& options);

// A local cluster in the foreground until Ctrl-C (its own redis-server unless --redis or
// $SIMQ_REDIS is given); prints the export line that points other simq commands at it.
int up_command(const CommonOptions& common, const UpOptions& options);

// Validates the sweep file, checks Redis, submits; prints the sweep id (only it) on stdout.
int submit_command(const CommonOptions& common, const SubmitOptions& options);

int wait_command(const CommonOptions& common, const WaitCommandOptions& options);
int results_command(const CommonOptions& common, const ResultsOptions& options);
int get_command(const CommonOptions& common, const GetOptions& options);
int status_command(const CommonOptions& common, const StatusOptions& options);

// Asks the broker to cancel the sweep. Exit kExitOk if it was cancelled or had finished already,
// kExitJobsFailed if there is no such sweep; ConnectError (exit 3) if the broker does not answer.
int cancel_command(const CommonOptions& common, const CancelOptions& options);

// Reconciles the sweep's records, completion stream and counters in Redis (verify.h).
int verify_command(const CommonOptions& common, const VerifyOptions& options);

}  // namespace simq
