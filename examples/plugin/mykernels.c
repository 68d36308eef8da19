/* An example simq plug-in, in C: two kernels registered through the C ABI of simq/plugin.h.
 *   rosenbrock  x, y, a = 1, b = 100  ->  {"value": (a - x)^2 + b (y - x^2)^2}
 *   collatz     n                     ->  {"steps": ..., "peak": ...}
 * Thread-safety: no shared state; run() may be called from many worker slots at once.
 *
 * The parameters arrive as a JSON object. This example reads numbers with the tiny scanner
 * below (top-level keys, numbers only); a real plug-in would use a JSON library (cJSON,
 * yyjson, jansson, ...). Build it: see README.md. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "simq/plugin.h"

/* --- A minimal JSON number lookup ------------------------------------------------------- */

enum lookup { kMissing = 0, kFound = 1, kNotNumber = -1 };

/* Skips a JSON string starting at its opening quote; returns the character after it. */
static const char* skip_string(const char* p) {
  for (++p; *p != '\0' && *p != '"'; ++p) {
    if (*p == '\\' && p[1] != '\0') ++p;
  }
  return *p == '"' ? p + 1 : p;
}

/* Finds the top-level key `name` of the object `json` and reads its value as a number. */
static enum lookup number_param(const char* json, const char* name, double* value) {
  const size_t name_len = strlen(name);
  int depth = 0;
  const char* p = json;
  while (*p != '\0') {
    if (*p == '"') {
      const char* key = p + 1;
      const char* end = skip_string(p);
      p = end;
      if (depth != 1) continue;
      while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') ++p;
      if (*p != ':') continue; /* a string value, not a key */
      if ((size_t)(end - 1 - key) != name_len || strncmp(key, name, name_len) != 0) continue;
      char* number_end = NULL;
      *value = strtod(p + 1, &number_end);
      if (number_end == p + 1 || !isfinite(*value)) return kNotNumber;
      return kFound;
    }
    if (*p == '{' || *p == '[') ++depth;
    if (*p == '}' || *p == ']') --depth;
    ++p;
  }
  return kMissing;
}

/* Reads parameter `name`, or `fallback` when it is absent (NAN: required). Reports a missing or
 * non-numeric parameter through `out` and returns 0. */
static int read_number(const char* json, const char* name, double fallback, double* value,
                       simq_result_v1* out) {
  char message[128];
  switch (number_param(json, name, value)) {
    case kFound:
      return 1;
    case kMissing:
      if (!isnan(fallback)) {
        *value = fallback;
        return 1;
      }
      snprintf(message, sizeof message, "param '%s' is missing", name);
      break;
    case kNotNumber:
      snprintf(message, sizeof message, "param '%s': expected a number", name);
      break;
  }
  out->set_error(out, message, 0);
  return 0;
}

static void set_json_text(simq_result_v1* out, const char* text) {
  out->set_json(out, text, strlen(text));
}

/* --- The kernels ----------------------------------------------------------------------- */

static int rosenbrock(void* user, const char* params, const simq_context_v1* ctx,
                      simq_result_v1* out) {
  (void)user;
  (void)ctx;
  double x = 0, y = 0, a = 0, b = 0;
  if (!read_number(params, "x", NAN, &x, out) || !read_number(params, "y", NAN, &y, out) ||
      !read_number(params, "a", 1.0, &a, out) || !read_number(params, "b", 100.0, &b, out)) {
    return 0;
  }
  const double value = (a - x) * (a - x) + b * (y - x * x) * (y - x * x);
  if (!isfinite(value)) {
    out->set_error(out, "rosenbrock: the value overflows", 0);
    return 0;
  }
  char json[64];
  snprintf(json, sizeof json, "{\"value\":%.17g}", value);
  set_json_text(out, json);
  return 0;
}

static int collatz(void* user, const char* params, const simq_context_v1* ctx,
                   simq_result_v1* out) {
  (void)user;
  double n_param = 0;
  if (!read_number(params, "n", NAN, &n_param, out)) return 0;
  if (n_param < 1 || n_param > 9007199254740992.0 || floor(n_param) != n_param) {
    out->set_error(out, "param 'n': expected an integer from 1 to 2^53", 0);
    return 0;
  }
  uint64_t n = (uint64_t)n_param;
  uint64_t peak = n;
  uint64_t steps = 0;
  while (n != 1) {
    if (steps % 4096 == 0 && ctx->stop_requested(ctx)) {
      out->set_error(out, "collatz: stopped", 0);
      return 0;
    }
    if (n % 2 == 0) {
      n /= 2;
    } else if (n > (UINT64_MAX - 1) / 3) {
      out->set_error(out, "collatz: the sequence leaves 64-bit integers", 0);
      return 0;
    } else {
      n = 3 * n + 1;
    }
    if (n > peak) peak = n;
    ++steps;
  }
  char json[96];
  snprintf(json, sizeof json, "{\"steps\":%llu,\"peak\":%llu}", (unsigned long long)steps,
           (unsigned long long)peak);
  set_json_text(out, json);
  return 0;
}

/* --- The entry points the worker looks up ----------------------------------------------- */

SIMQ_PLUGIN_EXPORT uint32_t simq_plugin_abi_version(void) { return SIMQ_PLUGIN_ABI_VERSION; }

SIMQ_PLUGIN_EXPORT int simq_plugin_register_v1(const simq_host_v1* host) {
  static const simq_kernel_v1 kernels[] = {
      {"rosenbrock", "x, y, a = 1, b = 100 -> value = (a - x)^2 + b (y - x^2)^2", rosenbrock, NULL},
      {"collatz", "n (1 to 2^53) -> steps to reach 1, peak of the sequence", collatz, NULL},
  };
  for (size_t i = 0; i < sizeof kernels / sizeof kernels[0]; ++i) {
    const int refused = host->add_kernel(host, &kernels[i]);
    if (refused != 0) return refused; /* the worker reports why */
  }
  return 0;
}
