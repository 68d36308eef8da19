// The broker's side of leases, retries, cancellation and back-pressure, with scripted workers
// and clients on its real sockets: what runs again, as which attempt, and when.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <fstream>
#include <memory>
#include <zmq.hpp>

#include "simq/protocol.h"
#include "simq/store.h"
#include "test_support.h"

namespace simq::test {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using Clock = std::chrono::steady_clock;

// A DEALER speaking SIMQ1 by hand: a scripted worker on the backend, a client on the frontend.
class Peer {
 public:
  Peer(zmq::context_t& context, const std::string& endpoint)
      : socket_(context, zmq::socket_type::dealer) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.connect(endpoint);
  }

  void send(Command command, const std::string& body) {
    for (const auto& frame : {std::string(kProtocol), std::string(command_name(command))}) {
      socket_.send(zmq::buffer(frame), zmq::send_flags::sndmore);
    }
    socket_.send(zmq::buffer(body), zmq::send_flags::none);
  }

  // The next message of kind `command` within `timeout`, skipping others (heartbeats). As a
  // worker, it heartbeats meanwhile unless `silent`.
  std::optional<std::string> expect(Command command, std::chrono::milliseconds timeout,
                                    bool silent = false) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
      zmq::poll(&item, 1, std::chrono::milliseconds(50));
      if (!silent && worker_) send(Command::kHeartbeat, encode_empty());
      if ((item.revents & ZMQ_POLLIN) == 0) continue;
      auto message = receive(socket_, false);
      if (message && message->command == command) return message->body;
    }
    return std::nullopt;
  }

  void hello(const std::string& name, uint32_t slots) {
    worker_ = true;
    send(Command::kHello, encode(HelloMsg{name, slots, {"noop", "sleep"}}));
    ASSERT_TRUE(expect(Command::kWelcome, 5s));
  }

  // The jobs of the next DISPATCH (empty if none comes in time).
  std::vector<JobRef> dispatched(std::chrono::milliseconds timeout = 5s) {
    return dispatch(timeout).jobs;
  }

  // The next DISPATCH whole (no jobs if none comes in time).
  DispatchMsg dispatch(std::chrono::milliseconds timeout = 5s) {
    const auto body = expect(Command::kDispatch, timeout);
    return body ? decode_dispatch(*body) : DispatchMsg{};
  }

 private:
  zmq::socket_t socket_;
  bool worker_ = false;
};

std::string submit(TestCluster& cluster, const std::string& toml) {
  TempDir dir;
  std::ofstream(dir.file("s.toml")) << toml;
  const auto submitted = cluster.simq({"submit", dir.file("s.toml")});
  EXPECT_EQ(submitted.status, 0) << submitted.err << cluster.logs();
  return submitted.out.substr(0, submitted.out.find('\n'));
}

TEST(Lease, ARetryRunsAsTheNextAttemptAfterItsDelayFencedFirst) {
  TestCluster cluster({.workers = 0});
  zmq::context_t context;
  Peer worker(context, cluster.backend());
  worker.hello("scripted:1", 1);
  const auto sweep = submit(cluster, "kernel = \"noop\"\n");
  ASSERT_EQ(worker.dispatched(), (std::vector<JobRef>{{sweep, 0, 1}})) << cluster.logs();

  const auto asked = Clock::now();
  worker.send(Command::kDone, encode(DoneMsg{{{JobRef{sweep, 0, 1}, false, 600}}}));
  const auto again = worker.dispatched(5s);
  const auto waited = Clock::now() - asked;
  ASSERT_EQ(again, (std::vector<JobRef>{{sweep, 0, 2}})) << cluster.logs();
  EXPECT_GE(waited, 600ms) << "the retry came before its delay";
  EXPECT_LT(waited, 1600ms) << "the retry came long after its delay";
  auto redis = cluster.redis().connect();
  EXPECT_EQ(redis->command({"HGET", fence_key(sweep), "0"}).str, "2");
  EXPECT_EQ(redis->command({"EXISTS", lost_key(sweep)}).integer, 0) << "a retry is not a loss";
}

TEST(Lease, ByeHandsJobsBackWithoutUsingAnAttempt) {
  TestCluster cluster({.workers = 0});
  zmq::context_t context;
  Peer leaving(context, cluster.backend());
  leaving.hello("leaving:1", 2);
  const auto sweep = submit(cluster, "kernel = \"noop\"\n[grid]\ni = [1, 2]\n");
  ASSERT_EQ(leaving.dispatched().size(), 2u) << cluster.logs();
  leaving.send(Command::kBye, encode_empty());

  Peer staying(context, cluster.backend());
  staying.hello("staying:2", 2);
  EXPECT_EQ(staying.dispatched(), (std::vector<JobRef>{{sweep, 0, 1}, {sweep, 1, 1}}))
      << cluster.logs();
  auto redis = cluster.redis().connect();
  EXPECT_EQ(redis->command({"EXISTS", fence_key(sweep)}).integer, 0);
}

