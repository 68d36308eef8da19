// `simq verify` on real sweeps: a healthy one reconciles (exit 0); Redis corrupted by hand the
// ways a broken store would be (a lost record, a second completion, a stray record, a counter
// off by one) is reported in the right class with the job named (exit 1). Also `simq cancel`
// against a sweep of long jobs, `simq wait` riding out a frozen Redis, and `simq submit`
// riding out a frozen broker.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <csignal>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "simq/json.h"
#include "simq/store.h"
#include "simq/sweep.h"
#include "test_support.h"

namespace simq::test {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

constexpr const char* kClean = "lost: 0, duplicated: 0, unexpected: 0";

// A finished sweep of 20 fast jobs on `cluster`; returns its id.
std::string finished_sweep(TestCluster& cluster, TempDir& dir) {
  const auto path = dir.file("fib.toml");
  std::ofstream(path) << "kernel = \"fib\"\n[grid]\nn = { range = [0, 20] }\n";
  const auto submit = cluster.simq({"submit", path, "--wait"});
  EXPECT_EQ(submit.status, 0) << submit.err;
  return first_line(submit.out);
}

class Verify : public ::testing::Test {
 protected:
  Verify() : cluster_({.workers = 1}) {}

  CommandResult verify(const std::string& sweep, const std::string& format = "text") {
    return cluster_.simq({"verify", sweep, "--format", format});
  }

