// Heartbeat bookkeeping: who was heard from when, and who is overdue. Time is passed in
// (milliseconds on any monotonic clock), so tests use a fake clock.
// Not thread-safe: owned by the broker's socket loop.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace simq {

class Liveness {
 public:
  // A peer is dead when nothing was heard from it for interval_ms * liveness.
  Liveness(int64_t interval_ms, int liveness);

  void touch(const std::string& peer, int64_t now_ms);  // heard from peer (adds it if new)
  // As if every peer was heard from at now_ms: after a stall of our own, when their messages
  // wait unread.
  void touch_all(int64_t now_ms);
  void forget(const std::string& peer);
  bool knows(const std::string& peer) const;

  // Peers overdue at now_ms; they are forgotten.
  std::vector<std::string> expire(int64_t now_ms);

  // Peers we have not sent anything to for interval_ms: they need a HEARTBEAT from us.
  // Marks them as sent-to at now_ms.
  std::vector<std::string> due_heartbeats(int64_t now_ms);
  void sent(const std::string& peer, int64_t now_ms);  // we sent peer something else

  int64_t interval_ms() const { return interval_ms_; }

 private:
  struct Peer {
    int64_t heard_ms = 0;
    int64_t sent_ms = 0;
  };
  int64_t interval_ms_;
  int liveness_;
  std::unordered_map<std::string, Peer> peers_;
};

}  // namespace simq
