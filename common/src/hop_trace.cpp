#include "simq/hop_trace.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>

namespace simq {

namespace {

int open_trace() noexcept {
  const char* path = std::getenv("SIMQ_HOP_TRACE");
  if (path == nullptr || *path == '\0') return -1;
  return ::open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

}  // namespace

void hop_stamp(const char* point) noexcept {
  static const int fd = open_trace();
  if (fd < 0) return;
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  char line[96];
  const int length = std::snprintf(
      line, sizeof line, "%lld %s\n",
      static_cast<long long>(now.tv_sec) * 1'000'000'000LL + static_cast<long long>(now.tv_nsec),
      point);
  if (length > 0 && static_cast<size_t>(length) < sizeof line) {
    // One write with O_APPEND: lines of several processes do not interleave.
    [[maybe_unused]] const auto written = ::write(fd, line, static_cast<size_t>(length));
  }
}

}  // namespace simq
