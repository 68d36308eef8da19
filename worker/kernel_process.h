// Process isolation, the worker's side: each slot runs its kernels in a kernel process of its
// own (`simq-worker --kernel-host`, kernel_host.h), started ahead of need, replaced when it
// dies, after `recycle_jobs` jobs, or when a job leaves it above `recycle_rss_mib`. A kernel
// that crashes, exits, exceeds the memory limit or ignores its stop request ends only its job.
// Thread-safety: a ProcessRunner belongs to one slot thread; only the stop callback a running
// job registers is called from other threads.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <msgpack.hpp>
#include <stop_token>
#include <string>
#include <vector>

#include "host_protocol.h"
#include "kernel.h"
#include "simq/errors.h"

namespace simq {

struct ProcessOptions {
  std::string program = "/proc/self/exe";  // the simq-worker a kernel process runs (the very
                                           // file of this one, even if replaced since)
  std::vector<std::string> plugins;        // --plugin libraries each kernel process loads
  int kill_grace_ms = 2000;  // after a job's stop request, how long its kernel may take to stop
                             // before its kernel process is killed, in ms; >= 0
  uint64_t memory_limit_mib = 0;  // a kernel process whose RSS exceeds this many MiB is killed
                                  // and its job fails; 0 = no limit
  uint64_t recycle_jobs = 0;      // a kernel process is replaced after this many jobs; 0 = never
  uint64_t recycle_rss_mib = 0;   // ... and after a job that leaves its RSS above this many MiB;
                                  // 0 = never
};

// The kernel process died or misbehaved while it ran the job (a crash, an exit, a reply it
// could not have meant, the memory limit): the job fails and is not retried.
class KernelProcessError : public KernelError {
 public:
  using KernelError::KernelError;
};

// A kernel process could not be started, or ended before it was ready, so the job never
// reached a kernel: the trouble is the worker's (its executable, its plug-ins, the machine's
// limits), not the job's. The worker hands the job back and stops (worker.h).
class KernelStartError : public Error {
 public:
  using Error::Error;
};

// What a job's record says about the kernel process that ran it.
struct ProcessReport {
  pid_t pid = 0;              // the kernel process; 0 if the job did not reach one
  uint64_t peak_rss_kib = 0;  // its peak RSS during the job; for one that died, the highest
                              // the worker saw (it samples every 20 ms): a lower bound
  int signal = 0;             // the signal that ended it during the job; 0 if none did
};

class ProcessRunner {
 public:
  static constexpr int kStartAttempts = 5;  // tries to start a kernel process for a job
  static constexpr std::chrono::milliseconds kStartRetryPause{50};  // after the first; doubling

  explicit ProcessRunner(ProcessOptions options);  // starts no process yet
  // Ends the kernel process: closes its socket, waits up to the kill grace for it to exit,
  // then kills its process group; reaps it.
  ~ProcessRunner();
  ProcessRunner(const ProcessRunner&) = delete;
  ProcessRunner& operator=(const ProcessRunner&) = delete;

  // Runs `kernel` for ctx.job in the kernel process, as Kernel::run() would in this thread:
  // returns its result or throws what it threw (KernelError, RetryableError, KernelCancelled).
  // When ctx.stop is signalled, the kernel is asked to stop; if it has not answered within the
  // kill grace, its process group is killed and this throws KernelCancelled. Throws
  // KernelStartError when no kernel process could be started (kStartAttempts tries over 0.75
  // s) or one ended before it was ready, RetryableError when a ready one ended before the job
  // reached it,
  // KernelProcessError when it died or misbehaved during the job.
  Json run(const std::string& kernel, const Json& params, const KernelContext& ctx);

  // About the kernel process of the last run().
  const ProcessReport& report() const { return report_; }

  // Between jobs: replaces the kernel process if it is due, and starts one if there is none,
  // so that the next job need not wait for it. Never throws: a failed start is logged, and
  // the next run() tries again.
  void prepare();

 private:
  class Host;
  struct Wait;

  void start();          // throws Error
  void start_for_job();  // start(), tried kStartAttempts times; throws KernelStartError
  // The error for a kernel process that ended, with wait status `raw`, before it was ready.
  static KernelStartError not_ready(int raw);
  // Waits for the kernel process to answer job `seq`, or to end, or to overrun its limits.
  Wait await_reply(Host& host, uint64_t seq, const std::stop_token& stop);
  // Kills what is left of the kernel process and reaps it; returns its wait status.
  int end_host();
  bool due(const Host& host) const;  // to be replaced before the next job

  const ProcessOptions options_;
  std::vector<std::string> args_;  // the kernel process's argv
  std::vector<char*> argv_;        // pointers into args_, ending in nullptr
  std::unique_ptr<Host> host_;
  ProcessReport report_;
  msgpack::sbuffer request_;  // frames, reused from job to job
  msgpack::sbuffer stop_;
};

}  // namespace simq
