// simq: the command-line client. Parses the subcommands and runs one (commands.h); run_main()
// maps errors to exit codes. Single-threaded here.
#include <CLI/CLI.hpp>
#include <iostream>
#include <string>
#include <vector>

#include "commands.h"
#include "simq/errors.h"
#include "simq/log.h"
#include "simq/main_support.h"

namespace {

void add_common_options(CLI::App& command, simq::CommonOptions& common) {
  command.add_option("--redis", common.redis,
                     "Redis URL (default: $SIMQ_REDIS, then redis://127.0.0.1:6379)");
  command.add_option("--broker", common.broker,
                     "the broker's frontend endpoint (default: $SIMQ_BROKER, then "
                     "tcp://127.0.0.1:5555)");
  command.add_option("--log-level", common.log_level, "trace, debug, info, warn, error or off")
      ->capture_default_str();
}

void add_cluster_options(CLI::App& command, unsigned& workers, unsigned& slots,
                         std::vector<std::string>& plugins, std::string& isolation) {
  command.add_option("--workers", workers, "simq-worker processes of the local cluster")
      ->check(CLI::Range(1U, 1024U))
      ->capture_default_str();
  command.add_option("--slots", slots, "jobs each worker runs at once (default: cores / workers)")
      ->check(CLI::Range(1U, 100000U));
  command
      .add_option("--plugin", plugins,
                  "a kernel plug-in (shared library) each simq-worker loads; repeat for several")
      ->allow_extra_args(false)
      ->option_text("LIB");
  command
      .add_option("--isolation", isolation,
                  "where the workers run kernels: thread, or process (a kernel process per slot: "
                  "a crash fails only its job)")
      ->check(CLI::IsMember({"thread", "process"}))
      ->capture_default_str();
}

void add_submit_timeout(CLI::App& command, double& timeout_s) {
  command
      .add_option("--submit-timeout", timeout_s,
                  "keep resending the sweep for up to S seconds while the broker is full, "
                  "restarting or not answering (0: for ever)")
      // Bounded (a year), so the error names a readable range and seconds fit in milliseconds.
      ->check(CLI::Range(0.0, 31536000.0))
      ->option_text("S")
      ->capture_default_str();
}

void add_results_options(CLI::App& command, std::string& format, std::string& output) {
  command.add_option("--format", format, "results as an aligned table, CSV or JSON lines")
      ->check(CLI::IsMember({"table", "csv", "jsonl"}))
      ->capture_default_str();
  command.add_option("--output", output, "write the results to FILE instead of stdout")
      ->option_text("FILE");
}

int run_cli(int argc, char** argv) {
  CLI::App app{"simq: runs parameter sweeps on a pool of workers (ZeroMQ broker, results in Redis)",
               "simq"};
  app.require_subcommand(0, 1);
  const std::string exit_codes =
      "Exit codes: 0 success, 1 jobs failed or not found, 2 usage or input error, 3 cannot reach "
      "a service, 130 interrupted (Ctrl-C) while waiting (wait, run, submit --wait).";
  app.footer(exit_codes);  // inherited by the subcommands added below

  simq::CommonOptions common;
  simq::RunOptions run_options;
  simq::UpOptions up_options;
  simq::SubmitOptions submit_options;
  simq::WaitCommandOptions wait_options;
  simq::ResultsOptions results_options;
  simq::GetOptions get_options;
  simq::StatusOptions status_options;
  simq::CancelOptions cancel_options;
  simq::VerifyOptions verify_options;

  auto* run = app.add_subcommand(
      "run", "Run a sweep on a local cluster (or the given --redis/--broker), print the results");
  run->add_option("SWEEP_FILE", run_options.sweep_file, "sweep file (.toml or .json)")->required();
  add_cluster_options(*run, run_options.workers, run_options.slots, run_options.plugins,
                      run_options.isolation);
  add_results_options(*run, run_options.format, run_options.output);
  add_submit_timeout(*run, run_options.submit_timeout_s);
  add_common_options(*run, common);

  auto* up = app.add_subcommand(
      "up", "Run a local cluster (redis-server, broker, workers) in the foreground until Ctrl-C");
  add_cluster_options(*up, up_options.workers, up_options.slots, up_options.plugins,
                      up_options.isolation);
  add_common_options(*up, common);

  auto* submit =
      app.add_subcommand("submit", "Submit a sweep to the broker and print its id on stdout");
  submit->add_option("SWEEP_FILE", submit_options.sweep_file, "sweep file (.toml or .json)")
      ->required();
  submit->add_flag("--wait", submit_options.wait, "then wait for it as `simq wait` does");
  add_submit_timeout(*submit, submit_options.submit_timeout_s);
  add_common_options(*submit, common);

  auto* wait = app.add_subcommand(
      "wait", "Wait for a sweep with a progress bar; exit 0 if all jobs succeeded, 1 if not");
  wait->add_option("SWEEP_ID", wait_options.sweep, "the id `simq submit` printed")->required();
  wait->add_option("--timeout", wait_options.timeout_s, "give up after S seconds (0: never)")
      ->check(CLI::NonNegativeNumber)
      ->option_text("S");
  add_common_options(*wait, common);

  auto* results = app.add_subcommand("results", "Print the results of a sweep's finished jobs");
  results->add_option("SWEEP_ID", results_options.sweep, "the sweep")->required();
  add_results_options(*results, results_options.format, results_options.output);
  add_common_options(*results, common);

  auto* get = app.add_subcommand(
      "get", "Show one job: status, parameters, result or error, attempts, timings");
  get->add_option("JOB_ID", get_options.job, "<sweep id>:<job index>")->required();
  get->add_flag("--json", get_options.json, "print the job record as one JSON object");
  add_common_options(*get, common);

  auto* status = app.add_subcommand(
      "status", "Show the newest sweeps and the broker's workers, or one sweep's counts");
  status->add_option("SWEEP_ID", status_options.sweep, "the sweep (default: all)");
  add_common_options(*status, common);

  auto* cancel = app.add_subcommand(
      "cancel", "Cancel a sweep: its queued jobs are dropped, its running jobs asked to stop");
  cancel->add_option("SWEEP_ID", cancel_options.sweep, "the sweep")->required();
  add_common_options(*cancel, common);

  auto* verify = app.add_subcommand(
      "verify",
      "Check a sweep in Redis: every job has exactly one result; report lost, duplicated and "
      "unexpected ones (exit 0 if none)");
  verify->add_option("SWEEP_ID", verify_options.sweep, "the sweep")->required();
  verify->add_option("--format", verify_options.format, "a report for people, or one JSON object")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  add_common_options(*verify, common);

  app.footer(exit_codes + "\nRun `simq COMMAND --help` for a command's flags.");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);
    std::cerr << "simq: " << e.what() << "\nRun with --help for more information.\n";
    return simq::kExitUsage;
  }
  if (app.get_subcommands().empty()) {
    std::cerr << app.help();
    return simq::kExitUsage;
  }

  simq::init_logging("simq", common.log_level);
  if (run->parsed()) return simq::run_command(common, run_options);
  if (up->parsed()) return simq::up_command(common, up_options);
  if (submit->parsed()) return simq::submit_command(common, submit_options);
  if (wait->parsed()) return simq::wait_command(common, wait_options);
  if (results->parsed()) return simq::results_command(common, results_options);
  if (get->parsed()) return simq::get_command(common, get_options);
  if (cancel->parsed()) return simq::cancel_command(common, cancel_options);
  if (verify->parsed()) return simq::verify_command(common, verify_options);
  return simq::status_command(common, status_options);
}

}  // namespace

int main(int argc, char** argv) {
  return simq::run_main("simq", [&] { return run_cli(argc, argv); });
}
