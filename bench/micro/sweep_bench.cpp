// Sweep expansion benchmarks: SweepSpec::params_at by number of axes, over sequential and
// random job indices (items = jobs expanded); from_json of a typical spec; total().
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "bench_data.h"
#include "simq/sweep.h"

namespace simq::bench {
namespace {

// Args: {axes, random}. random = 0 walks jobs 0, 1, 2... as the broker hands them out;
// random = 1 visits indices spread over the whole grid (a retry, `simq get`).
void BM_ParamsAt(benchmark::State& state) {
  const SweepSpec spec = spec_with_axes(static_cast<size_t>(state.range(0)));
  const uint64_t total = spec.total();
  std::vector<uint64_t> indices(4096);
  if (state.range(1) != 0) {
    std::mt19937_64 random(42);
    std::uniform_int_distribution<uint64_t> pick(0, total - 1);
    for (uint64_t& index : indices) index = pick(random);
  } else {
    for (size_t i = 0; i < indices.size(); ++i) indices[i] = i % total;
  }
  size_t next = 0;
  for (auto _ : state) {
    const Json params = spec.params_at(indices[next]);
    benchmark::DoNotOptimize(&params);
    next = (next + 1) % indices.size();
  }
  // Every job has each constant and one value per axis (no name is both).
  if (spec.params_at(1).size() != spec.params.size() + spec.grid.size()) {
    state.SkipWithError("params_at returned the wrong number of parameters");
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["jobs_in_sweep"] = static_cast<double>(total);
}
BENCHMARK(BM_ParamsAt)->ArgsProduct({{1, 3, 6}, {0, 1}})->ArgNames({"axes", "random"});

void BM_SweepFromJson(benchmark::State& state) {
  const Json json = typical_spec_json();
  for (auto _ : state) {
    const SweepSpec spec = SweepSpec::from_json(json, "SUBMIT");
    benchmark::DoNotOptimize(spec.grid.data());
  }
  if (SweepSpec::from_json(json, "SUBMIT").total() != 315) {
    state.SkipWithError("typical spec should have 315 jobs");
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_SweepFromJson);

void BM_SweepTotal(benchmark::State& state) {
  const SweepSpec spec = spec_with_axes(static_cast<size_t>(state.range(0)));
  for (auto _ : state) {
    benchmark::DoNotOptimize(spec.total());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_SweepTotal)->Arg(1)->Arg(3)->Arg(6)->ArgName("axes");

}  // namespace
}  // namespace simq::bench
