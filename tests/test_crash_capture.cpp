// Native crash capture, tested with real processes and real signals: the crash
// worker dies in a function with a distinctive name, and the error file it leaves
// must be readable by our ProcessFailure and by PyTorch's, and name that function.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <csignal>
#include <elastic/errors.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/sanitizers.hpp"
#include "support/skip.hpp"
#include "support/subprocess.hpp"

using elastic::testing::RunOptions;
using elastic::testing::RunResult;
using elastic::testing::TempDir;

namespace {

const std::string crash_worker = ELASTIC_TEST_CRASH_WORKER;

RunResult run_worker(const std::vector<std::string>& args, const std::string& error_file,
                     std::map<std::string, std::string> env = {}) {
  RunOptions options;
  if (error_file.empty())
    options.unset_env.push_back("TORCHELASTIC_ERROR_FILE");
  else
    env["TORCHELASTIC_ERROR_FILE"] = error_file;
  options.set_env = std::move(env);
  options.unset_env.push_back("ELASTIC_CRASH_SIGNALS");
  options.unset_env.push_back("ELASTIC_THROW_TRACES");
  std::vector<std::string> argv{crash_worker};
  argv.insert(argv.end(), args.begin(), args.end());
  RunResult result = elastic::testing::run(argv, options);
  INFO("stderr of crash_worker: " << result.err);
  REQUIRE_FALSE(result.timed_out);
  return result;
}

std::string callstack_of(const elastic::ProcessFailure& failure) {
  REQUIRE(failure.message.is_object());
  return failure.message.at("extraInfo").at("py_callstack").get<std::string>();
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

mode_t mode_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::lstat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

// Throw-site traces are compiled out of some builds (AddressSanitizer's, or
// ELASTIC_THROW_TRACES=OFF); the records are still written, without those frames.
constexpr bool throw_traces_built = ELASTIC_THROW_TRACES != 0;

// The line of the first frame (after the headline).
std::string first_frame(const std::string& callstack) {
  auto start = callstack.find("\n#0 ");
  REQUIRE(start != std::string::npos);
  return first_line(callstack.substr(start + 1));
}

// Files left in `dir` other than `keep`: a crash must leave no temporary behind.
std::vector<std::string> other_files(const TempDir& dir, const std::string& keep) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path()))
    if (entry.path().filename() != keep) names.push_back(entry.path().filename().string());
  return names;
}

struct SignalCase {
  const char* mode;
  int signo;
  const char* function;  // the noinline function where it happens
  const char* headline_start;
};

}  // namespace

TEST_CASE("each fatal signal leaves an error file naming the crashing function") {
  const SignalCase cases[] = {
      {"segv", SIGSEGV, "crash_here_on_purpose", "Fatal signal 11 (SIGSEGV) at address 0x0 (SEGV_MAPERR)"},
      {"abort", SIGABRT, "abort_here_on_purpose", "Fatal signal 6 (SIGABRT)"},
      {"fpe", SIGFPE, "divide_by_zero_on_purpose", "Fatal signal 8 (SIGFPE) at address 0x"},
      {"ill", SIGILL, "illegal_instruction_on_purpose", "Fatal signal 4 (SIGILL)"},
      {"trap", SIGTRAP, "trap_here_on_purpose", "Fatal signal 5 (SIGTRAP)"},
      {"bus", SIGBUS, "bus_error_on_purpose", "Fatal signal 7 (SIGBUS) at address 0x"},
      {"segv_internal", SIGSEGV, "crash_in_internal_function_on_purpose", "Fatal signal 11 (SIGSEGV) at address 0x0"},
      {"stack_overflow", SIGSEGV, "recurse_without_end_on_purpose", "Fatal signal 11 (SIGSEGV) at address 0x"},
      {"thread_stack_overflow", SIGSEGV, "recurse_without_end_on_purpose", "Fatal signal 11 (SIGSEGV) at address 0x"},
  };
  for (const SignalCase& c : cases) {
    DYNAMIC_SECTION(c.mode) {
      TempDir dir;
      const std::string file = dir.file("error.json");
      RunResult result = run_worker({c.mode}, file);
      INFO(result.err);
      CHECK(result.exitcode == -c.signo);

      elastic::ProcessFailure failure(0, result.pid, result.exitcode, file);
      CHECK(failure.error_file == file);
      const std::string callstack = callstack_of(failure);
      INFO(callstack);
      CHECK(first_line(callstack).rfind(c.headline_start, 0) == 0);
      CHECK(failure.message.at("message").get<std::string>() == first_line(callstack));
      CHECK(callstack.find(c.function) != std::string::npos);
      CHECK(failure.message.at("extraInfo").at("signal") == elastic::signal_name(c.signo));
      CHECK(failure.message.at("extraInfo").at("thread_id").is_string());
      CHECK(failure.timestamp > 0);
      // Synchronous faults start the trace at the faulting function itself: the
      // handler's frames and the signal trampoline are left out.
      if (c.signo != SIGABRT) CHECK(first_frame(callstack).find(c.function) != std::string::npos);
      CHECK(callstack.find("crash_signal_handler") == std::string::npos);
      CHECK(other_files(dir, "error.json").empty());
      CHECK((first_line(callstack).find(": stack overflow") != std::string::npos) ==
            (std::string(c.mode).find("stack_overflow") != std::string::npos));
    }
  }
}

TEST_CASE("PyTorch's ProcessFailure reads the crash records") {
  TempDir dir;
  const std::vector<std::pair<std::string, std::string>> modes = {
      {"segv", "crash_here_on_purpose"},
      {"abort", "abort_here_on_purpose"},
      {"stack_overflow", "recurse_without_end_on_purpose"},
      {"thread_exception", "throw_from_thread_on_purpose"},
  };
  std::string script =
      "import json, sys\n"
      "from torch.distributed.elastic.multiprocessing.errors import ProcessFailure\n"
      "args = sys.argv[1:]\n"
      "for i in range(0, len(args), 3):\n"
      "    text = open(args[i], encoding='utf-8').read()\n"
      "    assert text == json.dumps(json.loads(text)), 'not the bytes json.dump writes: ' + text\n"
      "    f = ProcessFailure(local_rank=0, pid=1, exitcode=int(args[i + 1]), error_file=args[i])\n"
      "    stack = f.message['extraInfo']['py_callstack']\n"
      "    assert args[i + 2] in stack, stack\n"
      "    assert f.timestamp > 0\n"
      "    print('read', args[i + 2], f.message['message'])\n";
  std::vector<std::string> argv{elastic::testing::system_python(), "-c", script};
  for (const auto& [mode, function] : modes) {
    const std::string file = dir.file(mode + ".json");
    RunResult worker = run_worker({mode}, file);
    CHECK(worker.exitcode < 0);
    argv.insert(argv.end(), {file, std::to_string(worker.exitcode), function});
  }
  RunResult python = elastic::testing::run(argv);
  INFO(python.out << python.err);
  CHECK(python.exitcode == 0);
  for (const auto& mode : modes) CHECK(python.out.find("read " + mode.second) != std::string::npos);
}