  TestCluster cluster_;
  TempDir dir_;
};

TEST_F(Verify, AHealthySweepReconciles) {
  const auto sweep = finished_sweep(cluster_, dir_);
  const auto text = verify(sweep);
  EXPECT_EQ(text.status, 0) << text.out << text.err;
  EXPECT_THAT(text.out, HasSubstr(fmt::format("sweep {}: done, 20 jobs", sweep)));
  EXPECT_THAT(text.out, HasSubstr("records: 20 succeeded, 0 failed, 0 cancelled"));
  EXPECT_THAT(text.out, HasSubstr(kClean));

  const auto json = verify(sweep, "json");
  ASSERT_EQ(json.status, 0) << json.out << json.err;
  const Json report = Json::parse(json.out);
  EXPECT_EQ(report["sweep"], sweep);
  EXPECT_EQ(report["status"], "done");
  EXPECT_EQ(report["total"], 20);
  EXPECT_EQ(report["succeeded"], 20);
  EXPECT_EQ(report["lost"], 0);
  EXPECT_EQ(report["duplicated"], 0);
  EXPECT_EQ(report["unexpected"], 0);
  EXPECT_EQ(report["ok"], true);
}

TEST_F(Verify, ADeletedRecordIsLost) {
  const auto sweep = finished_sweep(cluster_, dir_);
  cluster_.redis().connect()->command({"HDEL", jobs_key(sweep), "3"});
  const auto result = verify(sweep);
  EXPECT_EQ(result.status, 1) << result.out << result.err;
  EXPECT_THAT(result.out, HasSubstr("lost: 1,"));
  EXPECT_THAT(result.out, HasSubstr("lost jobs:\n  " + sweep + ":3\n"));
  const Json report = Json::parse(verify(sweep, "json").out);
  EXPECT_EQ(report["lost"], 1);
  EXPECT_EQ(report["examples"]["lost"], Json::array({sweep + ":3"}));
  EXPECT_EQ(report["ok"], false);
}

TEST_F(Verify, ASecondCompletionIsDuplicated) {
  const auto sweep = finished_sweep(cluster_, dir_);
  cluster_.redis().connect()->command({"XADD", events_key(sweep), "*", "succeeded", "4"});
  const auto result = verify(sweep);
  EXPECT_EQ(result.status, 1) << result.out << result.err;
  EXPECT_THAT(result.out, HasSubstr("lost: 0, duplicated: 1, unexpected: 0"));
  EXPECT_THAT(result.out, HasSubstr("duplicated jobs:\n  " + sweep + ":4\n"));
}

TEST_F(Verify, AMalformedCompletionEntryIsUnexpected) {
  const auto sweep = finished_sweep(cluster_, dir_);
  const auto redis = cluster_.redis().connect();
  redis->command({"XADD", events_key(sweep), "*", "succeeded", "3,x4"});
  redis->command({"XADD", events_key(sweep), "*", "worker", "w1"});
  const auto result = verify(sweep);
  EXPECT_EQ(result.status, 1) << result.out << result.err;
  EXPECT_THAT(result.out, HasSubstr("unexpected: 2"));
  EXPECT_THAT(result.out, HasSubstr("succeeded=\"3,x4\": \"x4\" is not a job index"));
  EXPECT_THAT(result.out, HasSubstr("unknown field \"worker\""));
}

TEST_F(Verify, ARecordOutsideTheSweepIsUnexpected) {
  const auto sweep = finished_sweep(cluster_, dir_);
  cluster_.redis().connect()->command(
      {"HSET", jobs_key(sweep), "25", R"({"status": "succeeded"})"});
  const auto result = verify(sweep);
  EXPECT_EQ(result.status, 1) << result.out << result.err;
  EXPECT_THAT(result.out, HasSubstr("lost: 0, duplicated: 0, unexpected: 1"));
  EXPECT_THAT(result.out, HasSubstr("record \"25\" in the jobs hash: index outside [0, 20)"));
}

TEST_F(Verify, ACounterOffByOneIsUnexpected) {
  const auto sweep = finished_sweep(cluster_, dir_);
  cluster_.redis().connect()->command({"HINCRBY", sweep_key(sweep), "succeeded", "1"});
  const auto result = verify(sweep);
  EXPECT_EQ(result.status, 1) << result.out << result.err;
  EXPECT_THAT(result.out, HasSubstr("lost: 0, duplicated: 0, unexpected: 1"));
  EXPECT_THAT(result.out,
              HasSubstr("the sweep's counter succeeded is 21, but 20 records say succeeded"));
}

TEST_F(Verify, ARecordDisagreeingWithItsCompletionIsUnexpected) {
  const auto sweep = finished_sweep(cluster_, dir_);
  cluster_.redis().connect()->command({"HSET", jobs_key(sweep), "7", "not json"});
  const auto result = verify(sweep);
  EXPECT_EQ(result.status, 1) << result.out << result.err;
  EXPECT_THAT(result.out, HasSubstr(sweep + ":7: the record is not a JSON object"));
}

TEST_F(Verify, MissingSweepAndUnreachableRedis) {
  const auto missing = verify("nosuchsweep");
  EXPECT_EQ(missing.status, 1) << missing.err;
  EXPECT_THAT(missing.err, HasSubstr("no sweep nosuchsweep in Redis"));

  const auto url = fmt::format("redis://127.0.0.1:{}", free_loopback_port());
  const auto unreachable = run_command({bin("simq"), "verify", "abc", "--redis", url}, 20s);
  EXPECT_EQ(unreachable.status, 3) << unreachable.err;
  EXPECT_THAT(unreachable.err, HasSubstr(url));

  const auto usage = verify("abc", "xml");
  EXPECT_EQ(usage.status, 2) << usage.err;
}

// Sweeps recorded straight in Redis, without a broker: one running, one cancelled, with jobs
// that never got a record. Neither is a fault.
TEST(VerifyUnfinished, PendingAndNeverRunJobsAreNotLost) {
  RedisServer redis;
  Store store(redis.address());
  TempDir dir;
  std::ofstream(dir.file("s.toml")) << "kernel = \"noop\"\n[grid]\nx = { range = [0, 10] }\n";
  const auto spec = load_sweep_file(dir.file("s.toml"));
  ASSERT_TRUE(store.create_sweep("running1", spec, 0));
  ASSERT_TRUE(store.create_sweep("cancelled1", spec, 0));
  std::vector<JobWrite> done;
  for (const std::string sweep : {"running1", "cancelled1"}) {
    for (uint32_t index = 0; index < 3; ++index) {
      JobWrite job;
      job.job = JobRef{sweep, index, 1};
      job.record = fmt::format(R"({{"job": "{}:{}", "status": "succeeded"}})", sweep, index);
      done.push_back(job);
    }
  }
  EXPECT_EQ(store.finish(done).stored, 6u);
  ASSERT_EQ(store.cancel_sweep("cancelled1"), CancelOutcome::kCancelled);

  const auto running = run_command({bin("simq"), "verify", "running1", "--redis", redis.url()});
  EXPECT_EQ(running.status, 0) << running.out << running.err;
  EXPECT_THAT(running.out, HasSubstr("pending: 7 (the sweep is still running)"));
  EXPECT_THAT(running.out, HasSubstr(kClean));

  const auto cancelled = run_command({bin("simq"), "verify", "cancelled1", "--redis", redis.url()});
  EXPECT_EQ(cancelled.status, 0) << cancelled.out << cancelled.err;
  EXPECT_THAT(cancelled.out, HasSubstr("sweep cancelled1: cancelled, 10 jobs"));
  EXPECT_THAT(cancelled.out, HasSubstr("never ran (cancelled): 7"));
  EXPECT_THAT(cancelled.out, HasSubstr(kClean));

  // ... and the other commands show them the same way.
  const auto results = run_command(
      {bin("simq"), "results", "cancelled1", "--format", "jsonl", "--redis", redis.url()});
  EXPECT_EQ(results.status, 0) << results.err;
  size_t never_ran = 0;
  for (size_t at = 0; at < results.out.size();) {
    const size_t end = results.out.find('\n', at);
    const Json job = Json::parse(results.out.substr(at, end - at));
    if (job["status"] == "cancelled") {
      EXPECT_EQ(job["error"], "never ran: the sweep was cancelled");
      ++never_ran;
    }
    at = end + 1;
  }
  EXPECT_EQ(never_ran, 7u);
  const auto get = run_command({bin("simq"), "get", "cancelled1:9", "--redis", redis.url()});
  EXPECT_EQ(get.status, 1) << get.err;
  EXPECT_THAT(get.out, HasSubstr("never ran: the sweep was cancelled"));
  const auto status = run_command({bin("simq"), "status", "cancelled1", "--redis", redis.url()});
  EXPECT_EQ(status.status, 0) << status.err;
  EXPECT_THAT(status.out, HasSubstr("cancelled"));
  EXPECT_THAT(status.out, HasSubstr("never ran 7"));
  const auto wait = run_command({bin("simq"), "wait", "cancelled1", "--redis", redis.url()});
  EXPECT_EQ(wait.status, 1) << wait.err;
  EXPECT_THAT(wait.err, HasSubstr("sweep cancelled1 was cancelled: 3 succeeded, 0 failed, "
                                  "0 cancelled, 7 never ran"));
}

// What the broker and workers record about failures, as the commands show it: a dead-lettered
// job (get, verify) and the broker's Redis outages (status).
TEST(VerifyUnfinished, DeadLettersAndRedisOutagesAreShown) {
  RedisServer redis;
  Store store(redis.address());
  TempDir dir;
  std::ofstream(dir.file("s.toml")) << "kernel = \"noop\"\n[grid]\nx = [1, 2]\n";
  ASSERT_TRUE(store.create_sweep("poison1", load_sweep_file(dir.file("s.toml")), 0));
  std::vector<JobWrite> done(2);
  done[0].job = JobRef{"poison1", 0, 1};
  done[0].record = R"({"job": "poison1:0", "status": "succeeded"})";
  done[1].job = JobRef{"poison1", 1, 4};
  done[1].ok = false;
  done[1].record =
      R"json({"job": "poison1:1", "status": "failed", "dead_letter": true, "attempts": 4,
          "error": "worker lost 3 times: last seen running on node7:4242 (attempt 3)"
})json";
  EXPECT_EQ(store.finish(done).stored, 2u);

  const auto get = run_command({bin("simq"), "get", "poison1:1", "--redis", redis.url()});
  EXPECT_EQ(get.status, 1) << get.err;
  EXPECT_THAT(get.out, HasSubstr("status    failed (dead-lettered)\n"));
  EXPECT_THAT(get.out, HasSubstr("worker lost 3 times"));
  const auto verified = run_command({bin("simq"), "verify", "poison1", "--redis", redis.url()});
  EXPECT_EQ(verified.status, 0) << verified.out;
  EXPECT_THAT(verified.out, HasSubstr("records: 1 succeeded, 1 failed (1 dead-lettered)"));

  store.put_broker_status(Json{{"workers", Json::array()},
                               {"queued", 0},
                               {"in_flight", 0},
                               {"redis_outage",
                                {{"since", 0},
                                 {"last_seconds", 4.2},
                                 {"outages", 2},
                                 {"last_error", "redis://127.0.0.1:6379: Connection refused"}}}},
                          10s);
  const auto status = run_command({bin("simq"), "status", "--redis", redis.url()});
  EXPECT_EQ(status.status, 0) << status.err;
  EXPECT_THAT(status.out, HasSubstr("broker: 2 outages of Redis so far (the last one 4.2"));
  EXPECT_THAT(status.out, HasSubstr("Connection refused)"));
}

