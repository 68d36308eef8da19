// Codec and protocol: every message round-trips; hostile bytes are refused with a precise
// error and bounded work.
#include "simq/codec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "simq/errors.h"
#include "simq/json.h"
#include "simq/protocol.h"
#include "simq/redis.h"

namespace simq {
namespace {

using ::testing::HasSubstr;

template <typename F>
std::string protocol_error(F&& f) {
  try {
    f();
  } catch (const ProtocolError& e) {
    return e.what();
  }
  return "<no ProtocolError>";
}

// The bytes `pack` writes with a MessagePack packer: messages no encoder here would produce.
template <typename F>
std::string packed(F&& pack) {
  msgpack::sbuffer buffer;
  msgpack::packer<msgpack::sbuffer> p(buffer);
  pack(p);
  return std::string(buffer.data(), buffer.size());
}

TEST(Protocol, SubmitRoundTrips) {
  SubmitMsg msg{7, "abc123", Json::parse(R"({"kernel":"fib","params":{"n":[1,2.5,"x",null]}})")};
  const auto back = decode_submit(encode(msg));
  EXPECT_EQ(back.req, 7u);
  EXPECT_EQ(back.sweep_id, "abc123");
  EXPECT_EQ(back.spec, msg.spec);
}

TEST(Protocol, ControlMessagesRoundTrip) {
  const auto submitted = decode_submitted(encode(SubmittedMsg{3, "s1", 1000, true}));
  EXPECT_EQ(submitted.total, 1000u);
  EXPECT_TRUE(submitted.existed);
  const auto pong = decode_pong(encode(PongMsg{9, 2, 8, 100, 8}));
  EXPECT_EQ(pong.req, 9u);
  EXPECT_EQ(pong.slots, 8u);
  EXPECT_EQ(pong.queued, 100u);
  const auto error = decode_error(encode(ErrorMsg{4, "bad_spec", "kernel: expected string"}));
  EXPECT_EQ(error.code, "bad_spec");
  EXPECT_EQ(error.message, "kernel: expected string");
  const auto hello = decode_hello(encode(HelloMsg{"host:42", 4, {"fib", "noop"}, 1}));
  EXPECT_EQ(hello.busy, 1u);
  EXPECT_EQ(hello.name, "host:42");
  EXPECT_EQ(hello.slots, 4u);
  EXPECT_EQ(hello.kernels, (std::vector<std::string>{"fib", "noop"}));
  const auto welcome = decode_welcome(encode(WelcomeMsg{1000, 3}));
  EXPECT_EQ(welcome.heartbeat_ms, 1000u);
  EXPECT_EQ(welcome.liveness, 3u);
  EXPECT_NO_THROW(decode_empty(encode_empty(), "HEARTBEAT"));
}

TEST(Protocol, DispatchAndDoneCarryBatches) {
  DispatchMsg dispatch;
  for (uint64_t i = 0; i < 1000; ++i) dispatch.jobs.push_back(JobRef{"s", i, i % 3 == 0 ? 2u : 1u});
  const auto back = decode_dispatch(encode(dispatch));
  ASSERT_EQ(back.jobs.size(), 1000u);
  EXPECT_EQ(back.jobs[999], (JobRef{"s", 999, 2}));
  DoneMsg done{{{JobRef{"a", 5, 1}, true, std::nullopt}, {JobRef{"b", 6, 2}, false, 1500}}};
  const auto done_back = decode_done(encode(done));
  ASSERT_EQ(done_back.jobs.size(), 2u);
  EXPECT_EQ(done_back.jobs[0].retry_after_ms, std::nullopt);
  EXPECT_EQ(done_back.jobs[1].job, (JobRef{"b", 6, 2}));
  EXPECT_FALSE(done_back.jobs[1].ok);
  EXPECT_EQ(done_back.jobs[1].retry_after_ms, 1500u);
}

TEST(Protocol, CancelAndCancelledRoundTrip) {
  const auto cancel = decode_cancel(encode(CancelMsg{7, "mgq2r1k0a7bx"}));
  EXPECT_EQ(cancel.req, 7u);
  EXPECT_EQ(cancel.sweep_id, "mgq2r1k0a7bx");
  const auto cancelled =
      decode_cancelled(encode(CancelledMsg{7, "mgq2r1k0a7bx", "cancelled", 120, 4}));
  EXPECT_EQ(cancelled.outcome, "cancelled");
  EXPECT_EQ(cancelled.dropped, 120u);
  EXPECT_EQ(cancelled.running, 4u);
  EXPECT_THROW(decode_cancel(encode(CancelMsg{1, ""})), ProtocolError);
}

TEST(Protocol, CreditCarriesThePrefetchAndHandedBackJobs) {
  const auto credit = decode_credit(encode(CreditMsg{512, {{"s1", 7, 2}}}));
  EXPECT_EQ(credit.prefetch, 512u);
  EXPECT_EQ(credit.jobs, (std::vector<JobRef>{{"s1", 7, 2}}));
  EXPECT_TRUE(decode_credit(encode(CreditMsg{0, {}})).jobs.empty());
  EXPECT_THAT(protocol_error([&] {
                decode_credit(encode(CreditMsg{100001, {}}));
              }),
              HasSubstr("CREDIT: field 'prefetch': expected 0 to 100000, got 100001"));
  EXPECT_THAT(protocol_error([&] { decode_credit(encode(PingMsg{1})); }),
              HasSubstr("CREDIT: field 'prefetch' is missing"));
  EXPECT_EQ(command_from_name("CREDIT"), Command::kCredit);
}

TEST(Protocol, DispatchMayCarrySpecs) {
  const Json spec = {{"kernel", "fib"}, {"params", {{"n", 10}}}};
  DispatchMsg sent(std::vector<JobRef>{{"s1", 0, 1}, {"s2", 4, 1}});
  sent.spec_bodies.emplace_back("s1", encode_spec(spec));
  const auto got = decode_dispatch(encode(sent));
  EXPECT_EQ(got.jobs, sent.jobs);
  ASSERT_EQ(got.specs.size(), 1u);
  EXPECT_EQ(got.specs[0].first, "s1");
  EXPECT_EQ(got.specs[0].second, spec);
  EXPECT_TRUE(decode_dispatch(encode(DispatchMsg(sent.jobs))).specs.empty());

  DispatchMsg bad(sent.jobs);
  bad.spec_bodies.emplace_back("s1", encode_spec(Json::array({1, 2})));
  // The jobs still arrive; the problem is said, and the specs are read from Redis instead.
  const auto kept = decode_dispatch(encode(bad));
  EXPECT_EQ(kept.jobs, sent.jobs);
  EXPECT_TRUE(kept.specs.empty());
  EXPECT_THAT(kept.spec_problem,
              HasSubstr("DISPATCH: field 'specs': expected a map per sweep, got array"));
  // No spec kept for these sweeps can be trusted then: both are to be read from Redis.
  EXPECT_EQ(kept.reload, (std::vector<std::string>{"s1", "s2"}));
}

TEST(Protocol, DispatchMayTellTheWorkerToReadSpecsFromRedis) {
  DispatchMsg sent(std::vector<JobRef>{{"s1", 0, 1}, {"s2", 4, 1}, {"s2", 5, 1}});
  sent.spec_bodies.emplace_back("s1", encode_spec(Json{{"kernel", "noop"}}));
  sent.reload = {"s2"};
  const auto got = decode_dispatch(encode(sent));
  EXPECT_EQ(got.jobs, sent.jobs);
  ASSERT_EQ(got.specs.size(), 1u);
  EXPECT_EQ(got.reload, std::vector<std::string>{"s2"});
  EXPECT_EQ(got.spec_problem, "");
  DispatchMsg only_reload(sent.jobs);
  only_reload.reload = {"s1", "s2"};
  EXPECT_EQ(decode_dispatch(encode(only_reload)).reload, only_reload.reload);
  EXPECT_TRUE(decode_dispatch(encode(DispatchMsg(sent.jobs))).reload.empty());

  // An unreadable reload list: every sweep of the jobs is read from Redis, and it is said.
  const auto bad = decode_dispatch(packed([](auto& p) {
    p.pack_map(2);
    p.pack(std::string("jobs"));
    p.pack_array(1);
    p.pack_array(3);
    p.pack(std::string("s3"));
    p.pack(7);
    p.pack(1);
    p.pack(std::string("reload"));
    p.pack(std::string("s3"));
  }));
  EXPECT_EQ(bad.jobs, (std::vector<JobRef>{{"s3", 7, 1}}));
  EXPECT_EQ(bad.reload, std::vector<std::string>{"s3"});
  EXPECT_THAT(bad.spec_problem,
              HasSubstr("DISPATCH: field 'reload': expected array of strings, got"));
}

TEST(Protocol, DoneRetryDelayMustBeUnsigned) {
  // [sweep, index, attempt, ok, retry_after_ms] with a string where the delay belongs.
  const std::string body = packed([](auto& p) {
    p.pack_map(1);
    p.pack(std::string("jobs"));
    p.pack_array(1);
    p.pack_array(5);
    p.pack(std::string("s"));
    p.pack(uint64_t{1});
    p.pack(uint64_t{1});
    p.pack(false);
    p.pack(std::string("soon"));
  });
  try {
    decode_done(body);
    FAIL() << "a string retry delay was accepted";
  } catch (const ProtocolError& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("retry_after_ms"));
  }
}

TEST(Protocol, CommandNamesRoundTrip) {
  for (auto c : {Command::kSubmit, Command::kDispatch, Command::kDone, Command::kBye,
                 Command::kCancel, Command::kCancelled}) {
    EXPECT_EQ(command_from_name(command_name(c)), c);
  }
  EXPECT_FALSE(command_from_name("EXPLODE"));
}

TEST(Protocol, MissingAndMistypedFieldsAreNamed) {
  const std::string hello = packed([](auto& p) {
    p.pack_map(2);
    p.pack(std::string("name"));
    p.pack(std::string("w"));
    p.pack(std::string("slots"));
    p.pack(std::string("four"));
  });
  EXPECT_THAT(protocol_error([&] { decode_hello(hello); }),
              HasSubstr("HELLO: field 'slots': expected unsigned integer, got string"));
  EXPECT_THAT(protocol_error([&] { decode_submit(encode(PingMsg{1})); }),
              HasSubstr("SUBMIT: field 'sweep_id' is missing"));
  EXPECT_THAT(protocol_error([&] {
                decode_hello(encode(HelloMsg{"w", 0, {}}));
              }),
              HasSubstr("HELLO: field 'slots': expected 1 to 100000, got 0"));
  EXPECT_THAT(protocol_error([&] {
                decode_hello(encode(HelloMsg{"w", 200000, {}}));
              }),
              HasSubstr("expected 1 to 100000, got 200000"));
  EXPECT_THAT(protocol_error([&] {
                decode_hello(encode(HelloMsg{"w", 2, {}, 3}));
              }),
              HasSubstr("HELLO: field 'busy': expected at most slots (2), got 3"));
}

TEST(Protocol, SweepIdsAreRestricted) {
  SubmitMsg msg{1, "../../etc", Json::object()};
  EXPECT_THAT(protocol_error([&] { decode_submit(encode(msg)); }),
              HasSubstr("field 'sweep_id': expected 1 to 64 of [a-z0-9_-]"));
}

TEST(Protocol, BadJobEntriesAreRefused) {
  const std::string dispatch = packed([](auto& p) {
    p.pack_map(1);
    p.pack(std::string("jobs"));
    p.pack_array(1);
    p.pack_array(3);
    p.pack(std::string("s"));
    p.pack(-4);
    p.pack(1);
  });
  EXPECT_THAT(protocol_error([&] { decode_dispatch(dispatch); }),
              HasSubstr("field 'jobs[].index': expected unsigned integer, got negative integer"));
}

TEST(Codec, RefusesEmptyTruncatedAndTrailingBytes) {
  EXPECT_THAT(protocol_error([] { unpack(""); }), HasSubstr("empty"));
  const auto body = encode(HelloMsg{"worker", 2, {"fib"}});
  EXPECT_THAT(protocol_error([&] { unpack(body.substr(0, body.size() - 3)); }),
              HasSubstr("truncated"));
  EXPECT_THAT(protocol_error([&] { unpack(body + "xx"); }), HasSubstr("2 trailing bytes"));
}

TEST(Codec, RefusesHeadersClaimingHugeArraysWithoutAllocating) {
  // array32 header claiming 2^32-1 elements, then nothing.
  const std::string huge_array("\xdd\xff\xff\xff\xff", 5);
  EXPECT_THAT(protocol_error([&] { unpack(huge_array); }), HasSubstr("array larger"));
  const std::string huge_map("\xdf\xff\xff\xff\xff", 5);
  EXPECT_THAT(protocol_error([&] { unpack(huge_map); }), HasSubstr("map larger"));
  // A string header is checked against the bytes present: nothing is copied.
  const std::string huge_str("\xdb\xff\xff\xff\xff", 5);
  EXPECT_THAT(protocol_error([&] { unpack(huge_str); }), HasSubstr("truncated MessagePack"));
}

TEST(Codec, RefusesDeepNesting) {
  const std::string deep(10000, '\x91');  // 10,000 nested one-element arrays
  EXPECT_THAT(protocol_error([&] { unpack(deep + std::string(1, '\xc0')); }),
              HasSubstr("nested deeper than 32"));
}

TEST(Codec, RefusesNonStringMapKeysInJson) {
  const std::string bytes = packed([](auto& p) {
    p.pack_map(1);
    p.pack(1);
    p.pack(2);
  });
  const auto handle = unpack(bytes);
  EXPECT_THAT(protocol_error([&] { to_json(handle.get(), "params"); }),
              HasSubstr("params: map keys must be strings, got unsigned integer"));
}

TEST(Codec, RefusesInvalidUtf8InStringsAndKeys) {
  const auto body = [](const std::string& key, const std::string& value) {
    return packed([&](auto& p) {
      p.pack_map(1);
      p.pack(key);
      p.pack(value);
    });
  };
  const auto convert = [](const std::string& bytes) {
    const auto handle = unpack(bytes);
    return to_json(handle.get(), "spec");
  };
  EXPECT_EQ(convert(body("k", "h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"))["k"],
            "h\u00e9 \u20ac \U0001F600");
  for (const std::string bad :
       {"\xff", "\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "a\xe2\x82"}) {
    EXPECT_THAT(protocol_error([&] { convert(body("k", bad)); }),
                HasSubstr("spec: a string is not valid UTF-8"));
  }
  EXPECT_THAT(protocol_error([&] { convert(body("\xfe", "v")); }),
              HasSubstr("spec: a map key is not valid UTF-8"));
}

TEST(Codec, RandomBytesNeverCrash) {
  uint64_t state = 12345;
  int refused = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string bytes(1 + (state % 64), '\0');
    for (auto& c : bytes) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      c = static_cast<char>(state >> 56);
    }
    try {
      decode_done(bytes);
    } catch (const ProtocolError&) {
      ++refused;
    }
  }
  EXPECT_GT(refused, 19000);  // almost every random string is refused, none crashes
}