TEST_CASE("an uncaught exception on a std::thread is recorded with its throw site, then aborts") {
  TempDir dir;
  const std::string file = dir.file("error.json");
  RunResult result = run_worker({"thread_exception"}, file);
  CHECK(result.exitcode == -SIGABRT);
  // libstdc++'s own terminate handler still runs after ours.
  CHECK(result.err.find("terminate called after throwing an instance of") != std::string::npos);
  elastic::ProcessFailure failure(0, result.pid, result.exitcode, file);
  const std::string callstack = callstack_of(failure);
  INFO(callstack);
  CHECK(first_line(callstack) == "crash_worker::DistinctiveError: thrown on a worker thread");
  CHECK(failure.message.at("message") == "crash_worker::DistinctiveError: thrown on a worker thread");
  if (throw_traces_built) CHECK(first_frame(callstack).find("throw_from_thread_on_purpose") != std::string::npos);
}

TEST_CASE("a terminate handler installed before initialize still runs after the record") {
  TempDir dir;
  const std::string file = dir.file("error.json");
  RunResult result = run_worker({"previous_terminate", "thread_exception"}, file);
  CHECK(result.exitcode == -SIGABRT);
  CHECK(result.err.find("previous terminate handler ran") != std::string::npos);
  elastic::ProcessFailure failure(0, result.pid, result.exitcode, file);
  CHECK(callstack_of(failure).find("throw_from_thread_on_purpose") != std::string::npos);
}

TEST_CASE("std::terminate from a noexcept violation is recorded") {
  TempDir dir;
  const std::string file = dir.file("error.json");
  RunResult result = run_worker({"noexcept"}, file);
  CHECK(result.exitcode == -SIGABRT);
  elastic::ProcessFailure failure(0, result.pid, result.exitcode, file);
  const std::string callstack = callstack_of(failure);
  INFO(callstack);
  CHECK(first_line(callstack) == "crash_worker::DistinctiveError: thrown deep inside");
  CHECK(callstack.find("noexcept_violation_on_purpose") != std::string::npos);
  // The SIGABRT that follows must not replace the terminate record.
  CHECK(callstack.find("Fatal signal") == std::string::npos);
}

TEST_CASE("an exception escaping into record carries the stack of its throw site") {
  TempDir dir;
  const std::string file = dir.file("error.json");
  RunResult result = run_worker({"throw"}, file);
  CHECK(result.exitcode == 1);
  elastic::ProcessFailure failure(0, result.pid, result.exitcode, file);
  const std::string callstack = callstack_of(failure);
  INFO(callstack);
  CHECK(first_line(callstack) == "crash_worker::DistinctiveError: thrown deep inside");
  // Thrown in throw_here_on_purpose, through call_through: frames that had already
  // returned when record() caught it.
  if (!throw_traces_built) return;
  CHECK(first_frame(callstack).find("throw_here_on_purpose") != std::string::npos);
  CHECK(callstack.find("call_through") != std::string::npos);
}

TEST_CASE("exceptions thrown inside the C++ library are traced too") {
  TempDir dir;
  const std::string file = dir.file("error.json");
  RunResult result = run_worker({"library_throw"}, file);
  CHECK(result.exitcode == 1);
  elastic::ProcessFailure failure(0, result.pid, result.exitcode, file);
  const std::string callstack = callstack_of(failure);
  INFO(callstack);
  CHECK(first_line(callstack).rfind("std::out_of_range: ", 0) == 0);
  if (throw_traces_built) CHECK(callstack.find("out_of_range_in_library_on_purpose") != std::string::npos);
}

TEST_CASE("ELASTIC_THROW_TRACES=0 turns throw-site traces off") {
  TempDir dir;
  const std::string file = dir.file("error.json");
  RunResult result = run_worker({"throw"}, file, {{"ELASTIC_THROW_TRACES", "0"}});
  CHECK(result.exitcode == 1);
  elastic::ProcessFailure failure(0, result.pid, result.exitcode, file);
  CHECK(callstack_of(failure) == "crash_worker::DistinctiveError: thrown deep inside");
}

TEST_CASE("units built with and without ELASTIC_THROW_TRACES link into one traced program, in either order") {
  if (!throw_traces_built) {
    WARN("skipped: throw-site traces are compiled out of this build (AddressSanitizer)");
    return;
  }
  for (const char* program : {ELASTIC_TEST_MIXED_TRACES_OFF_ON, ELASTIC_TEST_MIXED_TRACES_ON_OFF}) {
    INFO(program);
    TempDir dir;
    const std::string file = dir.file("error.json");
    RunOptions options;
    options.set_env = {{"TORCHELASTIC_ERROR_FILE", file}};
    options.unset_env = {"ELASTIC_CRASH_SIGNALS", "ELASTIC_THROW_TRACES"};
    RunResult result = elastic::testing::run({program}, options);
    INFO(result.err);
    REQUIRE_FALSE(result.timed_out);
    CHECK(result.exitcode == 1);
    elastic::ProcessFailure failure(0, result.pid, result.exitcode, file);
    const std::string callstack = callstack_of(failure);
    INFO(callstack);
    CHECK(first_line(callstack) == "std::runtime_error: thrown in the off unit");
    CHECK(callstack.find("throw_in_unit_without_traces") != std::string::npos);
  }
}

TEST_CASE("two threads faulting together leave one complete report") {
  TempDir dir;
  const std::string file = dir.file("error.json");
  RunResult result = run_worker({"two_threads"}, file);
  CHECK(result.exitcode == -SIGSEGV);
  elastic::ProcessFailure failure(0, result.pid, result.exitcode, file);
  const std::string callstack = callstack_of(failure);
  INFO(callstack);
  CHECK(first_line(callstack) == "Fatal signal 11 (SIGSEGV) at address 0x0 (SEGV_MAPERR)");
  CHECK(first_frame(callstack).find("crash_here_on_purpose") != std::string::npos);
  std::size_t reports = 0;
  for (auto at = result.err.find("Fatal signal"); at != std::string::npos; at = result.err.find("Fatal signal", at + 1))
    ++reports;
  CHECK(reports == 1);
  CHECK(other_files(dir, "error.json").empty());
}

TEST_CASE("a SIGSEGV handler installed before initialize still runs after the report") {
  TempDir dir;
  const std::string file = dir.file("error.json");
  RunResult result = run_worker({"previous_handler", "segv"}, file);
  CHECK(result.exitcode == -SIGSEGV);
  // It sees the original fault, not a signal sent by the handler.
  CHECK(result.err.find("previous SIGSEGV handler ran (SEGV_MAPERR)") != std::string::npos);
  elastic::ProcessFailure failure(0, result.pid, result.exitcode, file);
  CHECK(callstack_of(failure).find("crash_here_on_purpose") != std::string::npos);
}

