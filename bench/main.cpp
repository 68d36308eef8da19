// simq-bench: measures issue 4's figures on embedded clusters (figures.h), prints the table
// against the targets (and the peers' figures, given as JSON by scripts/bench.sh --peers),
// writes every figure as JSON and draws the CPU scaling curve. Single-threaded here.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <ctime>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "figures.h"
#include "report.h"
#include "simq/errors.h"
#include "simq/log.h"
#include "simq/main_support.h"
#include "simq/signals.h"

namespace {

using simq::Json;
namespace bench = simq::bench;

const std::vector<std::string> kFigures = {"throughput", "latency", "cpu", "io", "grid", "idle"};

Json read_json_file(const std::string& path, const char* flag) {
  std::ifstream in(path);
  if (!in) throw simq::ConfigError(std::string(flag) + ": cannot open " + path);
  try {
    return Json::parse(in);
  } catch (const Json::exception& e) {
    throw simq::ConfigError(std::string(flag) + ": " + path + " is not JSON: " + e.what());
  }
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

int run_bench(int argc, char** argv) {
  CLI::App app{
      "simq-bench: issue 4's figures on an embedded cluster (redis-server, broker, "
      "workers), as a table, JSON and a PNG of the CPU scaling",
      "simq-bench"};
  std::vector<std::string> figures = kFigures;
  bool smoke = false;
  std::string json_path = "bench-results.json";
  std::string png_path = "bench-scaling.png";
  std::string peer_json;
  std::string log_level = "warn";
  // Sizes: 0 = the default (or the smoke size with --smoke).
  uint64_t jobs = 0;
  unsigned latency_jobs = 0;
  unsigned throughput_slots = 0;
  unsigned cpu_jobs = 0;
  uint64_t cpu_samples = 0;
  uint64_t grid_jobs = 0;
  std::vector<unsigned> scaling_workers;
  bool hops = false;

  app.add_option("--figures", figures, "figures to measure, comma-separated")
      ->delimiter(',')
      ->check(CLI::IsMember(kFigures))
      ->default_str("throughput,latency,cpu,io,grid,idle");
  app.add_flag("--smoke", smoke,
               "tiny sizes (2000 jobs, 50 latency samples, 100 io jobs on 20 slots, a 10^5 grid): "
               "checks the harness, figures are not comparable to the targets");
  app.add_option("--jobs", jobs, "throughput: no-op jobs in the sweep (default 10^6)")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1'000'000'000}));
  app.add_option("--throughput-slots", throughput_slots,
                 "throughput: slots per worker (2 workers; default 2)")
      ->check(CLI::Range(1U, 10000U));
  app.add_option("--latency-jobs", latency_jobs,
                 "latency: sequential one-job sweeps (default 1000)")
      ->check(CLI::Range(1U, 10'000'000U));
  app.add_flag("--hops", hops,
               "latency: also stamp each hop of every job in client, broker and workers "
               "(simq/hop_trace.h) and print the median time of each; a stamp costs ~1 us");
  app.add_option("--scaling-workers", scaling_workers,
                 "cpu: worker counts for the scaling curve, comma-separated (default 1,2; 1 is "
                 "always measured)")
      ->delimiter(',')
      ->check(CLI::Range(1U, 256U));
  app.add_option("--cpu-jobs", cpu_jobs, "cpu: mc_pi jobs per run (default 24)")
      ->check(CLI::Range(1U, 100000U));
  app.add_option("--cpu-samples", cpu_samples, "cpu: mc_pi samples per job (default 1.6*10^7)")
      ->check(CLI::Range(uint64_t{1}, uint64_t{10'000'000'000}));
  app.add_option("--grid-jobs", grid_jobs, "grid: jobs of the sweep submitted (default 10^7)")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1'000'000'000'000}));
  app.add_option("--json", json_path, "write every figure as JSON to FILE")
      ->option_text("FILE")
      ->capture_default_str();
  app.add_option("--png", png_path, "draw the CPU scaling curve to FILE with gnuplot ('': none)")
      ->option_text("FILE")
      ->capture_default_str();
  app.add_option("--peer-json", peer_json,
                 "the peers' figures (bench/peers/run_peers.py) to print beside simq's")
      ->option_text("FILE");
  app.add_option("--log-level", log_level, "of simq-bench and the cluster's programs")
      ->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);
    std::cerr << "simq-bench: " << e.what() << "\nRun with --help for more information.\n";
    return simq::kExitUsage;
  }
  simq::init_logging("simq-bench", log_level);
  const Json peers = peer_json.empty() ? Json::object() : read_json_file(peer_json, "--peer-json");

  bench::FigureOptions options = smoke ? bench::FigureOptions::smoke() : bench::FigureOptions{};
  options.log_level = log_level;
  if (jobs != 0) options.jobs = jobs;
  if (latency_jobs != 0) options.latency_jobs = latency_jobs;
  if (throughput_slots != 0) options.throughput_slots = throughput_slots;
  if (cpu_jobs != 0) options.cpu_jobs = cpu_jobs;
  if (cpu_samples != 0) options.cpu_samples = cpu_samples;
  if (grid_jobs != 0) options.grid_jobs = grid_jobs;
  if (!scaling_workers.empty()) options.scaling_workers = scaling_workers;
  options.hops = hops;
  simq::install_stop_handlers();

  Json results = Json::object();
  for (const auto& figure : kFigures) {
    if (std::find(figures.begin(), figures.end(), figure) == figures.end()) continue;
    std::cerr << "simq-bench: " << figure << "..." << std::endl;
    const auto start = std::chrono::steady_clock::now();
    if (figure == "throughput") results[figure] = bench::throughput(options);
    if (figure == "latency") results[figure] = bench::latency(options);
    if (figure == "cpu") results[figure] = bench::cpu(options);
    if (figure == "io") results[figure] = bench::io(options);
    if (figure == "grid") results[figure] = bench::grid(options);
    if (figure == "idle") results[figure] = bench::idle(options);
    std::cerr << "simq-bench: " << figure << " done in "
              << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()
              << " s: " << results[figure].dump() << std::endl;
    if (simq::stop_requested()) throw simq::Error("interrupted");
  }

  const auto rows = bench::make_rows(results, peers);
  bench::print_table(std::cout, rows, peers);
  if (results.contains("latency")) bench::print_hops(std::cout, results["latency"]);
  std::cout.flush();

  const Json settings = {{"date", utc_now()},
                         {"smoke", smoke},
                         {"cores", std::thread::hardware_concurrency()},
                         {"figures", figures},
                         {"throughput_slots", options.throughput_slots},
                         {"hops", options.hops},  // latency measured with hop stamps on
                         {"scaling_workers", options.scaling_workers}};
  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << bench::report_json(settings, results, rows, peers).dump(2) << "\n";
    if (!out) throw simq::Error("cannot write " + json_path);
    std::cerr << "simq-bench: wrote " << json_path << "\n";
  }
  if (!png_path.empty() && results.contains("cpu")) {
    if (bench::draw_scaling_png(png_path, results["cpu"], peers)) {
      std::cerr << "simq-bench: drew " << png_path << "\n";
    }
  }
  return simq::kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  return simq::run_main("simq-bench", [&] { return run_bench(argc, argv); });
}
