// Codec and protocol benchmarks: DISPATCH and DONE bodies by job count (items = jobs), SUBMIT
// with a typical spec, the refusal of hostile bodies, and MessagePack <-> Json of one job's
// parameters.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bench_data.h"
#include "simq/codec.h"
#include "simq/errors.h"
#include "simq/protocol.h"

namespace simq::bench {
namespace {

// Every tenth job failed, every fiftieth a retry: a DONE as a busy worker sends it.
DoneMsg done_of(const std::vector<JobRef>& jobs) {
  DoneMsg msg;
  for (size_t i = 0; i < jobs.size(); ++i) {
    DoneJob done{jobs[i], i % 10 != 9, std::nullopt};
    if (i % 50 == 49) done.retry_after_ms = 2000;
    msg.jobs.push_back(done);
  }
  return msg;
}

void report_jobs(benchmark::State& state, size_t jobs_per_iteration, size_t body_bytes) {
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(jobs_per_iteration));
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(body_bytes));
  state.counters["body_bytes"] = static_cast<double>(body_bytes);
}

void BM_DispatchEncode(benchmark::State& state) {
  const DispatchMsg msg{job_list(static_cast<size_t>(state.range(0)))};
  size_t bytes = 0;
  for (auto _ : state) {
    const std::string body = encode(msg);
    bytes = body.size();
    benchmark::DoNotOptimize(body.data());
  }
  report_jobs(state, msg.jobs.size(), bytes);
}

void BM_DispatchDecode(benchmark::State& state) {
  const DispatchMsg msg{job_list(static_cast<size_t>(state.range(0)))};
  const std::string body = encode(msg);
  for (auto _ : state) {
    const DispatchMsg decoded = decode_dispatch(body);
    benchmark::DoNotOptimize(decoded.jobs.data());
  }
  if (decode_dispatch(body).jobs != msg.jobs) state.SkipWithError("DISPATCH did not round-trip");
  report_jobs(state, msg.jobs.size(), body.size());
}

void BM_DoneEncode(benchmark::State& state) {
  const DoneMsg msg = done_of(job_list(static_cast<size_t>(state.range(0))));
  size_t bytes = 0;
  for (auto _ : state) {
    const std::string body = encode(msg);
    bytes = body.size();
    benchmark::DoNotOptimize(body.data());
  }
  report_jobs(state, msg.jobs.size(), bytes);
}

void BM_DoneDecode(benchmark::State& state) {
  const DoneMsg msg = done_of(job_list(static_cast<size_t>(state.range(0))));
  const std::string body = encode(msg);
  for (auto _ : state) {
    const DoneMsg decoded = decode_done(body);
    benchmark::DoNotOptimize(decoded.jobs.data());
  }
  const DoneMsg decoded = decode_done(body);
  for (size_t i = 0; i < msg.jobs.size(); ++i) {
    const DoneJob& a = msg.jobs[i];
    const DoneJob& b = decoded.jobs.at(i);
    if (a.job != b.job || a.ok != b.ok || a.retry_after_ms != b.retry_after_ms) {
      state.SkipWithError("DONE did not round-trip");
      break;
    }
  }
  report_jobs(state, msg.jobs.size(), body.size());
}

BENCHMARK(BM_DispatchEncode)->Arg(1)->Arg(64)->Arg(256)->Arg(4096);
BENCHMARK(BM_DispatchDecode)->Arg(1)->Arg(64)->Arg(256)->Arg(4096);
BENCHMARK(BM_DoneEncode)->Arg(1)->Arg(64)->Arg(256)->Arg(4096);
BENCHMARK(BM_DoneDecode)->Arg(1)->Arg(64)->Arg(256)->Arg(4096);

SubmitMsg typical_submit() { return SubmitMsg{7, kSweepId, typical_spec().to_json()}; }

void BM_SubmitEncode(benchmark::State& state) {
  const SubmitMsg msg = typical_submit();
  size_t bytes = 0;
  for (auto _ : state) {
    const std::string body = encode(msg);
    bytes = body.size();
    benchmark::DoNotOptimize(body.data());
  }
  report_jobs(state, 1, bytes);
}
BENCHMARK(BM_SubmitEncode);