TEST_CASE("ELASTIC_CRASH_SIGNALS=off installs no signal handler") {
  TempDir dir;
  const std::string file = dir.file("error.json");
  RunResult result = run_worker({"segv"}, file, {{"ELASTIC_CRASH_SIGNALS", "off"}});
  CHECK(result.exitcode == -SIGSEGV);
  CHECK_FALSE(std::filesystem::exists(file));
  CHECK(result.err.find("Fatal signal") == std::string::npos);
}

TEST_CASE("ELASTIC_CRASH_SIGNALS picks the signals handled") {
  TempDir dir;
  const std::string file = dir.file("error.json");
  SECTION("a signal not listed is not handled") {
    RunResult result = run_worker({"segv"}, file, {{"ELASTIC_CRASH_SIGNALS", "SIGABRT,FPE"}});
    CHECK(result.exitcode == -SIGSEGV);
    CHECK_FALSE(std::filesystem::exists(file));
  }
  SECTION("a listed one is") {
    RunResult result = run_worker({"fpe"}, file, {{"ELASTIC_CRASH_SIGNALS", "SIGABRT,FPE"}});
    CHECK(result.exitcode == -SIGFPE);
    elastic::ProcessFailure failure(0, result.pid, result.exitcode, file);
    CHECK(callstack_of(failure).find("divide_by_zero_on_purpose") != std::string::npos);
  }
}

TEST_CASE("without TORCHELASTIC_ERROR_FILE the trace goes to stderr only") {
  TempDir dir;
  RunOptions options;
  options.unset_env = {"TORCHELASTIC_ERROR_FILE", "ELASTIC_CRASH_SIGNALS"};
  options.cwd = dir.path().string();
  RunResult result = elastic::testing::run({crash_worker, "segv"}, options);
  CHECK(result.exitcode == -SIGSEGV);
  CHECK(result.err.find("Fatal signal 11 (SIGSEGV) at address 0x0") != std::string::npos);
  CHECK(result.err.find("crash_here_on_purpose") != std::string::npos);
  CHECK(std::filesystem::is_empty(dir.path()));
}

TEST_CASE("the error file's directory is created when missing, with the exception path's modes") {
  TempDir dir;
  const std::string file = dir.file("attempt_0/3/error.json");
  const mode_t old_umask = ::umask(0);  // the child inherits it: the modes are ours alone
  RunResult result = run_worker({"segv"}, file);
  ::umask(old_umask);
  CHECK(result.exitcode == -SIGSEGV);
  elastic::ProcessFailure failure(0, result.pid, result.exitcode, file);
  CHECK(callstack_of(failure).find("crash_here_on_purpose") != std::string::npos);
  CHECK(mode_of(dir.file("attempt_0")) == 0700);
  CHECK(mode_of(dir.file("attempt_0/3")) == 0700);
  CHECK(mode_of(file) == 0600);
}

TEST_CASE("files planted at the crash writer's old temporary names do not stop the report") {
  TempDir dir;
  const std::string file = dir.file("error.json");
  int go[2];
  REQUIRE(::pipe(go) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(go[1]);
    ::signal(SIGSEGV, SIG_DFL);  // as a new process: no test framework's handler to chain to
    elastic::set_crash_report_path(file);
    elastic::install_crash_handlers();
    char byte = 0;
    while (::read(go[0], &byte, 1) < 0 && errno == EINTR) {
    }
    ::raise(SIGSEGV);
    ::_exit(3);
  }
  ::close(go[0]);
  // The names a writer that numbered its temporaries by pid and thread would use,
  // planted before it crashes (its main thread's id is its pid).
  std::vector<std::string> planted;
  for (const char* middle : {".tmp.", ".crash."}) {
    for (int n = 0; n < 4; ++n) {
      const std::string name = dir.file(".error.json" + std::string(middle) + std::to_string(child) + "." +
                                        std::to_string(n == 0 ? child : n - 1));
      elastic::testing::write_file(name, "planted");
      planted.push_back(name);
    }
  }
  REQUIRE(::write(go[1], "x", 1) == 1);
  ::close(go[1]);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGSEGV);
  elastic::ProcessFailure failure(0, child, -SIGSEGV, file);
  CHECK(first_line(callstack_of(failure)).rfind("Fatal signal 11 (SIGSEGV)", 0) == 0);
  for (const auto& name : planted) CHECK(elastic::testing::read_file(name) == "planted");
  CHECK(other_files(dir, "error.json").size() == planted.size());
}

TEST_CASE("a parent's summary of a crashed child shows where it died") {
  TempDir dir;
  const std::string file = dir.file("error.json");
  RunResult result = run_worker({"segv"}, file);
  REQUIRE(result.exitcode == -SIGSEGV);
  std::map<int, elastic::ProcessFailure> failures;
  failures.emplace(1, elastic::ProcessFailure(1, result.pid, result.exitcode, file));
  const std::string summary = elastic::ChildFailedError("crash_worker", std::move(failures)).format_msg();
  INFO(summary);
  CHECK(summary.find("exitcode  : -11") != std::string::npos);
  CHECK(summary.find("traceback : Fatal signal 11 (SIGSEGV) at address 0x0 (SEGV_MAPERR)\n  #0 ") != std::string::npos);
  CHECK(summary.find("crash_here_on_purpose") != std::string::npos);
}

TEST_CASE("torchrun's summary of a crashed worker shows where it died") {
  // Debian's torchrun with its Python 3.11 start-up fix (shared with the conformance
  // suite); ELASTIC_TORCHRUN names another torchrun to use instead.
  std::vector<std::string> torchrun = {elastic::testing::system_python(),
                                       std::string(ELASTIC_SOURCE_DIR) + "/tests/conformance/torchrun.py"};
  if (const char* configured = std::getenv("ELASTIC_TORCHRUN")) torchrun = {configured};

  TempDir dir;
  RunOptions options;
  options.unset_env = {"TORCHELASTIC_ERROR_FILE", "ELASTIC_CRASH_SIGNALS", "ELASTIC_THROW_TRACES"};
  options.timeout = std::chrono::milliseconds(100000);
  // --standalone: a free port of its own, so concurrent runs never collide on 29500.
  std::vector<std::string> argv = torchrun;
  for (std::string arg : {"--standalone", "--nproc_per_node=1", "--no_python", "--max_restarts=0"}) argv.push_back(arg);
  argv.push_back("--log_dir=" + dir.path().string());
  argv.push_back(crash_worker);
  argv.push_back("segv");
  RunResult result = elastic::testing::run(argv, options);
  INFO(result.out << result.err);
  REQUIRE_FALSE(result.timed_out);
  CHECK(result.exitcode == 1);
  CHECK(result.err.find("Root Cause (first observed failure):") != std::string::npos);
  CHECK(result.err.find("exitcode  : -11") != std::string::npos);
  CHECK(result.err.find("traceback : Fatal signal 11 (SIGSEGV) at address 0x0 (SEGV_MAPERR)") != std::string::npos);
  CHECK(result.err.find("crash_here_on_purpose") != std::string::npos);
  // The record carries file:line, so torchrun, which knows nothing of it, shows it.
  CHECK(result.err.find("crash_worker.cpp:") != std::string::npos);
}

