// The exec kernel: runs an external program once per job, in its own scratch directory, with a
// clean environment, an argv vector (never a shell) filled from the job's params, a time and a
// memory limit, and reads its result from stdout or a file.
// Thread-safety: stateless; run() may be called from many slots at once (the child is started
// with fork+execve and only async-signal-safe calls in between).
//
// The result of a job:
//   {"output": <the program's result>, "exit_status": n, "stdout_tail": "...",
//    "stderr_tail": "...", "elapsed_s": x, "scratch": "<dir>" (only if kept),
//    "files": {"<name>": "<text>" or {"base64": "..."}} (only with store_files),
//    "copied": ["<path>", ...] (only with results_dir)}
// A failure throws KernelError whose first line is one of
//   "exited 3", "killed by signal 11 (SIGSEGV)", "timed out after 600 s",
//   "result file out.json missing", "stdout is not JSON: \"<first bytes>\"", ...
// followed by "stderr: <tail>", "stdout: <tail>" and "scratch: <dir>" lines when they apply.
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "child_process_tools.h"
#include "kernel.h"

namespace simq {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr int64_t kDefaultTailBytes = 4096;
constexpr int64_t kMaxTailBytes = 1 << 20;
constexpr int64_t kDefaultMaxFileBytes = 1 << 20;
constexpr int64_t kMaxMaxFileBytes = int64_t{64} << 20;
constexpr double kDefaultKillGraceS = 5;
constexpr size_t kQuotedBytes = 60;  // bytes of bad output or a template quoted in a message
constexpr auto kMaxPollPause = std::chrono::milliseconds(50);
constexpr const char* kDefaultPath = "/usr/local/bin:/usr/bin:/bin";

// ---------------------------------------------------------------------------------------
// Text helpers

// `text` as a JSON string literal, cut to kQuotedBytes: how bytes from a program or a sweep
// are quoted in messages (valid UTF-8 whatever the bytes were).
std::string quote(std::string_view text) {
  return dump_lenient(Json(excerpt(std::string(text), kQuotedBytes)));
}

// Length of the valid UTF-8 sequence starting at text[i], or 0 if it is not one.
size_t utf8_sequence(std::string_view text, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char lead = byte(i);
  if (lead < 0x80) return 1;
  size_t length = 0;
  uint32_t min = 0;
  uint32_t code = 0;
  if ((lead & 0xE0) == 0xC0) {
    length = 2, min = 0x80, code = lead & 0x1Fu;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3, min = 0x800, code = lead & 0x0Fu;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4, min = 0x10000, code = lead & 0x07u;
  } else {
    return 0;
  }
  if (i + length > text.size()) return 0;
  for (size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    code = (code << 6) | (byte(i + k) & 0x3Fu);
  }
  if (code < min || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return 0;
  return length;
}

bool is_utf8(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const size_t n = utf8_sequence(text, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

// `text` with every invalid byte replaced by U+FFFD, so it can go into a Json string.
std::string to_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const size_t n = utf8_sequence(text, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
    } else {
      out.append(text.substr(i, n));
      i += n;
    }
  }
  return out;
}

std::string base64(std::string_view data) {
  static constexpr std::string_view kDigits =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  for (size_t i = 0; i < data.size(); i += 3) {
    const size_t n = std::min<size_t>(3, data.size() - i);
    uint32_t chunk = 0;
    for (size_t k = 0; k < 3; ++k) {
      chunk = (chunk << 8) | (k < n ? static_cast<unsigned char>(data[i + k]) : 0u);
    }
    for (size_t k = 0; k < 4; ++k) {
      out += k <= n ? kDigits[(chunk >> (18 - 6 * k)) & 0x3Fu] : '=';
    }
  }
  return out;
}

std::string_view trim(std::string_view text) {
  const auto space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  while (!text.empty() && space(text.front())) text.remove_prefix(1);
  while (!text.empty() && space(text.back())) text.remove_suffix(1);
  return text;
}

// A value from a keyvalue or CSV result: an integer, a finite float, or the text itself
// (without surrounding double quotes).
Json parse_scalar(std::string_view text) {
  text = trim(text);
  std::string_view digits = text;
  if (!digits.empty() && digits.front() == '+') digits.remove_prefix(1);
  if (!digits.empty()) {
    int64_t integer = 0;
    const char* end = digits.data() + digits.size();
    if (auto [ptr, ec] = std::from_chars(digits.data(), end, integer);
        ec == std::errc() && ptr == end) {
      return integer;
    }
    double number = 0;
    if (auto [ptr, ec] = std::from_chars(digits.data(), end, number);
        ec == std::errc() && ptr == end && std::isfinite(number)) {
      return number;
    }
  }
  if (text.size() >= 2 && text.front() == '"' && text.back() == '"') {
    text = text.substr(1, text.size() - 2);
  }
  return to_utf8(text);
}

// ---------------------------------------------------------------------------------------
// Files

struct FileData {
  bool exists = false;
  uint64_t size = 0;
  std::string data;  // the first `limit` bytes asked for
};

// Reads up to `limit` bytes of `path` starting at `offset` (clamped to the file).
FileData read_file(const std::string& path, uint64_t limit, bool from_end = false) {
  FileData file;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return file;
  struct stat info {};
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    ::close(fd);
    return file;
  }
  file.exists = true;
  file.size = static_cast<uint64_t>(info.st_size);
  const uint64_t count = std::min(limit, file.size);
  const uint64_t offset = from_end ? file.size - count : 0;
  file.data.resize(count);
  size_t done = 0;
  while (done < count) {
    const ssize_t n =
        ::pread(fd, file.data.data() + done, count - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  file.data.resize(done);
  ::close(fd);
  return file;
}

// The last `limit` bytes of an output file, as valid UTF-8 (a cut character at the start is
// dropped, invalid bytes become U+FFFD).
std::string tail_of(const std::string& path, uint64_t limit) {
  std::string data = read_file(path, limit, true).data;
  size_t start = 0;
  while (start < data.size() && start < 3 &&
         (static_cast<unsigned char>(data[start]) & 0xC0) == 0x80) {
    ++start;
  }
  return to_utf8(std::string_view(data).substr(start));
}

// A file name given in params: relative, inside the scratch directory.
std::string checked_file_name(const std::string& name, std::string_view param) {
  const fs::path path(name);
  bool escapes = name.empty() || path.is_absolute();
  for (const auto& part : path) escapes = escapes || part == "..";
  if (escapes) {
    throw KernelError(
        fmt::format("param '{}': expected a file name inside the scratch directory, got {}", param,
                    quote(name)));
  }
  return name;
}

// ---------------------------------------------------------------------------------------
// Templates: "{name}", "{name:.3e}", "{{" and "}}".

struct TemplateValues {
  const Json& params;
  std::map<std::string, std::string, std::less<>> builtins;  // job_id, attempt, scratch
};

std::string format_plain(const Json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_number_integer()) return dump_lenient(value);
  if (value.is_number_float()) return fmt::format("{}", value.get<double>());
  return dump_lenient(value);
}

std::string format_value(const Json& value, std::string_view spec, std::string_view where,
                         std::string_view name) {
  if (spec.empty()) return format_plain(value);
  const std::string format = fmt::format("{{:{}}}", spec);
  const char type = spec.back();
  const bool wants_integer = std::string_view("dxXobBc").find(type) != std::string_view::npos;
  const bool wants_float = std::string_view("eEfFgGaA%").find(type) != std::string_view::npos;
  const auto fail = [&](std::string_view why) -> KernelError {
    return KernelError(fmt::format("{}: param '{}' ({}): bad format \"{}\": {}", where, name,
                                   describe_value(value), spec, why));
  };
  try {
    if (value.is_string()) return fmt::format(fmt::runtime(format), value.get<std::string>());
    if (value.is_boolean()) return fmt::format(fmt::runtime(format), value.get<bool>());
    if (value.is_number_float() && !wants_float) {
      const double number = value.get<double>();
      if (wants_integer) {
        if (!(std::trunc(number) == number && std::abs(number) < 9.2e18)) {
          throw fail("needs an integer");
        }
        return fmt::format(fmt::runtime(format), static_cast<int64_t>(number));
      }
      return fmt::format(fmt::runtime(format), number);
    }
    if (value.is_number_float() || (value.is_number() && wants_float)) {
      return fmt::format(fmt::runtime(format), value.get<double>());
    }
    if (value.is_number_unsigned()) {
      return fmt::format(fmt::runtime(format), value.get<uint64_t>());
    }
    if (value.is_number_integer()) return fmt::format(fmt::runtime(format), value.get<int64_t>());
  } catch (const fmt::format_error& e) {
    throw fail(e.what());
  }
  throw fail("needs a number or a string");
}

// Fills the placeholders of `text`. `where` names the template in errors ("command[1]").
std::string render(std::string_view text, std::string_view where, const TemplateValues& values) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '}') {
      if (i + 1 < text.size() && text[i + 1] == '}') {
        out += '}';
        ++i;
        continue;
      }
      throw KernelError(fmt::format("{}: single '}}' in template {} (write '}}}}' for a brace)",
                                    where, quote(text)));
    }
    if (c != '{') {
      out += c;
      continue;
    }
    if (i + 1 < text.size() && text[i + 1] == '{') {
      out += '{';
      ++i;
      continue;
    }
    const size_t close = text.find('}', i + 1);
    if (close == std::string_view::npos) {
      throw KernelError(fmt::format("{}: unmatched '{{' in template {} (write '{{{{' for a brace)",
                                    where, quote(text)));
    }
    const std::string_view field = text.substr(i + 1, close - i - 1);
    const size_t colon = field.find(':');
    const std::string_view name = field.substr(0, colon);
    const std::string_view spec =
        colon == std::string_view::npos ? std::string_view() : field.substr(colon + 1);
    if (const auto builtin = values.builtins.find(name); builtin != values.builtins.end()) {
      out += format_value(Json(builtin->second), spec, where, name);
    } else if (const auto param = values.params.find(name); param != values.params.end()) {
      out += format_value(*param, spec, where, name);
    } else {
      throw KernelError(
          fmt::format("{}: unknown param '{}' in template {}", where, name, quote(text)));
    }
    i = close;
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// The kernel's own params

enum class ResultMode { kStdoutJson, kFile, kExitStatus };
enum class FileFormat { kJson, kKeyValue, kCsv };
enum class KeepScratch { kOnFailure, kAlways, kNever };

struct ExecConfig {
  std::vector<std::pair<std::string, std::string>> command;  // (where, template)
  std::vector<std::pair<std::string, std::string>> env;      // (name, template)
  std::vector<std::string> env_pass;
  std::optional<std::string> input_template;
  std::optional<std::string> input_template_file;
  std::string input_name;
  ResultMode result = ResultMode::kStdoutJson;
  std::string result_file;
  FileFormat result_format = FileFormat::kJson;
  std::optional<double> timeout_s;
  double kill_grace_s = kDefaultKillGraceS;
  std::optional<int64_t> memory_mb;
  std::string scratch_root;
  KeepScratch keep_scratch = KeepScratch::kOnFailure;
  std::vector<std::string> store_files;
  uint64_t max_file_bytes = kDefaultMaxFileBytes;
  uint64_t tail_bytes = kDefaultTailBytes;
  std::optional<std::string> results_dir;  // template
  std::vector<std::string> copy_files;
};

[[noreturn]] void bad(std::string_view name, std::string_view expected, const Json& got) {
  throw KernelError(
      fmt::format("param '{}': expected {}, got {}", name, expected, describe_value(got)));
}

// A string, or a number written as text (a TOML env table may say OMP_NUM_THREADS = 4).
std::string template_text(const Json& value, std::string_view name) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_number()) return format_plain(value);
  bad(name, "a string", value);
}

