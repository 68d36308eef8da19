// Heartbeat bookkeeping with time passed in, so a fake clock drives it in tests.
// Not thread-safe: owned by the broker's socket loop.
#include "liveness.h"

#include <algorithm>
#include <cassert>

namespace simq {

Liveness::Liveness(int64_t interval_ms, int liveness)
    : interval_ms_(interval_ms), liveness_(liveness) {
  assert(interval_ms > 0 && liveness > 0);
}

// A new peer counts as just sent to: its first HEARTBEAT is due one interval from now.
void Liveness::touch(const std::string& peer, int64_t now_ms) {
  auto [it, inserted] = peers_.try_emplace(peer, Peer{.heard_ms = now_ms, .sent_ms = now_ms});
  if (!inserted) it->second.heard_ms = now_ms;
}

void Liveness::touch_all(int64_t now_ms) {
  for (auto& [peer, state] : peers_) state.heard_ms = std::max(state.heard_ms, now_ms);
}

void Liveness::forget(const std::string& peer) { peers_.erase(peer); }

bool Liveness::knows(const std::string& peer) const { return peers_.contains(peer); }

std::vector<std::string> Liveness::expire(int64_t now_ms) {
  const int64_t timeout_ms = interval_ms_ * liveness_;
  std::vector<std::string> dead;
  for (auto it = peers_.begin(); it != peers_.end();) {
    if (now_ms - it->second.heard_ms > timeout_ms) {
      dead.push_back(it->first);
      it = peers_.erase(it);
    } else {
      ++it;
    }
  }
  return dead;
}

std::vector<std::string> Liveness::due_heartbeats(int64_t now_ms) {
  std::vector<std::string> due;
  for (auto& [peer, times] : peers_) {
    if (now_ms - times.sent_ms >= interval_ms_) {
      due.push_back(peer);
      times.sent_ms = now_ms;
    }
  }
  return due;
}

// Only known peers: a message to an unknown peer does not make it alive.
void Liveness::sent(const std::string& peer, int64_t now_ms) {
  if (auto it = peers_.find(peer); it != peers_.end()) it->second.sent_ms = now_ms;
}

}  // namespace simq
