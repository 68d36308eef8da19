// Child processes: fork+exec, signals, reaping with deadlines.
#include "simq/child_process.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <csignal>
#include <cstring>
#include <thread>

#include "simq/errors.h"

namespace simq {

namespace {

int open_output(const std::string& path) {
  if (path.empty()) return -1;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(fmt::format("cannot open {}: {}", path, std::strerror(errno)));
  return fd;
}

}  // namespace

ChildProcess::ChildProcess(const std::vector<std::string>& argv, const std::string& output_file,
                           const std::string& error_file)
    : program_(argv.empty() ? "" : argv[0]) {
  if (argv.empty()) throw Error("ChildProcess: empty command line");
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  const int output = open_output(output_file);
  int error_output = -1;
  try {
    error_output = open_output(error_file);
  } catch (...) {
    if (output >= 0) ::close(output);
    throw;
  }
  // A pipe closed on exec tells the parent whether exec worked.
  int status_pipe[2];
  if (::pipe2(status_pipe, O_CLOEXEC) != 0) {
    const int error = errno;
    if (output >= 0) ::close(output);
    if (error_output >= 0) ::close(error_output);
    throw Error(fmt::format("cannot start {}: pipe: {}", program_, std::strerror(error)));
  }
  const pid_t parent = ::getpid();
  pid_ = ::fork();
  if (pid_ < 0) {
    const int error = errno;
    ::close(status_pipe[0]);
    ::close(status_pipe[1]);
    if (output >= 0) ::close(output);
    if (error_output >= 0) ::close(error_output);
    throw Error(fmt::format("cannot start {}: fork: {}", program_, std::strerror(error)));
  }
  if (pid_ == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(127);  // the parent died before prctl took effect
    ::setpgid(0, 0);  // own process group: a terminal's Ctrl-C reaches only simq itself
    if (output >= 0) {
      ::dup2(output, STDOUT_FILENO);
      ::dup2(error_output >= 0 ? error_output : output, STDERR_FILENO);
    } else {
      if (error_output >= 0) ::dup2(error_output, STDERR_FILENO);
      ::dup2(STDERR_FILENO, STDOUT_FILENO);
    }
    ::signal(SIGPIPE, SIG_DFL);
    ::execvp(args[0], args.data());
    const int error = errno;
    [[maybe_unused]] auto n = ::write(status_pipe[1], &error, sizeof error);
    ::_exit(127);
  }
  ::close(status_pipe[1]);
  if (output >= 0) ::close(output);
  if (error_output >= 0) ::close(error_output);
  int error = 0;
  ssize_t n;
  do {
    n = ::read(status_pipe[0], &error, sizeof error);
  } while (n < 0 && errno == EINTR);
  ::close(status_pipe[0]);
  if (n == static_cast<ssize_t>(sizeof error)) {
    int ignored = 0;
    ::waitpid(pid_, &ignored, 0);
    pid_ = -1;
    throw Error(fmt::format("cannot start {}: {}", program_, std::strerror(error)));
  }
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0 && !status_) {
    ::kill(pid_, SIGKILL);
    int ignored = 0;
    ::waitpid(pid_, &ignored, 0);
  }
}

void ChildProcess::signal(int signal_number) {
  if (pid_ > 0 && !status_) ::kill(pid_, signal_number);
}

std::optional<int> ChildProcess::poll() {
  if (status_ || pid_ <= 0) return status_;
  int raw = 0;
  const pid_t r = ::waitpid(pid_, &raw, WNOHANG);
  if (r == pid_) {
    status_ = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
  }
  return status_;
}

std::optional<int> ChildProcess::wait(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto pause = std::chrono::milliseconds(1);
  while (!poll()) {
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(50));
  }
  return status_;
}

int ChildProcess::stop(std::chrono::milliseconds grace) {
  signal(SIGTERM);
  if (auto status = wait(grace)) return *status;
  signal(SIGKILL);
  return wait(std::chrono::milliseconds(10000)).value_or(128 + SIGKILL);
}

std::string killed_by_signal(int sig) {
  const char* name = sigabbrev_np(sig);
  return fmt::format("killed by signal {} (SIG{})", sig, name == nullptr ? "?" : name);
}

std::string ChildProcess::describe_status(int status) {
  if (status > 128 && status < 128 + 65) return killed_by_signal(status - 128);
  return fmt::format("exited {}", status);
}

std::string own_directory() {
  char path[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", path, sizeof path - 1);
  if (n <= 0) return ".";
  std::string full(path, static_cast<size_t>(n));
  const auto slash = full.rfind('/');
  return slash == std::string::npos ? "." : full.substr(0, slash);
}

int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw Error(fmt::format("socket: {}", std::strerror(errno)));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof address;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    const int error = errno;
    ::close(fd);
    throw Error(fmt::format("cannot find a free port: {}", std::strerror(error)));
  }
  ::close(fd);
  return ntohs(address.sin_port);
}

}  // namespace simq
