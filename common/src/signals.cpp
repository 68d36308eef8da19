// Stop-signal counting.
#include "simq/signals.h"

#include <atomic>
#include <csignal>

namespace simq {

namespace {
std::atomic<int> g_signals{0};
extern "C" void on_stop_signal(int /*signal*/) { g_signals.fetch_add(1); }
}  // namespace

void install_stop_handlers() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;  // no SA_RESTART: blocking calls return EINTR and loops look at the flag
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
}

int stop_signals() { return g_signals.load(); }
void request_stop() { g_signals.fetch_add(1); }

}  // namespace simq
