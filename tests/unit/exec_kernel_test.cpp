// Unit tests of the exec kernel: templates, the clean environment, input files, each result
// mode, and every failure with the exact message a user sees, run with real child processes
// (sh, printf, sleep, ngspice) in a temporary scratch root. No sockets, no Redis.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <stop_token>
#include <string>
#include <thread>

#include "kernel.h"
#include "kernel_fixture.h"
#include "simq/sweep.h"
#include "simq/temp_dir.h"

namespace simq {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using ::testing::StartsWith;

// True while `pid` runs: not gone and not a zombie (an orphan waits for init to reap it).
bool running(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  const size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] != 'Z';
}

class ExecKernelTest : public KernelFixture {
 protected:
  // `params` with the scratch root in this test's temporary directory.
  Json with_root(Json params) {
    params["scratch_root"] = root_.path();
    return params;
  }
  Json exec(Json params) { return run("exec", with_root(std::move(params))); }
  std::string exec_error(Json params) { return error_of("exec", with_root(std::move(params))); }
  // The scratch directory of the fixture's job s1:0, attempt 1.
  fs::path scratch() const { return fs::path(root_.path()) / "simq-s1" / "0-1"; }

  static std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

  TempDir root_{"simq-exec-test-"};
};

// ---------------------------------------------------------------------------------------
// Templates and the command line

TEST_F(ExecKernelTest, TemplatesFillArgumentsWithNumericFormats) {
  const Json result = exec({{"command",
                             {"printf", "%s|%s|%s|%s|%s|%s", "{x}", "{x:.3e}", "{n:05d}", "{n:.2f}",
                              "{name:>6}", "{{lit}}"}},
                            {"x", 0.00125},
                            {"n", 42},
                            {"name", "ab"},
                            {"result", "exit_status"}});
  EXPECT_EQ(result.at("stdout_tail"), "0.00125|1.250e-03|00042|42.00|    ab|{lit}");
  EXPECT_EQ(result.at("output"), 0);
  EXPECT_EQ(result.at("exit_status"), 0);
}

TEST_F(ExecKernelTest, IntegralFloatTakesAnIntegerFormat) {
  const Json result =
      exec({{"command", {"printf", "%s", "{n:d}"}}, {"n", 10.0}, {"result", "exit_status"}});
  EXPECT_EQ(result.at("stdout_tail"), "10");
}

TEST_F(ExecKernelTest, JobPlaceholders) {
  const Json result =
      exec({{"command", {"printf", "%s %s %s", "{job_id}", "{attempt}", "{scratch}"}},
            {"result", "exit_status"}});
  EXPECT_EQ(result.at("stdout_tail"), "s1:0 1 " + scratch().string());
}

TEST_F(ExecKernelTest, CommandStringSplitsOnWhitespaceOnly) {
  const Json result = exec({{"command", "printf  %s|%s  a;b\t$(x)"}, {"result", "exit_status"}});
  EXPECT_EQ(result.at("stdout_tail"), "a;b|$(x)");
}

TEST_F(ExecKernelTest, ShellSyntaxInParamsReachesTheProgramLiterally) {
  for (const std::string evil :
       {"$(rm -rf /)", "; echo pwned", "`touch hacked` && echo x > y",
        "'\"quoted\" \\ | * ~ \n newline", "{evil} {{x}}"}) {  // a value is not a template itself
    const Json result = exec({{"command", {"printf", "%s", "{evil}"}},
                              {"evil", evil},
                              {"result", "exit_status"},
                              {"keep_scratch", "always"}});
    EXPECT_EQ(result.at("stdout_tail"), evil);
    std::set<std::string> files;  // no shell ran: no hacked, no y
    for (const auto& entry : fs::directory_iterator(scratch())) {
      files.insert(entry.path().filename().string());
    }
    EXPECT_EQ(files, (std::set<std::string>{"stderr", "stdout"}));
  }
}