// A Redis frozen for longer than simq's reply timeout: `simq wait` says so, keeps its place in
// the stream, and ends when the sweep does.
TEST(WaitThroughOutage, AFrozenRedisIsWaitedOut) {
  RedisServer redis;
  Store store(redis.address());
  TempDir dir;
  std::ofstream(dir.file("s.toml")) << "kernel = \"noop\"\n[grid]\nx = [1, 2]\n";
  ASSERT_TRUE(store.create_sweep("frozen1", load_sweep_file(dir.file("s.toml")), 0));
  ChildProcess wait({bin("simq"), "wait", "frozen1", "--redis", redis.url()}, dir.file("out"),
                    dir.file("err"));
  const auto err = [&] { return read_file(dir.file("err")); };
  std::this_thread::sleep_for(500ms);  // let it read the sweep first: not a synchronisation
  ::kill(redis.process()->pid(), SIGSTOP);
  ASSERT_TRUE(wait_until(
      [&] { return err().find("unreachable") != std::string::npos || wait.poll(); }, 20s))
      << err();
  ::kill(redis.process()->pid(), SIGCONT);
  EXPECT_EQ(wait.poll(), std::nullopt) << "it must keep waiting: " << err();
  EXPECT_THAT(err(), HasSubstr(fmt::format("simq: Redis at {} unreachable: ", redis.url())));
  EXPECT_THAT(err(), HasSubstr("; retrying\n"));

  std::vector<JobWrite> done;
  for (uint32_t index = 0; index < 2; ++index) {
    JobWrite job;
    job.job = JobRef{"frozen1", index, 1};
    job.record = R"({"status": "succeeded"})";
    done.push_back(job);
  }
  store.finish(done);
  const auto status = wait.wait(20s);
  ASSERT_NE(status, std::nullopt) << "simq wait did not end with its sweep: " << err();
  EXPECT_EQ(*status, 0) << err();
  EXPECT_THAT(err(), HasSubstr("is reachable again; resuming"));
  EXPECT_THAT(err(), HasSubstr("sweep frozen1: 2 jobs, 2 succeeded, 0 failed"));
}

