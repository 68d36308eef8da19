// Hop stamps: where a job's round trip spends its time (simq-bench --figures latency --hops;
// docs/benchmarks.md, "Where the round trip goes"). When $SIMQ_HOP_TRACE names a file, every
// process that reaches a stamp appends one line, "<CLOCK_MONOTONIC ns> <point> <sweep>
// <index>", to it: the clock is the machine's, so the lines of client, broker and workers can
// be put in one order, and grouped by job. Otherwise a stamp costs one branch.
#pragma once

#include <cstdint>
#include <string_view>

namespace simq {

// The stamps along one job's path, in order.
namespace hop {
inline constexpr const char* kSubmit = "submit";                       // client, before SUBMIT
inline constexpr const char* kBrokerReceived = "broker.received";      // SUBMIT decoded
inline constexpr const char* kBrokerRecorded = "broker.recorded";      // the sweep is in Redis
inline constexpr const char* kBrokerDispatched = "broker.dispatched";  // DISPATCH about to go
inline constexpr const char* kWorkerReceived = "worker.received";      // DISPATCH decoded
inline constexpr const char* kSlotStarted = "slot.started";            // a slot has the job
inline constexpr const char* kSlotFinished = "slot.finished";          // its record is built
inline constexpr const char* kWriterWriting = "writer.writing";        // the writer has it
inline constexpr const char* kWriterWritten = "writer.written";        // Redis answered
inline constexpr const char* kSeen = "seen";  // client: XREAD returned the result
}  // namespace hop

// Whether stamps are written: $SIMQ_HOP_TRACE was set when the process first asked, or
// hop_trace_to() named a file since.
bool hop_tracing() noexcept;

// This process's stamps go to `path` from now on; nullptr or "": none. For a process that
// traces only a part of its life (simq-bench); not while other threads stamp.
void hop_trace_to(const char* path) noexcept;

// Appends a stamp of job (sweep, index) if hop_tracing(). Never throws; a stamp that cannot be
// written is lost.
void hop_stamp(const char* point, std::string_view sweep, uint64_t index) noexcept;

}  // namespace simq