TEST(Lease, AStoppingWorkersUnstartedJobsRunElsewhereAtOnce) {
  TestCluster cluster({.workers = 0});
  zmq::context_t context;
  Peer stopping(context, cluster.backend());
  stopping.hello("stopping:1", 2);
  const auto sweep = submit(cluster, "kernel = \"noop\"\n[grid]\ni = [1, 2, 3]\n");
  ASSERT_EQ(stopping.dispatched(), (std::vector<JobRef>{{sweep, 0, 1}, {sweep, 1, 1}}))
      << cluster.logs();
  // Job 0 runs on; job 1 was never started and is handed back.
  stopping.send(Command::kDrain, encode(DrainMsg{{JobRef{sweep, 1, 1}}}));
  Peer other(context, cluster.backend());
  other.hello("other:2", 1);
  EXPECT_EQ(other.dispatched(), (std::vector<JobRef>{{sweep, 1, 1}})) << cluster.logs();
  stopping.send(Command::kDone, encode(DoneMsg{{{JobRef{sweep, 0, 1}, true, std::nullopt}}}));
  EXPECT_TRUE(stopping.dispatched(1s).empty()) << "a draining worker must get no more jobs";
  EXPECT_THAT(cluster.logs(), HasSubstr("is stopping: it takes no more jobs; 1 unstarted"));
}

TEST(Lease, CreditBeyondTheSlotsIsDispatchedAndHandedBackJobsRunElsewhere) {
  TestCluster cluster({.workers = 0});
  zmq::context_t context;
  Peer fast(context, cluster.backend());
  fast.hello("fast:1", 1);
  const auto sweep = submit(cluster, "kernel = \"noop\"\n[grid]\ni = { range = [0, 10] }\n");
  // The first DISPATCH of a sweep carries its spec, as Redis has it; later ones do not.
  const DispatchMsg first = fast.dispatch();
  ASSERT_EQ(first.jobs, (std::vector<JobRef>{{sweep, 0, 1}})) << cluster.logs();
  ASSERT_EQ(first.specs.size(), 1u);
  EXPECT_EQ(first.specs[0].first, sweep);
  const auto info = Store(RedisAddress::parse(cluster.redis().url())).sweep(sweep);
  ASSERT_TRUE(info);
  EXPECT_EQ(first.specs[0].second, Json::parse(info->spec));

  // Asking to hold 3 more than its slot: 3 more jobs come, without the spec again.
  fast.send(Command::kCredit, encode(CreditMsg{3, {}}));
  const DispatchMsg more = fast.dispatch();
  EXPECT_EQ(more.jobs, (std::vector<JobRef>{{sweep, 1, 1}, {sweep, 2, 1}, {sweep, 3, 1}}))
      << cluster.logs();
  EXPECT_TRUE(more.specs.empty());
  EXPECT_TRUE(fast.dispatched(300ms).empty()) << "credit is slots + prefetch = 4";

  // A long kernel: no prefetch, and the jobs it had not started go to another worker first.
  fast.send(Command::kCredit, encode(CreditMsg{0, {{sweep, 2, 1}, {sweep, 3, 1}}}));
  Peer other(context, cluster.backend());
  other.hello("other:2", 3);
  const DispatchMsg elsewhere = other.dispatch();
  EXPECT_EQ(elsewhere.jobs, (std::vector<JobRef>{{sweep, 2, 1}, {sweep, 3, 1}, {sweep, 4, 1}}))
      << cluster.logs();
  EXPECT_EQ(elsewhere.specs.size(), 1u) << "a worker new to the sweep gets its spec";
  EXPECT_TRUE(fast.dispatched(300ms).empty()) << "its 2 jobs in flight fill its credit of 1";
}

TEST(Lease, ASweepWhoseSpecDoesNotComeAlongIsToBeReadFromRedis) {
  // Specs over 64 KiB are not sent with DISPATCH. The first DISPATCH of such a sweep to a
  // worker says so (`reload`): a spec the worker kept under that id may be another sweep's.
  TestCluster cluster({.workers = 0});
  zmq::context_t context;
  Peer worker(context, cluster.backend());
  worker.hello("scripted:1", 1);
  const auto sweep = submit(cluster, "kernel = \"noop\"\n[params]\npad = \"" +
                                         std::string(70 * 1024, 'x') + "\"\n[grid]\ni = [1, 2]\n");
  const DispatchMsg first = worker.dispatch();
  ASSERT_EQ(first.jobs, (std::vector<JobRef>{{sweep, 0, 1}})) << cluster.logs();
  EXPECT_TRUE(first.specs.empty());
  EXPECT_EQ(first.reload, std::vector<std::string>{sweep});
  worker.send(Command::kDone, encode(DoneMsg{{{JobRef{sweep, 0, 1}, true, std::nullopt}}}));
  const DispatchMsg second = worker.dispatch();
  ASSERT_EQ(second.jobs, (std::vector<JobRef>{{sweep, 1, 1}})) << cluster.logs();
  EXPECT_TRUE(second.reload.empty()) << "told once per worker";
}

