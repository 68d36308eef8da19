// Unit tests of the scientific kernels beam and constrained_sample: known answers from beam
// optics and geometry, conservation laws, reproducibility, the example sweeps run in-process,
// and the exact messages users see for bad parameters and bad constraints. No sockets, no Redis.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <numbers>
#include <stop_token>
#include <string>
#include <vector>

#include "kernel.h"
#include "kernel_fixture.h"
#include "simq/sweep.h"

namespace simq {
namespace {

using ScienceKernelsTest = KernelFixture;

double relative(double a, double b) { return std::abs(a - b) / std::abs(b); }

// =======================================================================================
// beam

// A non-round beam with no solenoid: the parameters the drift tests start from.
Json drift_only() {
  return {{"particles", 20000},  {"seed", 3},           {"sigma_x", 1e-3}, {"sigma_y", 2e-3},
          {"emittance_x", 1e-6}, {"emittance_y", 3e-6}, {"drift1_m", 0.5}, {"drift2_m", 1.5}};
}

// The rigidity Bρ of a singly charged particle, T·m, from its kinetic energy and mass in MeV.
double rigidity(double kinetic_MeV, double mass_MeV) {
  const double total = kinetic_MeV + mass_MeV;
  return std::sqrt(total * total - mass_MeV * mass_MeV) / 299.792458;
}

TEST_F(ScienceKernelsTest, BeamRegisteredWithHelp) {
  for (const char* name : {"beam", "constrained_sample"}) {
    ASSERT_NE(registry_.find(name), nullptr) << name;
    const std::string_view help = registry_.find(name)->params_help();
    EXPECT_FALSE(help.empty()) << name;
    EXPECT_EQ(help.find('\n'), std::string_view::npos) << name;  // one line in --list-kernels
  }
}

// With exact_moments (the default) the bunch starts with exactly the requested moments, so
// a drift gives σ² = σ0² + s² σ'² to rounding, and the emittances are the requested ones.
TEST_F(ScienceKernelsTest, BeamDriftKeepsEmittancesAndGrowsTheSize) {
  const Json result = run("beam", drift_only());
  const double s = 2.0;  // drift1 + drift2
  EXPECT_LT(relative(result["initial_emittance_x"].get<double>(), 1e-6), 1e-9);
  EXPECT_LT(relative(result["initial_emittance_y"].get<double>(), 3e-6), 1e-9);
  EXPECT_LT(relative(result["emittance_x"].get<double>(), 1e-6), 1e-9);
  EXPECT_LT(relative(result["emittance_y"].get<double>(), 3e-6), 1e-9);
  EXPECT_LT(relative(result["emittance_4d"].get<double>(), 3e-12), 1e-9);
  const double divergence_x = 1e-6 / 1e-3;
  const double divergence_y = 3e-6 / 2e-3;
  EXPECT_LT(relative(result["sigma_x_m"].get<double>(),
                     std::sqrt(1e-6 + s * s * divergence_x * divergence_x)),
            1e-9);
  EXPECT_LT(relative(result["sigma_y_m"].get<double>(),
                     std::sqrt(4e-6 + s * s * divergence_y * divergence_y)),
            1e-9);
  EXPECT_EQ(result["particles"], 20000);
  // Diverging from a waist, the smallest radius along drift2 is at its start.
  EXPECT_EQ(result["waist_m"].get<double>(), 0.0);
}

// A plain Gaussian sample: the sample's emittances are still conserved exactly, and the size
// matches the formula within the statistical error of an rms from N particles (~sqrt(1/2N)).
TEST_F(ScienceKernelsTest, BeamDriftWithAPlainSampleMatchesWithinStatistics) {
  Json params = drift_only();
  params["exact_moments"] = false;
  params["particles"] = 100000;
  const Json result = run("beam", params);
  EXPECT_LT(
      relative(result["emittance_x"].get<double>(), result["initial_emittance_x"].get<double>()),
      1e-9);
  EXPECT_LT(
      relative(result["emittance_y"].get<double>(), result["initial_emittance_y"].get<double>()),
      1e-9);
  EXPECT_GT(relative(result["initial_emittance_x"].get<double>(), 1e-6), 1e-6);  // not exact
  EXPECT_LT(relative(result["initial_emittance_x"].get<double>(), 1e-6), 0.02);
  const double expected_x = std::sqrt(1e-6 + 4.0 * 1e-6);
  const double statistical = std::sqrt(1.0 / (2 * 100000.0));  // relative rms error of an rms
  EXPECT_LT(relative(result["sigma_x_m"].get<double>(), expected_x), 5 * statistical);
}

// B = 0 is the same as no solenoid: the same numbers, bit for bit.
TEST_F(ScienceKernelsTest, BeamZeroFieldIsNoSolenoid) {
  Json params = drift_only();
  const Json without = run("beam", params);
  params["solenoid_B_T"] = 0;
  params["solenoid_L_m"] = 0.3;
  params["energy_MeV"] = 10;
  const Json with = run("beam", params);
  for (const char* key : {"sigma_x_m", "sigma_y_m", "emittance_x", "emittance_y", "waist_m"}) {
    EXPECT_EQ(with[key], without[key]) << key;
  }
  EXPECT_EQ(with["solenoid_inverse_focal_m"].get<double>(), 0.0);
}

// A solenoid rotates the beam; a round, uncoupled beam looks the same at every angle, so
// linear optics keeps its projected emittances.
TEST_F(ScienceKernelsTest, BeamRoundBeamKeepsProjectedEmittancesThroughASolenoid) {
  const Json result = run("beam", {{"sigma_x", 1e-3},
                                   {"sigma_y", 1e-3},
                                   {"emittance_x", 1e-6},
                                   {"emittance_y", 1e-6},
                                   {"energy_MeV", 10},
                                   {"drift1_m", 1.0},
                                   {"solenoid_B_T", 3.0},
                                   {"solenoid_L_m", 0.2},
                                   {"drift2_m", 2.0}});
  EXPECT_GT(result["solenoid_rotation_rad"].get<double>(), 0.5);  // a real rotation
  EXPECT_LT(relative(result["emittance_x"].get<double>(), 1e-6), 1e-6);
  EXPECT_LT(relative(result["emittance_y"].get<double>(), 1e-6), 1e-6);
  EXPECT_LT(relative(result["sigma_x_m"].get<double>(), result["sigma_y_m"].get<double>()), 1e-6);
}

// The map is symplectic, so sqrt(det Σ4) is conserved for any beam, while a non-round beam's
// projected emittances change: the solenoid couples x and y.
TEST_F(ScienceKernelsTest, BeamFourDimensionalEmittanceIsConservedForAnyInput) {
  const std::vector<Json> cases = {
      {{"sigma_x", 1e-3}, {"sigma_y", 3e-3}, {"emittance_x", 1e-6}, {"emittance_y", 5e-6}},
      {{"sigma_x", 2e-3},
       {"sigma_y", 0.5e-3},
       {"emittance_x", 4e-6},
       {"emittance_y", 1e-6},
       {"exact_moments", false},
       {"seed", 9}},
      {{"sigma_x", 1e-3},
       {"sigma_y", 1e-3},
       {"emittance_x", 1e-6},
       {"emittance_y", 1e-6},
       {"exact_moments", false},
       {"particles", 7}},
  };
  for (const double k : {0.5, 2.0, -3.0}) {
    for (Json params : cases) {
      params.update(
          Json{{"solenoid_k", k}, {"solenoid_L_m", 0.3}, {"drift1_m", 0.7}, {"drift2_m", 1.1}});
      const Json result = run("beam", params);
      EXPECT_LT(relative(result["emittance_4d"].get<double>(),
                         result["initial_emittance_4d"].get<double>()),
                1e-9)
          << params.dump();
    }
  }
  Json coupled = cases[0];
  coupled.update(
      Json{{"solenoid_k", 2.0}, {"solenoid_L_m", 0.3}, {"drift1_m", 0.7}, {"drift2_m", 1.1}});
  const Json result = run("beam", coupled);
  EXPECT_GT(relative(result["emittance_x"].get<double>(), 1e-6), 0.1);
}

// A beam from a narrow waist (β* = σ²/ε = 2.5 cm, much shorter than the 1 m object distance)
// is focused to the thin-lens image of that waist; the moments give the exact Gaussian-beam
// answer from the Twiss parameters.
TEST_F(ScienceKernelsTest, BeamWaistIsAtTheThinLensImage) {
  const double sigma = 0.5e-3;
  const double emittance = 1e-5;
  const double object = 1.0;  // drift1, m
  const double focal = 0.5;   // m
  const double length = 0.1;  // solenoid, m
  const double brho = rigidity(10, 938.272);
  const double field = 2 * brho * std::sqrt(1 / (focal * length));  // 1/f = (B/2Bρ)² L
  const Json result = run("beam", {{"sigma_x", sigma},
                                   {"sigma_y", sigma},
                                   {"emittance_x", emittance},
                                   {"emittance_y", emittance},
                                   {"energy_MeV", 10},
                                   {"drift1_m", object},
                                   {"solenoid_B_T", field},
                                   {"solenoid_L_m", length},
                                   {"drift2_m", 3.0},
                                   {"scan_points", 31}});
  EXPECT_LT(relative(result["rigidity_Tm"].get<double>(), brho), 1e-12);
  EXPECT_LT(relative(result["solenoid_inverse_focal_m"].get<double>(), 1 / focal), 1e-12);
  EXPECT_LT(relative(result["solenoid_rotation_rad"].get<double>(), field * length / (2 * brho)),
            1e-12);

  const double image = 1 / (1 / focal - 1 / object);  // 1 m
  const double waist = result["waist_m"].get<double>();
  EXPECT_NEAR(waist, image, 0.03 * image);

  const double beta_star = sigma * sigma / emittance;
  const double beta = beta_star + object * object / beta_star;  // at the solenoid
  const double alpha = -object / beta_star + beta / focal;      // after its kick
  const double gamma = (1 + alpha * alpha) / beta;              // β is unchanged by a kick
  EXPECT_LT(relative(waist, alpha / gamma), 1e-6);
  // At the waist β = 1/γ in both planes: radius² = 2 ε / γ.
  EXPECT_LT(relative(result["waist_radius_m"].get<double>(), std::sqrt(2 * emittance / gamma)),
            1e-6);

  const Json& scan = result["scan"];
  ASSERT_EQ(scan["s_m"].size(), 31U);
  EXPECT_EQ(scan["s_m"][0].get<double>(), 0.0);
  EXPECT_EQ(scan["s_m"][30].get<double>(), 3.0);
  EXPECT_LT(relative(scan["sigma_x_m"][30].get<double>(), result["sigma_x_m"].get<double>()), 1e-9);
  size_t smallest = 0;
  for (size_t i = 0; i < 31; ++i) {
    if (scan["sigma_x_m"][i].get<double>() < scan["sigma_x_m"][smallest].get<double>()) {
      smallest = i;
    }
  }
  EXPECT_EQ(smallest, 10U);  // s = 1.0 m
}

TEST_F(ScienceKernelsTest, BeamIsDeterministicForASeed) {
  Json params = drift_only();
  params.update(Json{{"solenoid_k", 2.0}, {"solenoid_L_m", 0.3}, {"exact_moments", false}});
  const Json first = run("beam", params);
  EXPECT_EQ(first.dump(), run("beam", params).dump());
  params["seed"] = 4;
  EXPECT_NE(first["sigma_x_m"], run("beam", params)["sigma_x_m"]);
  params.erase("seed");
  Json one = params;
  one["seed"] = 1;
  EXPECT_EQ(run("beam", params).dump(), run("beam", one).dump());  // default seed 1
}

TEST_F(ScienceKernelsTest, BeamStopsWhenAsked) {
  std::stop_source stop;
  stop.request_stop();
  const KernelContext ctx{JobRef{"s1", 0, 1}, stop.get_token()};
  EXPECT_THROW(kernel("beam").run(drift_only(), ctx), KernelCancelled);
}

TEST_F(ScienceKernelsTest, BeamBadParams) {
  const auto error_with = [&](const Json& change) {
    Json params = drift_only();
    params.update(change);
    return error_of("beam", params);
  };
  const auto error_without = [&](const char* key) {
    Json params = drift_only();
    params.erase(key);
    return error_of("beam", params);
  };
  EXPECT_EQ(error_without("sigma_x"), "param 'sigma_x' is missing");
  EXPECT_EQ(error_without("emittance_y"), "param 'emittance_y' is missing");
  EXPECT_EQ(error_without("drift2_m"), "param 'drift2_m' is missing");
  EXPECT_EQ(error_with({{"sigma_x", 0}}), "param 'sigma_x': expected a number > 0, got 0");
  EXPECT_EQ(error_with({{"sigma_y", -1}}), "param 'sigma_y': expected a number > 0, got -1");
  EXPECT_EQ(error_with({{"emittance_x", "1e-6"}}),
            R"(param 'emittance_x': expected number, got string "1e-6")");
  EXPECT_EQ(error_with({{"drift1_m", -0.5}}), "param 'drift1_m': expected a number >= 0, got -0.5");
  EXPECT_EQ(error_with({{"particles", 0}}), "param 'particles': expected 1 to 10000000, got 0");
  EXPECT_EQ(error_with({{"particles", 10'000'001}}),
            "param 'particles': expected 1 to 10000000, got 10000001");
  EXPECT_EQ(error_with({{"particles", 4}}),
            "param 'particles': exact_moments needs at least 5 particles, got 4 (or set "
            "exact_moments = false)");
  EXPECT_EQ(error_with({{"particles", 4}, {"exact_moments", false}}), "");
  EXPECT_EQ(error_with({{"exact_moments", "yes"}}),
            R"(param 'exact_moments': expected boolean, got string "yes")");
  EXPECT_EQ(error_with({{"seed", 0.5}}), "param 'seed': expected integer, got float 0.5");
  EXPECT_EQ(error_with({{"solenoid_k", 1}, {"solenoid_B_T", 1}, {"solenoid_L_m", 0.1}}),
            "params 'solenoid_k' and 'solenoid_B_T': give one or the other, not both");
  EXPECT_EQ(error_with({{"solenoid_B_T", 1}, {"solenoid_L_m", 0.1}}),
            "param 'energy_MeV' is missing");
  EXPECT_EQ(error_with({{"solenoid_B_T", 1}, {"solenoid_L_m", 0.1}, {"energy_MeV", 0}}),
            "param 'energy_MeV': expected a number > 0, got 0");
  EXPECT_EQ(error_with({{"energy_MeV", 10}, {"mass_MeV", -1}}),
            "param 'mass_MeV': expected a number > 0, got -1");
  EXPECT_EQ(error_with({{"solenoid_k", 1}}), "param 'solenoid_L_m' is missing");
  EXPECT_EQ(error_with({{"solenoid_k", 1}, {"solenoid_L_m", -1}}),
            "param 'solenoid_L_m': expected a number >= 0, got -1");
  EXPECT_EQ(error_with({{"solenoid_k", "strong"}, {"solenoid_L_m", 1}}),
            R"(param 'solenoid_k': expected number, got string "strong")");
  EXPECT_EQ(error_with({{"solenoid_L_m", 0.1}}),
            "param 'solenoid_L_m': given without 'solenoid_B_T' or 'solenoid_k' (omit all three "
            "for no solenoid)");
  EXPECT_EQ(error_with({{"scan_points", 1}}),
            "param 'scan_points': expected 0 (no scan) or 2 to 10000, got 1");
  EXPECT_EQ(error_with({{"scan_points", -2}}),
            "param 'scan_points': expected 0 (no scan) or 2 to 10000, got -2");
  EXPECT_EQ(error_with({{"scan_points", 10001}}),
            "param 'scan_points': expected 0 (no scan) or 2 to 10000, got 10001");
  EXPECT_EQ(error_of("beam", Json::array()), "params: expected object, got array []");
}

// The example sweep, run job by job in-process: the final radius has its minimum inside the
// scanned field range, where the solenoid images the initial waist near the end of the line.
TEST_F(ScienceKernelsTest, BeamExampleScanHasAFocusingMinimum) {
  const auto path = std::filesystem::path(SIMQ_SOURCE_DIR) / "examples" / "beam_solenoid_scan.toml";
  const SweepSpec sweep = load_sweep_file(path.string());
  ASSERT_EQ(sweep.kernel, "beam");
  ASSERT_GE(sweep.total(), 5U);
  std::vector<double> radius;
  for (uint64_t i = 0; i < sweep.total(); ++i) {
    radius.push_back(run("beam", sweep.params_at(i))["radius_m"].get<double>());
  }
  const auto smallest = static_cast<size_t>(
      std::distance(radius.begin(), std::min_element(radius.begin(), radius.end())));
  EXPECT_GT(smallest, 0U);
  EXPECT_LT(smallest, radius.size() - 1);
  EXPECT_LT(radius[smallest], 0.6 * radius.front());
  EXPECT_LT(radius[smallest], 0.6 * radius.back());
}

// =======================================================================================
// constrained_sample

// The fraction of draws accepted is within 3 binomial standard deviations of `expected`.
void expect_rate(const Json& result, double expected) {
  const auto draws = result["draws"].get<double>();
  const double rate = result["acceptance_rate"].get<double>();
  EXPECT_EQ(rate, result["accepted"].get<double>() / draws);
  EXPECT_NEAR(rate, expected, 3 * std::sqrt(expected * (1 - expected) / draws)) << result.dump();
}

TEST_F(ScienceKernelsTest, SampleTriangleHasRateOneHalf) {
  const Json result = run("constrained_sample", {{"dims", 2},
                                                 {"lower", 0},
                                                 {"upper", 1},
                                                 {"samples", 100000},
                                                 {"seed", 1},
                                                 {"constraints", {"x0 + x1 <= 1"}}});
  EXPECT_EQ(result["accepted"], 100000);
  EXPECT_EQ(result["complete"], true);
  expect_rate(result, 0.5);
  // Uniform on the triangle: each coordinate has mean 1/3 and standard deviation sqrt(1/18).
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_NEAR(result["mean"][i].get<double>(), 1.0 / 3, 0.005);
    EXPECT_NEAR(result["std"][i].get<double>(), std::sqrt(1.0 / 18), 0.005);
    EXPECT_GE(result["min"][i].get<double>(), 0.0);
    EXPECT_LE(result["max"][i].get<double>(), 1.0);
  }
}

TEST_F(ScienceKernelsTest, SampleSimplexHasRateOneSixth) {
  const Json result = run("constrained_sample", {{"dims", 3},
                                                 {"lower", {0, 0, 0}},
                                                 {"upper", {1, 1, 1}},
                                                 {"samples", 50000},
                                                 {"constraints", {"x0+x1+x2 <= 1"}}});
  expect_rate(result, 1.0 / 6);
}

TEST_F(ScienceKernelsTest, SampleDiscHasRatePiOverFour) {
  const Json params = {{"dims", 2},         {"lower", -1}, {"upper", 1},
                       {"samples", 100000}, {"seed", 5},   {"constraints", {"x0^2 + x1^2 <= 1"}}};
  const Json result = run("constrained_sample", params);
  expect_rate(result, std::numbers::pi / 4);
  EXPECT_NEAR(result["mean"][0].get<double>(), 0.0, 0.01);
  EXPECT_NEAR(result["std"][1].get<double>(), 0.5, 0.005);  // <x²> = 1/4 on the unit disc
  // The same disc written differently accepts the same draws.
  for (const char* disc : {"x0**2 + x1**2 < 1", "sqrt(x0*x0 + x1*x1) <= 1", "1 >= x1^2 + x0^2"}) {
    Json other = params;
    other["constraints"] = {disc};
    EXPECT_EQ(run("constrained_sample", other)["draws"], result["draws"]) << disc;
  }
}

// The issue's example: all of [0,1]^4 with x0+x1+x2+x3 <= 1, 0.1 <= x3/(x0+x1) <= 0.15 and
// x2 >= 0.5. With r = 1 - x2 and u = x0 + x1 (density u), the volume is
//   ∫_0^½ dr [∫_0^{r/1.15} 0.05 u² du + ∫_{r/1.15}^{r/1.1} (r - 1.1 u) u du]  = c / 64,
// c = 0.05 / (3·1.15³) + (1.1⁻² - 1.15⁻²)/2 - 1.1 (1.1⁻³ - 1.15⁻³)/3  ≈ 1.83e-4 · 64.
TEST_F(ScienceKernelsTest, SampleIssueExampleMeetsEveryConstraint) {
  const Json result = run(
      "constrained_sample",
      {{"dims", 4},
       {"lower", 0},
       {"upper", 1},
       {"samples", 1000},
       {"max_draws", 20'000'000},
       {"seed", 2},
       {"constraints",
        {"1 - x0 - x1 - x2 - x3 >= 0", "x3/(x0+x1) >= 0.1", "x3/(x0+x1) <= 0.15", "x2 >= 0.5"}}});
  ASSERT_EQ(result["complete"], true) << result.dump();
  EXPECT_EQ(result["accepted"], 1000);
  const double c = 0.05 / (3 * std::pow(1.15, 3)) + (std::pow(1.1, -2) - std::pow(1.15, -2)) / 2 -
                   1.1 * (std::pow(1.1, -3) - std::pow(1.15, -3)) / 3;
  expect_rate(result, c / 64);
  EXPECT_GE(result["min"][2].get<double>(), 0.5);  // x2 >= 0.5
  EXPECT_LE(result["max"][0].get<double>(), 0.5);  // x0 <= 1 - x2
  EXPECT_LE(result["max"][1].get<double>(), 0.5);
  EXPECT_LE(result["max"][3].get<double>(), 0.15 * 0.5);  // x3 <= 0.15 (x0 + x1) <= 0.075
  EXPECT_GT(result["min"][3].get<double>(), 0.0);
}

TEST_F(ScienceKernelsTest, SampleIsDeterministicForASeed) {
  Json params = {{"dims", 3},       {"lower", {-1, 0, 2}}, {"upper", {1, 2, 3}},
                 {"samples", 1000}, {"seed", 11},          {"constraints", {"x0 * x1 < x2 - 2"}}};
  const Json first = run("constrained_sample", params);
  EXPECT_EQ(first.dump(), run("constrained_sample", params).dump());
  params["seed"] = 12;
  EXPECT_NE(first["mean"], run("constrained_sample", params)["mean"]);
  params.erase("seed");
  Json zero = params;
  zero["seed"] = 0;
  EXPECT_EQ(run("constrained_sample", params).dump(), run("constrained_sample", zero).dump());
}

TEST_F(ScienceKernelsTest, SampleWithoutConstraintsAcceptsEveryDraw) {
  const Json result = run("constrained_sample",
                          {{"dims", 2}, {"lower", {2, -3}}, {"upper", {4, -1}}, {"samples", 1000}});
  EXPECT_EQ(result["draws"], 1000);
  EXPECT_EQ(result["acceptance_rate"].get<double>(), 1.0);
  EXPECT_GE(result["min"][0].get<double>(), 2.0);
  EXPECT_LT(result["max"][1].get<double>(), -1.0);
}

// max_draws (default 100 x samples) ends a job that cannot find its samples: not an error.
TEST_F(ScienceKernelsTest, SampleRunningOutOfDrawsIsIncomplete) {
  const Json result =
      run("constrained_sample",
          {{"dims", 1}, {"lower", 0}, {"upper", 1}, {"samples", 10}, {"constraints", {"x0 > 2"}}});
  EXPECT_EQ(result["accepted"], 0);
  EXPECT_EQ(result["draws"], 1000);
  EXPECT_EQ(result["complete"], false);
  EXPECT_EQ(result["acceptance_rate"].get<double>(), 0.0);
  EXPECT_TRUE(result["mean"].is_null());
  EXPECT_TRUE(result["max"].is_null());
  const Json limited = run("constrained_sample", {{"dims", 1},
                                                  {"lower", 0},
                                                  {"upper", 1},
                                                  {"samples", 100},
                                                  {"max_draws", 50},
                                                  {"constraints", {"x0 < 0.5"}}});
  EXPECT_EQ(limited["draws"], 50);
  EXPECT_EQ(limited["complete"], false);
  EXPECT_GT(limited["accepted"].get<int>(), 0);
}

// Division by zero, NaN and infinities reject the draw instead of comparing as true.
TEST_F(ScienceKernelsTest, SampleRejectsDrawsWhereAConstraintIsUndefined) {
  for (const char* undefined : {"1/(x0 - x0) >= 0", "-1/(x0 - x0) <= 0", "log(x0 - x0) < 0",
                                "sqrt(-1 - x0) < 5", "exp(1000 * (x0 + 1)) > 0", "x0 >= 0 / 0"}) {
    const Json result = run("constrained_sample", {{"dims", 1},
                                                   {"lower", 0},
                                                   {"upper", 1},
                                                   {"samples", 10},
                                                   {"max_draws", 100},
                                                   {"constraints", {undefined}}});
    EXPECT_EQ(result["accepted"], 0) << undefined;
  }
}

// Precedence and associativity, by sampling x0 in [0, 1): each form, parsed right, accepts
// exactly the draws that "x0 <= 0.5" (or "x0 >= 0.5") does; parsed wrong, it would accept all.
TEST_F(ScienceKernelsTest, SampleExpressionsFollowTheUsualPrecedence) {
  const auto accepted = [&](const std::string& constraint) {
    return run("constrained_sample", {{"dims", 1},
                                      {"lower", 0},
                                      {"upper", 1},
                                      {"samples", 100000},
                                      {"max_draws", 10000},
                                      {"seed", 3},
                                      {"constraints", {constraint}}})["accepted"]
        .get<int>();
  };
  const int below = accepted("x0 <= 0.5");
  const int above = accepted("x0 >= 0.5");
  EXPECT_EQ(below + above, 10000);
  EXPECT_NEAR(below, 5000, 300);
  for (const char* same :
       {"-x0^2 >= -0.25",       // -(x0^2), not (-x0)^2
        "x0 * 2^3^2 <= 256",    // 2^(3^2) = 512, not (2^3)^2 = 64
        "x0 * 2**3**2 <= 256",  // the same with **
        "x0 <= 2^-1",           // a sign in an exponent
        "1 - x0 - 0.5 >= 0",    // (1 - x0) - 0.5
        "x0 / 2 / 2 <= 0.125",  // (x0 / 2) / 2
        "2 + 2 * x0 <= 3",      // 2 + (2 * x0)
        "(1 + 1) * x0 <= 1",    // parentheses
        "x0 <= 5e-1", "x0 <= .5", "x0 <= 0.05E+1", "--x0 <= +0.5", "abs(x0 - 1) >= 0.5",
        "exp(0) * x0 <= cos(0) / 2", "sin(0) + x0 <= 0.5", "x0 <= 0.5\t"}) {
    EXPECT_EQ(accepted(same), below) << same;
  }
  EXPECT_EQ(accepted("x0 > 0.5"), above);
  EXPECT_EQ(accepted("0.5 < x0"), above);
  EXPECT_EQ(accepted("log(x0) >= log(0.5)"), above);
  EXPECT_EQ(accepted("sqrt(x0) >= sqrt(0.5)"), above);
}

// Every parse error names the constraint, the column and what was expected.
TEST_F(ScienceKernelsTest, SampleConstraintErrors) {
  const auto error = [&](const std::string& constraint, int dims = 4) {
    return error_of("constrained_sample", {{"dims", dims},
                                           {"lower", 0},
                                           {"upper", 1},
                                           {"samples", 1},
                                           {"constraints", {"x0 >= 0", constraint}}});
  };
  EXPECT_EQ(error("x0 + ()"),
            "constraints[1]: at column 7: expected a number, a variable x0..x3 or '(', got ')'");
  EXPECT_EQ(error(""),
            "constraints[1]: at column 1: expected a number, a variable x0..x3 or '(', got end "
            "of constraint");
  EXPECT_EQ(error("x0 >= ", 1),
            "constraints[1]: at column 7: expected a number, the variable x0 or '(', got end of "
            "constraint");
  EXPECT_EQ(error("x0 * * x1 > 0"),
            "constraints[1]: at column 6: expected a number, a variable x0..x3 or '(', got '*'");
  EXPECT_EQ(error("x0 + x1"),
            "constraints[1]: at column 8: expected an operator or a comparison (>=, <=, >, <), "
            "got end of constraint");
  EXPECT_EQ(error("x0 = 1"),
            "constraints[1]: at column 4: expected an operator or a comparison (>=, <=, >, <), "
            "got '='");
  EXPECT_EQ(error("x0 == 1"),
            "constraints[1]: at column 4: expected an operator or a comparison (>=, <=, >, <), "
            "got '=='");
  EXPECT_EQ(error("x0 $ 1"),
            "constraints[1]: at column 4: expected an operator or a comparison (>=, <=, >, <), "
            "got '$'");
  EXPECT_EQ(error("2 x0 > 1"),
            "constraints[1]: at column 3: expected an operator or a comparison (>=, <=, >, <), "
            "got 'x0'");
  EXPECT_EQ(error("0.1 <= x3 <= 0.2"),
            "constraints[1]: at column 11: a second comparison '<=' (a constraint has one: write "
            "two constraints)");
  EXPECT_EQ(error("x0 >= 1 )"),
            "constraints[1]: at column 9: expected an operator or the end, got ')'");
  EXPECT_EQ(error("(x0 + 1 >= 0"),
            "constraints[1]: at column 9: expected an operator or ')' to close the '(' at column "
            "1, got '>='");
  EXPECT_EQ(error("sqrt(x0 >= 0"),
            "constraints[1]: at column 9: expected an operator or ')' to close the '(' at column "
            "5, got '>='");
  EXPECT_EQ(error("sqrt x0 >= 0"),
            "constraints[1]: at column 6: expected '(' after sqrt, got 'x0'");
  EXPECT_EQ(error("x4 >= 0"),
            "constraints[1]: at column 1: variable x4 is out of range: dims is 4, so the "
            "variables are x0..x3");
  EXPECT_EQ(error("1 < x1", 1),
            "constraints[1]: at column 5: variable x1 is out of range: dims is 1, so the only "
            "variable is x0");
  EXPECT_EQ(error("x99999999999999999999999 >= 0"),
            "constraints[1]: at column 1: variable x99999999999999999999999 is out of range: "
            "dims is 4, so the variables are x0..x3");
  EXPECT_EQ(error("y >= 0"),
            "constraints[1]: at column 1: unknown name 'y': expected a variable x0..x3 or a "
            "function sqrt, exp, log, sin, cos, abs");
  EXPECT_EQ(error("X0 >= 0"),
            "constraints[1]: at column 1: unknown name 'X0': expected a variable x0..x3 or a "
            "function sqrt, exp, log, sin, cos, abs");
  EXPECT_EQ(error("x0 >= pi"),
            "constraints[1]: at column 7: unknown name 'pi': expected a variable x0..x3 or a "
            "function sqrt, exp, log, sin, cos, abs");
  EXPECT_EQ(error("1.2.3 >= x0"), "constraints[1]: at column 1: '1.2.3' is not a number");
  EXPECT_EQ(error("x0 >= 1e999"), "constraints[1]: at column 7: number '1e999' is out of range");
  EXPECT_EQ(error(std::string(101, '(') + "x0" + std::string(101, ')') + " > 0"),
            "constraints[1]: at column 101: nested deeper than 100 levels");
  EXPECT_EQ(error(std::string(200, '-') + "x0 > 0"),
            "constraints[1]: at column 101: nested deeper than 100 levels");
  EXPECT_EQ(error(std::string(99, '(') + "x0" + std::string(99, ')') + " > 0"), "");
}

TEST_F(ScienceKernelsTest, SampleBadParams) {
  const Json good = {{"dims", 2}, {"lower", 0}, {"upper", 1}, {"samples", 10}};
  const auto error_with = [&](const Json& change) {
    Json params = good;
    params.update(change);
    return error_of("constrained_sample", params);
  };
  EXPECT_EQ(error_of("constrained_sample", good), "");
  EXPECT_EQ(error_of("constrained_sample", {{"lower", 0}, {"upper", 1}, {"samples", 10}}),
            "param 'dims' is missing");
  EXPECT_EQ(error_with({{"dims", 0}}), "param 'dims': expected 1 to 64, got 0");
  EXPECT_EQ(error_with({{"dims", 65}}), "param 'dims': expected 1 to 64, got 65");
  EXPECT_EQ(error_of("constrained_sample", {{"dims", 2}, {"upper", 1}, {"samples", 10}}),
            "param 'lower' is missing");
  EXPECT_EQ(error_with({{"lower", {0, 0, 0}}}),
            "param 'lower': expected a number or an array of 2 numbers, got array [0,0,0]");
  EXPECT_EQ(error_with({{"upper", "1"}}),
            R"(param 'upper': expected a number or an array of 2 numbers, got string "1")");
  EXPECT_EQ(error_with({{"lower", {0, "a"}}}),
            R"(param 'lower[1]': expected finite number, got string "a")");
  EXPECT_EQ(error_with({{"lower", {0, 1}}}),
            "params 'lower' and 'upper': expected lower < upper in every dimension, got "
            "lower[1] = 1, upper[1] = 1");
  EXPECT_EQ(error_with({{"lower", -1e308}, {"upper", 1e308}}),
            "params 'lower' and 'upper': expected lower < upper in every dimension, got "
            "lower[0] = -1e+308, upper[0] = 1e+308");
  EXPECT_EQ(error_with({{"samples", 0}}), "param 'samples': expected 1 to 10000000, got 0");
  EXPECT_EQ(error_with({{"max_draws", 0}}), "param 'max_draws': expected 1 to 100000000000, got 0");
  EXPECT_EQ(error_with({{"seed", "x"}}), R"(param 'seed': expected integer, got string "x")");
  EXPECT_EQ(error_with({{"constraints", "x0 > 1"}}),
            R"(param 'constraints': expected array of strings, got string "x0 > 1")");
  EXPECT_EQ(error_with({{"constraints", {"x0 > 0", 3}}}),
            "param 'constraints[1]': expected string, got integer 3");
  EXPECT_EQ(error_with({{"constraints", Json(std::vector<std::string>(1001, "x0 > 0"))}}),
            "param 'constraints': expected at most 1000 constraints, got 1001");
  EXPECT_EQ(error_with({{"constraints", {"x0 > 0", std::string(10'001, ' ')}}}),
            "constraints[1]: expected at most 10000 characters, got 10001");
}

TEST_F(ScienceKernelsTest, SampleStopsWhenAsked) {
  std::stop_source stop;
  stop.request_stop();
  const KernelContext ctx{JobRef{"s1", 0, 1}, stop.get_token()};
  EXPECT_THROW(kernel("constrained_sample")
                   .run({{"dims", 1}, {"lower", 0}, {"upper", 1}, {"samples", 10}}, ctx),
               KernelCancelled);
}

// The example sweep's jobs complete and agree with the analytic acceptance rate.
TEST_F(ScienceKernelsTest, SampleExampleFileRuns) {
  const auto path = std::filesystem::path(SIMQ_SOURCE_DIR) / "examples" / "constrained_sample.toml";
  const SweepSpec sweep = load_sweep_file(path.string());
  ASSERT_EQ(sweep.kernel, "constrained_sample");
  ASSERT_GE(sweep.total(), 2U);
  const Json result = run("constrained_sample", sweep.params_at(0));
  EXPECT_EQ(result["complete"], true);
  EXPECT_GE(result["min"][2].get<double>(), 0.5);
  EXPECT_NE(sweep.params_at(0)["seed"], sweep.params_at(1)["seed"]);
}

}  // namespace
}  // namespace simq