TEST_F(ExecKernelTest, EnvironmentIsExactlyTheDocumentedOne) {
  ASSERT_EQ(::setenv("SIMQ_EXEC_TEST_PASSED", "yes", 1), 0);
  ASSERT_EQ(::setenv("SIMQ_EXEC_TEST_SECRET", "no", 1), 0);
  const Json result = exec({{"command", {"env"}},
                            {"env", {{"OMP_NUM_THREADS", "{threads}"}, {"MODE", "fast"}}},
                            {"env_pass", {"SIMQ_EXEC_TEST_PASSED", "SIMQ_EXEC_TEST_UNSET"}},
                            {"threads", 4},
                            {"result", "exit_status"}});
  std::set<std::string> lines;
  std::istringstream out(result.at("stdout_tail").get<std::string>());
  for (std::string line; std::getline(out, line);) lines.insert(line);
  EXPECT_EQ(lines,
            (std::set<std::string>{"PATH=" + std::string(std::getenv("PATH")),
                                   "HOME=" + scratch().string(), "LANG=C.UTF-8", "SIMQ_JOB_ID=s1:0",
                                   "SIMQ_ATTEMPT=1", "SIMQ_SCRATCH=" + scratch().string(),
                                   "OMP_NUM_THREADS=4", "MODE=fast", "SIMQ_EXEC_TEST_PASSED=yes"}));
}

TEST_F(ExecKernelTest, RunsInItsScratchDirectoryWithNothingOnStdin) {
  const Json result =
      exec({{"command", {"sh", "-c", "pwd; cat; echo end"}}, {"result", "exit_status"}});
  EXPECT_EQ(result.at("stdout_tail"), scratch().string() + "\nend\n");
}

TEST_F(ExecKernelTest, InputFileFromInlineTemplate) {
  const Json result =
      exec({{"command", {"cat", "in.nml"}},
            {"input", {{"name", "in.nml"}, {"template", "&run\n x = {x:.2f}\n/\n"}}},
            {"x", 2.5},
            {"result", "exit_status"}});
  EXPECT_EQ(result.at("stdout_tail"), "&run\n x = 2.50\n/\n");
}

TEST_F(ExecKernelTest, InputFileFromTemplateFile) {
  const std::string file = root_.file("net.tmpl");
  std::ofstream(file) << "R1 a b {R}\n.end\n";
  const Json result = exec({{"command", {"cat", "net.cir"}},
                            {"input", {{"name", "net.cir"}, {"template_file", file}}},
                            {"R", 470},
                            {"result", "exit_status"}});
  EXPECT_EQ(result.at("stdout_tail"), "R1 a b 470\n.end\n");
}

// ---------------------------------------------------------------------------------------
// Result modes

TEST_F(ExecKernelTest, StdoutJsonIsTheLastJsonObjectLine) {
  const Json result =
      exec({{"command",
             {"sh", "-c",
              R"(echo starting; echo '{{"a": 1}}'; echo '{{"a": 2, "b": [1]}}'; echo done)"}}});
  EXPECT_EQ(result.at("output"), (Json{{"a", 2}, {"b", {1}}}));
  EXPECT_EQ(result.at("exit_status"), 0);
  EXPECT_GE(result.at("elapsed_s").get<double>(), 0);
  EXPECT_FALSE(result.contains("scratch"));
}

TEST_F(ExecKernelTest, StdoutJsonMayBeOneMultiLineObject) {
  const Json result =
      exec({{"command", {"printf", "{{\n  \"a\": {{\"b\": 1}},\n  \"c\": 2\n}}\n"}}});
  EXPECT_EQ(result.at("output"), (Json{{"a", {{"b", 1}}}, {"c", 2}}));
}

TEST_F(ExecKernelTest, ResultFileJson) {
  const Json result = exec({{"command", {"sh", "-c", R"(echo '{{"energy": -1.5}}' > out.json)"}},
                            {"result", {{"file", "out.json"}}}});
  EXPECT_EQ(result.at("output"), (Json{{"energy", -1.5}}));
}

TEST_F(ExecKernelTest, ResultFileKeyValue) {
  const Json result = exec({{"command", {"printf", "# comment\ntau = 9.99e-04\nn=3\nname = rc\n"}},
                            {"result", {{"file", "stdout"}, {"format", "keyvalue"}}}});
  EXPECT_EQ(result.at("output"), (Json{{"tau", 9.99e-04}, {"n", 3}, {"name", "rc"}}));
}

