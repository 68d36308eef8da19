/* Plug-ins for plugin_test, one source built several times (tests/CMakeLists.txt):
 *   default                          kernels that exercise the host's edge cases
 *   SIMQ_TEST_NO_ENTRY               a shared library without the entry points
 *   SIMQ_TEST_ABI=99                 reports ABI version 99 (its register must never run)
 *   SIMQ_TEST_REGISTER_RESULT=3      registration returns 3
 * Any of them refuses to register (9) while the file $SIMQ_TEST_PLUGIN_FAIL_IF names exists: a
 * plug-in the worker loaded at start that its kernel processes cannot load later.
 * Thread-safety: no shared state. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "simq/plugin.h"

#ifdef SIMQ_TEST_NO_ENTRY

SIMQ_PLUGIN_EXPORT int not_a_simq_plugin(void) { return 42; }

#else

#ifndef SIMQ_TEST_ABI
#define SIMQ_TEST_ABI SIMQ_PLUGIN_ABI_VERSION
#endif
#ifndef SIMQ_TEST_REGISTER_RESULT
#define SIMQ_TEST_REGISTER_RESULT 0
#endif

static void set_text(simq_result_v1* out, const char* text) {
  out->set_json(out, text, strlen(text));
}

/* {"job_id": ..., "attempt": ..., "params": <the params text>} */
static int echo_context(void* user, const char* params, const simq_context_v1* ctx,
                        simq_result_v1* out) {
  (void)user;
  char json[512];
  snprintf(json, sizeof json, "{\"job_id\":\"%s\",\"attempt\":%u,\"params\":%s}", ctx->job_id,
           (unsigned)ctx->attempt, params);
  set_text(out, json);
  return 0;
}

static int flaky(void* user, const char* params, const simq_context_v1* ctx, simq_result_v1* out) {
  (void)user;
  (void)params;
  (void)ctx;
  out->set_error(out, "license server busy", 1);
  return 0;
}

/* Polls stop_requested() (up to about 10 s), then fails as a stopped kernel does. */
static int wait_for_stop(void* user, const char* params, const simq_context_v1* ctx,
                         simq_result_v1* out) {
  (void)user;
  (void)params;
  for (int i = 0; i < 10000 && !ctx->stop_requested(ctx); ++i) {
    struct timespec pause = {0, 1000000};
    nanosleep(&pause, NULL);
  }
  out->set_error(out, "wait_for_stop: stopped", 0);
  return 0;
}

static int not_an_object(void* user, const char* params, const simq_context_v1* ctx,
                         simq_result_v1* out) {
  (void)user;
  (void)params;
  (void)ctx;
  set_text(out, "[1,2]");
  return 0;
}

static int bad_json(void* user, const char* params, const simq_context_v1* ctx,
                    simq_result_v1* out) {
  (void)user;
  (void)params;
  (void)ctx;
  set_text(out, "{oops");
  return 0;
}

static int no_result(void* user, const char* params, const simq_context_v1* ctx,
                     simq_result_v1* out) {
  (void)user;
  (void)params;
  (void)ctx;
  (void)out;
  return 0;
}

static int returns_code(void* user, const char* params, const simq_context_v1* ctx,
                        simq_result_v1* out) {
  (void)user;
  (void)params;
  (void)ctx;
  (void)out;
  return 5;
}

SIMQ_PLUGIN_EXPORT uint32_t simq_plugin_abi_version(void) { return SIMQ_TEST_ABI; }

SIMQ_PLUGIN_EXPORT int simq_plugin_register_v1(const simq_host_v1* host) {
  if (SIMQ_TEST_ABI != SIMQ_PLUGIN_ABI_VERSION) abort(); /* the host must not call it */
  static const simq_kernel_v1 kernels[] = {
      {"test.echo_context", "returns job_id, attempt and params", echo_context, NULL},
      {"test.flaky", "always fails, retryably", flaky, NULL},
      {"test.wait_for_stop", "returns once stopped", wait_for_stop, NULL},
      {"test.not_an_object", "returns [1,2]", not_an_object, NULL},
      {"test.bad_json", "returns {oops", bad_json, NULL},
      {"test.no_result", "returns without a result", no_result, NULL},
      {"test.returns_code", "returns 5", returns_code, NULL},
  };
  if (SIMQ_TEST_REGISTER_RESULT != 0) return SIMQ_TEST_REGISTER_RESULT;
  const char* fail_if = getenv("SIMQ_TEST_PLUGIN_FAIL_IF");
  if (fail_if != NULL && access(fail_if, F_OK) == 0) return 9;
  for (size_t i = 0; i < sizeof kernels / sizeof kernels[0]; ++i) {
    const int refused = host->add_kernel(host, &kernels[i]);
    if (refused != 0) return refused;
  }
  return 0;
}

#endif
