// Worker hang timers: with TORCHELASTIC_ENABLE_FILE_TIMER=1, elastic-run serves PyTorch's
// file-based timer protocol on a named pipe; a worker whose timer expires is killed and
// reported. Real launcher, real pipe, real signals; the library's client (elastic::expires_after)
// in a native worker, and raw requests from a shell worker.
#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <elastic/launcher/timer_server.hpp>
#include <elastic/timer.hpp>
#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>

#include "support/backends.hpp"
#include "support/launcher.hpp"
#include "support/skip.hpp"

using namespace elastic::testing;
namespace fs = std::filesystem;

namespace {

const std::string timer_worker = ELASTIC_TEST_TIMER_WORKER;

RunOptions timer_options(bool enabled = true) {
  RunOptions options;
  options.set_env["OMP_NUM_THREADS"] = "1";
  if (enabled) options.set_env["TORCHELASTIC_ENABLE_FILE_TIMER"] = "1";
  options.unset_env = {"PET_NPROC_PER_NODE", "PET_NNODES", "TORCHELASTIC_TIMER_FILE", "TORCHELASTIC_ERROR_FILE"};
  if (!enabled) options.unset_env.push_back("TORCHELASTIC_ENABLE_FILE_TIMER");
  return options;
}

// Runs `scenario` as the first process (pid 1) of a pid namespace of its own, where
// only the scenario hands out pids, so that /proc/sys/kernel/ns_last_pid sets the next
// one. Its exit code; 77 when no such namespace can be made here.
int in_own_pid_namespace(const std::function<int()>& scenario) {
  const pid_t outer = ::fork();
  if (outer == 0) {
    if (::unshare(CLONE_NEWPID) != 0) ::_exit(77);
    const pid_t first = ::fork();
    if (first == 0) ::_exit(scenario());
    int status = 0;
    while (::waitpid(first, &status, 0) < 0 && errno == EINTR) {
    }
    ::_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 100);
  }
  int status = 0;
  while (::waitpid(outer, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
}

// A child that waits for a signal.
pid_t start_waiting_child() {
  const pid_t pid = ::fork();
  if (pid == 0)
    for (;;) ::pause();
  return pid;
}

}  // namespace

TEST_CASE("an expired timer kills the worker (-9) and the summary says so, the launcher stops as on any failure") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  TempDir dir;
  // Rank 1 hangs inside a 1 s timer; rank 0 waits (inside a 60 s timer) for a release that never comes.
  auto r = elastic_run(on_backend(backend, {"--nproc-per-node=2", timer_worker, dir.path().string(), "hang", "1"}),
                       timer_options());
  CHECK(r.exitcode == 1);
  CHECK(read_file(dir.file("1.active")) == "1");
  CHECK(read_file(dir.file("0.active")) == "1");
  CHECK_THAT(r.err, Catch::Contains("timer 'hang' expired, sending signal 9"));
  CHECK_THAT(r.err, Catch::Contains("rank      : 1 (local_rank: 1)"));
  CHECK_THAT(r.err, Catch::Contains("exitcode  : -9"));
  CHECK_THAT(r.err, Catch::Contains("Signal 9 (SIGKILL) received by PID"));
  CHECK_THAT(r.err, Catch::Contains("timer expired (scope 'hang')"));
  // Rank 0 was stopped by the launcher, not reported as a failure.
  CHECK_THAT(r.err, Catch::Contains("<NO_OTHER_FAILURES>"));
}

TEST_CASE("a released timer never fires") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  TempDir dir;
  auto r = elastic_run(on_backend(backend, {"--nproc-per-node=2", timer_worker, dir.path().string(), "release"}),
                       timer_options());
  CHECK(r.exitcode == 0);
  CHECK(read_file(dir.file("0.active")) == "1");
  CHECK(read_file(dir.file("1.active")) == "1");
  CHECK(r.err.find("expired") == std::string::npos);
}

TEST_CASE("without TORCHELASTIC_ENABLE_FILE_TIMER workers get no timer file and timers do nothing") {
  TempDir dir;
  auto r = elastic_run({"--nproc-per-node=1", timer_worker, dir.path().string(), "release"}, timer_options(false));
  CHECK(r.exitcode == 0);
  CHECK(read_file(dir.file("0.active")) == "0");
  auto env = elastic_run({"/bin/sh", "-c", "test -z \"$TORCHELASTIC_TIMER_FILE\""}, timer_options(false));
  CHECK(env.exitcode == 0);
}

TEST_CASE("the timer file: a given TORCHELASTIC_TIMER_FILE is used and removed afterwards, a non-pipe refused") {
  TempDir dir;
  auto options = timer_options();
  options.set_env["TORCHELASTIC_TIMER_FILE"] = dir.file("timer.pipe");
  auto r = elastic_run(
      {"/bin/sh", "-c", "test -p \"$TORCHELASTIC_TIMER_FILE\" && test \"$TORCHELASTIC_TIMER_FILE\" = \"$0\"",
       dir.file("timer.pipe")},
      options);
  CHECK(r.exitcode == 0);
  CHECK_FALSE(fs::exists(dir.file("timer.pipe")));

  write_file(dir.file("regular"), "keep me");
  options.set_env["TORCHELASTIC_TIMER_FILE"] = dir.file("regular");
  auto refused = elastic_run({"/bin/true"}, options);
  CHECK(refused.exitcode == 1);
  CHECK_THAT(refused.err, Catch::Contains("exists and is not a pipe"));
  CHECK(read_file(dir.file("regular")) == "keep me");
}

