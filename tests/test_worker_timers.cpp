// Worker hang timers: with TORCHELASTIC_ENABLE_FILE_TIMER=1, elastic-run serves PyTorch's
// file-based timer protocol on a named pipe; a worker whose timer expires is killed and
// reported. Real launcher, real pipe, real signals; the library's client (elastic::expires_after)
// in a native worker, and raw requests from a shell worker.
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <elastic/timer.hpp>
#include <filesystem>
#include <regex>

#include "support/backends.hpp"
#include "support/launcher.hpp"

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
