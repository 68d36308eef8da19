// Process isolation, the worker's side (kernel_process.h): starting kernel processes with
// fork+execve, talking to them, watching their memory, and killing and reaping them.
#include "kernel_process.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <optional>
#include <thread>
#include <utility>

#include "child_process_tools.h"
#include "kernel_host.h"
#include "simq/errors.h"

namespace simq {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using Type = HostMessage::Type;

constexpr milliseconds kSampleInterval(20);  // how often a running kernel process's RSS is read
constexpr uint64_t kKibPerMib = 1024;

std::string mib(uint64_t kib) {
  return fmt::format("{:.1f} MiB", static_cast<double>(kib) / kKibPerMib);
}

std::string_view bytes_of(const msgpack::sbuffer& buffer) { return {buffer.data(), buffer.size()}; }

bool is_reply(Type type) {
  return type == Type::kResult || type == Type::kError || type == Type::kRetryable ||
         type == Type::kCancelled;
}

}  // namespace

// One kernel process: its pid (also its process group), its socket and its /proc status.
// Killed and reaped when destroyed, if it was not before.
class ProcessRunner::Host {
 public:
  // Starts `program` with `argv` as a kernel process. Throws Error if it cannot.
  Host(const std::string& program, char* const* argv) {
    int jobs[2];
    int stops[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, jobs) != 0) {
      throw Error(fmt::format("socketpair: {}", std::strerror(errno)));
    }
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, stops) != 0) {
      const int error = errno;
      for (int fd : jobs) ::close(fd);
      throw Error(fmt::format("socketpair: {}", std::strerror(error)));
    }
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ < 0) {
      const int error = errno;
      for (int fd : {jobs[0], jobs[1], stops[0], stops[1]}) ::close(fd);
      throw Error(fmt::format("fork: {}", std::strerror(error)));
    }
    if (pid_ == 0) {
      // Only async-signal-safe calls from here to execve: the worker has other threads.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);       // never outlive the worker
      if (::getppid() != parent) ::_exit(127);  // it died before prctl took effect
      ::setpgid(0, 0);  // a group of its own: what its kernels start dies with it
      // Above the descriptors they go to first, so that neither dup2 overwrites the other.
      const int job_fd = ::fcntl(jobs[1], F_DUPFD, kKernelHostStopFd + 1);
      const int stop_fd = ::fcntl(stops[1], F_DUPFD, kKernelHostStopFd + 1);
      if (job_fd < 0 || stop_fd < 0 || ::dup2(job_fd, kKernelHostFd) < 0 ||
          ::dup2(stop_fd, kKernelHostStopFd) < 0) {
        ::_exit(127);
      }
      reset_signals();
      close_on_exec_from(kKernelHostStopFd + 1);
      ::execve(program.c_str(), argv, environ);
      static constexpr char kFailed[] = "simq-worker: cannot start a kernel process: execve\n";
      [[maybe_unused]] const auto written = ::write(STDERR_FILENO, kFailed, sizeof kFailed - 1);
      ::_exit(127);
    }
    ::setpgid(pid_, pid_);  // also here, so the group exists before we ever signal it
    ::close(jobs[1]);
    ::close(stops[1]);
    socket_ = jobs[0];
    stop_socket_ = stops[0];
    // The pid stays this process's until it is reaped, across its execve.
    status_ = ::open(fmt::format("/proc/{}/status", pid_).c_str(), O_RDONLY | O_CLOEXEC);
  }

  ~Host() {
    if (!reaped_) kill_and_reap();
    for (int fd : {socket_, stop_socket_, status_}) {
      if (fd >= 0) ::close(fd);
    }
  }
  Host(const Host&) = delete;
  Host& operator=(const Host&) = delete;

  pid_t pid() const { return pid_; }
  int socket() const { return socket_; }            // jobs and replies
  int stop_socket() const { return stop_socket_; }  // stop requests
  int status() const { return status_; }

  // Kills its process group (it, and whatever its kernels started) and reaps it; returns its
  // wait status.
  int kill_and_reap() {
    ::kill(-pid_, SIGKILL);
    int raw = 0;
    while (::waitpid(pid_, &raw, 0) < 0 && errno == EINTR) {
    }
    reaped_ = true;
    return raw;
  }

  // Shuts its sockets, which it takes as the end of its work, waits up to `grace` for it to
  // exit, then kills what is left of its group and reaps it.
  void retire(milliseconds grace) {
    ::shutdown(socket_, SHUT_RDWR);
    ::shutdown(stop_socket_, SHUT_RDWR);
    const int exited = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
    if (exited >= 0) {
      pollfd item{exited, POLLIN, 0};
      const auto deadline = Clock::now() + grace;
      for (auto now = Clock::now(); now < deadline; now = Clock::now()) {
        const int events = ::poll(
            &item, 1, static_cast<int>(std::chrono::ceil<milliseconds>(deadline - now).count()));
        if (events != 0 && !(events < 0 && errno == EINTR)) break;
      }
      ::close(exited);
    }
    kill_and_reap();
  }

  FrameReader reader;
  bool ready = false;             // it said it is ready
  uint64_t seq = 0;               // jobs sent to it
  uint64_t rss_kib = 0;           // its RSS after its last job (or when it became ready)
  bool replace = false;           // replace it before the next job
  std::atomic<bool> torn{false};  // a stop frame went out in part: its stop stream is broken

 private:
  pid_t pid_ = -1;
  int socket_ = -1;
  int stop_socket_ = -1;
  int status_ = -1;  // /proc/<pid>/status, or -1
  bool reaped_ = false;
};