TEST_F(ExecKernelTest, ResultFileCsvOneRowIsAMap) {
  const Json result = exec({{"command", {"printf", "a,b,c\n1,2.5,\"x, y\"\n"}},
                            {"result", {{"file", "stdout"}, {"format", "csv"}}}});
  EXPECT_EQ(result.at("output"), (Json{{"a", 1}, {"b", 2.5}, {"c", "x, y"}}));
}

TEST_F(ExecKernelTest, ResultFileCsvRows) {
  const Json result = exec({{"command", {"printf", "t,v\n0,0\n1,0.5\n"}},
                            {"result", {{"file", "stdout"}, {"format", "csv"}}}});
  EXPECT_EQ(result.at("output"),
            (Json{{"columns", {"t", "v"}}, {"rows", {Json{0, 0}, Json{1, 0.5}}}}));
}

TEST_F(ExecKernelTest, ExitStatusModeTakesAnyExitCode) {
  const Json result = exec({{"command", {"sh", "-c", "exit 3"}}, {"result", "exit_status"}});
  EXPECT_EQ(result.at("output"), 3);
  EXPECT_EQ(result.at("exit_status"), 3);
}

TEST_F(ExecKernelTest, StoredFilesAsTextOrBase64) {
  const Json result =
      exec({{"command", {"sh", "-c", R"(printf 'line\n' > a.txt; printf '\377\000A' > b.bin)"}},
            {"result", "exit_status"},
            {"store_files", {"a.txt", "b.bin"}}});
  EXPECT_EQ(result.at("files"), (Json{{"a.txt", "line\n"}, {"b.bin", {{"base64", "/wBB"}}}}));
}

TEST_F(ExecKernelTest, StoredFileOverTheLimitFails) {
  EXPECT_EQ(first_line(exec_error({{"command", {"sh", "-c", "head -c 2000 /dev/zero > big"}},
                                   {"result", "exit_status"},
                                   {"store_files", {"big"}},
                                   {"max_file_bytes", 1000}})),
            "stored file big is 2000 bytes, more than max_file_bytes 1000");
}

TEST_F(ExecKernelTest, CopiesFilesToTheResultsDirectory) {
  const std::string dir = root_.file("results") + "/{job_id}";
  const Json result = exec({{"command", {"sh", "-c", "echo 42 > answer.txt"}},
                            {"result", "exit_status"},
                            {"results_dir", dir},
                            {"copy_files", {"answer.txt"}}});
  const std::string copied = root_.file("results") + "/s1:0/answer.txt";
  EXPECT_EQ(result.at("copied"), Json::array({copied}));
  std::ifstream in(copied);
  std::string text;
  std::getline(in, text);
  EXPECT_EQ(text, "42");
}

// ---------------------------------------------------------------------------------------
// Scratch directories

TEST_F(ExecKernelTest, ScratchRemovedOnSuccessKeptOnFailure) {
  exec({{"command", {"true"}}, {"result", "exit_status"}});
  EXPECT_FALSE(fs::exists(scratch()));
  EXPECT_FALSE(fs::exists(scratch().parent_path()));  // the sweep's directory too, once empty

  const std::string error = exec_error({{"command", {"sh", "-c", "echo partial > out; exit 1"}}});
  EXPECT_EQ(first_line(error), "exited 1");
  EXPECT_NE(error.find("\nscratch: " + scratch().string()), std::string::npos) << error;
  EXPECT_TRUE(fs::exists(scratch() / "out"));
  EXPECT_TRUE(fs::exists(scratch() / "stdout"));
  EXPECT_TRUE(fs::exists(scratch() / "stderr"));
}

TEST_F(ExecKernelTest, KeepScratchAlwaysAndNever) {
  const Json kept =
      exec({{"command", {"true"}}, {"result", "exit_status"}, {"keep_scratch", "always"}});
  EXPECT_EQ(kept.at("scratch"), scratch().string());
  EXPECT_TRUE(fs::exists(scratch() / "stdout"));

  const std::string error = exec_error({{"command", {"false"}}, {"keep_scratch", "never"}});
  EXPECT_EQ(error, "exited 1");
  EXPECT_FALSE(fs::exists(scratch()));
}

