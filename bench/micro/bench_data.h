// Inputs shared by simq-micro's benchmarks: a typical sweep spec, grids of 1 to 6 axes, and
// job lists as the broker sends them. Plain functions returning fresh values.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "simq/job.h"
#include "simq/json.h"
#include "simq/sweep.h"

namespace simq::bench {

// A sweep id as new_sweep_id() makes them: 12 characters, short enough to need no heap.
inline const std::string kSweepId = "lzx4k2ab9q1c";

// A typical sweep in its normalized JSON form (SweepSpec::to_json()): a beam-line kernel with
// ten constants and three axes (linspace, range, list), 21 * 5 * 3 = 315 jobs.
inline Json typical_spec_json() {
  return Json::parse(R"({
    "name": "beam-solenoid-scan", "kernel": "beam",
    "params": {"particles": 100000, "seed": 1, "sigma_x": 0.001, "sigma_y": 0.001,
               "emittance_x": 1e-06, "emittance_y": 1e-06, "drift1_m": 1.0,
               "solenoid_L_m": 0.2, "drift2_m": 2.0, "species": "proton"},
    "grid": [{"name": "solenoid_B_T", "linspace": [0.0, 4.0, 21]},
             {"name": "repeat", "range": [1, 6, 1]},
             {"name": "energy_MeV", "list": [1.0, 10.0, 100.0]}],
    "options": {"max_attempts": 3, "timeout_s": 600.0, "backoff_s": 1.0,
                "backoff_max_s": 60.0, "retry_errors": false}
  })");
}

inline SweepSpec typical_spec() { return SweepSpec::from_json(typical_spec_json(), "bench"); }

// A sweep of four constants and the first `axes` (1 to 6) of: an integer range (1000), a
// linspace (101), a logspace (31), a list of strings (3), a float range (100), a list of
// integers (8). 1 axis: 1000 jobs; 3: 3.1 * 10^6; 6: 7.5 * 10^9.
inline SweepSpec spec_with_axes(size_t axes) {
  const Json all = Json::parse(R"([
    {"name": "n", "range": [0, 1000, 1]},
    {"name": "B", "linspace": [0.0, 4.0, 101]},
    {"name": "dt", "logspace": [-6.0, -3.0, 31]},
    {"name": "mode", "list": ["fast", "exact", "hybrid"]},
    {"name": "x", "range": [0.0, 1.0, 0.01]},
    {"name": "seed", "list": [1, 2, 3, 4, 5, 6, 7, 8]}
  ])");
  Json spec = Json::parse(R"({"kernel": "noop", "params": {"particles": 100000,
    "energy_MeV": 10.0, "label": "scan", "verbose": false}, "grid": []})");
  for (size_t i = 0; i < axes && i < all.size(); ++i) spec["grid"].push_back(all[i]);
  return SweepSpec::from_json(spec, "bench");
}

// Jobs `first`.. of the sweep, attempt 1, as one DISPATCH carries them.
inline std::vector<JobRef> job_list(size_t count, uint64_t first = 1'000'000) {
  std::vector<JobRef> jobs;
  jobs.reserve(count);
  for (size_t i = 0; i < count; ++i) jobs.push_back(JobRef{kSweepId, first + i, 1});
  return jobs;
}

}  // namespace simq::bench
