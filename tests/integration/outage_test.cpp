// Services that are gone or silent: a broker whose Redis is down refuses submissions
// (nothing is acknowledged that is not recorded), and simq commands facing a Redis that
// accepts connections but never answers give up with exit 3 instead of hanging.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <fstream>
#include <thread>
#include <zmq.hpp>

#include "client.h"
#include "simq/protocol.h"
#include "simq/store.h"
#include "simq/sweep.h"
#include "test_support.h"

namespace simq::test {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(Outage, BrokerRefusesSubmissionsItCannotRecord) {
  TestCluster cluster({.workers = 0});
  cluster.redis().stop();

  zmq::context_t context;
  zmq::socket_t client(context, zmq::socket_type::dealer);
  client.set(zmq::sockopt::linger, 0);
  client.set(zmq::sockopt::rcvtimeo, 15000);
  client.connect(cluster.frontend());
  const Json spec = {{"kernel", "noop"}, {"grid", {{"x", {1, 2}}}}};
  const auto body = encode(SubmitMsg{11, "outage1", spec});
  for (const std::string& frame : {std::string(kProtocol), std::string("SUBMIT")}) {
    client.send(zmq::buffer(frame), zmq::send_flags::sndmore);
  }
  client.send(zmq::buffer(body), zmq::send_flags::none);
  std::vector<zmq::message_t> reply(3);
  for (auto& frame : reply) ASSERT_TRUE(client.recv(frame)) << "no reply within 15 s";
  ASSERT_EQ(reply[1].to_string(), "ERROR");
  const auto error = decode_error(reply[2].to_string());
  EXPECT_EQ(error.code, "store_unavailable");
  EXPECT_EQ(error.req, 11u);
  EXPECT_THAT(error.message, HasSubstr(cluster.redis().url()));
  EXPECT_EQ(cluster.broker().poll(), std::nullopt) << "the broker must keep running";
}

// The broker's status snapshot once one was published after an outage it saw had ended (so
// after its look at the sweeps, a loop turn earlier); null if none comes within 10 s.
Json status_after_outage(Redis& redis) {
  Json status;
  wait_until(
      [&] {
        status = broker_status(redis);
        return status.is_object() && status["redis_outage"]["outages"].get<int>() >= 1 &&
               status["redis_outage"]["since"].get<double>() == 0;
      },
      10s);
  return status.is_object() && status["redis_outage"]["since"].get<double>() == 0 ? status : Json();
}

TEST(Outage, FrozenRedisLosesNothingAndNoWorkerIsDeclaredDead) {
  // Heartbeats 200 ms x 3: a broker that blocked on the frozen Redis for its 5 s reply timeout
  // would stop heartbeating and its workers would leave and come back.
  TestCluster cluster;
  TempDir dir;
  std::ofstream(dir.file("s.toml")) << "kernel = \"sleep\"\n[grid]\nseconds = [0.02]\n"
                                       "i = { range = [0, 200] }\n";
  const auto submitted = cluster.simq({"submit", dir.file("s.toml")});
  ASSERT_EQ(submitted.status, 0) << submitted.err;
  std::string sweep = submitted.out.substr(0, submitted.out.find('\n'));
  auto redis = cluster.redis().connect();
  const auto succeeded = [&] {
    return std::stoi(redis->command({"HGET", "simq:sweep:" + sweep, "succeeded"}).str);
  };
  ASSERT_TRUE(wait_until([&] { return succeeded() >= 20; }, 30s)) << cluster.logs();

  const auto pids =
      processes_matching(fmt::format("redis-server 127.0.0.1:{}", cluster.redis().port()));
  ASSERT_EQ(pids.size(), 1u);
  ::kill(pids[0], SIGSTOP);
  std::this_thread::sleep_for(3s);  // the outage itself, not a synchronisation
  ::kill(pids[0], SIGCONT);

  const auto waited = cluster.simq({"wait", sweep, "--timeout", "60"});
  ASSERT_EQ(waited.status, 0) << waited.err << cluster.logs();
  EXPECT_EQ(succeeded(), 200);
  EXPECT_EQ(redis->command({"HLEN", "simq:sweep:" + sweep + ":jobs"}).integer, 200);
  expect_each_job_announced_once(*redis, sweep, 200);
  // The broker's snapshot comes back within its 2 s retry interval, telling of the outage.
  const Json status = status_after_outage(*redis);
  ASSERT_TRUE(status.is_object()) << cluster.logs();
  EXPECT_EQ(status["workers_lost"], 0) << cluster.logs();
  EXPECT_EQ(status["workers"].size(), 2u);
  // The same Redis process came back: the broker does not look for lost records.
  EXPECT_EQ(status["records_lost"], 0) << cluster.logs();
  EXPECT_THAT(cluster.logs(), Not(HasSubstr("is not the server process it was")));
}

// A no-op grid sweep of `jobs` jobs.
SweepSpec noop_sweep(uint64_t jobs) {
  return SweepSpec::from_json(Json{{"kernel", "noop"}, {"grid", {{"i", {{"range", {0, jobs}}}}}}},
                              "test");
}

// Records a sweep in Redis as a create whose reply the broker never got would leave it: the
// broker holds none of its jobs. Returns its id.
std::string record_behind_the_brokers_back(TestCluster& cluster, const SweepSpec& spec) {
  Store store(RedisAddress::parse(cluster.redis().url()));
  const std::string sweep = new_sweep_id();
  EXPECT_TRUE(store.create_sweep(sweep, spec, 0));
  return sweep;
}

// A create Redis ran but whose reply the broker never got (a timeout, a cut connection) leaves
// the sweep recorded as running while the SUBMIT was refused; the client's resend is answered
// "existed" and taken as an acceptance. The sweeps are created here as such a create would.
TEST(Outage, ASweepWhoseCreateReplyWasLostRunsWhenItsSubmitIsResent) {
  TestCluster cluster;
  const SweepSpec spec = noop_sweep(50);
  const std::string sweep = record_behind_the_brokers_back(cluster, spec);

  BrokerClient client(cluster.frontend());
  const SubmitResult submitted = client.submit(sweep, spec, "test", 30s);
  EXPECT_TRUE(submitted.reply.existed);
  const auto waited = cluster.simq({"wait", sweep, "--timeout", "30"});
  ASSERT_EQ(waited.status, 0) << waited.out << waited.err << cluster.logs();
  auto redis = cluster.redis().connect();
  EXPECT_EQ(redis->command({"HGET", "simq:sweep:" + sweep, "succeeded"}).str, "50");
  EXPECT_EQ(redis->command({"HLEN", "simq:sweep:" + sweep + ":jobs"}).integer, 50);

  // Sent again once the sweep is done, and for a cancelled sweep: nothing runs again.
  const auto again = client.submit(sweep, spec, "test", 30s);
  EXPECT_TRUE(again.reply.existed);
  const std::string cancelled = record_behind_the_brokers_back(cluster, spec);
  Store(RedisAddress::parse(cluster.redis().url())).cancel_sweep(cancelled);
  EXPECT_TRUE(client.submit(cancelled, spec, "test", 30s).reply.existed);
  // A probe sweep submitted after them has run once both SUBMITs were handled.
  const auto probe = client.submit(new_sweep_id(), spec, "test", 30s);
  ASSERT_EQ(cluster.simq({"wait", probe.reply.sweep_id, "--timeout", "30"}).status, 0);
  EXPECT_EQ(redis->command({"HLEN", "simq:sweep:" + cancelled + ":jobs"}).integer, 0)
      << cluster.logs();
  EXPECT_EQ(redis->command({"HGET", "simq:sweep:" + sweep, "duplicates"}).str, "0");
  EXPECT_EQ(redis->command({"HGET", "simq:sweep:" + sweep, "status"}).str, "done");
}

TEST(Outage, AResentSubmitOfASweepInFlightQueuesNothingAgain) {
  // The broker holds jobs of the sweep (queued and in flight): "existed" adopts nothing. 40
  // jobs of 0.2 s on 4 slots: the resend comes ~1.6 s before the sweep could end.
  TestCluster cluster;
  const SweepSpec spec =
      SweepSpec::from_json(Json::parse(R"({"kernel": "sleep", "params": {"seconds": 0.2},
                      "grid": {"i": {"range": [0, 40]}}})"),
                           "test");
  BrokerClient client(cluster.frontend());
  const std::string sweep = new_sweep_id();
  EXPECT_FALSE(client.submit(sweep, spec, "test", 30s).reply.existed);
  auto redis = cluster.redis().connect();
  const auto finished = [&] {
    return std::stoi(redis->command({"HGET", "simq:sweep:" + sweep, "succeeded"}).str);
  };
  ASSERT_TRUE(wait_until([&] { return finished() >= 4; }, 30s)) << cluster.logs();
  ASSERT_LT(finished(), 40) << "the sweep ended before the resend: the check proves nothing";
  EXPECT_TRUE(client.submit(sweep, spec, "test", 30s).reply.existed);

