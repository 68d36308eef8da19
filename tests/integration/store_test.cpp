// The Redis scripts behind simq's guarantees, against a real redis-server: results fenced by
// attempt number, at most one terminal record per job, losses counted, cancellation final.
#include "simq/store.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "simq/errors.h"
#include "simq/sweep.h"
#include "test_support.h"

namespace simq::test {
namespace {

using ::testing::HasSubstr;

SweepSpec spec_of(uint64_t jobs) {
  return SweepSpec::from_json(
      Json{{"kernel", "noop"}, {"grid", {{"i", {{"range", {0, static_cast<int64_t>(jobs)}}}}}}},
      "test");
}

JobWrite result(const std::string& sweep, uint64_t index, uint32_t attempt, bool ok = true) {
  const Json record = {{"status", ok ? "succeeded" : "failed"}, {"attempts", attempt}};
  return JobWrite{JobRef{sweep, index, attempt}, ok, record.dump()};
}

class StoreTest : public ::testing::Test {
 protected:
  RedisServer server;
  Store store{RedisAddress::parse(server.url())};
  std::unique_ptr<Redis> redis = server.connect();

  std::string field(const std::string& key, const std::string& name) {
    return redis->command({"HGET", key, name}).str;
  }
};

TEST_F(StoreTest, AResultOfAnOlderAttemptIsFencedOff) {
  ASSERT_TRUE(store.create_sweep("s1", spec_of(3), 0));
  // Job 0's worker was lost; the broker queues it again as attempt 2 and raises its fence.
  store.requeue({Requeue{JobRef{"s1", 0, 2}, "host:41"}});
  EXPECT_EQ(field(fence_key("s1"), "0"), "2");

  // The presumed-dead worker's mark and result arrive late: both refused, the result counted.
  store.mark_running({JobWrite{JobRef{"s1", 0, 1}, true, R"({"attempts":1})"}});
  EXPECT_EQ(store.running_record("s1", 0), std::nullopt);
  auto counts = store.finish({result("s1", 0, 1)});
  EXPECT_EQ(counts.fenced, 1u);
  EXPECT_EQ(counts.stored, 0u);
  EXPECT_EQ(store.job_record("s1", 0), std::nullopt);

  // The current attempt's result is stored once; a repeat of it is a duplicate.
  store.mark_running({JobWrite{JobRef{"s1", 0, 2}, true, R"({"attempts":2})"}});
  EXPECT_NE(store.running_record("s1", 0), std::nullopt);
  counts = store.finish({result("s1", 0, 2), result("s1", 0, 2)});
  EXPECT_EQ(counts.stored, 1u);
  EXPECT_EQ(counts.duplicates, 1u);
  EXPECT_EQ(store.running_record("s1", 0), std::nullopt);
  const auto info = store.sweep("s1");
  ASSERT_TRUE(info);
  EXPECT_EQ(info->succeeded, 1u);
  EXPECT_EQ(info->fenced, 1u);
  EXPECT_EQ(info->duplicates, 1u);
  EXPECT_EQ(redis->command({"XLEN", events_key("s1")}).integer, 1);

  // Jobs never requeued have no fence: attempt 1 is current.
  EXPECT_EQ(store.finish({result("s1", 1, 1, false)}).stored, 1u);
}

TEST_F(StoreTest, FencesOnlyRiseAndLossesAreCountedWithTheLastWorker) {
  ASSERT_TRUE(store.create_sweep("s2", spec_of(1), 0));
  store.requeue({Requeue{JobRef{"s2", 0, 2}, "a:1"}});
  store.requeue({Requeue{JobRef{"s2", 0, 3}, "b:2"}});
  store.requeue({Requeue{JobRef{"s2", 0, 2}, ""}});  // a stale requeue never lowers the fence
  EXPECT_EQ(field(fence_key("s2"), "0"), "3");
  const auto lost = store.lost_record("s2", 0);
  ASSERT_TRUE(lost);
  EXPECT_EQ(lost->count, 2u);
  EXPECT_EQ(lost->worker, "b:2");
  EXPECT_EQ(lost->attempt, 2u);
  EXPECT_EQ(store.lost_record("s2", 1), std::nullopt);
  // A sweep that is not recorded gets no fences.
  store.requeue({Requeue{JobRef{"nosweep", 0, 2}, "a:1"}});
  EXPECT_EQ(redis->command({"EXISTS", fence_key("nosweep")}).integer, 0);
}

TEST_F(StoreTest, CancellingEndsTheSweepOnceAndLateResultsExpireWithIt) {
  ASSERT_TRUE(store.create_sweep("s3", spec_of(10), 3600));
  ASSERT_EQ(store.finish({result("s3", 0, 1)}).stored, 1u);
  EXPECT_EQ(store.cancel_sweep("s3"), CancelOutcome::kCancelled);
  EXPECT_EQ(store.cancel_sweep("s3"), CancelOutcome::kNotRunning);
  EXPECT_EQ(store.cancel_sweep("nope"), CancelOutcome::kNoSweep);

  auto info = store.sweep("s3");
  ASSERT_TRUE(info);
  EXPECT_EQ(info->status, "cancelled");
  EXPECT_EQ(info->unrun(), 9u);
  EXPECT_EQ(redis->command({"SISMEMBER", kActiveKey, "s3"}).integer, 0);
  const auto last = redis->command({"XREVRANGE", events_key("s3"), "+", "-", "COUNT", "1"});
  ASSERT_EQ(last.elements.size(), 1u);
  EXPECT_EQ(last.elements[0].elements[1].elements[1].str, "cancelled");
  EXPECT_GT(redis->command({"TTL", sweep_key("s3")}).integer, 3500);

  // A job that was running when the sweep was cancelled ends with a cancelled record.
  JobWrite stopped = result("s3", 1, 1, false);
  stopped.cancelled = true;
  ASSERT_EQ(store.finish({stopped}).stored, 1u);
  info = store.sweep("s3");
  EXPECT_EQ(info->cancelled, 1u);
  EXPECT_EQ(info->unrun(), 8u);
  EXPECT_EQ(info->status, "cancelled") << "a cancelled sweep never becomes done";
  EXPECT_GT(redis->command({"TTL", jobs_key("s3")}).integer, 3500);

  // A stream reader sees the end of the sweep.
  const auto events = store.read_events("s3", "0", std::chrono::milliseconds(10), 100);
  ASSERT_FALSE(events.empty());
  bool ended = false;
  for (const auto& event : events) ended = ended || (event.sweep_done && event.cancelled);
  EXPECT_TRUE(ended);
}

TEST_F(StoreTest, OneWriteOfManyRecordsIsOneStreamEntryListingThemByStatus) {
  ASSERT_TRUE(store.create_sweep("s5", spec_of(5), 60));
  ASSERT_EQ(
      store.finish({result("s5", 0, 1), result("s5", 3, 1, false), result("s5", 1, 1)}).stored, 3u);
  const RedisReply entries = redis->command({"XRANGE", events_key("s5"), "-", "+"});
  ASSERT_EQ(entries.elements.size(), 1u);
  const auto& fields = entries.elements[0].elements[1].elements;
  ASSERT_EQ(fields.size(), 4u);
  EXPECT_EQ(fields[0].str, "succeeded");
  EXPECT_EQ(fields[1].str, "0,1");
  EXPECT_EQ(fields[2].str, "failed");
  EXPECT_EQ(fields[3].str, "3");

  const auto events = store.read_events("s5", "0", std::chrono::milliseconds(10), 100);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].index, 0u);
  EXPECT_TRUE(events[0].ok);
  EXPECT_EQ(events[1].index, 1u);
  EXPECT_EQ(events[2].index, 3u);
  EXPECT_FALSE(events[2].ok);
  EXPECT_FALSE(events[2].sweep_done);
  EXPECT_EQ(events[2].id, events[0].id);

