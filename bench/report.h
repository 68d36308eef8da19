// The report of a simq-bench run: the figures (figures.h) as rows with targets, beside the
// peers' figures when given; printed as a table, written as JSON, and the CPU scaling curve
// drawn as a PNG by gnuplot. Not thread-safe (plain values).
#pragma once

#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "simq/json.h"

namespace simq::bench {

// One figure against issue 4's target.
struct Row {
  std::string figure;  // "throughput", "latency", "cpu", "io", "grid", "idle"
  std::string key;     // "throughput.jobs_per_s": also the key of the peers' figure
  std::string label;   // for people: "no-op jobs/s, end to end (10^6 jobs)"
  double value = 0;
  std::string unit;               // "jobs/s", "ms", "s", "MiB", "%", "" (a ratio)
  std::optional<double> target;   // none: shown for information
  bool higher_is_better = false;  // target is a minimum (else a maximum); peers' ratios
  std::optional<bool> passed() const;
};

// The rows of the figures measured (`figures`: an object, figure name -> figures.h's JSON),
// with a row "× Celery" when `peers` (see bench/peers/run_peers.py) has Celery's throughput.
std::vector<Row> make_rows(const Json& figures, const Json& peers);

// "figure | measure | simq | target | pass", then per peer present "Celery" etc. with the
// peer's figure and simq's advantage ("765 (×131)": above 1 means simq is better).
void print_table(std::ostream& out, const std::vector<Row>& rows, const Json& peers);

// The latency figure's hops (figures.h), when measured: a table of each point's median time
// since "submit" and since the point before it. Prints nothing without them.
void print_hops(std::ostream& out, const Json& latency);

// Everything as one JSON document: settings, figures, rows (with pass and peer ratios), peers.
Json report_json(const Json& settings, const Json& figures, const std::vector<Row>& rows,
                 const Json& peers);

// Draws speed-up and efficiency against workers (with the ideal lines) for simq's cpu figure
// and the peers' that have one, by running gnuplot on a script it writes beside `png`.
// Returns false (after saying why on stderr) if gnuplot is missing or fails.
bool draw_scaling_png(const std::string& png, const Json& cpu, const Json& peers);

}  // namespace simq::bench
