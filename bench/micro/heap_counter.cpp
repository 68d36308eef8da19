// Replaces the global operator new/delete of simq-micro to count allocated bytes. A relaxed
// load and store (no locked instruction) keeps the cost to a plain add on the hot paths that
// every other benchmark measures.
#include "heap_counter.h"

#include <atomic>
#include <cstdlib>
#include <new>

namespace {
std::atomic<uint64_t> g_heap_bytes{0};
}  // namespace

// Out of line: inlined into callers, GCC would pair malloc/free against new/delete and warn.
[[gnu::noinline]] void* operator new(std::size_t size) {
  g_heap_bytes.store(g_heap_bytes.load(std::memory_order_relaxed) + size,
                     std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t /*size*/) noexcept { std::free(p); }

namespace simq::bench {

uint64_t heap_bytes() { return g_heap_bytes.load(std::memory_order_relaxed); }

}  // namespace simq::bench