#ifdef ELASTIC_TEST_ELASTIC_RUN
TEST_CASE("elastic-run's summary of a crashed worker shows where it died") {
  TempDir dir;
  RunOptions options;
  options.unset_env = {"TORCHELASTIC_ERROR_FILE", "ELASTIC_CRASH_SIGNALS", "ELASTIC_THROW_TRACES"};
  RunResult result =
      elastic::testing::run({ELASTIC_TEST_ELASTIC_RUN, "--standalone", "--nproc_per_node=1", "--no_python",
                             "--max_restarts=0", "--log_dir=" + dir.path().string(), crash_worker, "segv"},
                            options);
  const std::string output = result.out + result.err;
  INFO(output);
  REQUIRE_FALSE(result.timed_out);
  CHECK(result.exitcode != 0);
  CHECK(output.find("Root Cause (first observed failure):") != std::string::npos);
  CHECK(output.find("exitcode  : -11") != std::string::npos);
  CHECK(output.find("traceback : Fatal signal 11 (SIGSEGV) at address 0x0 (SEGV_MAPERR)") != std::string::npos);
  CHECK(output.find("crash_here_on_purpose") != std::string::npos);
}
#endif

TEST_CASE("signal-safe JSON strings match Python's json.dumps") {
  const std::string samples[] = {
      std::string("plain"),
      std::string("quote \" backslash \\ slash /"),
      std::string("controls \b\f\n\r\t \x01\x1f \x7f"),
      std::string("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"),
      std::string("invalid \xff \xc3 end"),
      std::string("nul \0 inside", 12),
  };
  for (const std::string& sample : samples) {
    char storage[512];
    elastic::errors::detail::FixedText text(storage, sizeof(storage));
    text.append_json_string(sample.data(), sample.size());
    std::string expected;
    elastic::errors::detail::append_python_string(expected, sample);
    CHECK(std::string(text.c_str(), text.size()) == expected);
  }
}

__attribute__((noinline)) std::vector<elastic::StackFrame> stack_seen_from_distinctive_caller() {
  std::vector<elastic::StackFrame> frames = elastic::current_stack();
  std::atomic_signal_fence(std::memory_order_seq_cst);  // no tail call: this frame stays
  return frames;
}

TEST_CASE("current_stack starts at its caller") {
  const auto frames = stack_seen_from_distinctive_caller();
  REQUIRE(frames.size() > 1);
  const std::string text = elastic::format_stack(frames);
  INFO(text);
  CHECK(first_line(text).find("#0 0x") == 0);
  CHECK(first_line(text).find("stack_seen_from_distinctive_caller") != std::string::npos);
}

TEST_CASE("std::terminate without an exception is recorded") {
  TempDir dir;
  const std::string file = dir.file("error.json");
  RunResult result = run_worker({"terminate"}, file);
  CHECK(result.exitcode == -SIGABRT);
  elastic::ProcessFailure failure(0, result.pid, result.exitcode, file);
  const std::string callstack = callstack_of(failure);
  INFO(callstack);
  CHECK(first_line(callstack) == "std::terminate called without an active exception");
  CHECK(callstack.find("terminate_here_on_purpose") != std::string::npos);
}

TEST_CASE("a full FixedText truncates instead of overflowing") {
  char storage[8];
  elastic::errors::detail::FixedText text(storage, sizeof(storage));
  text.append("0123456789");
  CHECK(std::string(text.c_str()) == "0123456");
  CHECK(text.truncated());
}

namespace {
// What the error file says ended the process: a signal's name, or the exception's headline.
std::string recorded_cause(const RunResult& result, const std::string& file) {
  elastic::ProcessFailure failure(0, result.pid, result.exitcode, file);
  const std::string headline = first_line(callstack_of(failure));
  if (headline.rfind("Fatal signal 11 (SIGSEGV)", 0) == 0) return "SIGSEGV";
  if (headline.rfind("crash_worker::DistinctiveError", 0) == 0) return "exception";
  return headline;
}
}  // namespace

TEST_CASE("a crash that comes first is recorded and ends the process, not a later exception") {
  TempDir dir;
  const std::string file = dir.file("error.json");
  RunResult result = run_worker({"slow_previous_handler", "throw_after_crash"}, file);
  CHECK(result.exitcode == -SIGSEGV);
  CHECK(recorded_cause(result, file) == "SIGSEGV");
  CHECK(callstack_of(elastic::ProcessFailure(0, result.pid, result.exitcode, file)).find("crash_here_on_purpose") !=
        std::string::npos);
  CHECK(other_files(dir, "error.json").empty());
}

TEST_CASE("a crashing thread racing a throwing one: the file describes what ended the process") {
  int crashed = 0, threw = 0;
  for (int run = 0; run < 48; ++run) {
    TempDir dir;
    const std::string file = dir.file("error.json");
    RunResult result = run_worker({"crash_races_throw"}, file);
    INFO("run " << run << ", exit code " << result.exitcode);
    REQUIRE((result.exitcode == -SIGSEGV || result.exitcode == 1));
    const std::string cause = recorded_cause(result, file);
    CHECK(cause == (result.exitcode == -SIGSEGV ? "SIGSEGV" : "exception"));
    (result.exitcode == -SIGSEGV ? crashed : threw) += 1;
  }
  INFO("died by SIGSEGV " << crashed << " times, by the exception " << threw << " times");
  SUCCEED();
}

TEST_CASE("a thread crashing while the process exits after an exception record: the exception ended it") {
  TempDir dir;
  const std::string file = dir.file("error.json");
  RunResult result = run_worker({"crash_during_exit_after_throw"}, file);
  INFO(result.err);
  CHECK(result.exitcode == 1);
  CHECK(recorded_cause(result, file) == "exception");
  CHECK(other_files(dir, "error.json").empty());
}