TEST(Lease, ADoneSlowerThanARedisRestartIsCheckedForItsRecord) {
  // The worker writes job 0's record; Redis then crashes and comes back from a snapshot taken
  // before that write; the worker's DONEs reach the broker only after it looked into the sweep
  // (jobs 0 and 1 were in flight then, so not missing). Job 0's record is gone: it runs again.
  // Job 1's record was written to the new server (a write retried through the outage): it
  // does not. (A liveness of 5 s: the scripted worker is silent while Redis restarts.)
  TestCluster cluster({.workers = 0, .heartbeat_ms = 200, .liveness = 25});
  zmq::context_t context;
  Peer worker(context, cluster.backend());
  worker.hello("scripted:1", 2);
  const auto sweep = submit(cluster, "kernel = \"noop\"\n[grid]\ni = [1, 2, 3]\n");
  ASSERT_EQ(worker.dispatched(), (std::vector<JobRef>{{sweep, 0, 1}, {sweep, 1, 1}}))
      << cluster.logs();
  auto redis = cluster.redis().connect();
  const auto record = [&](uint32_t index) {
    Store(RedisAddress::parse(cluster.redis().url()))
        .finish({JobWrite{JobRef{sweep, index, 1}, true, R"({"status": "succeeded"})", false}});
  };
  ASSERT_EQ(redis->command({"SAVE"}).str, "OK");
  record(0);
  cluster.redis().restart(/*appendonly=*/false);  // back from the snapshot: the record is gone
  redis = cluster.redis().connect();
  ASSERT_EQ(redis->command({"HLEN", jobs_key(sweep)}).integer, 0);
  ASSERT_TRUE(wait_until(
      [&] {
        worker.send(Command::kHeartbeat, encode_empty());  // a scripted worker must say it lives
        return cluster.logs().find("looking for records it lost (running sweeps: 1)") !=
               std::string::npos;
      },
      20s))
      << cluster.logs();
  record(1);

  worker.send(Command::kDone, encode(DoneMsg{{{JobRef{sweep, 0, 1}, true, std::nullopt},
                                              {JobRef{sweep, 1, 1}, true, std::nullopt}}}));
  // Job 2 (queued) comes first, then job 0 again; job 1 never does.
  EXPECT_EQ(worker.dispatched(), (std::vector<JobRef>{{sweep, 2, 1}, {sweep, 0, 1}}))
      << cluster.logs();
  worker.send(Command::kDone, encode(DoneMsg{{{JobRef{sweep, 2, 1}, true, std::nullopt},
                                              {JobRef{sweep, 0, 1}, true, std::nullopt}}}));
  EXPECT_TRUE(worker.dispatched(500ms).empty()) << cluster.logs();
  const std::string logs = cluster.logs();
  EXPECT_THAT(logs,
              HasSubstr(fmt::format("job {}:0 was reported after Redis was replaced", sweep)));
  EXPECT_THAT(logs, Not(HasSubstr(fmt::format("job {}:1 was reported", sweep))));
}

TEST(Lease, ALostWorkersJobRunsAsTheNextAttemptWithTheLossRecorded) {
  TestCluster cluster({.workers = 0, .heartbeat_ms = 100, .liveness = 3});
  zmq::context_t context;
  Peer doomed(context, cluster.backend());
  doomed.hello("doomed:1", 1);
  const auto sweep = submit(cluster, "kernel = \"noop\"\n");
  ASSERT_EQ(doomed.dispatched(), (std::vector<JobRef>{{sweep, 0, 1}})) << cluster.logs();

  Peer heir(context, cluster.backend());
  heir.hello("heir:2", 1);
  // doomed falls silent; the job comes to heir once the broker gives up on doomed.
  const auto silent_since = Clock::now();
  EXPECT_EQ(heir.dispatched(5s), (std::vector<JobRef>{{sweep, 0, 2}})) << cluster.logs();
  EXPECT_LT(Clock::now() - silent_since, 100ms * 3 + 1000ms);
  auto redis = cluster.redis().connect();
  EXPECT_EQ(redis->command({"HGET", fence_key(sweep), "0"}).str, "2");
  Store store(RedisAddress::parse(cluster.redis().url()));
  const auto lost = store.lost_record(sweep, 0);
  ASSERT_TRUE(lost);
  EXPECT_EQ(lost->count, 1u);
  EXPECT_EQ(lost->worker, "doomed:1");
}

