#include "simq/hop_trace.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <ctime>

namespace simq {

namespace {

int open_trace(const char* path) noexcept {
  if (path == nullptr || *path == '\0') return -1;
  return ::open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

// The trace file; -1 for none. From $SIMQ_HOP_TRACE at first use, then set by hop_trace_to().
std::atomic<int>& trace_slot() noexcept {
  static std::atomic<int> fd{open_trace(std::getenv("SIMQ_HOP_TRACE"))};
  return fd;
}

int trace_fd() noexcept { return trace_slot().load(std::memory_order_relaxed); }

}  // namespace

bool hop_tracing() noexcept { return trace_fd() >= 0; }

void hop_trace_to(const char* path) noexcept {
  const int old = trace_slot().exchange(open_trace(path));
  if (old >= 0) ::close(old);
}

void hop_stamp(const char* point, std::string_view sweep, uint64_t index) noexcept {
  const int fd = trace_fd();
  if (fd < 0) return;
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  char line[160];
  const int length = std::snprintf(
      line, sizeof line, "%lld %s %.*s %llu\n",
      static_cast<long long>(now.tv_sec) * 1'000'000'000LL + static_cast<long long>(now.tv_nsec),
      point, static_cast<int>(sweep.size()), sweep.data(), static_cast<unsigned long long>(index));
  if (length > 0 && static_cast<size_t>(length) < sizeof line) {
    // One write with O_APPEND: lines of several processes do not interleave.
    [[maybe_unused]] const auto written = ::write(fd, line, static_cast<size_t>(length));
  }
}

}  // namespace simq
