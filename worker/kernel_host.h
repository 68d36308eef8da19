// The kernel process of process isolation: `simq-worker --kernel-host` (started by a worker
// slot, kernel_process.h) loads the worker's kernels and runs the jobs the slot sends over its
// socket, one at a time, on its main thread; a reader thread takes stop requests meanwhile.
// Thread-safety: serve_kernel_host() is called once, from the process's main thread.
#pragma once

#include "kernel.h"

namespace simq {

// The descriptor on which a kernel process finds its socket to the worker.
inline constexpr int kKernelHostFd = 3;

// The hidden first argument that makes simq-worker a kernel process (worker/main.cpp).
inline constexpr const char* kKernelHostFlag = "--kernel-host";

// Says it is ready, then runs the jobs asked for on socket `fd` and answers each (its result
// or error and its peak RSS), until the worker closes the socket. Returns the exit code: 0
// when the worker closed the socket, 1 after a frame it could not read (said on stderr).
int serve_kernel_host(int fd, const KernelRegistry& kernels);

}  // namespace simq