  const auto waited = cluster.simq({"wait", sweep, "--timeout", "60"});
  ASSERT_EQ(waited.status, 0) << waited.out << waited.err << cluster.logs();
  EXPECT_EQ(finished(), 40);
  // A wrong adoption would run jobs again: as duplicates, or fenced (running ones get a new
  // attempt).
  EXPECT_EQ(redis->command({"HGET", "simq:sweep:" + sweep, "duplicates"}).str, "0")
      << cluster.logs();
  EXPECT_EQ(redis->command({"HGET", "simq:sweep:" + sweep, "fenced"}).str, "0") << cluster.logs();
  EXPECT_THAT(cluster.logs(), Not(HasSubstr("none of its jobs is queued here")));
}

TEST(Outage, ASweepNobodyServesIsQueuedWhenRedisAnswersAgain) {
  // A create Redis ran but whose reply was lost, and whose producer gave up: no resend ever
  // comes. (Or records a restarted Redis lost after their DONE.) The broker looks for such
  // sweeps when an outage it noticed ends.
  TestCluster cluster;
  const std::string sweep = record_behind_the_brokers_back(cluster, noop_sweep(30));

  const auto pids =
      processes_matching(fmt::format("redis-server 127.0.0.1:{}", cluster.redis().port()));
  ASSERT_EQ(pids.size(), 1u);
  ::kill(pids[0], SIGSTOP);
  std::this_thread::sleep_for(1500ms);  // the outage: the broker's status writes time out
  ::kill(pids[0], SIGCONT);

  const auto waited = cluster.simq({"wait", sweep, "--timeout", "30"});
  ASSERT_EQ(waited.status, 0) << waited.out << waited.err << cluster.logs();
  auto redis = cluster.redis().connect();
  EXPECT_EQ(redis->command({"HLEN", "simq:sweep:" + sweep + ":jobs"}).integer, 30);
  EXPECT_THAT(cluster.logs(), HasSubstr("is reachable again"));
}