TEST(Lease, ARestartedBrokerRunsAFencedJobAsItsFencedAttempt) {
  // The worker is lost before it wrote a running mark; its job waits (nobody to run it) with
  // its fence at 2 when the broker dies. The new broker must not queue it as attempt 1:
  // every result of attempt 1 would be refused and the job would never get a record.
  TestCluster cluster({.workers = 0, .heartbeat_ms = 100, .liveness = 3});
  zmq::context_t context;
  auto doomed = std::make_unique<Peer>(context, cluster.backend());
  doomed->hello("doomed:1", 1);
  const auto sweep = submit(cluster, "kernel = \"noop\"\n");
  ASSERT_EQ(doomed->dispatched(), (std::vector<JobRef>{{sweep, 0, 1}})) << cluster.logs();
  doomed.reset();
  auto redis = cluster.redis().connect();
  ASSERT_TRUE(wait_until(
      [&] {
        return redis->command({"HGET", fence_key(sweep), "0"}).str == "2";
      },
      5s))
      << cluster.logs();
  cluster.restart_broker(SIGKILL);

  Peer heir(context, cluster.backend());
  heir.hello("heir:2", 1);
  EXPECT_EQ(heir.dispatched(), (std::vector<JobRef>{{sweep, 0, 2}})) << cluster.logs();
}

TEST(Lease, CancelDropsQueuedJobsAndTellsWorkers) {
  TestCluster cluster({.workers = 0});
  zmq::context_t context;
  Peer worker(context, cluster.backend());
  worker.hello("scripted:1", 1);
  const auto sweep = submit(cluster, "kernel = \"noop\"\n[grid]\ni = { range = [0, 50] }\n");
  ASSERT_EQ(worker.dispatched().size(), 1u) << cluster.logs();

  Peer client(context, cluster.frontend());
  client.send(Command::kCancel, encode(CancelMsg{7, sweep}));
  auto reply = client.expect(Command::kCancelled, 5s);
  ASSERT_TRUE(reply) << cluster.logs();
  auto cancelled = decode_cancelled(*reply);
  EXPECT_EQ(cancelled.req, 7u);
  EXPECT_EQ(cancelled.outcome, "cancelled");
  EXPECT_EQ(cancelled.dropped, 49u);
  EXPECT_EQ(cancelled.running, 1u);
  const auto told = worker.expect(Command::kCancel, 5s);
  ASSERT_TRUE(told);
  EXPECT_EQ(decode_cancel(*told).sweep_id, sweep);

  // The running job reports; nothing more of the sweep is dispatched.
  worker.send(Command::kDone, encode(DoneMsg{{{JobRef{sweep, 0, 1}, false, std::nullopt}}}));
  EXPECT_TRUE(worker.dispatched(1s).empty());
  auto redis = cluster.redis().connect();
  EXPECT_EQ(redis->command({"HGET", sweep_key(sweep), "status"}).str, "cancelled");

  client.send(Command::kCancel, encode(CancelMsg{8, sweep}));
  reply = client.expect(Command::kCancelled, 5s);
  ASSERT_TRUE(reply);
  EXPECT_EQ(decode_cancelled(*reply).outcome, "not_running");
  client.send(Command::kCancel, encode(CancelMsg{9, "nosuchsweep"}));
  reply = client.expect(Command::kCancelled, 5s);
  ASSERT_TRUE(reply);
  EXPECT_EQ(decode_cancelled(*reply).outcome, "no_sweep");
}

TEST(Lease, SubmissionsBeyondMaxQueuedAreRefusedNotDropped) {
  TestCluster cluster({.workers = 0});
  // No workers: a sweep of a million jobs fills the queue to the default --max-queued.
  submit(cluster, "kernel = \"noop\"\n[grid]\ni = { range = [0, 1000000] }\n");
  zmq::context_t context;
  Peer client(context, cluster.frontend());
  client.send(
      Command::kSubmit,
      encode(SubmitMsg{4, "overflow1", Json{{"kernel", "noop"}, {"params", Json::object()}}}));
  const auto reply = client.expect(Command::kError, 5s);
  ASSERT_TRUE(reply) << cluster.logs();
  const auto error = decode_error(*reply);
  EXPECT_EQ(error.code, "queue_full");
  EXPECT_EQ(error.req, 4u);
  EXPECT_THAT(error.message, HasSubstr("1000000 jobs queued"));
  auto redis = cluster.redis().connect();
  EXPECT_EQ(redis->command({"EXISTS", sweep_key("overflow1")}).integer, 0)
      << "a refused sweep must not be recorded";
}

}  // namespace
}  // namespace simq::test