TEST_CASE("initialize never ends a process that can map no more memory and a crash is still reported") {
  TempDir dir;
  const std::string file = dir.file("error.json");
  SECTION("initialize returns, with one warning at most") {
    // A sanitizer's allocator needs address space of its own that the limit denies.
    if (elastic::testing::under_sanitizer) return;
    RunResult result = run_worker({"limited_memory", "ok"}, file);
    CHECK(result.exitcode == 0);
    CHECK(result.out == "initialized\n");
    std::size_t warnings = 0;
    for (auto at = result.err.find("WARNING"); at != std::string::npos; at = result.err.find("WARNING", at + 1))
      ++warnings;
    CHECK(warnings <= 1);
  }
  SECTION("a crash then leaves a record, its frames by module and offset") {
    RunResult result = run_worker({"limited_memory", "segv"}, file);
    CHECK(result.exitcode == -SIGSEGV);
    const std::string callstack = callstack_of(elastic::ProcessFailure(0, result.pid, result.exitcode, file));
    INFO(callstack);
    CHECK(first_line(callstack) == "Fatal signal 11 (SIGSEGV) at address 0x0 (SEGV_MAPERR)");
    CHECK(first_frame(callstack).find("crash_worker+0x") != std::string::npos);
  }
}

TEST_CASE("initialize reads no symbol table and throws before it are not traced") {
  RunResult result = run_worker({"startup_cost"}, "");
  REQUIRE(result.exitcode == 0);
  INFO(result.out);
  // No object file is opened for symbols until a record needs names.
  CHECK_THAT(result.out, Catch::Contains("descriptors_before=") && Catch::Contains("descriptors_after="));
  const auto number_after = [&](const std::string& key) {
    return std::stoi(result.out.substr(result.out.find(key) + key.size()));
  };
  CHECK(number_after("descriptors_after=") == number_after("descriptors_before="));
  const std::size_t before_at = result.out.find("before:\n"), after_at = result.out.find("after:\n");
  REQUIRE(before_at < after_at);
  const std::string before = result.out.substr(before_at, after_at - before_at);
  const std::string after = result.out.substr(after_at);
  CHECK(before.find("#0 ") == std::string::npos);
  if (throw_traces_built) CHECK(after.find("throw_here_on_purpose") != std::string::npos);
}

// ---- source file:line (elastic-symbolize) -----------------------------------

namespace {

// The 1-based line of crash_worker.cpp holding `text`, as the compiler numbered it.
int worker_source_line(const std::string& text) {
  std::ifstream source(std::string(ELASTIC_SOURCE_DIR) + "/tests/workers/crash_worker.cpp");
  std::string line;
  for (int number = 1; std::getline(source, line); ++number)
    if (line.find(text) != std::string::npos) return number;
  FAIL("no line of crash_worker.cpp holds " << text);
  return 0;
}

std::string worker_location(const std::string& text) {
  return "/tests/workers/crash_worker.cpp:" + std::to_string(worker_source_line(text));
}

// The line of `callstack` that holds `text`, empty when none does.
std::string line_with(const std::string& callstack, const std::string& text) {
  std::istringstream in(callstack);
  std::string line;
  while (std::getline(in, line))
    if (line.find(text) != std::string::npos) return line;
  return {};
}

const std::string hidden_frames_line = "frames of elastic's wrappers and the C runtime's start-up hidden";

}  // namespace

TEST_CASE("a crash record names the source file and line of each frame") {
  TempDir dir;
  const std::string file = dir.file("error.json");
  RunResult result = run_worker({"segv"}, file);
  CHECK(result.exitcode == -SIGSEGV);
  const std::string callstack = callstack_of(elastic::ProcessFailure(0, result.pid, result.exitcode, file));
  INFO(callstack);
  const std::string top = first_frame(callstack);
  CHECK(top.find("crash_here_on_purpose") != std::string::npos);
  CHECK(top.find(worker_location("void crash_here_on_purpose() { *null_pointer = 42; }") + " (") != std::string::npos);
  // The caller's line is the call, not the line after it.
  CHECK(line_with(callstack, " in worker_main()")
            .find(worker_location("crash_here_on_purpose();  // the call of mode segv")) != std::string::npos);
  CHECK(other_files(dir, "error.json").empty());
}

TEST_CASE("an exception record names the source file and line of its throw site") {
  if (!throw_traces_built)
    ELASTIC_SKIP(
        "throw-site traces are compiled out of this build (AddressSanitizer intercepts __cxa_throw itself, "
        "or ELASTIC_THROW_TRACES=OFF): the record has the catch site's frames, not the throw's");
  TempDir dir;
  const std::string file = dir.file("error.json");
  RunResult result = run_worker({"throw"}, file);
  CHECK(result.exitcode == 1);
  const std::string callstack = callstack_of(elastic::ProcessFailure(0, result.pid, result.exitcode, file));
  INFO(callstack);
  CHECK(line_with(callstack, "throw_here_on_purpose()")
            .find(worker_location("void throw_here_on_purpose() { throw DistinctiveError(")) != std::string::npos);
  CHECK(line_with(callstack, "call_through(").find(worker_location("  fn();")) != std::string::npos);
}

TEST_CASE("an inlined function is shown with its line, then its caller's") {
  if (elastic::testing::under_address_sanitizer)
    ELASTIC_SKIP(
        "clang 14's AddressSanitizer instrumentation drops the inlined-at scope of the checked store: "
        "its DWARF puts the faulting instruction in the caller at the inlined function's line, with no "
        "inlined subroutine there (addr2line -i shows the same), so there is no inlined frame to show");
  TempDir dir;
  const std::string file = dir.file("error.json");
  RunResult result = run_worker({"inlined_segv"}, file);
  CHECK(result.exitcode == -SIGSEGV);
  const std::string callstack = callstack_of(elastic::ProcessFailure(0, result.pid, result.exitcode, file));
  INFO(callstack);
  const std::string inlined = line_with(callstack, "inlined_null_write");
  CHECK(inlined.rfind("#0 ", 0) == 0);
  CHECK(inlined.find(worker_location("inline void inlined_null_write(volatile int* target) { *target = 7; }") +
                     " (inlined)") != std::string::npos);
  const std::string caller = line_with(callstack, "calls_inlined_on_purpose()");
  CHECK(caller.rfind("#0 ", 0) == 0);
  CHECK(caller.find(worker_location("  inlined_null_write(null_pointer);") + " (") != std::string::npos);
}

TEST_CASE("plumbing frames are folded into one line, and ELASTIC_TRACEBACK_ALL=1 shows them") {
  TempDir dir;
  const std::string file = dir.file("error.json");
  RunResult folded = run_worker({"segv"}, file);
  const std::string short_stack = callstack_of(elastic::ProcessFailure(0, folded.pid, folded.exitcode, file));
  INFO(short_stack);
  CHECK(short_stack.find("invoke_recorded") == std::string::npos);
  CHECK(short_stack.find("__libc_start_main") == std::string::npos);
  CHECK(short_stack.find(" _start ") == std::string::npos);
  const std::string summary = line_with(short_stack, hidden_frames_line);
  CHECK_FALSE(summary.empty());

  RunResult all = run_worker({"segv"}, file, {{"ELASTIC_TRACEBACK_ALL", "1"}});
  const std::string full_stack = callstack_of(elastic::ProcessFailure(0, all.pid, all.exitcode, file));
  INFO(full_stack);
  CHECK(full_stack.find("elastic::errors::detail::invoke_recorded") != std::string::npos);
  CHECK(full_stack.find("__libc_start_main") != std::string::npos);
  CHECK(full_stack.find(hidden_frames_line) == std::string::npos);
  // The count told is the count of frames left out (an inlined function's line is
  // part of its frame, not a frame of its own).
  const auto lines = [](const std::string& text) {
    long frames = 0;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) frames += line.find(" (inlined)") == std::string::npos ? 1 : 0;
    return frames;
  };
  const std::string count = summary.substr(1, summary.find(' ') - 1);
  CHECK(lines(full_stack) - lines(short_stack) + 1 == std::stol(count));
}

