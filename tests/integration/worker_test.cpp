// A worker that the broker gives up on while its kernels run: on a real cluster (SIGSTOP past
// its liveness, then SIGCONT) it comes back with those slots announced busy, reports the old
// jobs on its new connection, and the sweep ends with exactly one record per job; facing a
// scripted broker that answers ERROR unknown_worker, it reconnects once, under a new routing id.
// A corrupt sweep record fails its jobs instead of leaving them in flight forever. And a stop
// while Redis hangs gives up on the unwritten results after the stop grace and says BYE.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "client.h"
#include "simq/json.h"
#include "simq/protocol.h"
#include "simq/store.h"
#include "simq/sweep.h"
#include "test_support.h"

namespace simq::test {
namespace {

using ::testing::HasSubstr;

// For tests that keep a job queued in the worker behind a long one (the scripted broker
// dispatches beyond the worker's slots): without CREDIT the worker does not hand it back.
const std::vector<std::string> kNoCredit = {"--max-prefetch", "0"};

// Broker entries of the worker whose name ("host:pid") ends in ":<pid>".
std::vector<Json> entries_of(const Json& status, pid_t pid) {
  std::vector<Json> entries;
  if (!status.is_object() || !status.contains("workers")) return entries;
  const std::string suffix = fmt::format(":{}", pid);
  for (const auto& worker : status["workers"]) {
    if (worker["name"].get<std::string>().ends_with(suffix)) entries.push_back(worker);
  }
  return entries;
}

TEST(Worker, StoppedPastLivenessComesBackWithBusySlotsAndLosesNothing) {
  constexpr int kSlots = 2;
  constexpr int kJobs = 8;  // 2 s each: four waves on 4 slots, one of them wasted on reruns
  TestCluster cluster({.workers = 2, .slots = kSlots, .heartbeat_ms = 100, .liveness = 3});
  TempDir dir;
  std::ofstream(dir.file("long.toml")) << fmt::format(
      "kernel = \"sleep\"\n[grid]\nseconds = [2.0]\ni = {{ range = [0, {}] }}\n", kJobs);
  const auto submitted = cluster.simq({"submit", dir.file("long.toml")});
  ASSERT_EQ(submitted.status, 0) << submitted.err << cluster.logs();
  const auto sweep = trim(submitted.out);
  auto redis = cluster.redis().connect();
  const std::string jobs_key = "simq:sweep:" + sweep + ":jobs";
  const std::string running_key = "simq:sweep:" + sweep + ":running";
  ChildProcess& victim = cluster.worker(0);

  // The victim's running jobs: its own marks, attempt 1.
  std::vector<std::string> old_jobs;
  ASSERT_TRUE(wait_until(
      [&] {
        old_jobs.clear();
        const auto marks = redis->command({"HGETALL", running_key});
        for (size_t i = 0; i + 1 < marks.elements.size(); i += 2) {
          const auto mark = Json::parse(marks.elements[i + 1].str);
          if (mark["worker"].get<std::string>().ends_with(fmt::format(":{}", victim.pid()))) {
            old_jobs.push_back(marks.elements[i].str);
          }
        }
        return old_jobs.size() == static_cast<size_t>(kSlots);
      },
      10s))
      << cluster.logs();

  // Every sample: running marks never exceed all slots plus the victim's (its old jobs may
  // still run while their reruns do); and once the victim has rejoined, the broker never
  // gives it more jobs than the slots its old jobs leave free: its new jobs in flight plus
  // the slots still busy with old ones (freed as their DONEs arrive) stay within its slots.
  // The old jobs' results are fenced off (their reruns own the jobs), so the records cannot
  // tell when they finished; the broker's snapshot can.
  long long most_running = 0;
  int64_t most_victim_load = 0;
  bool rejoined = false;
  const auto sample = [&](bool rejoining) {
    most_running = std::max(most_running, redis->command({"HLEN", running_key}).integer);
    const auto entries = entries_of(broker_status(*redis), victim.pid());
    if (!rejoining || entries.empty()) return;
    int64_t load = 0;
    for (const auto& entry : entries) {
      load += entry["in_flight"].get<int64_t>() + entry["busy"].get<int64_t>();
    }
    most_victim_load = std::max(most_victim_load, load);
  };

  victim.signal(SIGSTOP);
  const bool given_up = wait_until(
      [&] {
        sample(false);  // the old connection's entry still counts the old jobs in flight
        return entries_of(broker_status(*redis), victim.pid()).empty();
      },
      10s);
  victim.signal(SIGCONT);
  ASSERT_TRUE(given_up) << "the broker never gave up on the stopped worker\n" << cluster.logs();

  const bool done = wait_until(
      [&] {
        sample(true);
        rejoined = rejoined || !entries_of(broker_status(*redis), victim.pid()).empty();
        return redis->command({"HGET", "simq:sweep:" + sweep, "status"}).str == "done";
      },
      20s);
  ASSERT_TRUE(done) << cluster.logs();
  EXPECT_TRUE(rejoined) << cluster.logs();
  EXPECT_LE(most_running, 2 * kSlots + kSlots) << cluster.logs();
  EXPECT_LE(most_victim_load, kSlots)
      << "the broker gave the reconnected worker jobs for slots its old jobs still held\n"
      << cluster.logs();
  EXPECT_THAT(cluster.logs(), HasSubstr("slots still busy with jobs of an earlier connection"));

  // Exactly one record and one completion event per job, plus the final event.
  EXPECT_EQ(redis->command({"HLEN", jobs_key}).integer, kJobs);
  expect_each_job_announced_once(*redis, sweep, kJobs);
  for (int i = 0; i < kJobs; ++i) {
    const auto record = Json::parse(redis->command({"HGET", jobs_key, std::to_string(i)}).str);
    EXPECT_EQ(record["status"], "succeeded") << record.dump();
  }
  EXPECT_TRUE(wait_until([&] { return cluster.connected_workers() == 2; }, 5s)) << cluster.logs();
  EXPECT_EQ(entries_of(broker_status(*redis), victim.pid()).size(), 1u);

  // Every old job was reported once on the new connection: late_done does not creep up.
  const auto late_done = [&] { return broker_status(*redis)["late_done"].get<int64_t>(); };
  const int64_t late_after_sweep = late_done();
  EXPECT_FALSE(wait_until([&] { return late_done() != late_after_sweep; }, 1s))
      << "late_done went from " << late_after_sweep << " to " << late_done();

  // ... and its busy slots are all free again: a sweep as large as the cluster fills them.
  std::ofstream(dir.file("fill.toml")) << fmt::format(
      "kernel = \"sleep\"\n[grid]\nseconds = [3.0]\ni = {{ range = [0, {}] }}\n", 2 * kSlots);
  const auto fill = cluster.simq({"submit", dir.file("fill.toml")});
  ASSERT_EQ(fill.status, 0) << fill.err;
  int64_t victim_in_flight = 0;
  EXPECT_TRUE(wait_until(
      [&] {
        const auto entries = entries_of(broker_status(*redis), victim.pid());
        victim_in_flight = entries.empty() ? 0 : entries[0]["in_flight"].get<int64_t>();
        return victim_in_flight == kSlots;
      },
      2s))
      << "the reconnected worker got " << victim_in_flight << " of " << kSlots << " jobs\n"
      << cluster.logs();
}

// A broker backend the test drives by hand: a ROUTER on a free loopback port.
class ScriptedBroker {
 public:
  explicit ScriptedBroker(zmq::context_t& context) : socket_(context, zmq::socket_type::router) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.set(zmq::sockopt::rcvtimeo, 100);
    socket_.bind("tcp://127.0.0.1:*");
    endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
  }
  const std::string& endpoint() const { return endpoint_; }

