// SIGINT/SIGTERM handling for long-running simq programs: the handler only counts
// signals; loops poll stop_requested(). Thread-safe (an atomic counter).
#pragma once

namespace simq {

// Installs handlers for SIGINT and SIGTERM (and ignores SIGPIPE).
void install_stop_handlers();

// Number of stop signals received so far (0: keep running; 2: stop at once).
int stop_signals();
inline bool stop_requested() { return stop_signals() > 0; }

// For tests and embedded use: behave as if a stop signal had arrived.
void request_stop();

}  // namespace simq
