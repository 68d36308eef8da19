// Bytes allocated through operator new since the program started, so a benchmark can report
// what an operation costs in heap. Counts on every thread but is exact only when one thread
// allocates at a time (simq-micro's benchmarks are single-threaded).
#pragma once

#include <cstdint>

namespace simq::bench {

uint64_t heap_bytes();

}  // namespace simq::bench