  struct Message {
    std::string worker;  // routing id
    std::string command;
    std::string body;
  };

  // The next message other than HEARTBEAT and CREDIT (kept in `credits`), or nullopt if none
  // comes within `timeout`.
  std::optional<Message> next(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      std::vector<zmq::message_t> frames;
      zmq::message_t frame;
      if (!socket_.recv(frame)) continue;
      frames.push_back(std::move(frame));
      while (frames.back().more()) {
        frames.emplace_back();
        if (!socket_.recv(frames.back())) break;
      }
      if (frames.size() != 4 || frames[2].to_string() == "HEARTBEAT") continue;
      if (frames[2].to_string() == "CREDIT") {
        credits.push_back(decode_credit(frames[3].to_string_view()));
        continue;
      }
      return Message{frames[0].to_string(), frames[2].to_string(), frames[3].to_string()};
    }
    return std::nullopt;
  }

  // A stopping worker's first word: DRAIN, with the jobs it hands back unstarted.
  std::optional<std::vector<JobRef>> drained(std::chrono::milliseconds timeout) {
    const auto message = next(timeout);
    if (!message || message->command != "DRAIN") {
      ADD_FAILURE() << "expected DRAIN, got " << (message ? message->command : "nothing");
      return std::nullopt;
    }
    return decode_drain(message->body).jobs;
  }

  std::vector<CreditMsg> credits;  // CREDIT messages received, oldest first

  void send(const std::string& worker, std::string_view command, const std::string& body) {
    socket_.send(zmq::buffer(worker), zmq::send_flags::sndmore);
    socket_.send(zmq::buffer(kProtocol), zmq::send_flags::sndmore);
    socket_.send(zmq::buffer(command), zmq::send_flags::sndmore);
    socket_.send(zmq::buffer(body), zmq::send_flags::none);
  }

 private:
  zmq::socket_t socket_;
  std::string endpoint_;
};