// ---------------------------------------------------------------------------------------
// Failures: the message first, then the tails, and the kernel serves the next job

TEST_F(ExecKernelTest, NonZeroExit) {
  EXPECT_EQ(exec_error({{"command", {"sh", "-c", "echo working; echo oops >&2; exit 3"}}}),
            "exited 3\nstderr: oops\nstdout: working\nscratch: " + scratch().string());
}

TEST_F(ExecKernelTest, KilledBySignal) {
  EXPECT_EQ(exec_error({{"command", {"sh", "-c", "kill -SEGV $$"}}, {"keep_scratch", "never"}}),
            "killed by signal 11 (SIGSEGV)");
}

TEST_F(ExecKernelTest, TimedOut) {
  const auto start = Clock::now();
  EXPECT_EQ(
      exec_error({{"command", {"sleep", "10"}}, {"timeout_s", 0.3}, {"keep_scratch", "never"}}),
      "timed out after 0.3 s");
  EXPECT_LT(Clock::now() - start, 2s);
}

TEST_F(ExecKernelTest, TimedOutProgramIgnoringSigtermIsKilledAfterTheGrace) {
  const auto start = Clock::now();
  const std::string error =
      exec_error({{"command", {"sh", "-c", "trap '' TERM; echo ready; sleep 10"}},
                  {"timeout_s", 0.3},
                  {"kill_grace_s", 0.5}});
  const auto elapsed = Clock::now() - start;
  EXPECT_EQ(first_line(error), "timed out after 0.3 s");
  EXPECT_NE(error.find("\nstdout: ready\n"), std::string::npos) << error;
  EXPECT_GE(elapsed, 800ms);
  EXPECT_LT(elapsed, 3s);
}

TEST_F(ExecKernelTest, GarbageOnStdout) {
  EXPECT_EQ(first_line(exec_error({{"command", {"echo", "hello, not json"}}})),
            R"(stdout is not JSON: "hello, not json\n")");
  EXPECT_EQ(first_line(exec_error({{"command", {"true"}}})), R"(stdout is not JSON: "")");
  EXPECT_EQ(first_line(exec_error({{"command", {"echo", "[1, 2]"}}})),
            R"(stdout is not JSON: "[1, 2]\n")");
}

