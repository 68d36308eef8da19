// Process isolation's cost per job: the noop kernel called in this thread, as thread isolation
// does, and through a kernel process (simq-worker --kernel-host beside this program), as
// process isolation does: a request frame and a reply over a socketpair. items = jobs;
// heap_bytes_per_job is what the worker's side allocates per job.
#include <benchmark/benchmark.h>

#include <string>

#include "heap_counter.h"
#include "kernel.h"
#include "kernel_process.h"
#include "simq/child_process.h"

namespace simq::bench {
namespace {

const Json kParams = {{"i", 17}, {"x", 0.25}, {"label", "a"}};

void report(benchmark::State& state, uint64_t heap_before) {
  state.SetItemsProcessed(state.iterations());
  state.counters["heap_bytes_per_job"] =
      static_cast<double>(heap_bytes() - heap_before) /
      static_cast<double>(std::max<int64_t>(1, state.iterations()));
}

void BM_NoopInThread(benchmark::State& state) {
  const KernelRegistry kernels = KernelRegistry::with_builtins();
  const Kernel* noop = kernels.find("noop");
  const std::stop_source stop;
  const KernelContext ctx{JobRef{"bench", 0, 1}, stop.get_token()};
  const uint64_t heap_before = heap_bytes();
  for (auto _ : state) benchmark::DoNotOptimize(noop->run(kParams, ctx));
  report(state, heap_before);
}
BENCHMARK(BM_NoopInThread);

void BM_NoopInKernelProcess(benchmark::State& state) {
  ProcessOptions options;
  options.program = own_directory() + "/simq-worker";
  ProcessRunner runner(options);
  const std::string kernel = "noop";
  const std::stop_source stop;
  const KernelContext ctx{JobRef{"bench", 0, 1}, stop.get_token()};
  if (runner.run(kernel, kParams, ctx) != kParams) {  // started, and answering right
    state.SkipWithError("the kernel process answered something else");
    return;
  }
  const uint64_t heap_before = heap_bytes();
  for (auto _ : state) benchmark::DoNotOptimize(runner.run(kernel, kParams, ctx));
  report(state, heap_before);
}
BENCHMARK(BM_NoopInKernelProcess)->UseRealTime();

}  // namespace
}  // namespace simq::bench
