// The kernel process's loop (kernel_host.h). Thread-safety: the main thread runs kernels and
// writes replies; the reader thread reads frames; they share only the fields under mutex_.
#include "kernel_host.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
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

class Host {
 public:
  Host(int fd, const KernelRegistry& kernels)
      : fd_(fd),
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
    reader_ = std::jthread([this] { read_loop(); });
    HostMessage reply;
    reply.type = Type::kReady;
    reply.rss_kib = resident_set().rss_kib;
    encode_frame(reply, out_);
    bool open = send_all(fd_, std::string_view(out_.data(), out_.size()));
    while (open) {
      HostMessage request;
      std::stop_token stop;
      {
        std::unique_lock lock(mutex_);
        ready_.wait(lock, [this] { return request_ || closed_; });
        if (!request_) break;
        request = std::move(*request_);
        request_.reset();
        stop = stop_.get_token();
      }
      reset_peak();
      reply = run(request, stop);
      const ResidentSet memory = resident_set();
      reply.peak_rss_kib = memory.peak_kib;
      reply.rss_kib = memory.rss_kib;
      try {
        encode_frame(reply, out_);
      } catch (const std::exception& e) {  // too large, or JSON MessagePack cannot carry
        reply.type = Type::kError;
        reply.result = Json();
        reply.message = fmt::format("kernel '{}': its result cannot be passed to the worker: {}",
                                    request.kernel, e.what());
        encode_frame(reply, out_);
      }
      open = send_all(fd_, std::string_view(out_.data(), out_.size()));
    }
    ::shutdown(fd_, SHUT_RDWR);  // ends the reader's read, if the worker has not
    reader_.join();
    if (!error_.empty()) {
      std::fprintf(stderr, "simq-worker kernel process %d: %s\n", static_cast<int>(::getpid()),
                   error_.c_str());
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

  // Reader thread: requests go to the main thread, stops to the running job's stop source.
  void read_loop() {
    FrameReader reader;
    std::string error;
    try {
      for (;;) {
        const ptrdiff_t n = reader.read_from(fd_);
        if (n == 0) break;  // the worker closed the socket: no more jobs
        if (n < 0)
          throw Error(fmt::format("cannot read from the worker: {}", std::strerror(errno)));
        while (const auto body = reader.next()) take(decode_host_message(*body));
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
    std::stop_source running;
    {
      const std::lock_guard lock(mutex_);
      closed_ = true;
      error_ = std::move(error);
      running = stop_;
    }
    running.request_stop();  // nobody is waiting for its result any more
    ready_.notify_one();
  }

  void take(HostMessage message) {
    if (message.type == Type::kStop) {
      std::stop_source running;
      {
        const std::lock_guard lock(mutex_);
        if (message.seq != running_seq_) return;  // that job has ended
        running = stop_;
      }
      running.request_stop();  // outside the lock: it runs the kernel's stop callbacks
      return;
    }
    if (message.type != Type::kRun) {
      throw ProtocolError(fmt::format("unexpected frame from the worker (type {})",
                                      static_cast<int>(message.type)));
    }
    {
      const std::lock_guard lock(mutex_);
      if (request_) throw ProtocolError("a job asked for while another waits");
      // A job's stop state serves the next one unless it was stopped.
      if (stop_.stop_requested()) stop_ = std::stop_source();
      running_seq_ = message.seq;
      request_ = std::move(message);
    }
    ready_.notify_one();
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
  const KernelRegistry& kernels_;
  const int status_fd_;      // /proc/self/status, or -1
  const int clear_refs_fd_;  // /proc/self/clear_refs, or -1 (then peaks are the process's)
  msgpack::sbuffer out_;     // the reply being sent (main thread)

  std::mutex mutex_;
  std::condition_variable ready_;
  std::optional<HostMessage> request_;  // the job to run next
  uint64_t running_seq_ = 0;            // the job stop_ belongs to
  std::stop_source stop_;
  bool closed_ = false;  // the reader has ended
  std::string error_;    // why, if not because the worker closed the socket
  std::jthread reader_;  // declared last: joined before the rest goes
};

}  // namespace

int serve_kernel_host(int fd, const KernelRegistry& kernels) {
  Host host(fd, kernels);
  return host.serve();
}

}  // namespace simq