TEST(Outage, JobsWhoseRecordsARestartedRedisLostRunAgain) {
  // Redis comes back from its last snapshot, as after a crash: the records written since are
  // gone, though their jobs were reported DONE and the broker holds them no more. It still
  // serves the sweep (its later jobs are queued), and queues the lost jobs again once Redis
  // answers, which it notices within its 2 s status retry. 1200 jobs of 20 ms on 4 slots: 6 s.
  constexpr int kJobs = 1200;
  TestCluster cluster;
  TempDir dir;
  std::ofstream(dir.file("s.toml")) << "kernel = \"sleep\"\n[grid]\nseconds = [0.02]\n"
                                    << "i = { range = [0, " << kJobs << "] }\n";
  const auto submitted = cluster.simq({"submit", dir.file("s.toml")});
  ASSERT_EQ(submitted.status, 0) << submitted.err;
  const std::string sweep = trim(submitted.out);
  auto redis = cluster.redis().connect();
  const auto succeeded = [&](Redis& r) {
    return std::stoi(r.command({"HGET", "simq:sweep:" + sweep, "succeeded"}).str);
  };
  ASSERT_TRUE(wait_until([&] { return succeeded(*redis) >= 40; }, 30s)) << cluster.logs();
  ASSERT_EQ(redis->command({"SAVE"}).str, "OK");
  const int at_snapshot = succeeded(*redis);
  ASSERT_TRUE(wait_until([&] { return succeeded(*redis) >= at_snapshot + 40; }, 30s));
  const int before_restart = succeeded(*redis);
  ASSERT_LT(before_restart, kJobs / 2) << "the broker must still hold jobs of the sweep";

  cluster.redis().restart(/*appendonly=*/false);  // loads the snapshot (dump.rdb)
  redis = cluster.redis().connect();
  const int after_restart = succeeded(*redis);
  ASSERT_LT(after_restart, before_restart) << "the restart lost no record: the test proves nothing";

  const auto waited = cluster.simq({"wait", sweep, "--timeout", "60"});
  ASSERT_EQ(waited.status, 0) << waited.out << waited.err << cluster.logs();
  EXPECT_EQ(succeeded(*redis), kJobs);
  EXPECT_EQ(redis->command({"HLEN", "simq:sweep:" + sweep + ":jobs"}).integer, kJobs);
  expect_each_job_announced_once(*redis, sweep, kJobs);
  const std::string logs = cluster.logs();
  EXPECT_THAT(logs, HasSubstr("is not the server process it was")) << logs;
  EXPECT_THAT(logs, HasSubstr("jobs have no record in Redis and are not queued or running here"))
      << logs;
  EXPECT_THAT(logs, Not(HasSubstr("none of its jobs is queued here")))
      << "the sweep ended before Redis answered again: the test missed its point";
  const Json status = status_after_outage(*redis);
  ASSERT_TRUE(status.is_object()) << logs;
  EXPECT_GE(status["records_lost"].get<int>(), before_restart - after_restart) << status.dump();
  // Jobs the broker held (queued, in flight) are not among them: at 200 jobs/s, fewer than 100
  // can finish between the count before the restart and Redis stopping.
  EXPECT_LE(status["records_lost"].get<int>(), before_restart - after_restart + 100)
      << status.dump();
}

// A TCP listener that never accepts: connections complete (the kernel's backlog) but no
// byte ever comes back.
class SilentServer {
 public:
  SilentServer() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
        ::listen(fd_, 16) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
      throw std::runtime_error("cannot listen");
    }
    port_ = ntohs(address.sin_port);
  }
  ~SilentServer() { ::close(fd_); }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

TEST(Outage, SilentRedisEndsInExitThreeNotAHang) {
  SilentServer silent;
  const auto url = fmt::format("redis://127.0.0.1:{}", silent.port());
  for (const auto& command :
       std::vector<std::vector<std::string>>{{"status"}, {"wait", "abc"}, {"get", "abc:1"}}) {
    auto argv = command;
    argv.insert(argv.begin(), bin("simq"));
    argv.insert(argv.end(), {std::string("--redis"), url});
    const auto start = std::chrono::steady_clock::now();
    const auto result = run_command(argv, 30s);
    const auto took = std::chrono::steady_clock::now() - start;
    EXPECT_EQ(result.status, 3) << command[0] << ": " << result.err;
    EXPECT_THAT(result.err, HasSubstr(url)) << command[0];
    EXPECT_LT(took, 10s) << command[0] << " took too long to give up";
  }
}

}  // namespace
}  // namespace simq::test