TEST(Worker, UnknownWorkerMeansOneNewConnectionThatReportsTheOldJobs) {
  TestCluster cluster({.workers = 0});  // Redis and a broker to record the sweep; no workers
  TempDir dir;
  std::ofstream(dir.file("three.toml"))
      << "kernel = \"sleep\"\n[grid]\nseconds = [1.0]\ni = { range = [0, 3] }\n";
  const auto submitted = cluster.simq({"submit", dir.file("three.toml")});
  ASSERT_EQ(submitted.status, 0) << submitted.err << cluster.logs();
  const auto sweep = trim(submitted.out);
  auto redis = cluster.redis().connect();
  const std::string running_key = "simq:sweep:" + sweep + ":running";
  const auto marked = [&](int count) {
    return wait_until([&] { return redis->command({"HLEN", running_key}).integer == count; }, 5s);
  };

  zmq::context_t context;
  ScriptedBroker broker(context);
  ChildProcess worker(
      {bin("simq-worker"), "--broker", broker.endpoint(), "--redis", cluster.redis().url(),
       "--slots", "2", "--log-level", "debug", kNoCredit[0], kNoCredit[1]},
      dir.file("worker.log"));
  const auto log = [&] { return read_file(dir.file("worker.log")); };

  auto hello = broker.next(5s);
  ASSERT_TRUE(hello && hello->command == "HELLO") << log();
  EXPECT_EQ(decode_hello(hello->body).busy, 0u);
  const std::string first = hello->worker;
  broker.send(first, "WELCOME", encode(WelcomeMsg{1000, 10}));  // no silence within the test
  // Jobs 0 and 1 take both slots (their running marks show the kernels run); job 2 waits in
  // the worker's queue (its debug log shows it arrived).
  broker.send(first, "DISPATCH", encode(DispatchMsg{{{sweep, 0, 1}, {sweep, 1, 1}}}));
  ASSERT_TRUE(marked(2)) << log();
  broker.send(first, "DISPATCH", encode(DispatchMsg{{{sweep, 2, 1}}}));
  ASSERT_TRUE(wait_until([&] { return log().find("DISPATCH of 1 jobs") != std::string::npos; }, 5s))
      << log();
  EXPECT_EQ(redis->command({"HLEN", running_key}).integer, 2) << "job 2 has not started";

  // The broker has forgotten this connection; three ERRORs arrive before the worker reacts.
  const auto unknown = encode(ErrorMsg{0, "unknown_worker", "unknown worker: send HELLO first"});
  for (int i = 0; i < 3; ++i) broker.send(first, "ERROR", unknown);

  hello = broker.next(5s);
  ASSERT_TRUE(hello && hello->command == "HELLO") << log();
  EXPECT_NE(hello->worker, first) << "a new connection has a new routing id";
  EXPECT_EQ(decode_hello(hello->body).busy, 2u) << "jobs 0 and 1 are still running";
  const std::string second = hello->worker;
  broker.send(second, "WELCOME", encode(WelcomeMsg{1000, 10}));

  // The old jobs are reported on the new connection, once each; the queued job 2 was dropped.
  std::vector<uint64_t> reported;
  while (reported.size() < 2) {
    const auto message = broker.next(5s);
    ASSERT_TRUE(message) << "reported so far: " << reported.size() << "\n" << log();
    ASSERT_EQ(message->command, "DONE") << "only one HELLO per connection\n" << log();
    ASSERT_EQ(message->worker, second);
    for (const auto& done : decode_done(message->body).jobs) {
      EXPECT_EQ(done.job.sweep, sweep);
      EXPECT_EQ(done.job.attempt, 1u);
      EXPECT_TRUE(done.ok);
      reported.push_back(done.job.index);
    }
  }
  std::sort(reported.begin(), reported.end());
  EXPECT_EQ(reported, (std::vector<uint64_t>{0, 1}));
  const auto extra = broker.next(500ms);
  EXPECT_FALSE(extra) << "unexpected " << extra->command << " from " << extra->worker;
  EXPECT_TRUE(broker.credits.empty()) << "job 2 went with the old connection, not by CREDIT";

  // A clean stop says DRAIN, then BYE, and it leaves before the socket closes.
  worker.signal(SIGTERM);
  ASSERT_TRUE(broker.drained(5s)) << log();
  const auto bye = broker.next(5s);
  ASSERT_TRUE(bye) << log();
  EXPECT_EQ(bye->command, "BYE");
  EXPECT_EQ(bye->worker, second);
  EXPECT_EQ(worker.wait(5s), 0) << log();
  EXPECT_THAT(log(), HasSubstr("reconnecting"));
}

// A simq-worker (3 slots and a 1 s stop grace unless told otherwise) facing a scripted
// broker; `hello` is its first message.
struct ScriptedWorker {
  explicit ScriptedWorker(const std::string& redis_url, const TempDir& dir, int slots = 3,
                          int stop_grace_ms = 1000, std::vector<std::string> flags = {})
      : broker(context),
        log_file(dir.file("worker.log")),
        process(worker_argv(broker.endpoint(), redis_url, slots, stop_grace_ms, std::move(flags)),
                log_file),
        hello(broker.next(5s)) {}

