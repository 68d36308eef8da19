// A child program started with fork+exec (argv vector, never a shell) and reaped by its
// owner: signal it, wait for it with a deadline, and kill it in the destructor.
// The child gets PR_SET_PDEATHSIG(SIGTERM), so it does not outlive a killed parent.
// Not thread-safe: one owner.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace simq {

class ChildProcess {
 public:
  // Starts argv[0] (a path, or a name looked up on PATH) with argv[1...]. Its stdout goes to
  // `output_file` (appended) when given, else to this process's stderr; its stderr goes to
  // `error_file` when given, else with its stdout.
  // Throws Error if the program cannot be started (the message names it and why).
  explicit ChildProcess(const std::vector<std::string>& argv, const std::string& output_file = "",
                        const std::string& error_file = "");
  ~ChildProcess();  // SIGKILL and reap if still running
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& program() const { return program_; }

  // Sends a signal if the child has not been reaped yet.
  void signal(int signal_number);

  // Exit status once it ended: exit code, or 128 + signal number; std::nullopt while running.
  std::optional<int> poll();

  // Waits up to `timeout` for the child to end.
  std::optional<int> wait(std::chrono::milliseconds timeout);

  // SIGTERM, wait up to `grace`, then SIGKILL; returns the exit status.
  int stop(std::chrono::milliseconds grace);

  // How it ended, in words: "exited 3", "killed by signal 9 (SIGKILL)".
  static std::string describe_status(int status);

 private:
  pid_t pid_ = -1;
  std::string program_;
  std::optional<int> status_;
};

// "killed by signal 11 (SIGSEGV)": how every simq message names a signal that ended a process.
std::string killed_by_signal(int sig);

// Absolute path of this running program's directory (readlink /proc/self/exe).
std::string own_directory();

// A TCP port on 127.0.0.1 that was free a moment ago.
int free_loopback_port();

}  // namespace simq