TEST_CASE("a timer naming a process that is not a worker never gets it killed, and bad requests are ignored") {
  TempDir dir;
  // The worker's own child is not a worker: its expired timer must not kill it.
  const std::string script =
      "sleep 30 & child=$!; "
      "printf 'not json\\n' > \"$TORCHELASTIC_TIMER_FILE\"; "
      "printf '{\"version\": 1, \"pid\": %d, \"scope_id\": \"x\", \"expiration_time\": 1.0, \"signal\": 9}\\n' "
      "$child > \"$TORCHELASTIC_TIMER_FILE\"; "
      "sleep 2; kill -0 $child && kill $child";
  auto r = elastic_run({"/bin/sh", "-c", script}, timer_options());
  CHECK(r.exitcode == 0);
  CHECK_THAT(r.err, Catch::Contains("not a worker of this job"));
  CHECK_THAT(r.err, Catch::Contains("ignoring a request that is not FileTimerClient's JSON"));
}

TEST_CASE("the client without a server fails at once with EPIPE") {
  TempDir dir;
  REQUIRE(::mkfifo(dir.file("pipe").c_str(), 0600) == 0);
  elastic::timer::FileTimerClient client(dir.file("pipe"));
  try {
    client.acquire("x", 1.0);
    FAIL("no server reads the pipe, yet the request went out");
  } catch (const std::system_error& e) {
    CHECK(e.code().value() == EPIPE);
  }
}

TEST_CASE("a timer of a worker that exited never signals the process that got its pid since") {
  // A local user's attack: a timer request naming a worker that has exited, once its
  // pid belongs to someone else. The worker's pid is handed to a newcomer on purpose,
  // in a pid namespace of the test's own; the server must signal the newcomer not at
  // all, while a live worker's expired timer (the control) still kills that worker.
  TempDir dir;
  const std::string timer_file = dir.file("timers");
  const std::string results = dir.file("results");
  const int code = in_own_pid_namespace([&] {
    const int last_pid = ::open("/proc/sys/kernel/ns_last_pid", O_WRONLY | O_CLOEXEC);
    if (last_pid < 0) return 77;
    elastic::launcher::TimerServer server(timer_file);
    const pid_t worker = start_waiting_child();
    const pid_t control = start_waiting_child();
    server.set_workers({{0, worker}, {1, control}});
    ::kill(worker, SIGKILL);  // the worker ends, and is reaped: its pid is free
    int status = 0;
    ::waitpid(worker, &status, 0);
    const std::string previous = std::to_string(worker - 1);
    if (::write(last_pid, previous.data(), previous.size()) != static_cast<ssize_t>(previous.size())) return 77;
    const pid_t newcomer = start_waiting_child();
    std::ofstream out(results);
    out << "worker " << worker << " newcomer " << newcomer << "\n";
    if (newcomer != worker) return 3;
    auto request = [](pid_t pid, const char* scope) {
      return "{\"version\": 1, \"pid\": " + std::to_string(pid) + ", \"scope_id\": \"" + scope +
             "\", \"expiration_time\": 1.0, \"signal\": 9}\n";
    };
    const std::string requests = request(worker, "attack") + request(control, "control");
    const int pipe = ::open(timer_file.c_str(), O_WRONLY | O_CLOEXEC);
    if (pipe < 0 || ::write(pipe, requests.data(), requests.size()) != static_cast<ssize_t>(requests.size())) return 4;
    ::close(pipe);
    // Both requests came in one write, and are acted on in one pass: once the
    // control is dead, a signal to the newcomer would have been sent too.
    bool control_killed = false;
    for (int i = 0; i < 2000 && !control_killed; ++i) {
      control_killed = ::waitpid(control, &status, WNOHANG) == control;
      if (!control_killed) ::usleep(10000);
    }
    out << "control_killed " << control_killed << " by " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0) << "\n";
    bool newcomer_killed = false;
    for (int i = 0; i < 100 && !newcomer_killed; ++i) {
      newcomer_killed = ::waitpid(newcomer, &status, WNOHANG) == newcomer;
      if (!newcomer_killed) ::usleep(10000);
    }
    out << "newcomer_killed " << newcomer_killed << "\n";
    out << "worker_reported " << server.expired(worker).has_value() << "\n";
    out << "control_reported " << server.expired(control).has_value() << "\n";
    ::kill(newcomer, SIGKILL);
    ::waitpid(newcomer, &status, 0);
    return 0;
  });
  if (code == 77) ELASTIC_SKIP("no pid namespace with a writable ns_last_pid here (needs CAP_SYS_ADMIN)");
  const std::string found = read_file(results);
  INFO(found);
  REQUIRE(code == 0);
  CHECK_THAT(found, Catch::Contains("control_killed 1 by 9"));
  CHECK_THAT(found, Catch::Contains("newcomer_killed 0"));
  CHECK_THAT(found, Catch::Contains("worker_reported 0"));
  CHECK_THAT(found, Catch::Contains("control_reported 1"));
}