TEST_CASE("the library's wrappers inlined into main are folded away too, and ELASTIC_TRACEBACK_ALL=1 shows them") {
  const std::string mode = GENERATE(std::string("segv"), std::string("throw"));
  if (mode == "throw" && !throw_traces_built) {
    WARN("skipped: throw-site traces are compiled out of this build");
    return;
  }
  INFO("mode record_lambda " << mode);
  TempDir dir;
  const std::string file = dir.file("error.json");
  RunResult folded = run_worker({"record_lambda", mode}, file);
  const std::string short_stack = callstack_of(elastic::ProcessFailure(0, folded.pid, folded.exitcode, file));
  INFO(short_stack);
  CHECK(short_stack.find("/elastic/errors/record.hpp:") == std::string::npos);
  CHECK(short_stack.find("/bits/invoke.h:") == std::string::npos);
  CHECK_FALSE(line_with(short_stack, hidden_frames_line).empty());
  // The user's lambda stays, with its own line.
  CHECK_FALSE(line_with(short_stack, "/tests/workers/crash_worker.cpp:").empty());

  RunResult all = run_worker({"record_lambda", mode}, file, {{"ELASTIC_TRACEBACK_ALL", "1"}});
  const std::string full_stack = callstack_of(elastic::ProcessFailure(0, all.pid, all.exitcode, file));
  INFO(full_stack);
  CHECK(full_stack.find("/elastic/errors/record.hpp:") != std::string::npos);
  CHECK(full_stack.find(hidden_frames_line) == std::string::npos);
}

TEST_CASE("a binary without debug information keeps function and offset frames") {
  TempDir dir;
  const std::string stripped = dir.file("stripped_worker");
  RunResult strip = elastic::testing::run({"objcopy", "--strip-debug", crash_worker, stripped}, RunOptions{});
  REQUIRE(strip.exitcode == 0);
  const std::string file = dir.file("error.json");
  RunOptions options;
  options.set_env = {{"TORCHELASTIC_ERROR_FILE", file}};
  options.unset_env = {"ELASTIC_CRASH_SIGNALS", "ELASTIC_THROW_TRACES", "ELASTIC_TRACEBACK_ALL"};
  RunResult result = elastic::testing::run({stripped, "segv"}, options);
  REQUIRE_FALSE(result.timed_out);
  CHECK(result.exitcode == -SIGSEGV);
  const std::string callstack = callstack_of(elastic::ProcessFailure(0, result.pid, result.exitcode, file));
  INFO(callstack);
  const std::string top = first_frame(callstack);
  CHECK(top.find("in crash_worker::crash_here_on_purpose() (" + stripped + "+0x") != std::string::npos);
  CHECK(callstack.find("crash_worker.cpp:") == std::string::npos);
}

TEST_CASE("a binary without .debug_aranges (clang writes none) still gets file:line") {
  TempDir dir;
  const std::string copy = dir.file("no_aranges_worker");
  RunResult strip =
      elastic::testing::run({"objcopy", "--remove-section", ".debug_aranges", crash_worker, copy}, RunOptions{});
  REQUIRE(strip.exitcode == 0);
  RunResult sections = elastic::testing::run({"readelf", "-S", copy}, RunOptions{});
  REQUIRE(sections.out.find(".debug_aranges") == std::string::npos);
  REQUIRE(sections.out.find(".debug_info") != std::string::npos);
  const std::string file = dir.file("error.json");
  RunOptions options;
  options.set_env = {{"TORCHELASTIC_ERROR_FILE", file}};
  options.unset_env = {"ELASTIC_CRASH_SIGNALS", "ELASTIC_THROW_TRACES", "ELASTIC_TRACEBACK_ALL"};
  RunResult result = elastic::testing::run({copy, "segv"}, options);
  REQUIRE_FALSE(result.timed_out);
  CHECK(result.exitcode == -SIGSEGV);
  const std::string callstack = callstack_of(elastic::ProcessFailure(0, result.pid, result.exitcode, file));
  INFO(callstack);
  CHECK(first_frame(callstack).find(worker_location("void crash_here_on_purpose() { *null_pointer = 42; }") + " (") !=
        std::string::npos);
  CHECK(line_with(callstack, " in worker_main()")
            .find(worker_location("crash_here_on_purpose();  // the call of mode segv")) != std::string::npos);
}

TEST_CASE("a binary replaced on disk after start is not used for file:line") {
  TempDir dir;
  const std::string copy = dir.file("replaced_worker");
  std::filesystem::copy_file(crash_worker, copy);
  std::filesystem::permissions(copy, std::filesystem::perms::owner_all);
  const std::string file = dir.file("error.json");
  RunOptions options;
  options.set_env = {{"TORCHELASTIC_ERROR_FILE", file}};
  options.unset_env = {"ELASTIC_CRASH_SIGNALS", "ELASTIC_THROW_TRACES", "ELASTIC_TRACEBACK_ALL",
                       "CRASH_WORKER_REPLACEMENT"};
  RunResult result = elastic::testing::run({copy, "replace_self_segv"}, options);
  INFO(result.err);
  REQUIRE_FALSE(result.timed_out);
  CHECK(result.exitcode == -SIGSEGV);
  const std::string callstack = callstack_of(elastic::ProcessFailure(0, result.pid, result.exitcode, file));
  INFO(callstack);
  // Module and offset stay (names too when the symbol tables were read before the
  // replacement; here they were not, and the old file is gone).
  CHECK(first_frame(callstack).find(copy) != std::string::npos);
  CHECK(first_frame(callstack).find("+0x") != std::string::npos);
  CHECK(callstack.find("crash_worker.cpp:") == std::string::npos);
}

namespace {

// The GNU build id of the ELF file at `path` in hex, as `readelf -n` shows it.
std::string build_id_of_file(const std::string& path) {
  RunResult notes = elastic::testing::run({"readelf", "-n", path}, RunOptions{});
  REQUIRE(notes.exitcode == 0);
  const std::string label = "Build ID: ";
  const auto at = notes.out.find(label);
  REQUIRE(at != std::string::npos);
  return first_line(notes.out.substr(at + label.size()));
}

}  // namespace