  // The rest, and the final entry.
  store.finish({result("s5", 2, 1), result("s5", 4, 1)});
  const auto rest = store.read_events("s5", events[2].id, std::chrono::milliseconds(10), 100);
  ASSERT_EQ(rest.size(), 3u);
  EXPECT_EQ(rest[0].index, 2u);
  EXPECT_EQ(rest[1].index, 4u);
  EXPECT_TRUE(rest[2].sweep_done);
  EXPECT_FALSE(rest[2].cancelled);
}

TEST_F(StoreTest, TheServerRunIdChangesWithTheServerProcess) {
  const std::string before = store.server_run_id();
  EXPECT_EQ(before.size(), 40u) << before;
  EXPECT_EQ(store.server_run_id(), before);
  server.restart(/*appendonly=*/false);
  EXPECT_THROW(store.server_run_id(), ConnectError);  // the old connection is gone
  const std::string after = store.server_run_id();    // reconnected
  EXPECT_EQ(after.size(), 40u) << after;
  EXPECT_NE(after, before);
}

TEST(JobIndex, OnlyTheDecimalFormTheStoreWritesIsAnIndex) {
  EXPECT_EQ(parse_job_index("0"), 0u);
  EXPECT_EQ(parse_job_index("42"), 42u);
  EXPECT_EQ(parse_job_index("18446744073709551615"), UINT64_MAX);
  for (const char* text : {"", "-1", "+1", "007", "4 2", "1e3", "0x10", "18446744073709551616"}) {
    EXPECT_EQ(parse_job_index(text), std::nullopt) << text;
  }
}

