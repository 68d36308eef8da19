// The kernel process of process isolation: `simq-worker --kernel-host` (started by a worker
// slot, kernel_process.h) loads the worker's kernels and runs the jobs the slot sends over its
// job socket, one at a time, on its main thread; a reader thread takes stop requests from a
// second socket meanwhile. Two sockets, so that no job waits for a hand-over between threads.
// Thread-safety: serve_kernel_host() is called once, from the process's main thread.
#pragma once

#include "kernel.h"

namespace simq {

// The descriptors on which a kernel process finds its sockets to the worker: jobs and their
// replies, and stop requests.
inline constexpr int kKernelHostFd = 3;
inline constexpr int kKernelHostStopFd = 4;

// The hidden first argument that makes simq-worker a kernel process (worker/main.cpp).
inline constexpr const char* kKernelHostFlag = "--kernel-host";

// Says it is ready, then runs the jobs asked for on socket `fd` and answers each (its result
// or error and its peak RSS), until the worker closes the socket; stops a running job when
// socket `stop_fd` asks. Returns the exit code: 0 when the worker closed the socket, 1 after a
// frame it could not read (said on stderr).
int serve_kernel_host(int fd, int stop_fd, const KernelRegistry& kernels);

}  // namespace simq