  static std::vector<std::string> worker_argv(const std::string& broker, const std::string& redis,
                                              int slots, int stop_grace_ms,
                                              std::vector<std::string> flags) {
    std::vector<std::string> argv = {bin("simq-worker"),
                                     "--broker",
                                     broker,
                                     "--redis",
                                     redis,
                                     "--slots",
                                     std::to_string(slots),
                                     "--stop-grace-ms",
                                     std::to_string(stop_grace_ms),
                                     "--log-level",
                                     "debug"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    return argv;
  }

  std::string log() const { return read_file(log_file); }

  zmq::context_t context;
  ScriptedBroker broker;
  std::string log_file;
  ChildProcess process;
  std::optional<ScriptedBroker::Message> hello;
};

TEST(Worker, CorruptSweepRecordsFailTheirJobsInsteadOfHanging) {
  TestCluster cluster({.workers = 0});
  TempDir dir;
  std::ofstream(dir.file("one.toml")) << "kernel = \"noop\"\n[grid]\nx = [1]\n";
  std::vector<std::string> sweeps;
  for (int i = 0; i < 3; ++i) {
    const auto submitted = cluster.simq({"submit", dir.file("one.toml")});
    ASSERT_EQ(submitted.status, 0) << submitted.err << cluster.logs();
    sweeps.push_back(trim(submitted.out));
  }
  const std::string& unparsable = sweeps[0];  // its spec is not JSON
  const std::string& wrong_type = sweeps[1];  // its record is not even a hash
  const std::string& good = sweeps[2];
  auto redis = cluster.redis().connect();
  redis->command({"HSET", "simq:sweep:" + unparsable, "spec", "{not json"});
  redis->command({"DEL", "simq:sweep:" + wrong_type});
  redis->command({"SET", "simq:sweep:" + wrong_type, "garbage"});

  ScriptedWorker scripted(cluster.redis().url(), dir);
  auto& [context, broker, log_file, worker, hello] = scripted;
  const auto log = [&] { return scripted.log(); };
  ASSERT_TRUE(hello && hello->command == "HELLO") << log();
  broker.send(hello->worker, "WELCOME", encode(WelcomeMsg{1000, 10}));
  broker.send(hello->worker, "DISPATCH",
              encode(DispatchMsg{{{unparsable, 0, 1}, {wrong_type, 0, 1}, {good, 0, 1}}}));

  std::map<std::string, bool> reported;  // sweep -> ok
  while (reported.size() < 3) {
    const auto message = broker.next(10s);
    ASSERT_TRUE(message) << "jobs still in flight after 10 s\n" << log();
    ASSERT_EQ(message->command, "DONE");
    for (const auto& done : decode_done(message->body).jobs) {
      EXPECT_FALSE(reported.contains(done.job.sweep)) << "reported twice: " << done.job.sweep;
      reported[done.job.sweep] = done.ok;
    }
  }
  EXPECT_FALSE(reported[unparsable]);
  EXPECT_FALSE(reported[wrong_type]);
  EXPECT_TRUE(reported[good]);

  const auto record =
      Json::parse(redis->command({"HGET", "simq:sweep:" + unparsable + ":jobs", "0"}).str);
  EXPECT_EQ(record["status"], "failed");
  EXPECT_THAT(record["error"].get<std::string>(), HasSubstr("the spec in Redis is not JSON"));
  EXPECT_THAT(log(), HasSubstr("Redis refuses the results of sweep " + wrong_type));
  EXPECT_EQ(redis->command({"HGET", "simq:sweep:" + good, "status"}).str, "done");
  EXPECT_EQ(worker.poll(), std::nullopt) << "the worker must keep serving";
}

TEST(Worker, StopWhileRedisHangsGivesUpAfterTheGraceAndSaysBye) {
  constexpr auto kStopGrace = 1s;  // --stop-grace-ms below
  TestCluster cluster({.workers = 0});
  TempDir dir;
  std::ofstream(dir.file("three.toml")) << "kernel = \"noop\"\n[grid]\nx = [1, 2, 3]\n";
  std::ofstream(dir.file("one.toml")) << "kernel = \"noop\"\n[grid]\nx = [1]\n";
  const auto cached = cluster.simq({"submit", dir.file("three.toml")});
  const auto uncached = cluster.simq({"submit", dir.file("one.toml")});
  ASSERT_EQ(cached.status, 0) << cached.err << cluster.logs();
  ASSERT_EQ(uncached.status, 0) << uncached.err << cluster.logs();
  const std::string cached_sweep = trim(cached.out);
  const std::string uncached_sweep = trim(uncached.out);

  ScriptedWorker scripted(cluster.redis().url(), dir);
  auto& [context, broker, log_file, worker, hello] = scripted;
  const auto log = [&] { return scripted.log(); };
  ASSERT_TRUE(hello && hello->command == "HELLO") << log();
  broker.send(hello->worker, "WELCOME", encode(WelcomeMsg{1000, 100}));  // silence never counts

  // One job written and reported while Redis answers: its sweep's spec is now cached.
  broker.send(hello->worker, "DISPATCH", encode(DispatchMsg{{{cached_sweep, 0, 1}}}));
  auto message = broker.next(5s);
  ASSERT_TRUE(message && message->command == "DONE") << log();

  // Redis hangs: connections open, no replies. Resumed before the cluster stops it.
  const pid_t redis_pid = cluster.redis().process()->pid();
  ASSERT_EQ(::kill(redis_pid, SIGSTOP), 0);
  struct Resume {
    pid_t pid;
    ~Resume() { ::kill(pid, SIGCONT); }
  } resume{redis_pid};

  // Two jobs finish but cannot be written; the third waits for its sweep's spec.
  broker.send(
      hello->worker, "DISPATCH",
      encode(DispatchMsg{{{uncached_sweep, 0, 1}, {cached_sweep, 1, 1}, {cached_sweep, 2, 1}}}));
  ASSERT_TRUE(wait_until(
      [&] {
        const std::string text = log();
        return text.find("cannot write") != std::string::npos &&
               text.find("cannot read sweep " + uncached_sweep) != std::string::npos;
      },
      15s))
      << log();

  worker.signal(SIGTERM);
  const auto stopped_at = std::chrono::steady_clock::now();
  ASSERT_TRUE(broker.drained(5s)) << log();
  message = broker.next(kStopGrace + 3s);
  ASSERT_TRUE(message) << "no BYE within the stop grace\n" << log();
  EXPECT_EQ(message->command, "BYE") << "nothing was written, so nothing is reported\n" << log();
  EXPECT_EQ(worker.wait(8s), 0) << log();
  const auto took = std::chrono::steady_clock::now() - stopped_at;
  EXPECT_LT(took, kStopGrace + 6s) << log();
  EXPECT_THAT(log(), HasSubstr("2 finished jobs were not written to Redis"));
  EXPECT_THAT(log(), HasSubstr("the broker will run them again"));
  EXPECT_THAT(log(),
              HasSubstr("3 jobs succeeded, 0 failed, 0 retried, 0 cancelled, 1 handed back"));
}

// ---------------------------------------------------------------------------------------
// Retries, limits, cancel and stops: a real simq-worker and Redis, the test plays the broker.

// Records a sweep straight in Redis, as `simq submit` does before the broker queues it.
std::string record_sweep(const RedisServer& redis, const std::string& toml) {
  const std::string id = new_sweep_id();
  EXPECT_TRUE(Store(redis.address()).create_sweep(id, parse_sweep_toml(toml, "test.toml"), 0));
  return id;
}

// The job's terminal record (null if it has none) and its running mark (null if none).
Json record_of(const RedisServer& redis, const std::string& sweep, uint64_t index) {
  const auto record = Store(redis.address()).job_record(sweep, index);
  return record ? Json::parse(*record) : Json();
}
Json mark_of(const RedisServer& redis, const std::string& sweep, uint64_t index) {
  const auto mark = Store(redis.address()).running_record(sweep, index);
  return mark ? Json::parse(*mark) : Json();
}

// A scripted worker, welcomed, with helpers to dispatch and to collect reports.
struct Served : ScriptedWorker {
  Served(const RedisServer& redis, const TempDir& dir, int slots, int stop_grace_ms = 1000,
         std::vector<std::string> flags = {})
      : ScriptedWorker(redis.url(), dir, slots, stop_grace_ms, std::move(flags)) {
    if (hello && hello->command == "HELLO") {
      broker.send(hello->worker, "WELCOME", encode(WelcomeMsg{1000, 100}));  // no silence
    }
  }