TEST_F(StoreTest, AMalformedStreamEntryIsRefusedSayingWhatIsWrong) {
  const auto parse = [](std::vector<std::string> values) {
    RedisReply fields;
    fields.type = RedisReply::Type::kArray;
    for (auto& value : values) {
      RedisReply element;
      element.type = RedisReply::Type::kString;
      element.str = std::move(value);
      fields.elements.push_back(std::move(element));
    }
    std::vector<uint64_t> jobs;
    try {
      const std::string end = parse_stream_entry(
          fields, [&](uint64_t index, std::string_view) { jobs.push_back(index); });
      return fmt::format("end={} jobs={}", end, fmt::join(jobs, ","));
    } catch (const StoreError& e) {
      return std::string(e.what());
    }
  };
  EXPECT_EQ(parse({"succeeded", "0,17", "cancelled", "3"}), "end= jobs=0,17,3");
  EXPECT_EQ(parse({"sweep", "done"}), "end=done jobs=");
  EXPECT_EQ(parse({"succeeded", "1,,2"}), "succeeded=\"1,,2\": \"\" is not a job index");
  EXPECT_EQ(parse({"failed", "07"}), "failed=\"07\": \"07\" is not a job index");
  EXPECT_EQ(parse({"failed", "-1"}), "failed=\"-1\": \"-1\" is not a job index");
  // The format before batches, one job an entry, is still read.
  EXPECT_EQ(parse({"job", "4", "status", "failed"}), "end= jobs=4");
  EXPECT_EQ(parse({"job", "4"}), "job without status");
  EXPECT_EQ(parse({"job", "4", "status", "done"}),
            "status=done: expected succeeded, failed or cancelled");
  EXPECT_EQ(parse({"worker", "w1"}),
            "unknown field \"worker\" (expected succeeded, failed, cancelled, sweep, or job with "
            "status)");
  EXPECT_EQ(parse({"sweep", "paused"}), "sweep=paused: expected done or cancelled");
  EXPECT_EQ(parse({"sweep", "done", "failed", "1"}),
            "a final entry (sweep=...) that also lists jobs");
  EXPECT_EQ(parse({"succeeded"}), "a stream entry must be a list of field/value pairs");
  EXPECT_EQ(parse({}), "neither jobs nor the sweep's end");
}

TEST_F(StoreTest, AMalformedEntryReadFromTheStreamIsNamedByKeyAndId) {
  const std::string id = redis->command({"XADD", "simq:sweep:s9:events", "*", "job", "x"}).str;
  try {
    store.read_events("s9", "0", std::chrono::milliseconds(10), 10);
    ADD_FAILURE() << "read_events accepted a malformed entry";
  } catch (const StoreError& e) {
    EXPECT_EQ(std::string(e.what()), "simq:sweep:s9:events entry " + id + ": job without status");
  }
}

TEST_F(StoreTest, ASweepIsDoneWhenEveryJobHasOneRecordAndThenExpires) {
  ASSERT_TRUE(store.create_sweep("s4", spec_of(2), 60));
  store.requeue({Requeue{JobRef{"s4", 1, 2}, "a:1"}});
  store.finish({result("s4", 0, 1), result("s4", 1, 1)});  // job 1's attempt 1 is fenced off
  EXPECT_EQ(store.sweep("s4")->status, "running");
  store.finish({result("s4", 1, 2, false)});
  const auto info = store.sweep("s4");
  EXPECT_EQ(info->status, "done");
  EXPECT_EQ(info->succeeded, 1u);
  EXPECT_EQ(info->failed, 1u);
  EXPECT_EQ(info->fenced, 1u);
  for (const auto& key :
       {sweep_key("s4"), jobs_key("s4"), events_key("s4"), fence_key("s4"), lost_key("s4")}) {
    EXPECT_GT(redis->command({"TTL", key}).integer, 0) << key << " must expire with the sweep";
  }
}

}  // namespace
}  // namespace simq::test
