// Stopping: signals to the launcher, a worker killed mid-run, the launcher
// itself SIGKILLed. Nothing a job started may outlive it, grandchildren included.
#include <dirent.h>

#include <catch2/catch.hpp>
#include <fstream>

#include "support/backends.hpp"
#include "support/launcher.hpp"
#include "support/other_user.hpp"
#include "support/skip.hpp"

using namespace elastic::testing;

namespace {

RunOptions base_options() {
  RunOptions options;
  options.set_env["OMP_NUM_THREADS"] = "1";
  options.unset_env = {"PET_NPROC_PER_NODE", "PET_NNODES", "PET_NO_PYTHON", "TORCHELASTIC_ERROR_FILE"};
  return options;
}

// Each worker starts a grandchild in the background, records both pids, and waits.
std::vector<std::string> family_worker(const TempDir& dir, const std::string& extra = "") {
  return {"/bin/sh", "-c",
          extra +
              "sleep 300 & echo $! > \"$0/gc_$RANK\"; echo $$ > \"$0/w_$RANK.tmp\"; "
              "mv \"$0/w_$RANK.tmp\" \"$0/w_$RANK\"; wait",
          dir.path().string()};
}

std::vector<pid_t> family_pids(const TempDir& dir, int nprocs) {
  std::vector<pid_t> pids;
  for (int rank = 0; rank < nprocs; ++rank) {
    pids.push_back(read_pid(dir.file("w_" + std::to_string(rank))));
    pids.push_back(read_pid(dir.file("gc_" + std::to_string(rank))));
  }
  return pids;
}

bool all_started(const TempDir& dir, int nprocs) {
  for (int rank = 0; rank < nprocs; ++rank)
    if (!file_exists(dir.file("w_" + std::to_string(rank)))) return false;
  return true;
}

bool none_alive(const std::vector<pid_t>& pids) {
  for (pid_t pid : pids)
    if (alive(pid)) return false;
  return true;
}

std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The pid of `parent`'s child named `name` (as /proc/<pid>/comm shows it, cut at 15
// characters), or 0.
pid_t child_named(pid_t parent, const std::string& name) {
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return 0;
  pid_t found = 0;
  while (dirent* entry = ::readdir(proc)) {
    if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
    std::ifstream stat(std::string("/proc/") + entry->d_name + "/stat");
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    const auto open_paren = text.find('(');
    const auto close_paren = text.rfind(')');
    if (open_paren == std::string::npos || close_paren == std::string::npos) continue;
    std::istringstream rest(text.substr(close_paren + 2));
    char state = 0;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid == parent && text.substr(open_paren + 1, close_paren - open_paren - 1) == name.substr(0, 15))
      found = static_cast<pid_t>(std::stol(entry->d_name));
  }
  ::closedir(proc);
  return found;
}

}  // namespace

TEST_CASE("shutdown on signal: forwarded to the workers, all reaped, non-zero exit") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGQUIT}) {
    INFO("signal " << sig);
    TempDir dir;
    Background launcher(on_backend(backend, with({"--nproc-per-node=2", "--term-timeout=5"}, family_worker(dir))),
                        dir.file("out"), dir.file("err"), base_options());
    REQUIRE(wait_until([&] { return all_started(dir, 2); }));
    auto pids = family_pids(dir, 2);
    launcher.signal(sig);
    int code = launcher.wait();
    CHECK(code == 128 + sig);
    CHECK(launcher.err().find("Received " + std::to_string(sig) + " death signal, shutting down workers") !=
          std::string::npos);
    CHECK(launcher.err().find("FAILED") == std::string::npos);  // no summary: nothing failed by itself
    CHECK(wait_until([&] { return none_alive(pids); }, std::chrono::seconds(10)));
  }
}