TEST_F(ExecKernelTest, ResultFileMissingOrBad) {
  EXPECT_EQ(first_line(exec_error({{"command", {"true"}}, {"result", {{"file", "out.json"}}}})),
            "result file out.json missing");
  EXPECT_EQ(first_line(exec_error({{"command", {"sh", "-c", "echo '{{oops' > out.json"}},
                                   {"result", {{"file", "out.json"}}}})),
            R"(result file out.json is not JSON: "{oops\n")");
  EXPECT_EQ(first_line(exec_error({{"command", {"sh", "-c", "echo 'tau 1' > out.txt"}},
                                   {"result", {{"file", "out.txt"}, {"format", "keyvalue"}}}})),
            R"(result file out.txt: line 1 is not `key = value`: "tau 1")");
  EXPECT_EQ(first_line(exec_error({{"command", {"printf", "a,b\n1\n"}},
                                   {"result", {{"file", "stdout"}, {"format", "csv"}}}})),
            "result file stdout: line 2 has 1 fields, the header 2");
}

TEST_F(ExecKernelTest, HugeOutputKeepsOnlyTheTail) {
  rusage before{};
  ::getrusage(RUSAGE_SELF, &before);
  const Json result = exec(
      {{"command", {"sh", "-c", R"(head -c 50000000 /dev/zero; echo; echo '{{"ok": true}}')"}}});
  EXPECT_EQ(result.at("output"), (Json{{"ok", true}}));
  EXPECT_EQ(result.at("stdout_tail").get<std::string>().size(), 4096u);
  const std::string error =
      exec_error({{"command", {"sh", "-c", "head -c 50000000 /dev/zero; exit 2"}},
                  {"tail_bytes", 100},
                  {"keep_scratch", "never"}});
  std::string zeros;  // NUL bytes are shown as \0: a C string would end at the first
  for (int i = 0; i < 100; ++i) zeros += "\\0";
  EXPECT_EQ(error, "exited 2\nstdout: " + zeros);
  rusage after{};
  ::getrusage(RUSAGE_SELF, &after);
  EXPECT_LT(after.ru_maxrss - before.ru_maxrss, 20 * 1024);  // KiB: far below 50 MB
}

TEST_F(ExecKernelTest, MemoryLimit) {
  ASSERT_EQ(::access("/usr/bin/python3", X_OK), 0)
      << "no /usr/bin/python3 (scripts/install-deps.sh installs it)";
  const std::string error =
      exec_error({{"command", {"/usr/bin/python3", "-c", "x = bytearray(400 * 1024 * 1024)"}},
                  {"memory_mb", 100},
                  {"keep_scratch", "never"}});
  EXPECT_EQ(first_line(error), "exited 1");
  EXPECT_NE(error.find("MemoryError"), std::string::npos) << error;
  // The same program within its limit.
  exec({{"command", {"/usr/bin/python3", "-c", "x = bytearray(10 * 1024 * 1024)"}},
        {"memory_mb", 200},
        {"result", "exit_status"}});
}

TEST_F(ExecKernelTest, StopKillsTheProgramAndCancels) {
  std::stop_source stop;
  std::jthread stopper([&] {
    std::this_thread::sleep_for(300ms);
    stop.request_stop();
  });
  const auto start = Clock::now();
  EXPECT_THROW(
      kernel("exec").run(with_root({{"command", {"sh", "-c", "echo $$ > pid; exec sleep 10"}},
                                    {"kill_grace_s", 1}}),
                         KernelContext{JobRef{"s1", 0, 1}, stop.get_token()}),
      KernelCancelled);
  EXPECT_LT(Clock::now() - start, 2s);
  std::ifstream in(scratch() / "pid");  // kept: a cancelled job did not succeed
  pid_t pid = 0;
  ASSERT_TRUE(in >> pid);
  EXPECT_FALSE(running(pid));
}

TEST_F(ExecKernelTest, KeepsServingAfterFailures) {
  exec_error({{"command", {"sh", "-c", "kill -SEGV $$"}}});
  exec_error({{"command", {"sleep", "5"}}, {"timeout_s", 0.1}});
  exec_error({{"command", {"sh", "-c", "exit 3"}}});
  EXPECT_EQ(exec({{"command", {"echo", R"({{"fine": 1}})"}}}).at("output"), (Json{{"fine", 1}}));
}

TEST_F(ExecKernelTest, LeftoverProcessesOfTheJobAreKilled) {
  exec({{"command", {"sh", "-c", "sleep 30 & echo $! > bg; echo '{{}}'"}},
        {"keep_scratch", "always"}});
  std::ifstream in(scratch() / "bg");
  pid_t pid = 0;
  ASSERT_TRUE(in >> pid);
  // Killed with the group when the shell ended; the kill is sent before run() returns.
  const auto deadline = Clock::now() + 1s;  // only for the kernel to deliver it
  while (running(pid) && Clock::now() < deadline) std::this_thread::sleep_for(1ms);
  EXPECT_FALSE(running(pid));
}

// ---------------------------------------------------------------------------------------
// Bad params: refused before anything runs, naming the param or the template

TEST_F(ExecKernelTest, BadParams) {
  EXPECT_EQ(exec_error(Json::object()), "param 'command' is missing");
  EXPECT_EQ(exec_error({{"command", 3}}),
            "param 'command': expected an array of strings or a string, got integer 3");
  EXPECT_EQ(exec_error({{"command", Json::array()}}),
            "param 'command': expected a program to run, got array []");
  EXPECT_EQ(exec_error({{"command", {"echo", true}}}),
            "param 'command[1]': expected a string, got boolean true");
  EXPECT_EQ(exec_error({{"command", {"echo", "{R}"}}}),
            R"(command[1]: unknown param 'R' in template "{R}")");
  EXPECT_THAT(exec_error({{"command", {"echo", "{R:.3q}"}}, {"R", 1.5}}),
              StartsWith(R"(command[1]: param 'R' (float 1.5): bad format ".3q": )"));
  EXPECT_EQ(exec_error({{"command", {"echo", "{n:d}"}}, {"n", 2.5}}),
            R"(command[1]: param 'n' (float 2.5): bad format "d": needs an integer)");
  EXPECT_EQ(exec_error({{"command", {"echo", "{R"}}}),
            R"(command[1]: unmatched '{' in template "{R" (write '{{' for a brace))");
  EXPECT_EQ(exec_error({{"command", {"echo", "a}"}}}),
            R"(command[1]: single '}' in template "a}" (write '}}' for a brace))");
  EXPECT_EQ(exec_error({{"command", {"echo"}}, {"env", {{"X", "{nope}"}}}}),
            R"(env.X: unknown param 'nope' in template "{nope}")");
  EXPECT_EQ(exec_error({{"command", {"echo"}}, {"env", {{"A=B", "x"}}}}),
            R"(param 'env': "A=B" is not a variable name)");
  EXPECT_EQ(exec_error({{"command", {"no-such-program-xyz"}}}),
            R"(command "no-such-program-xyz" not found on PATH ()" +
                std::string(std::getenv("PATH")) + ")");
  EXPECT_EQ(exec_error({{"command", {"./missing"}}, {"keep_scratch", "never"}}),
            R"(cannot run "./missing": No such file or directory)");
  EXPECT_EQ(
      exec_error({{"command", {"echo"}}, {"result", "stdout"}}),
      R"(param 'result': expected "stdout_json", "exit_status" or a table {file, format}, got string "stdout")");
  EXPECT_EQ(
      exec_error({{"command", {"echo"}}, {"result", {{"file", "../x"}}}}),
      R"(param 'result.file': expected a file name inside the scratch directory, got "../x")");
  EXPECT_EQ(exec_error({{"command", {"echo"}}, {"timeout_s", -1}}),
            "param 'timeout_s': expected a number >= 0, got -1");
  EXPECT_EQ(exec_error({{"command", {"echo"}}, {"memory_mb", 0}}),
            "param 'memory_mb': expected 1 to 1073741824, got 0");
  EXPECT_EQ(
      exec_error({{"command", {"echo"}}, {"keep_scratch", "sometimes"}}),
      R"(param 'keep_scratch': expected "on_failure", "always" or "never", got string "sometimes")");
  EXPECT_EQ(exec_error({{"command", {"echo"}}, {"input", {{"template", "x"}}}}),
            "param 'input.name' is missing");
  EXPECT_EQ(exec_error({{"command", {"echo"}}, {"input", {{"name", "x"}}}}),
            "param 'input': expected exactly one of template and template_file");
  EXPECT_FALSE(fs::exists(fs::path(root_.path()) / "simq-s1" / "0-1" / "stdout"));
}

// ---------------------------------------------------------------------------------------
// A real simulator: examples/rc_ngspice.toml, each job run in-process

TEST_F(ExecKernelTest, NgspiceRcSweepMeasuresTheTimeConstant) {
  ASSERT_EQ(std::system("command -v ngspice > /dev/null 2>&1"), 0)
      << "ngspice is not installed (scripts/install-deps.sh installs it)";
  const SweepSpec sweep =
      load_sweep_file(std::string(SIMQ_SOURCE_DIR) + "/examples/rc_ngspice.toml");
  ASSERT_EQ(sweep.kernel, "exec");
  ASSERT_EQ(sweep.total(), 9u);
  for (uint64_t i = 0; i < sweep.total(); ++i) {
    const Json params = with_root(sweep.params_at(i));
    const Json result = kernel("exec").run(params, KernelContext{JobRef{"rc", i, 1}, {}});
    const double expected = params.at("R").get<double>() * params.at("C").get<double>();
    const double tau = result.at("output").at("tau").get<double>();
    EXPECT_NEAR(tau, expected, 0.02 * expected) << "job " << i << ": " << params.dump();
  }
}

}  // namespace
}  // namespace simq