// How waiting for a job's reply ended.
struct ProcessRunner::Wait {
  enum class End {
    kReply,       // `reply` answers the job
    kEnded,       // the kernel process closed its socket: it died (or exited)
    kMalformed,   // it sent a frame that is not a reply to this job (`detail` says why)
    kMemory,      // its RSS (`rss_kib`) went above the memory limit
    kIgnoredStop  // the kill grace passed after the stop request
  };
  End end = End::kReply;
  HostMessage reply;
  std::string detail;
  uint64_t rss_kib = 0;
  uint64_t seen_kib = 0;  // the highest RSS seen during the job
};

ProcessRunner::ProcessRunner(ProcessOptions options) : options_(std::move(options)) {
  args_ = {"simq-worker", kKernelHostFlag};  // argv[0]: what ps shows
  for (const auto& plugin : options_.plugins) {
    args_.emplace_back("--plugin");
    args_.push_back(plugin);
  }
  for (auto& arg : args_) argv_.push_back(arg.data());
  argv_.push_back(nullptr);
}

ProcessRunner::~ProcessRunner() {
  if (host_) host_->retire(milliseconds(options_.kill_grace_ms));
}

void ProcessRunner::start() {
  host_ = std::make_unique<Host>(options_.program, argv_.data());
  spdlog::debug("kernel process {} started", host_->pid());
}

bool ProcessRunner::due(const Host& host) const {
  return host.replace || host.torn.load() ||
         (options_.recycle_jobs > 0 && host.seq >= options_.recycle_jobs) ||
         (options_.recycle_rss_mib > 0 && host.rss_kib > options_.recycle_rss_mib * kKibPerMib);
}

void ProcessRunner::prepare() {
  if (host_ && due(*host_)) {
    spdlog::debug("replacing kernel process {} after {} jobs (RSS {})", host_->pid(), host_->seq,
                  mib(host_->rss_kib));
    host_->retire(milliseconds(options_.kill_grace_ms));
    host_.reset();
  }
  if (host_) return;
  try {
    start();
  } catch (const std::exception& e) {
    spdlog::warn("cannot start a kernel process: {}; trying again at the next job", e.what());
  }
}