// A broker that does not answer for a while (SIGSTOP): the SUBMIT is resent, and the sweep is
// recorded once. With --submit-timeout 1 the submission gives up with exit 3.
TEST(SubmitRetry, AStoppedBrokerIsWaitedFor) {
  TestCluster cluster({.workers = 1});
  TempDir dir;
  std::ofstream(dir.file("s.toml")) << "kernel = \"noop\"\n[grid]\nx = [1, 2, 3]\n";

  cluster.broker().signal(SIGSTOP);
  const auto start = std::chrono::steady_clock::now();
  const auto refused = cluster.simq({"submit", dir.file("s.toml"), "--submit-timeout", "1"}, 20s);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(refused.status, 3) << refused.err;
  EXPECT_THAT(refused.err, HasSubstr("cannot reach the broker at " + cluster.frontend()));
  EXPECT_LT(took, 4s);

  ChildProcess submit({bin("simq"), "submit", dir.file("s.toml"), "--wait", "--redis",
                       cluster.redis().url(), "--broker", cluster.frontend()},
                      dir.file("out"), dir.file("err"));
  std::this_thread::sleep_for(1500ms);  // the broker's outage itself, not a synchronisation
  cluster.broker().signal(SIGCONT);
  const auto status = submit.wait(60s);
  ASSERT_NE(status, std::nullopt) << read_file(dir.file("err")) << cluster.logs();
  EXPECT_EQ(*status, 0) << read_file(dir.file("err")) << cluster.logs();
  EXPECT_THAT(
      read_file(dir.file("err")),
      HasSubstr(fmt::format("simq: broker at {} not answering; retrying", cluster.frontend())));
  const auto sweep = first_line(read_file(dir.file("out")));
  auto redis = cluster.redis().connect();
  // The timed-out submission may have been recorded too (the broker read it after SIGCONT):
  // then under its own id. This one is recorded once.
  const auto sweeps = redis->command({"ZRANGE", "simq:sweeps", "0", "-1"});
  EXPECT_GE(sweeps.elements.size(), 1u);
  EXPECT_LE(sweeps.elements.size(), 2u);
  EXPECT_EQ(redis->command({"HGET", sweep_key(sweep), "succeeded"}).str, "3");
  const auto verified = cluster.simq({"verify", sweep});
  EXPECT_EQ(verified.status, 0) << verified.out;
}