  void dispatch(std::vector<JobRef> jobs) {
    broker.send(hello->worker, "DISPATCH", encode(DispatchMsg{std::move(jobs)}));
  }

  // The next `count` jobs reported DONE, fewer if another message or nothing comes first
  // (kept in `other`).
  std::vector<DoneJob> done(size_t count, std::chrono::milliseconds timeout) {
    std::vector<DoneJob> jobs;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (jobs.size() < count) {
      const auto left =
          std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left <= 0ms) break;
      other = broker.next(left);
      if (!other || other->command != "DONE") break;
      for (auto& job : decode_done(other->body).jobs) jobs.push_back(std::move(job));
      other.reset();
    }
    return jobs;
  }

  // Waits until the job's kernel has started (the worker logs it at debug level).
  bool started(const std::string& sweep, uint64_t index) {
    const std::string line = fmt::format("job {}: kernel", job_id(sweep, index));
    return wait_until([&] { return log().find(line) != std::string::npos; }, 5s);
  }

  std::optional<ScriptedBroker::Message> other;
};

TEST(Worker, JobsPastMaxAttemptsAreDeadLetteredUnrun) {
  RedisServer redis;
  TempDir dir;
  // Jobs 0 and 1 would fail if they ran; job 2 succeeds.
  const std::string sweep = record_sweep(redis,
                                         "kernel = \"fault\"\n[options]\nmax_attempts = 3\n"
                                         "[grid]\nmode = [\"error\", \"error\", \"ok\"]\n");
  // As the broker does: job 0 lost with its worker three times, job 1 retried after errors.
  Store store(redis.address());
  store.requeue({Requeue{JobRef{sweep, 0, 2}, "w-a:1"}});
  store.requeue({Requeue{JobRef{sweep, 0, 3}, "w-a:1"}});
  store.requeue({Requeue{JobRef{sweep, 0, 4}, "w-b:7"}});
  store.requeue({Requeue{JobRef{sweep, 1, 4}, ""}, Requeue{JobRef{sweep, 2, 3}, ""}});

  Served worker(redis, dir, 1);
  ASSERT_TRUE(worker.hello && worker.hello->command == "HELLO") << worker.log();
  worker.dispatch({{sweep, 0, 4}, {sweep, 1, 4}, {sweep, 2, 3}});
  const auto done = worker.done(3, 10s);
  ASSERT_EQ(done.size(), 3u) << worker.log();
  for (const auto& job : done) EXPECT_FALSE(job.retry_after_ms) << job.job.index;

  const Json lost = record_of(redis, sweep, 0);
  EXPECT_EQ(lost["status"], "failed") << lost.dump();
  EXPECT_EQ(lost["dead_letter"], true) << lost.dump();
  EXPECT_EQ(lost["error"], "worker lost 3 times: last seen running on w-b:7 (attempt 3)");
  EXPECT_EQ(lost["attempts"], 3) << "attempts made; the 4th did not run";
  const Json retried = record_of(redis, sweep, 1);
  EXPECT_EQ(retried["dead_letter"], true) << retried.dump();
  EXPECT_EQ(retried["error"], "dead-lettered: attempt 4 exceeds max_attempts 3");
  const Json last = record_of(redis, sweep, 2);
  EXPECT_EQ(last["status"], "succeeded") << last.dump();
  EXPECT_EQ(last["attempts"], 3);
  EXPECT_FALSE(last.contains("dead_letter"));
  EXPECT_EQ(worker.process.poll(), std::nullopt) << "the worker must keep serving";
}