TEST(JobId, ParsesAndRefuses) {
  std::string sweep;
  uint64_t index = 0;
  ASSERT_TRUE(parse_job_id(job_id("abc", 42), sweep, index));
  EXPECT_EQ(sweep, "abc");
  EXPECT_EQ(index, 42u);
  EXPECT_FALSE(parse_job_id("abc", sweep, index));
  EXPECT_FALSE(parse_job_id("abc:", sweep, index));
  EXPECT_FALSE(parse_job_id(":4", sweep, index));
  EXPECT_FALSE(parse_job_id("abc:4x", sweep, index));
  EXPECT_FALSE(parse_job_id("abc:99999999999999999999999", sweep, index));
}

TEST(RedisAddress, ParsesUrls) {
  const auto a = RedisAddress::parse("redis://:secret@example.org:6380/2");
  EXPECT_EQ(a.host, "example.org");
  EXPECT_EQ(a.port, 6380);
  EXPECT_EQ(a.password, "secret");
  EXPECT_EQ(a.db, 2);
  EXPECT_EQ(a.url(), "redis://example.org:6380/2");
  EXPECT_EQ(RedisAddress::parse("redis://h").port, 6379);
  EXPECT_EQ(RedisAddress::parse("unix:///tmp/r.sock").socket_path, "/tmp/r.sock");
  EXPECT_THROW(RedisAddress::parse("http://h:1"), ConfigError);
  EXPECT_THROW(RedisAddress::parse("redis://h:99999"), ConfigError);
  EXPECT_THROW(RedisAddress::parse("redis://:1"), ConfigError);
}

}  // namespace
}  // namespace simq

namespace simq {
namespace {

TEST(Excerpt, CutsLongTextWithoutSplittingUtf8) {
  EXPECT_EQ(excerpt("short", 10), "short");
  EXPECT_EQ(excerpt("abcdefghijkl", 8), "abcde...");
  // "é" is two bytes; a cut inside it backs off to the character before.
  EXPECT_EQ(excerpt("abcd\xc3\xa9xyz", 8), "abcd...");
  EXPECT_EQ(excerpt("abcd\xc3\xa9xyzw", 9), "abcd\xc3\xa9...");
}

}  // namespace
}  // namespace simq