TEST_CASE("a worker SIGKILLed mid-run is the root cause, and the rest are stopped") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  TempDir dir;
  Background launcher(on_backend(backend, with({"--nproc-per-node=3"}, family_worker(dir))), dir.file("out"),
                      dir.file("err"), base_options());
  REQUIRE(wait_until([&] { return all_started(dir, 3); }));
  auto pids = family_pids(dir, 3);
  ::kill(read_pid(dir.file("w_1")), SIGKILL);
  CHECK(launcher.wait() == 1);
  std::string err = launcher.err();
  INFO(err);
  CHECK(err.find("/bin/sh FAILED") != std::string::npos);
  CHECK(err.find("rank      : 1 (local_rank: 1)") != std::string::npos);
  CHECK(err.find("exitcode  : -9") != std::string::npos);
  CHECK(err.find("Signal 9 (SIGKILL) received by PID") != std::string::npos);
  CHECK(err.find("<NO_OTHER_FAILURES>") != std::string::npos);
  // The grandchildren go with their workers' process groups.
  CHECK(wait_until([&] { return none_alive(pids); }, std::chrono::seconds(10)));
}

TEST_CASE("the launcher SIGKILLed: workers and their children do not outlive it") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  TempDir dir;
  Background launcher(on_backend(backend, with({"--nproc-per-node=2"}, family_worker(dir))), dir.file("out"),
                      dir.file("err"), base_options());
  REQUIRE(wait_until([&] { return all_started(dir, 2); }));
  auto pids = family_pids(dir, 2);
  for (pid_t pid : pids) CHECK(alive(pid));
  launcher.signal(SIGKILL);
  CHECK(launcher.wait() == -SIGKILL);
  CHECK(wait_until([&] { return none_alive(pids); }, std::chrono::seconds(10)));
}

TEST_CASE("the launcher SIGKILLed with 70 workers: grandchildren without the job's marker go with their groups") {
  // More workers than the watchdog is told of in one batch (64), no job cgroup, and
  // grandchildren with an empty environment: only the watchdog's list of process
  // groups can find them.
  TempDir dir;
  RunOptions options = base_options();
  options.set_env["ELASTIC_JOB_CGROUP"] = "off";
  const std::vector<std::string> worker = {
      "/bin/sh", "-c",
      "env -i /bin/sleep 300 & echo $! > \"$0/gc_$RANK\"; echo $$ > \"$0/w_$RANK.tmp\"; "
      "mv \"$0/w_$RANK.tmp\" \"$0/w_$RANK\"; wait",
      dir.path().string()};
  Background launcher(with({"--nproc-per-node=70"}, worker), dir.file("out"), dir.file("err"), options);
  REQUIRE(wait_until([&] { return all_started(dir, 70); }, std::chrono::seconds(60)));
  auto pids = family_pids(dir, 70);
  for (pid_t pid : pids) CHECK(alive(pid));
  launcher.signal(SIGKILL);
  CHECK(launcher.wait() == -SIGKILL);
  CHECK(wait_until([&] { return none_alive(pids); }, std::chrono::seconds(10)));
}

TEST_CASE("a worker ignoring SIGTERM is SIGKILLed after the grace period") {
  TempDir dir;
  Background launcher(with({"--nproc-per-node=2", "--term-timeout=1"}, family_worker(dir, "trap '' TERM; ")),
                      dir.file("out"), dir.file("err"), base_options());
  REQUIRE(wait_until([&] { return all_started(dir, 2); }));
  auto pids = family_pids(dir, 2);
  launcher.signal(SIGTERM);
  CHECK(launcher.wait() == 128 + SIGTERM);
  CHECK(launcher.err().find("forcefully exiting via SIGKILL") != std::string::npos);
  CHECK(wait_until([&] { return none_alive(pids); }, std::chrono::seconds(10)));
}

