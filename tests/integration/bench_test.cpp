// The smoke run of simq-bench (issue 4): every figure is measured, printed and written as
// finite numbers, and nothing it started outlives it. Not whether the targets are met: that
// takes the full sizes on a quiet machine (scripts/bench.sh).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "simq/json.h"
#include "test_support.h"

namespace simq::test {
namespace {

using ::testing::HasSubstr;

const std::vector<std::string> kFigures = {"throughput", "latency", "cpu", "io", "grid", "idle"};

// Every number in `value`, with its path, checked finite and >= 0; > 0 unless `may_be_zero`
// says the path may be 0 (idle CPU is 0 on a quiet machine; the paused worker of the grid
// figure may not have been sent a job yet).
void expect_numbers(const Json& value, const std::string& path, int& numbers) {
  if (value.is_object()) {
    for (auto it = value.begin(); it != value.end(); ++it) {
      expect_numbers(it.value(), path + "." + it.key(), numbers);
    }
  } else if (value.is_array()) {
    for (size_t i = 0; i < value.size(); ++i) {
      expect_numbers(value[i], path + "[" + std::to_string(i) + "]", numbers);
    }
  } else if (value.is_number()) {
    ++numbers;
    const double number = value.get<double>();
    EXPECT_TRUE(std::isfinite(number)) << path << " = " << number;
    const bool may_be_zero =
        path.find("cpu_pct") != std::string::npos || path.find("in_flight") != std::string::npos;
    if (may_be_zero) {
      EXPECT_GE(number, 0) << path;
    } else {
      EXPECT_GT(number, 0) << path;
    }
  }
}

TEST(Bench, SmokeRunMeasuresEveryFigure) {
  TempDir dir;
  const std::string json_path = dir.file("bench.json");
  ProcessMap started;
  const auto run = run_command({bin("simq-bench"), "--smoke", "--scaling-workers", "1,2", "--json",
                                json_path, "--png", dir.file("scaling.png")},
                               300s, &started);
  ASSERT_EQ(run.status, 0) << run.err;

  // The table: a header, and a row of every figure with a verdict.
  EXPECT_THAT(run.out, HasSubstr("| figure"));
  EXPECT_THAT(run.out, HasSubstr("| simq"));
  EXPECT_THAT(run.out, HasSubstr("| target"));
  for (const auto& figure : kFigures) EXPECT_THAT(run.out, HasSubstr("| " + figure)) << figure;
  EXPECT_THAT(run.out, HasSubstr("jobs/s"));
  EXPECT_THAT(run.out, ::testing::ContainsRegex("PASS|FAIL"));

  const Json report = Json::parse(read_file(json_path));
  ASSERT_TRUE(report.contains("figures")) << report.dump(2);
  const Json& figures = report["figures"];
  for (const auto& figure : kFigures) {
    ASSERT_TRUE(figures.contains(figure)) << figure << " missing: " << report.dump(2);
    int numbers = 0;
    expect_numbers(figures[figure], figure, numbers);
    EXPECT_GT(numbers, 0) << figure;
  }
  EXPECT_EQ(figures["throughput"]["jobs"], 2000);
  EXPECT_EQ(figures["latency"]["samples"], 50);
  EXPECT_EQ(figures["io"]["jobs"], 100);
  EXPECT_EQ(figures["io"]["slots"], 20);
  EXPECT_EQ(figures["grid"]["jobs"], 100000);
  ASSERT_EQ(figures["cpu"]["points"].size(), 2U);
  EXPECT_EQ(figures["cpu"]["points"][1]["workers"], 2);

  // Rows: one per figure at least, each a finite value; those with a target say pass or fail.
  ASSERT_TRUE(report["rows"].is_array());
  for (const auto& figure : kFigures) {
    bool found = false;
    for (const auto& row : report["rows"]) found = found || row["figure"] == figure;
    EXPECT_TRUE(found) << "no row for " << figure;
  }
  for (const auto& row : report["rows"]) {
    ASSERT_TRUE(row["value"].is_number()) << row.dump();
    EXPECT_TRUE(std::isfinite(row["value"].get<double>())) << row.dump();
    EXPECT_EQ(row["target"].is_null(), row["pass"].is_null()) << row.dump();
  }

  EXPECT_TRUE(wait_until([&] { return still_running(started).empty(); }, 5s))
      << "simq-bench left processes behind: " << ::testing::PrintToString(still_running(started));
}

TEST(Bench, HopsOfTheLatencyFigureFollowTheJobsPath) {
  TempDir dir;
  const std::string json_path = dir.file("bench.json");
  // Throughput first, as in a whole run: simq-bench submits (and passes stamps) untraced
  // before the latency figure traces.
  const auto run = run_command({bin("simq-bench"), "--smoke", "--figures", "throughput,latency",
                                "--hops", "--json", json_path, "--png", ""},
                               120s);
  ASSERT_EQ(run.status, 0) << run.err;
  EXPECT_THAT(run.out, HasSubstr("Where the round trip goes"));
  EXPECT_THAT(run.out, HasSubstr("| slot.started"));

  const Json latency = Json::parse(read_file(json_path))["figures"]["latency"];
  const Json& hops = latency["hops"];
  const std::vector<std::string> path = {"broker.received", "broker.recorded", "broker.dispatched",
                                         "worker.received", "slot.started",    "slot.finished",
                                         "writer.writing",  "writer.written",  "seen"};
  ASSERT_EQ(hops.size(), path.size()) << hops.dump(2);
  // Every job has every stamp, grouped by job; each stamp causes the next one on the path, so
  // their medians rise along it. "written" and "seen" both follow "writing" (Redis answers the
  // writer and the consumer for one write, in either order).
  double before = 0;
  for (size_t i = 0; i < path.size(); ++i) {
    EXPECT_EQ(hops[i]["point"], path[i]) << hops.dump(2);
    EXPECT_EQ(hops[i]["samples"], 50) << path[i];
    EXPECT_GT(hops[i]["step_us"].get<double>(), 0) << path[i];
    const double since = hops[i]["median_us"].get<double>();
    EXPECT_GT(since, before) << path[i] << ": " << hops.dump(2);
    if (path[i] != "writer.written") before = since;
  }
  // The last stamp is taken as the round trip's clock stops: their medians agree.
  const double p50_us = latency["p50_ms"].get<double>() * 1e3;
  EXPECT_NEAR(hops[path.size() - 1]["median_us"].get<double>(), p50_us, 0.2 * p50_us);
}

}  // namespace
}  // namespace simq::test
