// Helpers for starting child processes from the multi-threaded worker (the exec kernel's
// programs, process isolation's kernel processes) and for saying how they ended.
// Thread-safety: free functions without shared state; those marked async-signal-safe may run
// between fork() and execve().
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace simq {

// Marks every descriptor from `first` up close-on-exec, so a program started with execve
// inherits only those below. Async-signal-safe.
void close_on_exec_from(int first);

// Signal dispositions and mask as a fresh process has them: the worker ignores SIGPIPE and its
// threads may block signals, and both would be inherited through execve. Async-signal-safe.
void reset_signals();

// How a wait status reads: "exited 3", "killed by signal 11 (SIGSEGV)".
std::string describe_wait_status(int raw);

// A process's resident set, in KiB: now (VmRSS) and its peak (VmHWM, since it started or since
// its peak was last reset through /proc/<pid>/clear_refs).
struct ResidentSet {
  uint64_t rss_kib = 0;
  uint64_t peak_kib = 0;
};

// Reads a process's resident set from its /proc/<pid>/status, open as `status_fd` (read from
// the start each time, so the descriptor serves for many reads). nullopt if it cannot be read:
// the process is gone or a zombie.
std::optional<ResidentSet> read_resident_set(int status_fd);

}  // namespace simq