// A broker killed and started again while a submission waits for it: the SUBMIT the old one
// never answered is resent to the new one.
TEST(SubmitRetry, ARestartedBrokerGetsTheSubmission) {
  TestCluster cluster({.workers = 1});
  TempDir dir;
  std::ofstream(dir.file("s.toml")) << "kernel = \"noop\"\n[grid]\nx = [1, 2, 3]\n";
  cluster.broker().signal(SIGSTOP);
  ChildProcess submit({bin("simq"), "submit", dir.file("s.toml"), "--wait", "--redis",
                       cluster.redis().url(), "--broker", cluster.frontend()},
                      dir.file("out"), dir.file("err"));
  ASSERT_TRUE(wait_until(
      [&] { return read_file(dir.file("err")).find("not answering") != std::string::npos; }, 10s))
      << read_file(dir.file("err"));
  cluster.restart_broker(SIGKILL);
  const auto status = submit.wait(60s);
  ASSERT_NE(status, std::nullopt) << read_file(dir.file("err")) << cluster.logs();
  EXPECT_EQ(*status, 0) << read_file(dir.file("err")) << cluster.logs();
  auto redis = cluster.redis().connect();
  EXPECT_EQ(redis->command({"ZCARD", "simq:sweeps"}).integer, 1);
  const auto sweep = first_line(read_file(dir.file("out")));
  EXPECT_EQ(redis->command({"HGET", sweep_key(sweep), "succeeded"}).str, "3");
}

// A broker at its --max-queued bound (the default 10^6, filled by one sweep without workers)
// refuses SUBMIT with queue_full: `simq submit` waits and resends, gives up after
// --submit-timeout with exit 3, and gets through once the queue drains (the big sweep is
// cancelled).
TEST(SubmitRetry, AFullQueueIsWaitedFor) {
  TestCluster cluster({.workers = 0});
  TempDir dir;
  std::ofstream(dir.file("big.toml"))
      << "kernel = \"noop\"\n[grid]\ni = { range = [0, 1000000] }\n";
  std::ofstream(dir.file("small.toml")) << "kernel = \"noop\"\n[grid]\nx = [1, 2, 3]\n";
  const auto big = cluster.simq({"submit", dir.file("big.toml")});
  ASSERT_EQ(big.status, 0) << big.err;

  const auto start = std::chrono::steady_clock::now();
  const auto refused = cluster.simq({"submit", dir.file("small.toml"), "--submit-timeout", "1"});
  EXPECT_EQ(refused.status, 3) << refused.err;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_THAT(refused.err, HasSubstr("simq: broker queue is full ("));
  EXPECT_THAT(refused.err, HasSubstr("); waiting\n"));
  EXPECT_THAT(refused.err, HasSubstr("its queue is full"));

  ChildProcess waiting({bin("simq"), "submit", dir.file("small.toml"), "--redis",
                        cluster.redis().url(), "--broker", cluster.frontend()},
                       dir.file("out"), dir.file("err"));
  ASSERT_TRUE(wait_until(
      [&] { return read_file(dir.file("err")).find("queue is full") != std::string::npos; }, 10s))
      << read_file(dir.file("err"));
  EXPECT_EQ(waiting.poll(), std::nullopt);
  const auto cancel = cluster.simq({"cancel", first_line(big.out)});
  ASSERT_EQ(cancel.status, 0) << cancel.err << cluster.logs();
  EXPECT_THAT(cancel.out, HasSubstr("1000000 queued jobs dropped"));
  const auto status = waiting.wait(30s);
  ASSERT_NE(status, std::nullopt) << read_file(dir.file("err"));
  EXPECT_EQ(*status, 0) << read_file(dir.file("err"));
  const auto small = first_line(read_file(dir.file("out")));
  auto redis = cluster.redis().connect();
  EXPECT_EQ(redis->command({"HGET", sweep_key(small), "total"}).str, "3");
  // The refused submissions recorded nothing: two sweeps in all.
  EXPECT_EQ(redis->command({"ZCARD", "simq:sweeps"}).integer, 2);
}