TEST(Worker, RetryableFailuresAreReportedForARetryWithBackoffUntilTheLastAttempt) {
  RedisServer redis;
  TempDir dir;
  const std::string sweep = record_sweep(
      redis,
      "kernel = \"fault\"\n[params]\nmode = \"retryable\"\n"
      "[options]\nmax_attempts = 3\nbackoff_s = 0.2\nbackoff_max_s = 0.3\n[grid]\ni = [0]\n");
  Store store(redis.address());
  Served worker(redis, dir, 1);
  ASSERT_TRUE(worker.hello && worker.hello->command == "HELLO") << worker.log();

  // Delays: min(backoff_max_s, backoff_s * 2^(attempt-1)), then 50-100% of that.
  const std::map<uint32_t, uint64_t> full_delay_ms = {{1, 200}, {2, 300}};
  for (uint32_t attempt = 1; attempt <= 3; ++attempt) {
    SCOPED_TRACE(fmt::format("attempt {}", attempt));
    if (attempt > 1) store.requeue({Requeue{JobRef{sweep, 0, attempt}, ""}});  // as the broker
    worker.dispatch({{sweep, 0, attempt}});
    const auto done = worker.done(1, 5s);
    ASSERT_EQ(done.size(), 1u) << worker.log();
    EXPECT_EQ(done[0].job.attempt, attempt);
    EXPECT_FALSE(done[0].ok);
    if (attempt < 3) {
      ASSERT_TRUE(done[0].retry_after_ms) << worker.log();
      EXPECT_GE(*done[0].retry_after_ms, full_delay_ms.at(attempt) / 2);
      EXPECT_LE(*done[0].retry_after_ms, full_delay_ms.at(attempt));
      EXPECT_TRUE(record_of(redis, sweep, 0).is_null()) << "no terminal record before the last";
      Json mark;
      ASSERT_TRUE(wait_until(
          [&] {
            mark = mark_of(redis, sweep, 0);
            return mark.is_object() && mark["status"] == "retrying";
          },
          5s))
          << mark.dump();
      EXPECT_EQ(mark["attempts"], attempt);
      EXPECT_EQ(mark["error"], "fault: asked to fail (retryable)");
      EXPECT_DOUBLE_EQ(mark["retry_after_s"].get<double>(),
                       static_cast<double>(*done[0].retry_after_ms) / 1000);
    } else {
      EXPECT_FALSE(done[0].retry_after_ms);
      const Json record = record_of(redis, sweep, 0);
      EXPECT_EQ(record["status"], "failed") << record.dump();
      EXPECT_EQ(record["error"], "fault: asked to fail (retryable) (attempt 3 of 3)");
      EXPECT_EQ(record["attempts"], 3);
    }
  }
}

TEST(Worker, AJobPastItsTimeLimitFailsAndFreesItsSlot) {
  RedisServer redis;
  TempDir dir;
  const std::string sweep = record_sweep(redis,
                                         "kernel = \"sleep\"\n[options]\ntimeout_s = 0.3\n[grid]\n"
                                         "seconds = [10, 0.01]\n");
  Served worker(redis, dir, 1, 1000, kNoCredit);
  ASSERT_TRUE(worker.hello && worker.hello->command == "HELLO") << worker.log();
  const auto start = std::chrono::steady_clock::now();
  worker.dispatch({{sweep, 0, 1}, {sweep, 1, 1}});  // one slot: job 1 waits for job 0
  const auto done = worker.done(2, 5s);
  ASSERT_EQ(done.size(), 2u) << worker.log();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s) << "a 10 s job, stopped at 0.3 s";
  EXPECT_EQ(done[0].job.index, 0u);
  EXPECT_FALSE(done[0].ok);
  EXPECT_FALSE(done[0].retry_after_ms) << "a timeout is not retried";
  EXPECT_EQ(done[1].job.index, 1u);
  EXPECT_TRUE(done[1].ok);
  const Json record = record_of(redis, sweep, 0);
  EXPECT_EQ(record["status"], "failed") << record.dump();
  EXPECT_EQ(record["error"], "timed out after 0.3 s");
  EXPECT_EQ(record_of(redis, sweep, 1)["status"], "succeeded");
}

TEST(Worker, CancelStopsRunningJobsAndDropsQueuedOnes) {
  RedisServer redis;
  TempDir dir;
  const std::string sweep =
      record_sweep(redis, "kernel = \"sleep\"\n[grid]\nseconds = [10, 10, 10]\n");
  Served worker(redis, dir, 1, 1000, kNoCredit);
  ASSERT_TRUE(worker.hello && worker.hello->command == "HELLO") << worker.log();
  worker.dispatch({{sweep, 0, 1}, {sweep, 1, 1}});  // one slot: job 1 is queued in the worker
  ASSERT_TRUE(worker.started(sweep, 0)) << worker.log();

  // As the broker does: the sweep is cancelled in Redis, then every worker told.
  ASSERT_EQ(Store(redis.address()).cancel_sweep(sweep), CancelOutcome::kCancelled);
  const auto start = std::chrono::steady_clock::now();
  worker.broker.send(worker.hello->worker, "CANCEL", encode(CancelMsg{0, sweep}));
  auto done = worker.done(2, 5s);
  ASSERT_EQ(done.size(), 2u) << worker.log();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  const Json running = record_of(redis, sweep, 0);
  EXPECT_EQ(running["status"], "cancelled") << running.dump();
  EXPECT_EQ(running["error"], "cancelled by simq cancel");
  EXPECT_TRUE(record_of(redis, sweep, 1).is_null()) << "a queued job is dropped unrecorded";

  // A job of the sweep dispatched just after the cancel is not run either.
  worker.dispatch({{sweep, 2, 1}});
  done = worker.done(1, 2s);
  ASSERT_EQ(done.size(), 1u) << worker.log();
  EXPECT_EQ(done[0].job.index, 2u);
  EXPECT_TRUE(record_of(redis, sweep, 2).is_null());
  const auto info = Store(redis.address()).sweep(sweep);
  ASSERT_TRUE(info);
  EXPECT_EQ(info->cancelled, 1u);
  EXPECT_EQ(info->unrun(), 2u);

  // A CANCEL without a sweep id is counted as malformed; the worker serves on.
  worker.broker.send(worker.hello->worker, "CANCEL", encode(PingMsg{7}));
  EXPECT_TRUE(
      wait_until([&] { return worker.log().find("malformed CANCEL") != std::string::npos; }, 5s))
      << worker.log();
  EXPECT_EQ(worker.process.poll(), std::nullopt);
}