std::string string_param(const Json& params, std::string_view name, std::string fallback) {
  const Json* value = find_param(params, name);
  if (value == nullptr) return fallback;
  if (!value->is_string()) bad(name, "a string", *value);
  return value->get<std::string>();
}

// A string param that must be one of `choices`, the first being the default; `field` names it
// in errors ("result.format"): `expected "json", "keyvalue" or "csv", got ...`.
template <typename E, size_t N>
E choice_param(const Json& params, std::string_view name, std::string_view field,
               const std::array<std::pair<std::string_view, E>, N>& choices) {
  const std::string value = string_param(params, name, std::string(choices[0].first));
  std::string expected;
  for (size_t i = 0; i < N; ++i) {
    if (value == choices[i].first) return choices[i].second;
    expected += fmt::format("{}\"{}\"", i == 0 ? "" : i + 1 == N ? " or " : ", ", choices[i].first);
  }
  bad(field, expected, Json(value));
}

std::vector<std::string> name_list(const Json& params, std::string_view name) {
  std::vector<std::string> out;
  const Json* value = find_param(params, name);
  if (value == nullptr) return out;
  if (!value->is_array()) bad(name, "an array of strings", *value);
  for (const Json& item : *value) {
    if (!item.is_string()) bad(name, "an array of strings", *value);
    out.push_back(item.get<std::string>());
  }
  return out;
}