// `simq cancel` on a sweep of long jobs: its queued jobs never run, `simq wait` says it was
// cancelled, the results show the cancelled jobs, and a second cancel is harmless.
// Needs the broker's CANCEL.
TEST(Cancel, StopsASweepOfLongJobs) {
  TestCluster cluster({.workers = 2, .slots = 2});
  TempDir dir;
  std::ofstream(dir.file("s.toml")) << "kernel = \"sleep\"\n[grid]\nseconds = [0.5]\n"
                                       "i = { range = [0, 200] }\n";
  const auto submit = cluster.simq({"submit", dir.file("s.toml")});
  ASSERT_EQ(submit.status, 0) << submit.err;
  const auto sweep = first_line(submit.out);
  auto redis = cluster.redis().connect();
  const auto done = [&] {
    const auto reply =
        redis->command({"HMGET", sweep_key(sweep), "succeeded", "failed", "cancelled"});
    uint64_t sum = 0;
    for (const auto& count : reply.elements) sum += count.is_nil() ? 0 : std::stoull(count.str);
    return sum;
  };
  ASSERT_TRUE(wait_until([&] { return done() >= 4; }, 30s)) << cluster.logs();

  const auto cancel = cluster.simq({"cancel", sweep});
  ASSERT_EQ(cancel.status, 0) << cancel.out << cancel.err << cluster.logs();
  EXPECT_THAT(cancel.out, HasSubstr("cancelled sweep " + sweep + ": "));
  EXPECT_THAT(cancel.out, HasSubstr("queued jobs dropped"));

  const auto wait = cluster.simq({"wait", sweep}, 30s);
  EXPECT_EQ(wait.status, 1) << wait.err;
  EXPECT_THAT(wait.err, HasSubstr("sweep " + sweep + " was cancelled: "));

  // The jobs that were running end within their 0.5 s; after that nothing runs.
  std::this_thread::sleep_for(1500ms);
  const uint64_t after_cancel = done();
  std::this_thread::sleep_for(1500ms);  // a window for a job that should not run
  EXPECT_EQ(done(), after_cancel);
  EXPECT_LT(after_cancel, 100u);

  const auto results = cluster.simq({"results", sweep, "--format", "csv"});
  EXPECT_EQ(results.status, 0) << results.err;
  EXPECT_THAT(results.out, HasSubstr("cancelled"));
  EXPECT_THAT(results.out, HasSubstr("never ran: the sweep was cancelled"));
  const auto status = cluster.simq({"status", sweep});
  EXPECT_THAT(status.out, HasSubstr("cancelled"));
  const auto verified = cluster.simq({"verify", sweep});
  EXPECT_EQ(verified.status, 0) << verified.out;
  EXPECT_THAT(verified.out, HasSubstr("never ran (cancelled): "));

  const auto again = cluster.simq({"cancel", sweep});
  EXPECT_EQ(again.status, 0) << again.err;
  EXPECT_THAT(again.out, HasSubstr("sweep " + sweep + " had already finished (cancelled)"));
  const auto unknown = cluster.simq({"cancel", "nosuchsweep"});
  EXPECT_EQ(unknown.status, 1) << unknown.err;
  EXPECT_THAT(unknown.err, HasSubstr("no sweep nosuchsweep in Redis"));
}

TEST(Cancel, UnreachableBrokerIsExitThree) {
  const auto endpoint = fmt::format("tcp://127.0.0.1:{}", free_loopback_port());
  const auto cancel = run_command({bin("simq"), "cancel", "abc", "--broker", endpoint}, 30s);
  EXPECT_EQ(cancel.status, 3) << cancel.err;
  EXPECT_THAT(cancel.err, HasSubstr(endpoint));
}

}  // namespace
}  // namespace simq::test
