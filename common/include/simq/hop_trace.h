// Hop stamps: where a job's round trip spends its time (simq-bench --figures latency --hops).
// When $SIMQ_HOP_TRACE names a file, every process that reaches a stamp appends one line,
// "<CLOCK_MONOTONIC nanoseconds> <point>", to it; the clock is the machine's, so the lines of
// client, broker and workers can be put in one order. Otherwise a stamp costs one branch.
#pragma once

namespace simq {

// The stamps along one job's path, in order (docs/benchmarks.md, "Where the round trip goes").
namespace hop {
inline constexpr const char* kSubmit = "submit";                       // client, before SUBMIT
inline constexpr const char* kBrokerReceived = "broker.received";      // SUBMIT read
inline constexpr const char* kBrokerRecorded = "broker.recorded";      // the sweep is in Redis
inline constexpr const char* kBrokerDispatched = "broker.dispatched";  // DISPATCH made, to be sent
inline constexpr const char* kWorkerReceived = "worker.received";      // DISPATCH read
inline constexpr const char* kSlotStarted = "slot.started";            // a slot has the job
inline constexpr const char* kSlotFinished = "slot.finished";          // its record is built
inline constexpr const char* kWriterWriting = "writer.writing";        // the writer has it
inline constexpr const char* kWriterWritten = "writer.written";        // Redis answered the write
inline constexpr const char* kSeen = "seen";  // client: XREAD returned the result
}  // namespace hop

// Appends a stamp if $SIMQ_HOP_TRACE was set when the process first called this. Never throws;
// a stamp that cannot be written is lost.
void hop_stamp(const char* point) noexcept;

}  // namespace simq