bool is_env_name(std::string_view name) {
  if (name.empty() || (name.front() >= '0' && name.front() <= '9')) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

ExecConfig parse_config(const Json& params) {
  ExecConfig config;
  const Json* command = find_param(params, "command");
  if (command == nullptr) throw KernelError("param 'command' is missing");
  if (command->is_string()) {
    // Split on whitespace only: no quoting, no expansion, no shell.
    const auto& line = command->get_ref<const std::string&>();
    size_t i = 0;
    while (i < line.size()) {
      const size_t start = line.find_first_not_of(" \t\n\r", i);
      if (start == std::string::npos) break;
      const size_t end = std::min(line.find_first_of(" \t\n\r", start), line.size());
      config.command.emplace_back(fmt::format("command[{}]", config.command.size()),
                                  line.substr(start, end - start));
      i = end;
    }
  } else if (command->is_array()) {
    for (size_t i = 0; i < command->size(); ++i) {
      const std::string where = fmt::format("command[{}]", i);
      config.command.emplace_back(where, template_text((*command)[i], where));
    }
  } else {
    bad("command", "an array of strings or a string", *command);
  }
  if (config.command.empty() || config.command[0].second.empty()) {
    throw KernelError("param 'command': expected a program to run, got " +
                      describe_value(*command));
  }

  if (const Json* env = find_param(params, "env")) {
    if (!env->is_object()) bad("env", "a table of variable names to strings", *env);
    for (auto it = env->begin(); it != env->end(); ++it) {
      if (!is_env_name(it.key())) {
        throw KernelError(fmt::format("param 'env': {} is not a variable name", quote(it.key())));
      }
      config.env.emplace_back(it.key(), template_text(it.value(), "env." + it.key()));
    }
  }
  config.env_pass = name_list(params, "env_pass");
  for (const auto& name : config.env_pass) {
    if (!is_env_name(name)) {
      throw KernelError(fmt::format("param 'env_pass': {} is not a variable name", quote(name)));
    }
  }

  if (const Json* input = find_param(params, "input")) {
    if (!input->is_object())
      bad("input", "a table with template or template_file, and name", *input);
    const Json* text = find_param(*input, "template");
    const Json* file = find_param(*input, "template_file");
    if ((text == nullptr) == (file == nullptr)) {
      throw KernelError("param 'input': expected exactly one of template and template_file");
    }
    if (text != nullptr) config.input_template = template_text(*text, "input.template");
    if (file != nullptr) {
      if (!file->is_string()) bad("input.template_file", "a string", *file);
      config.input_template_file = file->get<std::string>();
    }
    const Json* name = find_param(*input, "name");
    if (name == nullptr) throw KernelError("param 'input.name' is missing");
    if (!name->is_string()) bad("input.name", "a string", *name);
    config.input_name = checked_file_name(name->get<std::string>(), "input.name");
  }

  if (const Json* result = find_param(params, "result")) {
    if (result->is_string() && *result == "stdout_json") {
      config.result = ResultMode::kStdoutJson;
    } else if (result->is_string() && *result == "exit_status") {
      config.result = ResultMode::kExitStatus;
    } else if (result->is_object()) {
      config.result = ResultMode::kFile;
      const Json* file = find_param(*result, "file");
      if (file == nullptr) throw KernelError("param 'result.file' is missing");
      if (!file->is_string()) bad("result.file", "a string", *file);
      config.result_file = checked_file_name(file->get<std::string>(), "result.file");
      config.result_format = choice_param<FileFormat, 3>(*result, "format", "result.format",
                                                         {{{"json", FileFormat::kJson},
                                                           {"keyvalue", FileFormat::kKeyValue},
                                                           {"csv", FileFormat::kCsv}}});
    } else {
      bad("result", R"("stdout_json", "exit_status" or a table {file, format})", *result);
    }
  }

  if (find_param(params, "timeout_s") != nullptr) {
    config.timeout_s = number_param(params, "timeout_s", 0);
    if (*config.timeout_s == 0) config.timeout_s.reset();
  }
  if (find_param(params, "kill_grace_s") != nullptr) {
    config.kill_grace_s = number_param(params, "kill_grace_s", 0, 3600);
  }
  if (find_param(params, "memory_mb") != nullptr) {
    config.memory_mb = int_param(params, "memory_mb", 1, int64_t{1} << 30);
  }
  const char* tmpdir = std::getenv("TMPDIR");
  config.scratch_root =
      string_param(params, "scratch_root", tmpdir != nullptr && *tmpdir != '\0' ? tmpdir : "/tmp");
  config.keep_scratch = choice_param<KeepScratch, 3>(params, "keep_scratch", "keep_scratch",
                                                     {{{"on_failure", KeepScratch::kOnFailure},
                                                       {"always", KeepScratch::kAlways},
                                                       {"never", KeepScratch::kNever}}});
  for (const auto& name : name_list(params, "store_files")) {
    config.store_files.push_back(checked_file_name(name, "store_files"));
  }
  config.max_file_bytes = static_cast<uint64_t>(
      int_param_or(params, "max_file_bytes", kDefaultMaxFileBytes, 0, kMaxMaxFileBytes));
  config.tail_bytes = static_cast<uint64_t>(
      int_param_or(params, "tail_bytes", kDefaultTailBytes, 0, kMaxTailBytes));
  if (const Json* dir = find_param(params, "results_dir")) {
    config.results_dir = template_text(*dir, "results_dir");
  }
  for (const auto& name : name_list(params, "copy_files")) {
    config.copy_files.push_back(checked_file_name(name, "copy_files"));
  }
  if (!config.copy_files.empty() && !config.results_dir) {
    throw KernelError("param 'copy_files': needs param 'results_dir' to copy them to");
  }
  return config;
}

// ---------------------------------------------------------------------------------------
// The child process

// argv[0] as execve needs it: a name without '/' is looked up on the worker's PATH.
std::string find_program(const std::string& name, const std::string& path) {
  if (name.find('/') != std::string::npos) return name;  // relative to the scratch directory
  for (size_t start = 0; start <= path.size();) {
    size_t end = path.find(':', start);
    if (end == std::string::npos) end = path.size();
    const std::string dir = path.substr(start, end - start);
    start = end + 1;
    if (dir.empty()) continue;  // never the current directory
    std::string candidate = dir;
    candidate += '/';
    candidate += name;
    struct stat info {};
    if (::stat(candidate.c_str(), &info) == 0 && S_ISREG(info.st_mode) &&
        ::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  throw KernelError(fmt::format("command {} not found on PATH ({})", quote(name), path));
}

struct Launch {
  std::string program;  // what execve runs
  std::vector<std::string> argv;
  std::vector<std::string> env;  // "NAME=value"
  std::string directory;
  std::string stdout_path;
  std::string stderr_path;
  std::optional<uint64_t> memory_bytes;
};

// What the child writes to the parent before _exit(127) when it cannot start the program.
struct StartFailure {
  int stage = 0;  // 0 chdir, 1 redirect, 2 exec
  int error = 0;  // errno
};

// A started program and its process group. The destructor kills the group and reaps the
// program, so no exit path of run() leaves either behind.
class Child {
 public:
  explicit Child(const Launch& launch) {
    std::vector<char*> argv;
    for (const auto& arg : launch.argv) argv.push_back(const_cast<char*>(arg.c_str()));
    argv.push_back(nullptr);
    std::vector<char*> envp;
    for (const auto& var : launch.env) envp.push_back(const_cast<char*>(var.c_str()));
    envp.push_back(nullptr);

    const auto open_fd = [](const std::string& path, int flags) {
      const int fd = ::open(path.c_str(), flags | O_CLOEXEC, 0644);
      if (fd < 0) {
        throw KernelError(fmt::format("cannot open {}: {}", path, std::strerror(errno)));
      }
      return fd;
    };
    Fds fds;
    fds.in = open_fd("/dev/null", O_RDONLY);
    fds.out = open_fd(launch.stdout_path, O_WRONLY | O_CREAT | O_TRUNC);
    fds.err = open_fd(launch.stderr_path, O_WRONLY | O_CREAT | O_TRUNC);
    int status_pipe[2];
    if (::pipe2(status_pipe, O_CLOEXEC) != 0) {
      throw KernelError(
          fmt::format("cannot start {}: pipe: {}", quote(launch.argv[0]), std::strerror(errno)));
    }
    fds.status_read = status_pipe[0];
    fds.status_write = status_pipe[1];
    rlimit memory{};
    if (launch.memory_bytes) memory.rlim_cur = memory.rlim_max = *launch.memory_bytes;

    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ < 0) {
      throw RetryableError(
          fmt::format("cannot start {}: fork: {}", quote(launch.argv[0]), std::strerror(errno)));
    }
    if (pid_ == 0) {
      // Only async-signal-safe calls from here to execve: the worker has other threads.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);  // the worker died before prctl took effect
      ::setpgid(0, 0);
      StartFailure failure;
      const auto fail = [&](int stage) {
        failure.stage = stage;
        failure.error = errno;
        [[maybe_unused]] auto n = ::write(fds.status_write, &failure, sizeof failure);
        ::_exit(127);
      };
      if (::chdir(launch.directory.c_str()) != 0) fail(0);
      if (::dup2(fds.in, STDIN_FILENO) < 0 || ::dup2(fds.out, STDOUT_FILENO) < 0 ||
          ::dup2(fds.err, STDERR_FILENO) < 0) {
        fail(1);
      }
      reset_signals();
      if (launch.memory_bytes) ::setrlimit(RLIMIT_AS, &memory);
      close_on_exec_from(3);  // the program inherits only stdin, stdout and stderr
      ::execve(launch.program.c_str(), argv.data(), envp.data());
      fail(2);
    }
    ::setpgid(pid_, pid_);  // also here, so the group exists before we ever signal it
    ::close(fds.status_write);
    fds.status_write = -1;
    StartFailure failure;
    ssize_t n = 0;
    do {
      n = ::read(fds.status_read, &failure, sizeof failure);
    } while (n < 0 && errno == EINTR);
    if (n == static_cast<ssize_t>(sizeof failure)) {
      int ignored = 0;
      ::waitpid(pid_, &ignored, 0);
      pid_ = -1;
      const std::string why = std::strerror(failure.error);
      if (failure.stage == 0) {
        throw KernelError(fmt::format("cannot enter {}: {}", launch.directory, why));
      }
      if (failure.stage == 1) throw KernelError("cannot redirect stdin/stdout/stderr: " + why);
      throw KernelError(fmt::format("cannot run {}: {}", quote(launch.argv[0]), why));
    }
  }

  ~Child() {
    if (pid_ > 0) reap();
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  // True once the program has ended. It stays a zombie until reap(), so its pid, the id of
  // its process group, cannot be reused meanwhile.
  bool ended() const {
    siginfo_t info{};
    return ::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
           info.si_pid == pid_;
  }

  void signal_group(int sig) const { ::kill(-pid_, sig); }

  // Kills what is left of the program's group (helpers it started and left running), then
  // reaps the program; returns its wait status.
  int reap() {
    signal_group(SIGKILL);
    int raw = 0;
    while (::waitpid(pid_, &raw, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    return raw;
  }

  // SIGTERM to the group, up to `grace` for the program to end, then SIGKILL; reaps it.
  int terminate(std::chrono::duration<double> grace) {
    signal_group(SIGTERM);
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(grace);
    auto pause = std::chrono::milliseconds(1);
    while (!ended() && Clock::now() < deadline) {
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, kMaxPollPause);
    }
    return reap();
  }

 private:
  // Descriptors the parent holds while starting the child, closed on every way out.
  struct Fds {
    int in = -1, out = -1, err = -1, status_read = -1, status_write = -1;
    Fds() = default;
    Fds(const Fds&) = delete;
    Fds& operator=(const Fds&) = delete;
    ~Fds() {
      for (int fd : {in, out, err, status_read, status_write}) {
        if (fd >= 0) ::close(fd);
      }
    }
  };

  pid_t pid_ = -1;
};

// ---------------------------------------------------------------------------------------
// Results

// The last line of stdout that is a JSON object, or the whole stdout if it is one.
Json stdout_result(const std::string& path, uint64_t limit) {
  const FileData out = read_file(path, limit, true);
  const auto not_json = [&]() -> KernelError {
    return KernelError("stdout is not JSON: " + quote(read_file(path, kQuotedBytes).data));
  };
  std::string_view text = out.data;
  if (out.size == text.size()) {
    Json whole = Json::parse(text, nullptr, false);
    if (whole.is_object()) return whole;
  } else {
    // Only the last `limit` bytes were read: the first, cut line cannot be the result.
    const size_t newline = text.find('\n');
    text = newline == std::string_view::npos ? std::string_view() : text.substr(newline + 1);
  }
  while (!text.empty()) {
    const size_t newline = text.rfind('\n');
    const std::string_view line =
        trim(newline == std::string_view::npos ? text : text.substr(newline + 1));
    text = newline == std::string_view::npos ? std::string_view() : text.substr(0, newline);
    if (!line.empty() && line.front() == '{') {
      Json value = Json::parse(line, nullptr, false);
      if (value.is_object()) return value;
    }
  }
  throw not_json();
}

Json keyvalue_result(std::string_view text, const std::string& name) {
  Json out = Json::object();
  size_t number = 0;
  while (!text.empty()) {
    ++number;
    const size_t end = std::min(text.find('\n'), text.size());
    const std::string_view line = trim(text.substr(0, end));
    text.remove_prefix(std::min(end + 1, text.size()));
    if (line.empty() || line.front() == '#') continue;
    const size_t equals = line.find('=');
    if (equals == std::string_view::npos || trim(line.substr(0, equals)).empty()) {
      throw KernelError(fmt::format("result file {}: line {} is not `key = value`: {}", name,
                                    number, quote(line)));
    }
    out[to_utf8(trim(line.substr(0, equals)))] = parse_scalar(line.substr(equals + 1));
  }
  return out;
}

// One CSV record's fields; double quotes enclose fields with commas, "" is a quote.
std::vector<std::string> csv_fields(std::string_view line) {
  std::vector<std::string> fields(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        fields.back() += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        fields.back() += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      fields.emplace_back();
    } else {
      fields.back() += c;
    }
  }
  return fields;
}

Json csv_result(std::string_view text, const std::string& name) {
  std::vector<std::string> columns;
  Json rows = Json::array();
  size_t number = 0;
  while (!text.empty()) {
    ++number;
    const size_t end = std::min(text.find('\n'), text.size());
    const std::string_view line = trim(text.substr(0, end));
    text.remove_prefix(std::min(end + 1, text.size()));
    if (line.empty()) continue;
    std::vector<std::string> fields = csv_fields(line);
    if (columns.empty()) {
      for (auto& field : fields) columns.push_back(to_utf8(trim(field)));
      continue;
    }
    if (fields.size() != columns.size()) {
      throw KernelError(fmt::format("result file {}: line {} has {} fields, the header {}", name,
                                    number, fields.size(), columns.size()));
    }
    Json row = Json::array();
    for (const auto& field : fields) row.push_back(parse_scalar(field));
    rows.push_back(std::move(row));
  }
  if (columns.empty()) throw KernelError(fmt::format("result file {} is empty", name));
  if (rows.size() == 1) {
    Json out = Json::object();
    for (size_t i = 0; i < columns.size(); ++i) out[columns[i]] = rows[0][i];
    return out;
  }
  return Json{{"columns", columns}, {"rows", std::move(rows)}};
}

Json file_result(const ExecConfig& config, const fs::path& scratch) {
  const std::string& name = config.result_file;
  const FileData file = read_file((scratch / name).string(), config.max_file_bytes + 1);
  if (!file.exists) throw KernelError(fmt::format("result file {} missing", name));
  if (file.size > config.max_file_bytes) {
    throw KernelError(fmt::format("result file {} is {} bytes, more than max_file_bytes {}", name,
                                  file.size, config.max_file_bytes));
  }
  switch (config.result_format) {
    case FileFormat::kJson: {
      Json value = Json::parse(file.data, nullptr, false);
      if (value.is_discarded()) {
        throw KernelError(fmt::format("result file {} is not JSON: {}", name, quote(file.data)));
      }
      return value;
    }
    case FileFormat::kKeyValue:
      return keyvalue_result(file.data, name);
    case FileFormat::kCsv:
      return csv_result(file.data, name);
  }
  return {};
}

Json stored_files(const ExecConfig& config, const fs::path& scratch) {
  Json files = Json::object();
  for (const auto& name : config.store_files) {
    const FileData file = read_file((scratch / name).string(), config.max_file_bytes + 1);
    if (!file.exists) throw KernelError(fmt::format("stored file {} missing", name));
    if (file.size > config.max_file_bytes) {
      throw KernelError(fmt::format("stored file {} is {} bytes, more than max_file_bytes {}", name,
                                    file.size, config.max_file_bytes));
    }
    files[name] = is_utf8(file.data) ? Json(file.data) : Json{{"base64", base64(file.data)}};
  }
  return files;
}

// ---------------------------------------------------------------------------------------

std::string path_safe(std::string text) {
  for (char& c : text) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-' || c == '.';
    if (!ok) c = '_';
  }
  return text == "." || text == ".." ? "_" : text;
}

// A tail as a line of an error message: trimmed, NUL bytes shown as \0 (an exception's
// message is a C string, which would end at the first).
std::string message_text(std::string_view tail) {
  std::string out;
  for (const char c : trim(tail)) {
    if (c == '\0') {
      out += "\\0";
    } else {
      out += c;
    }
  }
  return out;
}

// The message of a failed job: what happened, then what helps to see why.
std::string failure(std::string_view what, const std::string& stderr_tail,
                    const std::string& stdout_tail, const std::optional<std::string>& scratch) {
  std::string message(what);
  if (!trim(stderr_tail).empty()) message += "\nstderr: " + message_text(stderr_tail);
  if (!trim(stdout_tail).empty()) message += "\nstdout: " + message_text(stdout_tail);
  if (scratch) message += "\nscratch: " + *scratch;
  return message;
}

class ExecKernel final : public Kernel {
 public:
  std::string_view name() const override { return "exec"; }
  std::string_view params_help() const override {
    return "command: [\"prog\", \"arg {x:.3e}\", ...] (argv, no shell; a string is split on "
           "whitespace; templates {param}, {param:fmt}, {job_id}, {attempt}, {scratch}, {{ }}), "
           "env: {NAME: template}, env_pass: [names], input: {template | template_file, name}, "
           "result: \"stdout_json\" (default) | \"exit_status\" | {file, format: json|keyvalue|"
           "csv}, timeout_s, kill_grace_s (5), memory_mb, scratch_root, keep_scratch: on_failure|"
           "always|never, store_files: [names], max_file_bytes (1 MiB), tail_bytes (4096), "
           "results_dir + copy_files; returns {output, exit_status, stdout_tail, stderr_tail, "
           "elapsed_s, scratch?, files?, copied?}";
  }

  Json run(const Json& params, const KernelContext& ctx) const override {
    const ExecConfig config = parse_config(params);
    const fs::path scratch = fs::absolute(fs::path(config.scratch_root)) /
                             ("simq-" + path_safe(ctx.job.sweep)) /
                             fmt::format("{}-{}", ctx.job.index, ctx.job.attempt);
    const TemplateValues values{params,
                                {{"job_id", job_id(ctx.job.sweep, ctx.job.index)},
                                 {"attempt", std::to_string(ctx.job.attempt)},
                                 {"scratch", scratch.string()}}};

    // Everything from the sweep is rendered and checked before anything is created.
    Launch launch;
    for (const auto& [where, text] : config.command) {
      launch.argv.push_back(render(text, where, values));
    }
    const char* worker_path = std::getenv("PATH");
    const std::string path =
        worker_path != nullptr && *worker_path != '\0' ? worker_path : kDefaultPath;
    launch.program = find_program(launch.argv[0], path);
    std::map<std::string, std::string> env{{"PATH", path},
                                           {"HOME", scratch.string()},
                                           {"LANG", "C.UTF-8"},
                                           {"SIMQ_JOB_ID", values.builtins.at("job_id")},
                                           {"SIMQ_ATTEMPT", values.builtins.at("attempt")},
                                           {"SIMQ_SCRATCH", scratch.string()}};
    for (const auto& name : config.env_pass) {
      if (const char* value = std::getenv(name.c_str())) env[name] = value;
    }
    for (const auto& [name, text] : config.env) env[name] = render(text, "env." + name, values);
    for (const auto& [name, value] : env) launch.env.push_back(fmt::format("{}={}", name, value));
    std::optional<std::string> input;
    if (config.input_template) input = render(*config.input_template, "input.template", values);
    if (config.input_template_file) {
      const FileData file = read_file(*config.input_template_file, kMaxMaxFileBytes + 1);
      if (!file.exists) {
        throw KernelError(fmt::format("param 'input.template_file': cannot read {}",
                                      *config.input_template_file));
      }
      if (file.size > static_cast<uint64_t>(kMaxMaxFileBytes)) {
        throw KernelError(fmt::format("param 'input.template_file': {} is {} bytes, more than {}",
                                      *config.input_template_file, file.size, kMaxMaxFileBytes));
      }
      input = render(file.data, *config.input_template_file, values);
    }
    std::optional<fs::path> results_dir;
    if (config.results_dir) results_dir = render(*config.results_dir, "results_dir", values);

    make_scratch(scratch);
    launch.directory = scratch.string();
    launch.stdout_path = (scratch / "stdout").string();
    launch.stderr_path = (scratch / "stderr").string();
    if (config.memory_mb) launch.memory_bytes = static_cast<uint64_t>(*config.memory_mb) << 20;
    if (input) write_input(scratch / config.input_name, *input);

    bool ok = false;
    try {
      Json result = run_program(config, launch, scratch, ctx);
      if (results_dir) result["copied"] = copy_files(config, scratch, *results_dir);
      ok = true;
      if (config.keep_scratch == KeepScratch::kAlways) {
        result["scratch"] = scratch.string();
      } else {
        remove_scratch(scratch);
      }
      return result;
    } catch (...) {
      if (!ok && config.keep_scratch == KeepScratch::kNever) remove_scratch(scratch);
      throw;
    }
  }

 private:
  static void make_scratch(const fs::path& scratch) {
    std::error_code error;
    fs::remove_all(scratch, error);  // left by an earlier run of this very attempt
    fs::create_directories(scratch, error);
    if (error) {
      throw RetryableError(
          fmt::format("cannot create scratch directory {}: {}", scratch.string(), error.message()));
    }
  }

  static void remove_scratch(const fs::path& scratch) {
    std::error_code error;
    fs::remove_all(scratch, error);
    fs::remove(scratch.parent_path(), error);  // the sweep's directory, once it is empty
  }

  static void write_input(const fs::path& file, const std::string& text) {
    std::error_code error;
    fs::create_directories(file.parent_path(), error);
    std::ofstream out(file, std::ios::binary);
    out << text;
    out.close();
    if (!out) throw RetryableError(fmt::format("cannot write input file {}", file.string()));
  }

  static Json copy_files(const ExecConfig& config, const fs::path& scratch,
                         const fs::path& results_dir) {
    Json copied = Json::array();
    std::error_code error;
    fs::create_directories(results_dir, error);
    if (error) {
      throw KernelError(
          fmt::format("cannot create results_dir {}: {}", results_dir.string(), error.message()));
    }
    for (const auto& name : config.copy_files) {
      const fs::path target = results_dir / fs::path(name).filename();
      if (!fs::is_regular_file(scratch / name, error)) {
        throw KernelError(fmt::format("file to copy {} missing", name));
      }
      fs::copy_file(scratch / name, target, fs::copy_options::overwrite_existing, error);
      if (error) {
        throw KernelError(
            fmt::format("cannot copy {} to {}: {}", name, target.string(), error.message()));
      }
      copied.push_back(target.string());
    }
    return copied;
  }

  static Json run_program(const ExecConfig& config, const Launch& launch, const fs::path& scratch,
                          const KernelContext& ctx) {
    throw_if_stopped(ctx, "exec");
    const auto start = Clock::now();
    Child child(launch);
    std::optional<Clock::time_point> deadline;
    if (config.timeout_s) {
      deadline = start + std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double>(*config.timeout_s));
    }
    const std::chrono::duration<double> grace(config.kill_grace_s);
    bool timed_out = false;
    bool stopped = false;
    int raw = 0;
    auto pause = std::chrono::duration<double>(0.001);
    for (;;) {
      if (child.ended()) {
        raw = child.reap();
        break;
      }
      if (ctx.stop.stop_requested()) {
        stopped = true;
        raw = child.terminate(grace);
        break;
      }
      const auto now = Clock::now();
      if (deadline && now >= *deadline) {
        timed_out = true;
        raw = child.terminate(grace);
        break;
      }
      auto wait = pause;
      if (deadline) wait = std::min<std::chrono::duration<double>>(wait, *deadline - now);
      sleep_unless_stopped(wait, ctx.stop);
      pause = std::min<std::chrono::duration<double>>(pause * 2, kMaxPollPause);
    }
    const double elapsed_s = std::chrono::duration<double>(Clock::now() - start).count();
    const std::string stdout_tail = tail_of(launch.stdout_path, config.tail_bytes);
    const std::string stderr_tail = tail_of(launch.stderr_path, config.tail_bytes);
    const std::optional<std::string> kept =
        config.keep_scratch == KeepScratch::kNever ? std::nullopt : std::optional(scratch.string());
    const auto fail = [&](std::string_view what) {
      return KernelError(failure(what, stderr_tail, stdout_tail, kept));
    };
    if (stopped) throw KernelCancelled("exec: stopped");
    if (timed_out) throw fail(fmt::format("timed out after {} s", *config.timeout_s));
    if (WIFSIGNALED(raw)) throw fail(describe_wait_status(raw));
    const int exit_status = WEXITSTATUS(raw);
    if (exit_status != 0 && config.result != ResultMode::kExitStatus) {
      throw fail(describe_wait_status(raw));
    }
    Json result = Json::object();
    try {
      switch (config.result) {
        case ResultMode::kStdoutJson:
          result["output"] = stdout_result(launch.stdout_path, config.max_file_bytes);
          break;
        case ResultMode::kFile:
          result["output"] = file_result(config, scratch);
          break;
        case ResultMode::kExitStatus:
          result["output"] = exit_status;
          break;
      }
      result["exit_status"] = exit_status;
      result["stdout_tail"] = stdout_tail;
      result["stderr_tail"] = stderr_tail;
      result["elapsed_s"] = elapsed_s;
      if (!config.store_files.empty()) result["files"] = stored_files(config, scratch);
    } catch (const KernelError& e) {
      throw fail(e.what());
    }
    return result;
  }
};

}  // namespace

void add_exec_kernel(KernelRegistry& registry) { registry.add(std::make_unique<ExecKernel>()); }

}  // namespace simq
