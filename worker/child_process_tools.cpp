// Helpers for starting child processes from the worker (child_process_tools.h).
#include "child_process_tools.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstring>
#include <string_view>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

#include "simq/child_process.h"

namespace simq {

void close_on_exec_from(int first) {
  if (::syscall(SYS_close_range, static_cast<unsigned>(first), ~0U, CLOSE_RANGE_CLOEXEC) == 0) {
    return;
  }
  rlimit limit{};
  const rlim_t max = ::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY
                         ? std::min<rlim_t>(limit.rlim_cur, 1 << 16)
                         : 1 << 16;
  for (int fd = first; fd < static_cast<int>(max); ++fd) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
}

void reset_signals() {
  struct sigaction default_action {};
  default_action.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) ::sigaction(sig, &default_action, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

std::string describe_wait_status(int raw) {
  if (WIFSIGNALED(raw)) return killed_by_signal(WTERMSIG(raw));
  return fmt::format("exited {}", WEXITSTATUS(raw));
}

std::optional<ResidentSet> read_resident_set(int status_fd) {
  std::array<char, 4096> buffer{};  // /proc/<pid>/status is about 1.5 KiB
  ssize_t n = 0;
  do {
    n = ::pread(status_fd, buffer.data(), buffer.size(), 0);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) return std::nullopt;
  const std::string_view text(buffer.data(), static_cast<size_t>(n));
  // "VmHWM:\t   12740 kB"
  const auto field = [&](std::string_view name) -> std::optional<uint64_t> {
    const size_t at = text.find(name);
    if (at == std::string_view::npos) return std::nullopt;
    size_t i = at + name.size();
    while (i < text.size() && (text[i] == ' ' || text[i] == '\t')) ++i;
    uint64_t value = 0;
    const auto [end, error] = std::from_chars(text.data() + i, text.data() + text.size(), value);
    if (error != std::errc()) return std::nullopt;
    return value;
  };
  const auto rss = field("\nVmRSS:");
  const auto peak = field("\nVmHWM:");
  if (!rss || !peak) return std::nullopt;  // a zombie has no memory lines
  return ResidentSet{*rss, *peak};
}

}  // namespace simq
