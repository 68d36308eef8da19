// Unit tests of RunningJobs: which jobs a cancel, a stop or a deadline stops, and why. No
// sockets, no Redis; the one deadline test waits on the watchdog with a generous bound.
#include "running_jobs.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace simq {
namespace {

using namespace std::chrono_literals;
using Stop = RunningJobs::Stop;

TEST(RunningJobs, CancelStopsTheSweepsJobsOnly) {
  RunningJobs jobs(3, 16);
  const auto a0 = jobs.take(0, JobRef{"a", 0, 1});
  const auto b0 = jobs.take(1, JobRef{"b", 0, 1});
  const auto a1 = jobs.take(2, JobRef{"a", 1, 1});
  ASSERT_TRUE(jobs.start_kernel(0, std::nullopt));
  EXPECT_EQ(jobs.cancel("a"), 2u);
  EXPECT_TRUE(a0.stop_requested());
  EXPECT_TRUE(a1.stop_requested());
  EXPECT_FALSE(b0.stop_requested());
  EXPECT_EQ(jobs.stopped(0), Stop::kCancel);
  EXPECT_EQ(jobs.stopped(1), Stop::kNone);
  EXPECT_FALSE(jobs.start_kernel(2, std::nullopt)) << "a stopped job's kernel does not start";
}

TEST(RunningJobs, AJobOfARecentlyCancelledSweepIsStoppedWhenTaken) {
  RunningJobs jobs(1, 2);
  jobs.cancel("a");
  EXPECT_TRUE(jobs.cancelled("a"));
  EXPECT_TRUE(jobs.take(0, JobRef{"a", 3, 1}).stop_requested());
  EXPECT_EQ(jobs.stopped(0), Stop::kCancel);
  jobs.release(0);
  EXPECT_FALSE(jobs.take(0, JobRef{"b", 0, 1}).stop_requested()) << "a fresh token per job";
  jobs.release(0);
  // Only the newest `max_cancelled` sweeps are remembered.
  jobs.cancel("b");
  jobs.cancel("c");
  EXPECT_FALSE(jobs.cancelled("a"));
  EXPECT_TRUE(jobs.cancelled("b"));
  EXPECT_TRUE(jobs.cancelled("c"));
}

TEST(RunningJobs, AStopSparesRunningKernelsUntilStopAll) {
  RunningJobs jobs(2, 16);
  const auto running = jobs.take(0, JobRef{"a", 0, 1});
  ASSERT_TRUE(jobs.start_kernel(0, std::nullopt));
  const auto waiting = jobs.take(1, JobRef{"a", 1, 1});  // still looking up its spec, say
  jobs.stop_unstarted();
  EXPECT_TRUE(waiting.stop_requested());
  EXPECT_EQ(jobs.stopped(1), Stop::kShutdown);
  EXPECT_FALSE(running.stop_requested());
  jobs.release(1);

  EXPECT_EQ(jobs.stop_all(), 1u);
  EXPECT_TRUE(running.stop_requested());
  EXPECT_EQ(jobs.stopped(0), Stop::kShutdown);
  jobs.cancel("a");
  EXPECT_EQ(jobs.stopped(0), Stop::kShutdown) << "the first reason wins";
  jobs.release(0);
  EXPECT_TRUE(jobs.take(0, JobRef{"b", 0, 1}).stop_requested()) << "later jobs too";
}

TEST(RunningJobs, AKernelPastItsDeadlineIsStoppedAsTimedOut) {
  RunningJobs jobs(2, 16);
  const auto late = jobs.take(0, JobRef{"a", 0, 1});
  const auto free = jobs.take(1, JobRef{"a", 1, 1});
  ASSERT_TRUE(jobs.start_kernel(1, std::nullopt));
  ASSERT_TRUE(jobs.start_kernel(0, RunningJobs::Clock::now() + 20ms));
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!late.stop_requested() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_TRUE(late.stop_requested());
  EXPECT_EQ(jobs.stopped(0), Stop::kTimeout);
  EXPECT_FALSE(free.stop_requested());
  EXPECT_EQ(jobs.stopped(1), Stop::kNone);
}

}  // namespace
}  // namespace simq