TEST(Worker, StopLetsRunningJobsFinishAndRecordsThem) {
  RedisServer redis;
  TempDir dir;
  const std::string sweep =
      record_sweep(redis, "kernel = \"sleep\"\n[grid]\nseconds = [1.0, 1.0]\n");
  Served worker(redis, dir, 1, 30000, kNoCredit);
  ASSERT_TRUE(worker.hello && worker.hello->command == "HELLO") << worker.log();
  worker.dispatch({{sweep, 0, 1}, {sweep, 1, 1}});  // job 1 is queued, not started
  ASSERT_TRUE(worker.started(sweep, 0)) << worker.log();

  worker.process.signal(SIGTERM);
  // Job 1 never started: handed back at once, so the broker runs it elsewhere now.
  EXPECT_EQ(worker.broker.drained(5s), (std::vector<JobRef>{{sweep, 1, 1}})) << worker.log();
  const auto done = worker.done(1, 5s);
  ASSERT_EQ(done.size(), 1u) << worker.log();
  EXPECT_EQ(done[0].job.index, 0u);
  EXPECT_TRUE(done[0].ok);
  const auto bye = worker.broker.next(5s);
  ASSERT_TRUE(bye) << worker.log();
  EXPECT_EQ(bye->command, "BYE") << "job 1 was handed back, not reported";
  EXPECT_EQ(worker.process.wait(5s), 0) << worker.log();
  EXPECT_EQ(record_of(redis, sweep, 0)["status"], "succeeded");
  EXPECT_TRUE(record_of(redis, sweep, 1).is_null());
}

TEST(Worker, StopPastTheGraceHandsRunningJobsBack) {
  RedisServer redis;
  TempDir dir;
  const std::string sweep = record_sweep(redis, "kernel = \"sleep\"\n[grid]\nseconds = [10]\n");
  Served worker(redis, dir, 1, 200);
  ASSERT_TRUE(worker.hello && worker.hello->command == "HELLO") << worker.log();
  worker.dispatch({{sweep, 0, 1}});
  ASSERT_TRUE(worker.started(sweep, 0)) << worker.log();

  const auto start = std::chrono::steady_clock::now();
  worker.process.signal(SIGTERM);
  EXPECT_EQ(worker.broker.drained(5s), std::vector<JobRef>{}) << worker.log();
  const auto bye = worker.broker.next(5s);
  ASSERT_TRUE(bye) << worker.log();
  EXPECT_EQ(bye->command, "BYE") << "the stopped job is not reported\n" << worker.log();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1500ms);
  EXPECT_EQ(worker.process.wait(5s), 0) << worker.log();
  EXPECT_TRUE(record_of(redis, sweep, 0).is_null());
  EXPECT_THAT(worker.log(), HasSubstr("stopping 1 running jobs"));
  EXPECT_THAT(worker.log(), HasSubstr("1 handed back"));
}

TEST(Worker, ASecondStopSignalStopsRunningJobsAtOnce) {
  RedisServer redis;
  TempDir dir;
  const std::string sweep = record_sweep(redis, "kernel = \"sleep\"\n[grid]\nseconds = [10]\n");
  Served worker(redis, dir, 1, 30000);
  ASSERT_TRUE(worker.hello && worker.hello->command == "HELLO") << worker.log();
  worker.dispatch({{sweep, 0, 1}});
  ASSERT_TRUE(worker.started(sweep, 0)) << worker.log();

  worker.process.signal(SIGTERM);
  ASSERT_TRUE(worker.broker.drained(5s)) << worker.log();
  const auto start = std::chrono::steady_clock::now();
  worker.process.signal(SIGTERM);
  const auto bye = worker.broker.next(5s);
  ASSERT_TRUE(bye) << worker.log();
  EXPECT_EQ(bye->command, "BYE") << worker.log();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1500ms) << "not the 30 s grace";
  EXPECT_EQ(worker.process.wait(5s), 0) << worker.log();
  EXPECT_TRUE(record_of(redis, sweep, 0).is_null());
}

TEST(Worker, AResultOfAStaleAttemptIsNotStored) {
  RedisServer redis;
  TempDir dir;
  const std::string sweep = record_sweep(redis, "kernel = \"sleep\"\n[grid]\nseconds = [0.5]\n");
  Served worker(redis, dir, 1);
  ASSERT_TRUE(worker.hello && worker.hello->command == "HELLO") << worker.log();
  worker.dispatch({{sweep, 0, 1}});
  ASSERT_TRUE(worker.started(sweep, 0)) << worker.log();
  // The broker presumed this worker lost and gave the job to another as attempt 2.
  Store(redis.address()).requeue({Requeue{JobRef{sweep, 0, 2}, "this-one:1"}});

  const auto done = worker.done(1, 5s);
  ASSERT_EQ(done.size(), 1u) << worker.log();
  EXPECT_TRUE(record_of(redis, sweep, 0).is_null()) << record_of(redis, sweep, 0).dump();
  const auto info = Store(redis.address()).sweep(sweep);
  ASSERT_TRUE(info);
  EXPECT_EQ(info->fenced, 1u);
  EXPECT_EQ(info->succeeded, 0u);
  EXPECT_THAT(worker.log(), HasSubstr("1 results discarded: a newer attempt of those jobs owns"));
}