void ProcessRunner::start_for_job() {
  // fork may fail for a moment (a process limit, memory): a few tries, further and further
  // apart, before giving up.
  std::string why;
  milliseconds pause = kStartRetryPause;
  for (int attempt = 1; attempt <= kStartAttempts; ++attempt) {
    try {
      start();
      return;
    } catch (const std::exception& e) {
      why = e.what();
    }
    if (attempt < kStartAttempts) std::this_thread::sleep_for(pause);
    pause *= 2;
  }
  throw KernelStartError(
      fmt::format("cannot start a kernel process ({} tries): {}", kStartAttempts, why));
}

KernelStartError ProcessRunner::not_ready(int raw) {
  return KernelStartError(
      fmt::format("kernel process {} before it was ready (its messages are in the worker's log)",
                  describe_wait_status(raw)));
}

int ProcessRunner::end_host() {
  const int raw = host_->kill_and_reap();
  if (WIFSIGNALED(raw)) report_.signal = WTERMSIG(raw);
  host_.reset();
  return raw;
}

Json ProcessRunner::run(const std::string& kernel, const Json& params, const KernelContext& ctx) {
  report_ = ProcessReport{};
  if (!host_) start_for_job();
  // A kernel process that was ready but died idle (an OOM kill, say) is replaced once: the job
  // never reached it, so it costs no attempt.
  for (bool replaced = false;; replaced = true) {
    Host& host = *host_;
    try {
      encode_run(++host.seq, kernel, ctx.job, params, request_);
    } catch (const ProtocolError& e) {  // the params cannot cross: no use trying again
      throw KernelProcessError(
          fmt::format("the job's params cannot be sent to a kernel process: {}", e.what()));
    }
    if (send_all(host.socket(), bytes_of(request_))) break;
    // Before its job, a kernel process sends nothing but its ready message: if anything from it
    // is waiting unread, it was ready.
    char byte = 0;
    const bool ready = host.ready || ::recv(host.socket(), &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 1;
    const int raw = end_host();
    if (!ready) throw not_ready(raw);
    if (replaced) {
      throw RetryableError(fmt::format("kernel process {} before the job reached it (twice)",
                                       describe_wait_status(raw)));
    }
    spdlog::warn("kernel process {} while idle: starting another for job {}:{}",
                 describe_wait_status(raw), ctx.job.sweep, ctx.job.index);
    start_for_job();
  }
  Host& host = *host_;
  report_.pid = host.pid();
  const uint64_t seq = host.seq;

  Wait wait;
  {
    HostMessage stop;
    stop.type = Type::kStop;
    stop.seq = seq;
    encode_frame(stop, stop_);
    // Runs on the thread that requests the stop. A stop frame is small: it goes out whole
    // unless the socket is full, and then the kill grace ends the job.
    const std::stop_callback on_stop(ctx.stop, [this, &host] {
      const ssize_t sent =
          ::send(host.stop_socket(), stop_.data(), stop_.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      if (sent > 0 && static_cast<size_t>(sent) < stop_.size()) host.torn = true;
    });
    wait = await_reply(host, seq, ctx.stop);
  }  // no stop frame is sent after this

  const uint64_t limit_kib = options_.memory_limit_mib * kKibPerMib;
  switch (wait.end) {
    case Wait::End::kReply: {
      HostMessage& reply = wait.reply;
      report_.peak_rss_kib = reply.peak_rss_kib;
      host.rss_kib = reply.rss_kib;
      if (limit_kib > 0 && reply.peak_rss_kib > limit_kib) {
        host.replace = true;  // the next job starts in a fresh process
        throw KernelProcessError(
            fmt::format("memory limit exceeded: peak RSS {} above the limit of {} MiB",
                        mib(reply.peak_rss_kib), options_.memory_limit_mib));
      }
      switch (reply.type) {
        case Type::kResult:
          return std::move(reply.result);
        case Type::kRetryable:
          throw RetryableError(reply.message);
        case Type::kCancelled:
          throw KernelCancelled(reply.message);
        default:
          throw KernelError(reply.message);
      }
    }
    case Wait::End::kEnded: {
      report_.peak_rss_kib = wait.seen_kib;
      const bool ready = host.ready;
      const int raw = end_host();
      if (!ready) throw not_ready(raw);
      throw KernelProcessError(fmt::format("kernel process {}, peak RSS {}",
                                           describe_wait_status(raw), mib(wait.seen_kib)));
    }
    case Wait::End::kMalformed:
      report_.peak_rss_kib = wait.seen_kib;
      end_host();
      throw KernelProcessError(
          fmt::format("kernel process sent a malformed reply ({}): killed", wait.detail));
    case Wait::End::kMemory:
      report_.peak_rss_kib = wait.seen_kib;
      end_host();
      throw KernelProcessError(fmt::format(
          "memory limit exceeded: RSS {} above the limit of {} MiB (kernel process killed)",
          mib(wait.rss_kib), options_.memory_limit_mib));
    case Wait::End::kIgnoredStop: {
      report_.peak_rss_kib = wait.seen_kib;
      const pid_t pid = host.pid();
      end_host();
      spdlog::warn(
          "job {}: kernel '{}' ignored its stop request for {} ms: kernel process {} killed",
          job_id(ctx.job.sweep, ctx.job.index), kernel, options_.kill_grace_ms, pid);
      throw KernelCancelled(fmt::format("kernel '{}' ignored its stop request for {} ms", kernel,
                                        options_.kill_grace_ms));
    }
  }
  return Json();  // not reached: every case returns or throws
}

ProcessRunner::Wait ProcessRunner::await_reply(Host& host, uint64_t seq,
                                               const std::stop_token& stop) {
  Wait wait;
  wait.seen_kib = host.rss_kib;
  const uint64_t limit_kib = options_.memory_limit_mib * kKibPerMib;
  std::optional<Clock::time_point> kill_at;
  auto next_sample = Clock::now() + kSampleInterval;
  for (;;) {
    try {
      while (const auto body = host.reader.next()) {
        HostMessage message = decode_host_message(*body);
        if (message.type == Type::kReady && !host.ready) {
          host.ready = true;
          host.rss_kib = message.rss_kib;
          wait.seen_kib = std::max(wait.seen_kib, message.rss_kib);
          continue;
        }
        if (!is_reply(message.type) || message.seq != seq) {
          throw ProtocolError(fmt::format("a frame of type {} for job {} while job {} runs",
                                          static_cast<int>(message.type), message.seq, seq));
        }
        wait.reply = std::move(message);
        return wait;
      }
    } catch (const ProtocolError& e) {
      wait.end = Wait::End::kMalformed;
      wait.detail = e.what();
      return wait;
    }

    const auto now = Clock::now();
    if (!kill_at && stop.stop_requested()) kill_at = now + milliseconds(options_.kill_grace_ms);
    if (kill_at && now >= *kill_at) {
      wait.end = Wait::End::kIgnoredStop;
      return wait;
    }
    if (now >= next_sample) {
      next_sample = now + kSampleInterval;
      if (const auto memory = read_resident_set(host.status())) {
        // Its peak is reset when it starts a job: this is the job's so far.
        wait.seen_kib = std::max(wait.seen_kib, memory->peak_kib);
        if (limit_kib > 0 && memory->rss_kib > limit_kib) {
          wait.end = Wait::End::kMemory;
          wait.rss_kib = memory->rss_kib;
          return wait;
        }
      }
    }

    const auto wake = kill_at ? std::min(next_sample, *kill_at) : next_sample;
    pollfd item{host.socket(), POLLIN, 0};
    const int ready =
        ::poll(&item, 1, static_cast<int>(std::chrono::ceil<milliseconds>(wake - now).count()));
    if (ready < 0 && errno != EINTR) {
      wait.end = Wait::End::kMalformed;
      wait.detail = fmt::format("poll: {}", std::strerror(errno));
      return wait;
    }
    if (ready > 0) {
      const ptrdiff_t n = host.reader.read_from(host.socket());
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        wait.end = Wait::End::kEnded;  // its end of the socket closed: it is gone
        return wait;
      }
    }
  }
}

}  // namespace simq
