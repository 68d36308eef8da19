/* The C ABI of simq plug-in kernels: a shared library that simq-worker loads with
 * `--plugin libmykernels.so` and that registers kernels through these structs. Pure C, so a
 * plug-in built by another compiler (or in another language) loads. See docs/kernels.md.
 *
 * Versioning: SIMQ_PLUGIN_ABI_VERSION changes only when a struct below changes incompatibly;
 * then the types and the entry point get a new suffix (_v2) and a worker can still offer _v1.
 * Structs the host fills start with `struct_size`, so a later v1 host may append fields that a
 * plug-in reads only after checking the size.
 *
 * Memory: whoever allocates frees. Strings the host passes (params_json, job_id) live until
 * the call returns; set_json and set_error copy what they are given; the host copies a
 * kernel's name and params_help when it is added. The plug-in stays loaded for the worker's
 * lifetime, so `user` may point to static data.
 *
 * Thread-safety: run() is called from many worker slots at once; it must not keep shared
 * mutable state without its own locking. Registration happens once, on one thread. */
#ifndef SIMQ_PLUGIN_H
#define SIMQ_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SIMQ_PLUGIN_ABI_VERSION 1

/* Marks the two functions the host looks up: exported even when the plug-in is built with
 * -fvisibility=hidden. */
#if defined(_WIN32)
#define SIMQ_PLUGIN_EXPORT __declspec(dllexport)
#else
#define SIMQ_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

/* What a kernel knows about the job it runs. Filled by the host; read-only for the plug-in. */
typedef struct simq_context_v1 simq_context_v1;
struct simq_context_v1 {
  uint32_t struct_size; /* sizeof(simq_context_v1) of the host */
  const char* job_id;   /* "<sweep>:<index>", NUL-terminated */
  uint32_t attempt;     /* 1 on the first run, +1 on each retry */
  /* Non-zero once the job should stop (its time limit passed, its sweep was cancelled, the
   * worker is stopping). Kernels that loop should check it and then return an error. */
  int (*stop_requested)(const simq_context_v1* ctx);
  void* host; /* the host's, opaque */
};

/* Where a kernel puts its outcome: call exactly one of these, once, before run() returns. */
typedef struct simq_result_v1 simq_result_v1;
struct simq_result_v1 {
  uint32_t struct_size; /* sizeof(simq_result_v1) of the host */
  /* The result: a JSON object as UTF-8 text of `len` bytes (not necessarily NUL-terminated). */
  void (*set_json)(simq_result_v1* result, const char* json, size_t len);
  /* A failure: `message` (NUL-terminated) becomes the job's error. With `retryable` non-zero
   * the job is run again while its sweep's max_attempts allows. */
  void (*set_error)(simq_result_v1* result, const char* message, int retryable);
  void* host; /* the host's, opaque */
};

/* One kernel, as a plug-in describes it to add_kernel(). */
typedef struct simq_kernel_v1 {
  const char* name;        /* as sweeps name it: [A-Za-z0-9_.-]+, unique in the worker */
  const char* params_help; /* one line for `simq-worker --list-kernels` */
  /* Runs one job. `params_json` is the job's parameters, a JSON object. Returns 0 after
   * calling set_json or set_error; any other value fails the job with that code. */
  int (*run)(void* user, const char* params_json, const simq_context_v1* ctx, simq_result_v1* out);
  void* user; /* passed to run() as is */
} simq_kernel_v1;

/* The host, as simq_plugin_register_v1() sees it. */
typedef struct simq_host_v1 simq_host_v1;
struct simq_host_v1 {
  uint32_t abi_version; /* SIMQ_PLUGIN_ABI_VERSION of the host */
  uint32_t struct_size; /* sizeof(simq_host_v1) of the host */
  /* Adds a kernel. Returns 0, or non-zero if it was refused (a name already taken, an invalid
   * name, no run function); the host remembers why and reports it. */
  int (*add_kernel)(const simq_host_v1* host, const simq_kernel_v1* kernel);
  void* host; /* the host's, opaque */
};

/* Exported by every plug-in. The host calls this first and nothing else unless it returns the
 * version it speaks; return SIMQ_PLUGIN_ABI_VERSION. */
SIMQ_PLUGIN_EXPORT uint32_t simq_plugin_abi_version(void);
typedef uint32_t (*simq_plugin_abi_version_fn)(void);

/* Exported by every plug-in: adds its kernels with host->add_kernel(). Returns 0 on success;
 * any other value makes the worker refuse to start. */
SIMQ_PLUGIN_EXPORT int simq_plugin_register_v1(const simq_host_v1* host);
typedef int (*simq_plugin_register_v1_fn)(const simq_host_v1* host);

#ifdef __cplusplus
}
#endif

#endif /* SIMQ_PLUGIN_H */