// What the broker does with a SUBMIT body before it touches Redis: decode, then validate.
void BM_SubmitDecodeAndValidate(benchmark::State& state) {
  const SubmitMsg msg = typical_submit();
  const std::string body = encode(msg);
  for (auto _ : state) {
    const SubmitMsg decoded = decode_submit(body);
    const SweepSpec spec = SweepSpec::from_json(decoded.spec, "SUBMIT");
    benchmark::DoNotOptimize(spec.grid.data());
  }
  if (SweepSpec::from_json(decode_submit(body).spec, "SUBMIT") != typical_spec()) {
    state.SkipWithError("SUBMIT did not round-trip");
  }
  report_jobs(state, 1, body.size());
}
BENCHMARK(BM_SubmitDecodeAndValidate);

// unpack() of bytes an attacker chose: each must be refused (ProtocolError), and quickly.
void BM_UnpackHostile(benchmark::State& state, const std::string& body) {
  benchmark::IterationCount refused = 0;
  for (auto _ : state) {
    try {
      const auto handle = unpack(body);
      benchmark::DoNotOptimize(handle.get());
    } catch (const ProtocolError&) {
      ++refused;
    }
  }
  if (refused != state.iterations()) state.SkipWithError("a hostile body was accepted");
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(body.size()));
}
// 10,000 nested one-element arrays around a nil: refused at depth 33, not parsed to the end.
BENCHMARK_CAPTURE(BM_UnpackHostile, nested_10k, std::string(10000, '\x91') + '\xc0');
// array32 / map32 / str32 headers claiming 2^32 - 1 elements or bytes (4 GiB), then nothing.
BENCHMARK_CAPTURE(BM_UnpackHostile, array_4g, std::string("\xdd\xff\xff\xff\xff", 5));
BENCHMARK_CAPTURE(BM_UnpackHostile, map_4g, std::string("\xdf\xff\xff\xff\xff", 5));
BENCHMARK_CAPTURE(BM_UnpackHostile, str_4g, std::string("\xdb\xff\xff\xff\xff", 5));

// For comparison: the cost of a valid body of about the same size (a 1-job DISPATCH).
void BM_UnpackSmallValid(benchmark::State& state) {
  const std::string body = encode(DispatchMsg{job_list(1)});
  for (auto _ : state) {
    const auto handle = unpack(body);
    benchmark::DoNotOptimize(handle.get());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(body.size()));
}
BENCHMARK(BM_UnpackSmallValid);

// One job's parameters (ten constants and three axis values) as the worker receives them.
std::string packed_params() {
  msgpack::sbuffer buffer;
  msgpack::packer<msgpack::sbuffer> packer(buffer);
  pack_json(packer, typical_spec().params_at(123));
  return {buffer.data(), buffer.size()};
}

void BM_ParamsToJson(benchmark::State& state) {
  const std::string body = packed_params();
  const auto handle = unpack(body);
  for (auto _ : state) {
    const Json params = to_json(handle.get(), "params");
    benchmark::DoNotOptimize(&params);
  }
  if (to_json(handle.get(), "params") != typical_spec().params_at(123)) {
    state.SkipWithError("params did not round-trip");
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["body_bytes"] = static_cast<double>(body.size());
}
BENCHMARK(BM_ParamsToJson);

void BM_ParamsUnpackToJson(benchmark::State& state) {
  const std::string body = packed_params();
  for (auto _ : state) {
    const auto handle = unpack(body);
    const Json params = to_json(handle.get(), "params");
    benchmark::DoNotOptimize(&params);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ParamsUnpackToJson);

void BM_ParamsPackJson(benchmark::State& state) {
  const Json params = typical_spec().params_at(123);
  msgpack::sbuffer buffer;
  for (auto _ : state) {
    buffer.clear();
    msgpack::packer<msgpack::sbuffer> packer(buffer);
    pack_json(packer, params);
    benchmark::DoNotOptimize(buffer.data());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ParamsPackJson);

}  // namespace
}  // namespace simq::bench
