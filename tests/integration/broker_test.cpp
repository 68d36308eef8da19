// Hostile and malformed traffic on the broker's real sockets: every message is answered
// with a precise ERROR where a reply is possible, counted, and the broker keeps serving.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <zmq.hpp>

#include "simq/protocol.h"
#include "test_support.h"

namespace simq::test {
namespace {

using ::testing::HasSubstr;

class Peer {
 public:
  Peer(zmq::context_t& context, const std::string& endpoint)
      : socket_(context, zmq::socket_type::dealer) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.set(zmq::sockopt::rcvtimeo, 5000);
    socket_.connect(endpoint);
  }

  void send_frames(const std::vector<std::string>& frames) {
    for (size_t i = 0; i < frames.size(); ++i) {
      socket_.send(zmq::buffer(frames[i]),
                   i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }

  // The next ERROR reply (skipping heartbeats); fails the test if none comes in time.
  ErrorMsg expect_error() {
    for (;;) {
      std::vector<zmq::message_t> frames;
      zmq::message_t frame;
      do {
        if (!socket_.recv(frame)) {
          ADD_FAILURE() << "no reply within 5 s";
          return {};
        }
        frames.push_back(std::move(frame));
      } while (frames.back().more());
      if (frames.size() == 3 && frames[1].to_string() == "ERROR") {
        return decode_error(frames[2].to_string());
      }
    }
  }

 private:
  zmq::socket_t socket_;
};

std::string proto() { return std::string(kProtocol); }

TEST(Broker, RefusesMalformedTrafficAndKeepsServing) {
  TestCluster cluster({.workers = 1});
  zmq::context_t context;
  Peer client(context, cluster.frontend());

  client.send_frames({"garbage"});
  auto error = client.expect_error();
  EXPECT_EQ(error.code, "bad_frame");
  EXPECT_THAT(error.message, HasSubstr("expected 3 frames"));

  client.send_frames({"SIMQ9", "SUBMIT", encode_empty()});
  error = client.expect_error();
  EXPECT_EQ(error.code, "bad_version");
  EXPECT_THAT(error.message, HasSubstr("is not \"SIMQ1\""));

  // Peer bytes quoted in an ERROR stay valid UTF-8 (decode_error refuses anything else).
  client.send_frames({std::string("\xff\xfe\x01SIMQ", 7), "SUBMIT", encode_empty()});
  error = client.expect_error();
  EXPECT_EQ(error.code, "bad_frame");
  EXPECT_THAT(error.message,
              HasSubstr("protocol frame \"\xef\xbf\xbd\xef\xbf\xbd\\u0001SIMQ\" is not"));

  client.send_frames({proto(), "EXPLODE", encode_empty()});
  error = client.expect_error();
  EXPECT_EQ(error.code, "bad_command");
  EXPECT_THAT(error.message, HasSubstr("unknown command \"EXPLODE\""));

  const auto body = encode(SubmitMsg{5, "abc", Json{{"kernel", "fib"}}});
  client.send_frames({proto(), "SUBMIT", body.substr(0, body.size() / 2)});
  error = client.expect_error();
  EXPECT_EQ(error.code, "bad_body");
  EXPECT_THAT(error.message, HasSubstr("truncated MessagePack"));

  client.send_frames({proto(), "SUBMIT", std::string("\xdd\xff\xff\xff\xff", 5)});
  error = client.expect_error();
  EXPECT_EQ(error.code, "bad_body");
  EXPECT_THAT(error.message, HasSubstr("array larger"));

  client.send_frames({proto(), "SUBMIT", std::string(10000, '\x91') + "\xc0"});
  error = client.expect_error();
  EXPECT_EQ(error.code, "bad_body");
  EXPECT_THAT(error.message, HasSubstr("nested deeper"));

  client.send_frames({proto(), "SUBMIT", encode(SubmitMsg{6, "abc", Json{{"kernel", 42}}})});
  error = client.expect_error();
  EXPECT_EQ(error.code, "bad_spec");
  EXPECT_EQ(error.req, 6u);
  EXPECT_THAT(error.message, HasSubstr("kernel"));

  client.send_frames({proto(), "HELLO", encode(HelloMsg{"w", 1, {}})});
  error = client.expect_error();
  EXPECT_EQ(error.code, "bad_command");
  EXPECT_THAT(error.message, HasSubstr("workers connect to the broker's backend"));

  Peer rogue(context, cluster.backend());
  rogue.send_frames({proto(), "DONE", "\x01\x02\x03"});
  error = rogue.expect_error();
  EXPECT_EQ(error.code, "unknown_worker");
  rogue.send_frames({proto(), "HELLO", "\x81\xa4name"});
  error = rogue.expect_error();
  EXPECT_EQ(error.code, "bad_body");
  rogue.send_frames({proto(), "HELLO", encode(HelloMsg{"rogue", 0, {}})});
  error = rogue.expect_error();
  EXPECT_THAT(error.message, HasSubstr("slots"));

  // 2,000 random messages of random frame counts on both endpoints.
  uint64_t state = 99;
  const auto next = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return state >> 33;
  };
  for (int i = 0; i < 2000; ++i) {
    std::vector<std::string> frames(1 + next() % 4);
    for (auto& frame : frames) {
      frame.resize(next() % 40);
      for (auto& c : frame) c = static_cast<char>(next());
    }
    if (frames.size() == 3 && next() % 2 == 0) {
      frames[0] = proto();
      frames[1] = next() % 2 ? "SUBMIT" : "DONE";
    }
    (i % 2 ? client : rogue).send_frames(frames);
  }

  // Valid traffic still flows: a sweep submitted now completes.
  TempDir dir;
  std::ofstream(dir.file("ok.toml")) << "kernel = \"fib\"\n[grid]\nn = [1, 2, 3]\n";
  const auto ok = cluster.simq({"submit", dir.file("ok.toml"), "--wait"});
  EXPECT_EQ(ok.status, 0) << ok.err << cluster.logs();
  EXPECT_EQ(cluster.broker().poll(), std::nullopt) << "the broker must still be running";
  EXPECT_EQ(cluster.worker(0).poll(), std::nullopt) << "the worker must still be running";

  // Every refusal is counted in the status snapshot `simq status` shows (refreshed each
  // heartbeat): at least the ~1,000 random messages sent to the frontend.
  auto redis = cluster.redis().connect();
  int malformed = 0;
  EXPECT_TRUE(wait_until(
      [&] {
        const auto status = Json::parse(redis->command({"GET", "simq:broker"}).str);
        malformed = status["malformed"].get<int>();
        return malformed >= 1000;
      },
      5s))
      << "malformed = " << malformed;
}

}  // namespace
}  // namespace simq::test
