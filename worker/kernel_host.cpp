// The kernel process's loop (kernel_host.h). Thread-safety: the main thread reads requests,
// runs kernels and writes replies on the job socket; the stop thread reads the stop socket;
// they share only the running job's number and stop source, under mutex_.
#include "kernel_host.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>

#include "child_process_tools.h"
#include "host_protocol.h"
#include "simq/errors.h"

namespace simq {

namespace {

using Type = HostMessage::Type;

// The next frame from `fd`, read into `reader` as needed; nullopt once the worker closed the
// socket. Throws Error if it cannot be read, ProtocolError if it is not a frame.
std::optional<HostMessage> next_message(int fd, FrameReader& reader) {
  for (;;) {
    if (const auto body = reader.next()) return decode_host_message(*body);
    const ptrdiff_t n = reader.read_from(fd);
    if (n == 0) {
      if (reader.pending() > 0) throw ProtocolError("the worker closed the socket mid-frame");
      return std::nullopt;
    }
    if (n < 0) throw Error(fmt::format("cannot read from the worker: {}", std::strerror(errno)));
  }
}

class Host {
 public:
  Host(int fd, int stop_fd, const KernelRegistry& kernels)
      : fd_(fd),
        stop_fd_(stop_fd),
        kernels_(kernels),
        status_fd_(::open("/proc/self/status", O_RDONLY | O_CLOEXEC)),
        clear_refs_fd_(::open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC)) {}
  ~Host() {
    for (int fd : {status_fd_, clear_refs_fd_}) {
      if (fd >= 0) ::close(fd);
    }
  }
  Host(const Host&) = delete;
  Host& operator=(const Host&) = delete;

  int serve() {
    stop_reader_ = std::jthread([this] { read_stops(); });
    std::string error;
    try {
      HostMessage reply;
      reply.type = Type::kReady;
      reply.rss_kib = resident_set().rss_kib;
      encode_frame(reply, out_);
      bool open = send_all(fd_, std::string_view(out_.data(), out_.size()));
      FrameReader reader;
      while (open) {
        std::optional<HostMessage> request = next_message(fd_, reader);
        if (!request) break;  // the worker closed the socket: no more jobs
        if (request->type != Type::kRun) {
          throw ProtocolError(fmt::format("a frame of type {} where a job was expected",
                                          static_cast<int>(request->type)));
        }
        std::stop_token stop;
        std::stop_source stop_now;  // its stop was read before the job itself
        {
          const std::lock_guard lock(mutex_);
          // A job's stop state serves the next one unless it was stopped.
          if (stop_.stop_requested()) stop_ = std::stop_source();
          running_seq_ = request->seq;
          stop = stop_.get_token();
          if (request->seq <= stopped_ahead_) stop_now = stop_;
        }
        if (stop_now.stop_possible()) stop_now.request_stop();
        reset_peak();
        reply = run(*request, stop);
        const ResidentSet memory = resident_set();
        reply.peak_rss_kib = memory.peak_kib;
        reply.rss_kib = memory.rss_kib;
        try {
          encode_frame(reply, out_);
        } catch (const std::exception& e) {  // too large, or JSON MessagePack cannot carry
          reply.type = Type::kError;
          reply.result = Json();
          reply.message = fmt::format("kernel '{}': its result cannot be passed to the worker: {}",
                                      request->kernel, e.what());
          encode_frame(reply, out_);
        }
        open = send_all(fd_, std::string_view(out_.data(), out_.size()));
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
    ::shutdown(stop_fd_, SHUT_RDWR);  // ends the stop reader's read, if the worker has not
    stop_reader_.join();
    if (error.empty()) error = stop_error_;
    if (!error.empty()) {
      std::fprintf(stderr, "simq-worker kernel process %d: %s\n", static_cast<int>(::getpid()),
                   error.c_str());
      return 1;
    }
    return 0;
  }

 private:
  HostMessage run(const HostMessage& request, const std::stop_token& stop) const {
    HostMessage reply;
    reply.seq = request.seq;
    reply.type = Type::kError;
    const Kernel* kernel = kernels_.find(request.kernel);
    if (kernel == nullptr) {  // the worker checks first, with the same kernels
      reply.message = fmt::format("unknown kernel '{}' in the kernel process", request.kernel);
      return reply;
    }
    // The same outcomes as Worker::run_job() tells apart in thread isolation.
    try {
      reply.result = kernel->run(request.params, KernelContext{request.job, stop});
      reply.type = Type::kResult;
    } catch (const KernelCancelled& e) {
      reply.type = Type::kCancelled;
      reply.message = e.what();
    } catch (const RetryableError& e) {
      reply.type = Type::kRetryable;
      reply.message = e.what();
    } catch (const std::exception& e) {
      reply.message = e.what();
    } catch (...) {
      reply.message =
          fmt::format("kernel '{}' threw something that is not a std::exception", request.kernel);
    }
    return reply;
  }

  // Stop thread: a stop request for the running job signals its stop source. When the stop
  // socket closes, the worker is gone or replacing this process: the running job is stopped.
  void read_stops() {
    FrameReader reader;
    std::string error;
    try {
      while (const auto message = next_message(stop_fd_, reader)) {
        if (message->type != Type::kStop) {
          throw ProtocolError(fmt::format("a frame of type {} where a stop was expected",
                                          static_cast<int>(message->type)));
        }
        request_stop(message->seq);
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
    request_stop(0);
    const std::lock_guard lock(mutex_);
    stop_error_ = std::move(error);
  }

  // Stops job `seq` if it is the running one (whatever runs, with 0).
  void request_stop(uint64_t seq) {
    std::stop_source running;
    {
      const std::lock_guard lock(mutex_);
      if (seq > running_seq_) {
        // The stop socket was read before the job's frame: the job is stopped as it starts.
        stopped_ahead_ = std::max(stopped_ahead_, seq);
        return;
      }
      if (seq != 0 && seq != running_seq_) return;  // that job has ended
      running = stop_;
    }
    running.request_stop();  // outside the lock: it runs the kernel's stop callbacks
  }

  // The kernel's peak RSS starts from what the process holds now.
  void reset_peak() const {
    if (clear_refs_fd_ >= 0) {
      [[maybe_unused]] const auto written = ::pwrite(clear_refs_fd_, "5", 1, 0);
    }
  }

  ResidentSet resident_set() const {
    if (status_fd_ < 0) return {};
    return read_resident_set(status_fd_).value_or(ResidentSet{});
  }

  const int fd_;
  const int stop_fd_;
  const KernelRegistry& kernels_;
  const int status_fd_;      // /proc/self/status, or -1
  const int clear_refs_fd_;  // /proc/self/clear_refs, or -1 (then peaks are the process's)
  msgpack::sbuffer out_;     // the reply being sent (main thread)

  std::mutex mutex_;
  uint64_t running_seq_ = 0;    // the job stop_ belongs to
  uint64_t stopped_ahead_ = 0;  // the highest job stopped before its frame was read
  std::stop_source stop_;
  std::string stop_error_;    // why the stop thread ended, if not because the socket closed
  std::jthread stop_reader_;  // declared last: joined before the rest goes
};

}  // namespace

int serve_kernel_host(int fd, int stop_fd, const KernelRegistry& kernels) {
  // dup2 cleared close-on-exec: a program a kernel starts must not hold the sockets, or the
  // worker would not see this process die while it lives.
  for (const int descriptor : {fd, stop_fd}) ::fcntl(descriptor, F_SETFD, FD_CLOEXEC);
  Host host(fd, stop_fd, kernels);
  return host.serve();
}

}  // namespace simq
