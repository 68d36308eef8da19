// The frames between a worker slot and its kernel process: round trips, frames cut anywhere,
// and bytes that are not frames (too long, empty, not MessagePack, the wrong fields), each an
// error naming what was wrong.
#include "host_protocol.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "simq/errors.h"

namespace simq {
namespace {

using ::testing::HasSubstr;
using Type = HostMessage::Type;

std::string frame_of(const HostMessage& message) {
  msgpack::sbuffer out;
  encode_frame(message, out);
  return {out.data(), out.size()};
}

// The one message in `frame`.
HostMessage round_trip(const std::string& frame) {
  FrameReader reader;
  reader.append(frame);
  const auto body = reader.next();
  EXPECT_TRUE(body);
  if (!body) return {};
  HostMessage message = decode_host_message(*body);
  EXPECT_FALSE(reader.next());
  EXPECT_EQ(reader.pending(), 0u);
  return message;
}

std::string error_of(const std::string& bytes) {
  try {
    FrameReader reader;
    reader.append(bytes);
    while (const auto body = reader.next()) decode_host_message(*body);
  } catch (const ProtocolError& e) {
    return e.what();
  }
  return "no error";
}

// A frame with `body` as it is.
std::string raw_frame(const std::string& body) {
  const auto n = static_cast<uint32_t>(body.size());
  std::string frame = {static_cast<char>(n >> 24), static_cast<char>((n >> 16) & 0xFF),
                       static_cast<char>((n >> 8) & 0xFF), static_cast<char>(n & 0xFF)};
  return frame + body;
}

TEST(HostProtocol, ARunRequestComesBackWhole) {
  const Json params = {{"n", 27}, {"label", "x"}, {"grid", {1.5, -2, nullptr}}};
  msgpack::sbuffer out;
  encode_run(7, "fib", JobRef{"s1", 42, 3}, params, out);
  const HostMessage message = round_trip(std::string(out.data(), out.size()));
  EXPECT_EQ(message.type, Type::kRun);
  EXPECT_EQ(message.seq, 7u);
  EXPECT_EQ(message.kernel, "fib");
  EXPECT_EQ(message.job, (JobRef{"s1", 42, 3}));
  EXPECT_EQ(message.params, params);
}

TEST(HostProtocol, RepliesComeBackWhole) {
  HostMessage result;
  result.type = Type::kResult;
  result.seq = 9;
  result.result = {{"value", 196418}};
  result.peak_rss_kib = 12345;
  result.rss_kib = 6789;
  const HostMessage got = round_trip(frame_of(result));
  EXPECT_EQ(got.type, Type::kResult);
  EXPECT_EQ(got.seq, 9u);
  EXPECT_EQ(got.result, result.result);
  EXPECT_EQ(got.peak_rss_kib, 12345u);
  EXPECT_EQ(got.rss_kib, 6789u);

  for (const Type type : {Type::kError, Type::kRetryable, Type::kCancelled}) {
    HostMessage error;
    error.type = type;
    error.seq = 10;
    error.message = "param 'n': expected integer, got string \"ten\"";
    const HostMessage back = round_trip(frame_of(error));
    EXPECT_EQ(back.type, type);
    EXPECT_EQ(back.message, error.message);
  }
  HostMessage stop;
  stop.type = Type::kStop;
  stop.seq = 11;
  EXPECT_EQ(round_trip(frame_of(stop)).seq, 11u);
}

TEST(HostProtocol, FramesCutAnywhereAreJoined) {
  HostMessage ready;
  ready.type = Type::kReady;
  ready.rss_kib = 5000;
  HostMessage result;
  result.type = Type::kResult;
  result.seq = 1;
  result.result = {{"text", std::string(100000, 'x')}};  // longer than one read
  const std::string bytes = frame_of(ready) + frame_of(result);
  FrameReader reader;
  std::vector<HostMessage> messages;
  for (const char byte : bytes) {
    reader.append(std::string(1, byte));
    while (const auto body = reader.next()) messages.push_back(decode_host_message(*body));
  }
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[0].type, Type::kReady);
  EXPECT_EQ(messages[0].rss_kib, 5000u);
  EXPECT_EQ(messages[1].result, result.result);
  EXPECT_EQ(reader.pending(), 0u);
}

TEST(HostProtocol, OversizedAndEmptyFramesAreErrors) {
  EXPECT_EQ(error_of(std::string("\xFF\xFF\xFF\xFF", 4) + "x"),
            "a frame claims 4294967295 bytes; expected 1 to 67108864");
  EXPECT_EQ(error_of(std::string("\x04\x00\x00\x01", 4)),
            "a frame claims 67108865 bytes; expected 1 to 67108864");
  EXPECT_EQ(error_of(std::string(4, '\0')), "a frame claims 0 bytes; expected 1 to 67108864");
  // A frame announced but not all there yet is no error: more bytes may come.
  EXPECT_EQ(error_of(std::string("\x00\x00\x10\x00", 4) + "abc"), "no error");

  HostMessage huge;
  huge.type = Type::kResult;
  huge.result = {{"text", std::string(kMaxHostFrameBytes, 'x')}};
  msgpack::sbuffer out;
  try {
    encode_frame(huge, out);
    FAIL() << "a frame over the limit was encoded";
  } catch (const ProtocolError& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr("more than the limit of 67108864 bytes"));
  }
}

TEST(HostProtocol, MalformedBodiesAreErrors) {
  EXPECT_THAT(error_of(raw_frame("\xC1")), HasSubstr("MessagePack"));  // 0xC1: never used
  EXPECT_EQ(error_of(raw_frame("\x92\x01\x02")),                       // [1, 2]
            "kernel process frame: body: expected map, got array");
  EXPECT_EQ(error_of(raw_frame("\x81\xA4type\xA3who")),  // {"type": "who"}
            "kernel process frame: unknown type \"who\"");
  EXPECT_EQ(error_of(raw_frame("\x81\xA4type\xA4stop")),  // {"type": "stop"}
            "kernel process frame: field 'seq' is missing");
  // {"type": "result", "seq": 1, "result": "\xFF", ...}: results must be valid UTF-8 text
  HostMessage result;
  result.type = Type::kResult;
  result.seq = 1;
  result.result = {{"text", "\xFF"}};
  EXPECT_THAT(error_of(frame_of(result)), HasSubstr("not valid UTF-8"));
  // A good frame, then garbage where the next one's length should be.
  HostMessage stop;
  stop.type = Type::kStop;
  stop.seq = 1;
  EXPECT_EQ(error_of(frame_of(stop) + std::string("\x7F\xFF\xFF\xFF", 4)),
            "a frame claims 2147483647 bytes; expected 1 to 67108864");
}

}  // namespace
}  // namespace simq