TEST(Worker, ShortJobsEarnAPrefetchThatALongKernelHandsBack) {
  RedisServer redis;
  TempDir dir;
  const std::string quick =
      record_sweep(redis, "kernel = \"noop\"\n[grid]\ni = { range = [0, 40] }\n");
  const std::string slow =
      record_sweep(redis, "kernel = \"sleep\"\n[grid]\nseconds = [1, 1, 1, 1, 1, 1]\n");
  Served worker(redis, dir, 1);
  ASSERT_TRUE(worker.hello && worker.hello->command == "HELLO") << worker.log();

  // Forty microsecond jobs: the worker asks to hold more than its one slot.
  std::vector<JobRef> jobs;
  for (uint64_t i = 0; i < 40; ++i) jobs.push_back({quick, i, 1});
  worker.dispatch(jobs);
  ASSERT_EQ(worker.done(40, 5s).size(), 40u) << worker.log();
  ASSERT_TRUE(wait_until(
      [&] {
        worker.broker.next(50ms);
        return !worker.broker.credits.empty();
      },
      5s))
      << worker.log();
  const CreditMsg asked = worker.broker.credits.back();
  // As many as ~5 ms of its jobs take (64 or more here; fewer in a sanitized build).
  EXPECT_GT(asked.prefetch, 0u);
  EXPECT_LE(asked.prefetch, 1024u) << "--max-prefetch";
  EXPECT_TRUE(asked.jobs.empty());

  // Four 1 s jobs on one slot: once the first has run 20 ms, the three waiting behind it go
  // back to the broker, and the worker holds nothing beyond its slot.
  worker.dispatch({{slow, 0, 1}, {slow, 1, 1}, {slow, 2, 1}, {slow, 3, 1}});
  // The next CREDIT that hands jobs back (a slow build may first send another estimate).
  const auto hands_back = [&](size_t after) -> std::optional<CreditMsg> {
    std::optional<CreditMsg> found;
    EXPECT_TRUE(wait_until(
        [&] {
          worker.broker.next(50ms);
          for (size_t i = after; i < worker.broker.credits.size() && !found; ++i) {
            if (!worker.broker.credits[i].jobs.empty()) found = worker.broker.credits[i];
          }
          return found.has_value();
        },
        5s))
        << worker.log();
    return found;
  };
  const size_t before_slow = worker.broker.credits.size();
  const auto first = hands_back(before_slow);
  ASSERT_TRUE(first);
  const CreditMsg handed = *first;
  EXPECT_EQ(handed.prefetch, 0u);
  EXPECT_EQ(handed.jobs, (std::vector<JobRef>{{slow, 1, 1}, {slow, 2, 1}, {slow, 3, 1}}));

  // Jobs that come anyway while the long kernel runs (a DISPATCH that crossed that CREDIT, or
  // one sent after a reconnection) go back too: the worker already asks for no more.
  const size_t before_crossing = worker.broker.credits.size();
  worker.dispatch({{slow, 4, 1}, {slow, 5, 1}});
  const auto second = hands_back(before_crossing);
  ASSERT_TRUE(second);
  EXPECT_EQ(second->prefetch, 0u);
  EXPECT_EQ(second->jobs, (std::vector<JobRef>{{slow, 4, 1}, {slow, 5, 1}}));
  const auto done = worker.done(1, 5s);
  ASSERT_EQ(done.size(), 1u) << worker.log();
  EXPECT_EQ(done[0].job, (JobRef{slow, 0, 1})) << "only the job that started runs here";
  EXPECT_FALSE(worker.done(1, 1500ms).size() > 0) << "the handed-back jobs do not run here";
  EXPECT_TRUE(record_of(redis, slow, 1).is_null());
}

TEST(Worker, ASweepIdUsedAgainRunsTheNewSpecNotTheOneTheWorkerKept) {
  // A client may use a sweep id again once the old sweep expired. Specs over 64 KiB do not
  // come with DISPATCH; the worker reads them from Redis and keeps them: the new sweep's jobs
  // must run with the new spec.
  TestCluster cluster({.workers = 1});
  BrokerClient client(cluster.frontend());
  auto redis = cluster.redis().connect();
  const std::string sweep = "nightly-scan";
  const std::string pad(70 * 1024, 'x');
  const auto run = [&](const std::string& version) {
    const Json spec = {{"kernel", "noop"},
                       {"params", {{"version", version}, {"pad", pad}}},
                       {"grid", {{"i", {{"range", {0, 3}}}}}}};
    EXPECT_FALSE(
        client.submit(sweep, SweepSpec::from_json(spec, "test"), "test", 30s).reply.existed);
    const auto waited = cluster.simq({"wait", sweep, "--timeout", "30"});
    ASSERT_EQ(waited.status, 0) << waited.out << waited.err << cluster.logs();
    for (int i = 0; i < 3; ++i) {
      const auto record =
          Json::parse(redis->command({"HGET", jobs_key(sweep), std::to_string(i)}).str);
      EXPECT_EQ(record["result"]["version"], version) << "job " << i;
    }
  };
  run("first");
  // Its keys expire, as --result-ttl would have them (at once: a test cannot race the expiry).
  const auto keys = redis->command({"KEYS", sweep_key(sweep) + "*"});
  ASSERT_GE(keys.elements.size(), 2u);
  for (const auto& key : keys.elements) redis->command({"DEL", key.str});
  run("second");
}

}  // namespace
}  // namespace simq::test