TEST_CASE("a failed run leaves no process behind, detached grandchildren included") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  TempDir dir;
  // Rank 0 also starts a grandchild in a session of its own, out of its process group.
  auto r = elastic_run(on_backend(backend, {"--nproc-per-node=2", "/bin/sh", "-c",
                                            "setsid sleep 300 & echo $! > \"$0/escaped_$RANK\"; sleep 300 & echo $! > "
                                            "\"$0/gc_$RANK\"; if [ $RANK = 1 ]; then sleep 0.5; exit 7; fi; wait",
                                            dir.path().string()}),
                       base_options());
  CHECK(r.exitcode == 1);
  CHECK(r.err.find("exitcode  : 7") != std::string::npos);
  std::vector<pid_t> pids;
  for (const char* name : {"escaped_0", "escaped_1", "gc_0", "gc_1"}) pids.push_back(read_pid(dir.file(name)));
  CHECK(wait_until([&] { return none_alive(pids); }, std::chrono::seconds(10)));
}

TEST_CASE("a worker that ends is reaped at once, and what it left running is killed") {
  TempDir dir;
  // Rank 0 leaves a background child and exits 0; rank 1 runs until told to stop.
  Background launcher({"--nproc-per-node=2", "/bin/sh", "-c",
                       "if [ $RANK = 0 ]; then sleep 300 & echo $! > \"$0/gc\"; echo $$ > \"$0/w0.tmp\"; "
                       "mv \"$0/w0.tmp\" \"$0/w0\"; exit 0; fi; "
                       "while [ ! -e \"$0/stop\" ]; do sleep 0.05; done",
                       dir.path().string()},
                      dir.file("out"), dir.file("err"), base_options());
  REQUIRE(wait_until([&] { return file_exists(dir.file("w0")); }));
  const pid_t worker0 = read_pid(dir.file("w0"));
  const pid_t grandchild = read_pid(dir.file("gc"));
  // Gone entirely: not even a zombie entry in /proc.
  CHECK(wait_until([&] { return !file_exists("/proc/" + std::to_string(worker0)); }, std::chrono::seconds(10)));
  CHECK(wait_until([&] { return !alive(grandchild); }, std::chrono::seconds(10)));
  CHECK(alive(launcher.pid()));
  write_file(dir.file("stop"), "");
  CHECK(launcher.wait() == 0);
}

TEST_CASE("signals-to-handle forwards other signals, such as Slurm SIGUSR1") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  TempDir dir;
  Background launcher(on_backend(backend, {"--nproc-per-node=2", "--signals-to-handle=SIGUSR1,SIGTERM", "/bin/sh", "-c",
                                           "trap 'touch \"$0/usr1_$RANK\"; exit 0' USR1; touch \"$0/w_$RANK\"; "
                                           "while :; do sleep 0.05; done",
                                           dir.path().string()}),
                      dir.file("out"), dir.file("err"), base_options());
  REQUIRE(wait_until([&] { return file_exists(dir.file("w_0")) && file_exists(dir.file("w_1")); }));
  launcher.signal(SIGUSR1);
  CHECK(launcher.wait() == 128 + SIGUSR1);
  CHECK(file_exists(dir.file("usr1_0")));
  CHECK(file_exists(dir.file("usr1_1")));
}