TEST_CASE("a binary replaced by another build after start gives no file:line from the new file") {
  const std::string other_build = ELASTIC_TEST_CRASH_WORKER_OTHER_BUILD;
  const std::string ran = build_id_of_file(crash_worker);
  REQUIRE(build_id_of_file(other_build) == ELASTIC_TEST_OTHER_BUILD_ID);
  REQUIRE(ran != ELASTIC_TEST_OTHER_BUILD_ID);
  for (const std::string mode : {"replace_self_segv", "replace_self_throw"}) {
    if (mode == "replace_self_throw" && !throw_traces_built) continue;
    INFO(mode);
    TempDir dir;
    const std::string copy = dir.file("worker");
    const std::string replacement = dir.file("worker.next");
    std::filesystem::copy_file(crash_worker, copy);
    std::filesystem::copy_file(other_build, replacement);
    const std::string file = dir.file("error.json");
    RunOptions options;
    options.set_env = {{"TORCHELASTIC_ERROR_FILE", file}, {"CRASH_WORKER_REPLACEMENT", replacement}};
    options.unset_env = {"ELASTIC_CRASH_SIGNALS", "ELASTIC_THROW_TRACES", "ELASTIC_TRACEBACK_ALL"};
    RunResult result = elastic::testing::run({copy, mode}, options);
    INFO(result.err);
    REQUIRE_FALSE(result.timed_out);
    CHECK(result.exitcode == (mode == "replace_self_segv" ? -SIGSEGV : 1));
    REQUIRE(build_id_of_file(copy) == ELASTIC_TEST_OTHER_BUILD_ID);  // the new build is in place
    const std::string callstack = callstack_of(elastic::ProcessFailure(0, result.pid, result.exitcode, file));
    INFO(callstack);
    // Frames are named by the path the program started from, with module and offset.
    CHECK(first_frame(callstack).find("(" + copy + "+0x") != std::string::npos);
    CHECK(callstack.find("crash_worker.cpp:") == std::string::npos);
    // Said once, with both build ids.
    const std::string why = "(no file:line for " + copy + ": the file there is another build than the one the " +
                            "process ran (build id " + ELASTIC_TEST_OTHER_BUILD_ID + " on disk, " + ran +
                            " in the process))";
    CHECK(line_with(callstack, "(no file:line for ") == why);
    CHECK(callstack.find("(no file:line for ") == callstack.rfind("(no file:line for "));

#ifdef ELASTIC_TEST_SYMBOLIZER
    // The new file would have given lines (the same code and line table): the
    // build id is what kept them out. The helper run by hand, told nothing of
    // the process, takes them from it.
    const std::string unchecked = dir.file("unchecked.json");
    std::filesystem::copy_file(file, unchecked);
    RunResult by_hand = elastic::testing::run({ELASTIC_TEST_SYMBOLIZER, unchecked}, RunOptions{});
    REQUIRE(by_hand.exitcode == 0);
    const std::string lines = callstack_of(elastic::ProcessFailure(0, result.pid, result.exitcode, unchecked));
    INFO(lines);
    CHECK(lines.find("crash_worker.cpp:") != std::string::npos);
#endif
  }
}

TEST_CASE("a separate debug file gives file:line only when it is of the build that ran") {
  const std::string ran = build_id_of_file(crash_worker);
  REQUIRE(ran.size() > 2);
  REQUIRE(ran != ELASTIC_TEST_OTHER_BUILD_ID);
  // Found by build id under a debug directory (as Debian's -dbgsym packages install
  // them under /usr/lib/debug/.build-id/), or named by .gnu_debuglink next to the program.
  const std::string lookup = GENERATE(std::string("build-id"), std::string("debuglink"));
  // The build's own debug file, or that of crash_worker_other_build: the same code
  // and line table, so it would give the same lines if it were trusted.
  const bool own = GENERATE(true, false);
  INFO(lookup << (own ? ": the build's own debug file" : ": another build's debug file"));
  TempDir dir;
  const std::string worker = dir.file("worker");
  // The program without its debug information; it keeps its build id.
  REQUIRE(elastic::testing::run({"objcopy", "--strip-debug", crash_worker, worker}, RunOptions{}).exitcode == 0);
  const std::string debug_root = dir.file("debug");
  const std::string debug_file = lookup == "build-id"
                                     ? debug_root + "/.build-id/" + ran.substr(0, 2) + "/" + ran.substr(2) + ".debug"
                                     : dir.file("worker.debug");
  std::filesystem::create_directories(std::filesystem::path(debug_file).parent_path());
  const std::string debug_source = own ? crash_worker : ELASTIC_TEST_CRASH_WORKER_OTHER_BUILD;
  REQUIRE(elastic::testing::run({"objcopy", "--only-keep-debug", debug_source, debug_file}, RunOptions{}).exitcode ==
          0);
  REQUIRE(build_id_of_file(debug_file) == (own ? ran : std::string(ELASTIC_TEST_OTHER_BUILD_ID)));
  if (lookup == "debuglink")
    REQUIRE(elastic::testing::run({"objcopy", "--add-gnu-debuglink=" + debug_file, worker}, RunOptions{}).exitcode ==
            0);
  REQUIRE(build_id_of_file(worker) == ran);

  const std::string file = dir.file("error.json");
  RunOptions options;
  // The debug directory of this case only (the build-id one is empty for debuglink).
  options.set_env = {{"TORCHELASTIC_ERROR_FILE", file}, {"ELASTIC_DEBUG_FILE_DIRECTORY", debug_root}};
  options.unset_env = {"ELASTIC_CRASH_SIGNALS", "ELASTIC_THROW_TRACES", "ELASTIC_TRACEBACK_ALL",
                       "CRASH_WORKER_REPLACEMENT"};
  RunResult result = elastic::testing::run({worker, "segv"}, options);
  INFO(result.err);
  REQUIRE_FALSE(result.timed_out);
  CHECK(result.exitcode == -SIGSEGV);
  const std::string callstack = callstack_of(elastic::ProcessFailure(0, result.pid, result.exitcode, file));
  INFO(callstack);
  const std::string top = first_frame(callstack);
  CHECK(top.find("crash_here_on_purpose()") != std::string::npos);
  CHECK(top.find("(" + worker + "+0x") != std::string::npos);
  if (own) {
    CHECK(top.find(worker_location("void crash_here_on_purpose() { *null_pointer = 42; }") + " (") !=
          std::string::npos);
  } else {
    CHECK(callstack.find("crash_worker.cpp:") == std::string::npos);
  }
}

