// Helpers for starting child processes from the multi-threaded worker (the exec kernel's
// programs, process isolation's kernel processes) and for saying how they ended.
// Thread-safety: free functions without shared state; those marked async-signal-safe may run
// between fork() and execve().
#pragma once

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

}  // namespace simq