TEST_CASE(
    "the launcher SIGKILLed without a job cgroup: only its own uid's processes with the marker as a variable go") {
  // Local users' attacks on the watchdog's marker scan: the job's marker copied into
  // another variable's value, and processes of another uid carrying it. Only a
  // process of the launcher's uid with ELASTIC_JOB_MARKER=<value> as a variable of
  // its own is the job's.
  if (!can_be_another_user()) ELASTIC_SKIP("starting processes of another uid needs root");
  TempDir dir;
  RunOptions options = base_options();
  options.set_env["ELASTIC_JOB_CGROUP"] = "off";
  Background launcher(
      with({"--nproc-per-node=1"}, family_worker(dir, "printf '%s' \"$ELASTIC_JOB_MARKER\" > \"$0/marker\"; ")),
      dir.file("out"), dir.file("err"), options);
  REQUIRE(wait_until([&] { return all_started(dir, 1); }));
  const std::string marker = std::string("ELASTIC_JOB_MARKER=") + read_file(dir.file("marker"));
  REQUIRE(marker.size() > std::string("ELASTIC_JOB_MARKER=").size());
  const pid_t watchdog = child_named(launcher.pid(), "elastic-watchdog");
  REQUIRE(watchdog > 0);
  const std::vector<std::string> sleep = {"/bin/sleep", "300"};
  // Started by the test, outside the job: only the marker makes them the job's.
  ProcessAs ours_whole(::geteuid(), sleep, {"A=1", marker, "Z=2"});
  ProcessAs ours_last(::geteuid(), sleep, {"A=1", marker});
  ProcessAs ours_quoted(::geteuid(), sleep, {"NOTE=copied:" + marker});
  ProcessAs ours_longer(::geteuid(), sleep, {marker + "0"});
  ProcessAs nobody_quoted(nobody, sleep, {"NOTE=copied:" + marker});
  ProcessAs nobody_whole(nobody, sleep, {marker});
  for (pid_t pid : {ours_whole.pid(), ours_last.pid(), ours_quoted.pid(), ours_longer.pid(), nobody_quoted.pid(),
                    nobody_whole.pid()})
    REQUIRE(wait_until([&] { return alive(pid) && read_file("/proc/" + std::to_string(pid) + "/comm") == "sleep\n"; },
                       std::chrono::seconds(10)));
  auto pids = family_pids(dir, 1);
  launcher.signal(SIGKILL);
  CHECK(launcher.wait() == -SIGKILL);
  CHECK(wait_until([&] { return none_alive(pids); }, std::chrono::seconds(10)));
  // The scan does run: the processes of our uid with the marker as a variable go.
  CHECK(wait_until([&] { return !alive(ours_whole.pid()) && !alive(ours_last.pid()); }, std::chrono::seconds(10)));
  // Once the watchdog has finished its passes, the others are still there.
  CHECK(wait_until([&] { return !alive(watchdog); }, std::chrono::seconds(20)));
  CHECK(alive(ours_quoted.pid()));
  CHECK(alive(ours_longer.pid()));
  CHECK(alive(nobody_quoted.pid()));
  CHECK(alive(nobody_whole.pid()));
}

TEST_CASE("the launcher SIGKILLed with a job cgroup: the watchdog kills the cgroup and looks at no other process") {
  // With the job in a cgroup of its own, the marker is not needed: a process outside
  // the cgroup carrying it, even of the launcher's uid, is not the job's.
  TempDir dir;
  RunOptions options = base_options();
  options.unset_env.push_back("ELASTIC_JOB_CGROUP");
  Background launcher(with({"--nproc-per-node=1"}, family_worker(dir,
                                                                 "printf '%s' \"$ELASTIC_JOB_MARKER\" > \"$0/marker\"; "
                                                                 "cat /proc/self/cgroup > \"$0/cgroup\"; ")),
                      dir.file("out"), dir.file("err"), options);
  REQUIRE(wait_until([&] { return all_started(dir, 1); }));
  const pid_t watchdog = child_named(launcher.pid(), "elastic-watchdog");
  REQUIRE(watchdog > 0);
  if (read_file(dir.file("cgroup")).find("/elastic-") == std::string::npos) {
    launcher.signal(SIGTERM);
    launcher.wait();
    ELASTIC_SKIP("no writable cgroup v2 with cgroup.kill here: the job has no cgroup");
  }
  const std::string marker = std::string("ELASTIC_JOB_MARKER=") + read_file(dir.file("marker"));
  ProcessAs outside(::geteuid(), {"/bin/sleep", "300"}, {marker});
  REQUIRE(wait_until([&] { return read_file("/proc/" + std::to_string(outside.pid()) + "/comm") == "sleep\n"; },
                     std::chrono::seconds(10)));
  auto pids = family_pids(dir, 1);
  launcher.signal(SIGKILL);
  CHECK(launcher.wait() == -SIGKILL);
  CHECK(wait_until([&] { return none_alive(pids); }, std::chrono::seconds(10)));
  CHECK(wait_until([&] { return !alive(watchdog); }, std::chrono::seconds(20)));
  CHECK(alive(outside.pid()));
}