TEST_CASE("a binary without a build id is checked by device and inode") {
  const std::string no_build_id = ELASTIC_TEST_CRASH_WORKER_NO_BUILD_ID;
  RunResult notes = elastic::testing::run({"readelf", "-n", no_build_id}, RunOptions{});
  REQUIRE(notes.exitcode == 0);
  REQUIRE(notes.out.find("Build ID") == std::string::npos);
  for (const std::string mode : {"segv", "replace_self_segv"}) {
    INFO(mode);
    TempDir dir;
    const std::string copy = dir.file("worker");
    std::filesystem::copy_file(no_build_id, copy);
    const std::string file = dir.file("error.json");
    RunOptions options;
    options.set_env = {{"TORCHELASTIC_ERROR_FILE", file}};
    options.unset_env = {"ELASTIC_CRASH_SIGNALS", "ELASTIC_THROW_TRACES", "ELASTIC_TRACEBACK_ALL",
                         "CRASH_WORKER_REPLACEMENT"};
    RunResult result = elastic::testing::run({copy, mode}, options);
    INFO(result.err);
    REQUIRE_FALSE(result.timed_out);
    CHECK(result.exitcode == -SIGSEGV);
    const std::string callstack = callstack_of(elastic::ProcessFailure(0, result.pid, result.exitcode, file));
    INFO(callstack);
    const std::string why = "(no file:line for " + copy +
                            ": the file there is not the one the process mapped (compared by device and inode: no "
                            "build id was known for it))";
    if (mode == "segv") {  // the file the process maps: used
      CHECK(first_frame(callstack).find(worker_location("void crash_here_on_purpose() { *null_pointer = 42; }")) !=
            std::string::npos);
      CHECK(callstack.find("(no file:line for ") == std::string::npos);
    } else {  // another file at its path: not used, and said
      CHECK(callstack.find("crash_worker.cpp:") == std::string::npos);
      CHECK(line_with(callstack, "(no file:line for ") == why);
    }
  }
}

TEST_CASE("a helper slower than ELASTIC_SYMBOLIZER_TIMEOUT_MS is stopped and the record says so") {
  TempDir dir;
  // A helper that never finishes (exec: the one process the stop must end).
  const std::string helper = dir.file("slow-symbolize");
  {
    std::ofstream script(helper);
    script << "#!/bin/sh\nexec sleep 60\n";
  }
  std::filesystem::permissions(helper, std::filesystem::perms::owner_all);
  const std::string file = dir.file("error.json");
  for (const std::string mode : {"segv", "throw"}) {
    INFO(mode);
    RunResult result =
        run_worker({mode}, file, {{"ELASTIC_SYMBOLIZER", helper}, {"ELASTIC_SYMBOLIZER_TIMEOUT_MS", "300"}});
    INFO(result.err);
    CHECK(result.exitcode == (mode == "segv" ? -SIGSEGV : 1));
    const std::string callstack = callstack_of(elastic::ProcessFailure(0, result.pid, result.exitcode, file));
    INFO(callstack);
    CHECK(line_with(callstack, "elastic-symbolize took longer than") ==
          "(no file:line: elastic-symbolize took longer than 300 ms and was stopped; ELASTIC_SYMBOLIZER_TIMEOUT_MS "
          "sets the limit)");
    CHECK(callstack.find(mode == "segv" ? "crash_here_on_purpose" : "DistinctiveError") != std::string::npos);
    CHECK(callstack.find("crash_worker.cpp:") == std::string::npos);
    CHECK(other_files(dir, "error.json") == std::vector<std::string>{"slow-symbolize"});
  }
}

#ifdef ELASTIC_TEST_SYMBOLIZER
// A launcher stopping a worker's process group (another rank failed first) reaches
// the helper too; the record still gets its lines. The helper here is the real one
// behind a Python script that sleeps first, so that the stop comes while it runs;
// a helper started with SIGTERM deliverable dies of it at once.
TEST_CASE("a SIGTERM that reaches elastic-symbolize while it works does not cost the record its file:line") {
  TempDir dir;
  const std::string helper = dir.file("sleepy-symbolize");
  {
    std::ofstream script(helper);
    script << "#!" << elastic::testing::system_python() << "\nimport os, sys, time\ntime.sleep(0.5)\n"
           << "os.execv('" << ELASTIC_TEST_SYMBOLIZER << "', ['elastic-symbolize'] + sys.argv[1:])\n";
  }
  std::filesystem::permissions(helper, std::filesystem::perms::owner_all);
  // Without throw-site traces (AddressSanitizer's builds) an exception record has
  // no frames to give lines to: the crash alone is checked there.
  std::vector<std::string> modes{"segv"};
  if (throw_traces_built) modes.push_back("throw");
  for (const std::string& mode : modes) {
    INFO(mode);
    const std::string file = dir.file(mode + ".json");
    RunOptions options;
    options.set_env = {
        {"TORCHELASTIC_ERROR_FILE", file}, {"ELASTIC_SYMBOLIZER", helper}, {"ELASTIC_SYMBOLIZER_TIMEOUT_MS", "4000"}};
    options.unset_env = {"ELASTIC_CRASH_SIGNALS", "ELASTIC_THROW_TRACES"};
    const pid_t worker =
        elastic::testing::start_child({crash_worker, mode}, elastic::testing::make_environment(options));
    REQUIRE(worker > 0);
    // The helper: the worker's child, once there.
    pid_t child = -1;
    for (int i = 0; i < 1000 && child <= 0; ++i) {
      std::ifstream children("/proc/" + std::to_string(worker) + "/task/" + std::to_string(worker) + "/children");
      if (!(children >> child)) child = -1;
      if (child <= 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    CHECK(child > 0);
    if (child > 0) ::kill(child, SIGTERM);
    int status = 0;
    REQUIRE(::waitpid(worker, &status, 0) == worker);
    const int code = WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
    CHECK(code == (mode == "segv" ? -SIGSEGV : 1));
    const std::string callstack = callstack_of(elastic::ProcessFailure(0, worker, code, file));
    INFO(callstack);
    CHECK(callstack.find("crash_worker.cpp:") != std::string::npos);
  }
}
#endif

TEST_CASE("ELASTIC_SYMBOLIZER_TIMEOUT_MS that is not a number is a warning, and the default applies") {
  TempDir dir;
  const std::string file = dir.file("error.json");
  RunResult result = run_worker({"segv"}, file, {{"ELASTIC_SYMBOLIZER_TIMEOUT_MS", "2s"}});
  CHECK(result.exitcode == -SIGSEGV);
  CHECK(result.err.find("ELASTIC_SYMBOLIZER_TIMEOUT_MS: '2s' is not a number of milliseconds") != std::string::npos);
  const std::string callstack = callstack_of(elastic::ProcessFailure(0, result.pid, result.exitcode, file));
  INFO(callstack);
  CHECK(first_frame(callstack).find(worker_location("void crash_here_on_purpose() { *null_pointer = 42; }")) !=
        std::string::npos);
}
