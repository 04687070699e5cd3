// elastic-run when everything around it misbehaves: signals during the grace
// period, a console that is non-blocking, slow or never read, a full disk under
// the log directory, a launcher that dies uncleanly with descendants that left
// their process groups, workers that leave zombies by the hundred.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <thread>

#include "support/backends.hpp"
#include "support/launcher.hpp"
#include "support/sanitizers.hpp"
#include "support/skip.hpp"
#include "support/tmpfs.hpp"

using namespace elastic::testing;
namespace fs = std::filesystem;

namespace {

RunOptions base_options() { return quiet_launch_options(); }

bool none_alive(const std::vector<pid_t>& pids) {
  for (pid_t pid : pids)
    if (alive(pid)) return false;
  return true;
}

// Whatever a failed check left running is not left to the next test.
struct KillAtEnd {
  std::vector<pid_t> pids;
  ~KillAtEnd() {
    for (pid_t pid : pids)
      if (pid > 1) ::kill(pid, SIGKILL);
  }
};

// elastic-run with stdout and stderr on pipes the test reads when it chooses:
// optionally O_NONBLOCK (set on the pipe, shared with the launcher, as a
// parent would), read slowly, or not read at all until told.
class PipedLauncher {
 public:
  PipedLauncher(std::vector<std::string> args, bool nonblocking, const RunOptions& options = base_options()) {
    args.insert(args.begin(), ELASTIC_RUN_BINARY);
    int out[2], err[2];
    REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
    if (nonblocking) {
      ::fcntl(out[1], F_SETFL, ::fcntl(out[1], F_GETFL) | O_NONBLOCK);
      ::fcntl(err[1], F_SETFL, ::fcntl(err[1], F_GETFL) | O_NONBLOCK);
    }
    ChildSetup setup;
    setup.out = out[1];
    setup.err = err[1];
    pid_ = start_child(args, make_environment(with_scratch_tmpdir(options)), setup);
    ::close(out[1]);
    ::close(err[1]);
    out_fd_ = out[0];
    err_fd_ = err[0];
  }
  ~PipedLauncher() {
    close_stdout();
    if (err_fd_ >= 0) ::close(err_fd_);
    if (!reaped_) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
  }
  pid_t pid() const { return pid_; }
  void close_stdout() {
    if (out_fd_ >= 0) ::close(out_fd_);
    out_fd_ = -1;
  }

  // Reads both pipes to their end, `chunk` bytes at a time with `pause` between
  // reads (a slow reader), then reaps the launcher. Exit code, or 1000 when it
  // did not end within `limit`.
  int read_all(std::size_t chunk, std::chrono::microseconds pause,
               std::chrono::seconds limit = std::chrono::seconds(120)) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    std::vector<char> buffer(chunk);
    pollfd fds[2] = {{out_fd_, POLLIN, 0}, {err_fd_, POLLIN, 0}};
    std::string* sinks[2] = {&out, &err};
    int open_count = (out_fd_ >= 0) + (err_fd_ >= 0);
    while (open_count > 0 && std::chrono::steady_clock::now() < deadline) {
      if (::poll(fds, 2, 1000) <= 0) continue;
      for (int i = 0; i < 2; ++i) {
        if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        ssize_t got = ::read(fds[i].fd, buffer.data(), buffer.size());
        if (got > 0) {
          sinks[i]->append(buffer.data(), static_cast<std::size_t>(got));
        } else {
          fds[i].fd = -1;
          --open_count;
        }
      }
      std::this_thread::sleep_for(pause);
    }
    if (open_count > 0) return 1000;
    int status = 0;
    bool done = wait_until([&] { return ::waitpid(pid_, &status, WNOHANG) == pid_; }, std::chrono::seconds(30));
    if (!done) return 1000;
    reaped_ = true;
    return WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
  }

  std::string out, err;

 private:
  pid_t pid_ = -1;
  int out_fd_ = -1, err_fd_ = -1;
  bool reaped_ = false;
};

// Children of `parent` that are zombies, from /proc.
int zombie_children(pid_t parent) {
  int count = 0;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(entry.path() / "stat");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto close_paren = text.rfind(')');
    if (close_paren == std::string::npos) continue;
    std::istringstream rest(text.substr(close_paren + 2));
    char state = 0;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (state == 'Z' && ppid == parent) ++count;
  }
  return count;
}

}  // namespace

TEST_CASE("a signal during the grace period after a failure: the failure is still reported, at once") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  TempDir dir;
  RunOptions options = base_options();
  options.set_env["TORCHELASTIC_ERROR_FILE"] = dir.file("launcher_error.json");
  // Rank 0 records an error and exits 3; rank 1 ignores SIGTERM, so the launcher
  // waits out a long grace period for it.
  Background launcher(
      on_backend(backend, {"--nproc-per-node=2", "--term-timeout=100", "/bin/sh", "-c",
                           "if [ $RANK = 0 ]; then while [ ! -e \"$0/w_1\" ]; do sleep 0.05; done; "
                           "printf '{\"message\": \"rank zero broke\"}' > \"$TORCHELASTIC_ERROR_FILE\"; exit 3; fi; "
                           "trap 'touch \"$0/term_1\"' TERM; echo $$ > \"$0/w_1.tmp\"; mv \"$0/w_1.tmp\" \"$0/w_1\"; "
                           "while :; do sleep 0.1; done",
                           dir.path().string()}),
      dir.file("out"), dir.file("err"), options);
  REQUIRE(wait_until([&] { return file_exists(dir.file("term_1")); }));
  KillAtEnd cleanup{{read_pid(dir.file("w_1"))}};
  launcher.signal(SIGTERM);
  CHECK(launcher.wait(std::chrono::seconds(60)) == 1);
  std::string err = launcher.err();
  INFO(err);
  CHECK(err.find("Received 15 death signal while stopping workers after a failure") != std::string::npos);
  CHECK(err.find("/bin/sh FAILED") != std::string::npos);
  CHECK(err.find("exitcode  : 3") != std::string::npos);
  CHECK(err.find("rank zero broke") != std::string::npos);
  CHECK(read_file(dir.file("launcher_error.json")).find("rank zero broke") != std::string::npos);
  CHECK(wait_until([&] { return none_alive(cleanup.pids); }, std::chrono::seconds(10)));
}

TEST_CASE("a second signal during the grace period kills the workers at once, exit 128 + that signal") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  TempDir dir;
  Background launcher(on_backend(backend, {"--nproc-per-node=2", "--term-timeout=100", "/bin/sh", "-c",
                                           "trap 'touch \"$0/term_$RANK\"' TERM; trap 'touch \"$0/int_$RANK\"' INT; "
                                           "echo $$ > \"$0/w_$RANK.tmp\"; mv \"$0/w_$RANK.tmp\" \"$0/w_$RANK\"; "
                                           "while :; do sleep 0.1; done",
                                           dir.path().string()}),
                      dir.file("out"), dir.file("err"), base_options());
  REQUIRE(wait_until([&] { return file_exists(dir.file("w_0")) && file_exists(dir.file("w_1")); }));
  KillAtEnd cleanup{{read_pid(dir.file("w_0")), read_pid(dir.file("w_1"))}};
  launcher.signal(SIGTERM);
  REQUIRE(wait_until([&] { return file_exists(dir.file("term_0")) && file_exists(dir.file("term_1")); }));
  launcher.signal(SIGINT);
  CHECK(launcher.wait(std::chrono::seconds(60)) == 128 + SIGINT);
  INFO(launcher.err());
  CHECK(launcher.err().find("Received 2 death signal while shutting down") != std::string::npos);
  CHECK(wait_until([&] { return none_alive(cleanup.pids); }, std::chrono::seconds(10)));
}

TEST_CASE("a non-blocking console read slowly gets every teed line and the summary") {
  // 20 000 lines from rank 0, then it fails; the console pipes are O_NONBLOCK.
  PipedLauncher launcher({"--nproc-per-node=1", "--tee=3", "/bin/sh", "-c", "seq 1 20000; exit 3"}, true);
  const int code = launcher.read_all(4096, std::chrono::microseconds(500));
  CHECK(code == 1);
  std::string expected;
  for (int i = 1; i <= 20000; ++i) expected += "[default0]:" + std::to_string(i) + "\n";
  CHECK(launcher.out == expected);
  INFO(launcher.err);
  CHECK(launcher.err.find("elastic.ChildFailedError") != std::string::npos);
  CHECK(launcher.err.find("exitcode  : 3") != std::string::npos);
}

TEST_CASE("a console nobody reads never stops the launcher from stopping workers or reaping them") {
  TempDir dir;
  // Rank 0 writes 2 MB (far more than a pipe holds) and fails; rank 1 ignores
  // SIGTERM. Nobody reads the launcher's stdout meanwhile.
  PipedLauncher launcher({"--nproc-per-node=2", "--tee=3", "--term-timeout=100", "/bin/sh", "-c",
                          "echo $$ > \"$0/w_$RANK.tmp\"; mv \"$0/w_$RANK.tmp\" \"$0/w_$RANK\"; "
                          "if [ $RANK = 0 ]; then head -c 2000000 /dev/zero | tr '\\0' x | fold -w 99; exit 3; fi; "
                          "trap 'touch \"$0/term_1\"' TERM; while :; do sleep 0.1; done",
                          dir.path().string()},
                         false);
  REQUIRE(wait_until([&] { return file_exists(dir.file("w_0")) && file_exists(dir.file("w_1")); }));
  const pid_t rank0 = read_pid(dir.file("w_0")), rank1 = read_pid(dir.file("w_1"));
  KillAtEnd cleanup{{rank0, rank1}};
  // The failure is acted on: rank 1 is told to stop, rank 0 is reaped (no zombie).
  CHECK(wait_until([&] { return file_exists(dir.file("term_1")); }, std::chrono::seconds(30)));
  CHECK(wait_until([&] { return !file_exists("/proc/" + std::to_string(rank0)); }, std::chrono::seconds(30)));
  // And a signal is handled: rank 1 is killed at once.
  ::kill(launcher.pid(), SIGTERM);
  CHECK(wait_until([&] { return !alive(rank1); }, std::chrono::seconds(30)));
  // Once the reader goes away, the launcher ends with the failure reported.
  launcher.close_stdout();
  const int code = launcher.read_all(65536, std::chrono::microseconds(0));
  CHECK(code == 1);
  INFO(launcher.err);
  CHECK(launcher.err.find("exitcode  : 3") != std::string::npos);
}

// Peak resident memory of `pid` in KiB (VmHWM), 0 when unknown.
long peak_rss_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::atol(line.c_str() + 6);
  return 0;
}

TEST_CASE("a console read only later: its queue stays bounded, then every line arrives") {
  TempDir dir;
  // 40 MB of lines while nobody reads: the launcher queues a bounded amount and
  // stops reading the worker's pipe (the worker waits in its writes).
  PipedLauncher launcher(
      {"--nproc-per-node=1", "--tee=3", "/bin/sh", "-c",
       "head -c 40000000 /dev/zero | tr '\\0' x | fold -w 99; touch \"$0/done\"", dir.path().string()},
      false);
  // Give it time to fill what it may (not an assertion on time: the worker cannot
  // finish until the console is read, whatever the wait).
  std::this_thread::sleep_for(std::chrono::seconds(2));
  CHECK_FALSE(file_exists(dir.file("done")));
  // The queue is bounded (4 MiB of console output): nothing like the 40 MB written
  // (a sanitizer's shadow memory and quarantine come on top).
  CHECK(peak_rss_kib(launcher.pid()) < (elastic::testing::under_sanitizer ? 96 : 32) * 1024);
  const int code = launcher.read_all(65536, std::chrono::microseconds(0));
  CHECK(code == 0);
  CHECK(file_exists(dir.file("done")));
  const std::string line = "[default0]:" + std::string(99, 'x') + "\n";
  const std::size_t lines = 40000000 / 99 + 1;
  CHECK(launcher.out.size() == (lines - 1) * line.size() + 11 + 40000000 % 99 + 1);
  CHECK(launcher.out.compare(0, line.size(), line) == 0);
}

TEST_CASE("a full disk under --log-dir is reported once, the console copy stays complete") {
  TempDir dir;
  const std::string mount_point = dir.file("small");
  ScopedTmpfs tmpfs(mount_point, "size=1m,mode=0700");
  if (!tmpfs.mounted()) {
    ELASTIC_SKIP("cannot mount a tmpfs at " + mount_point + " (" + tmpfs.error() + ")");
  }
  // About 2 MB of numbered lines into a 1 MiB file system.
  auto r = elastic_run({"--nproc-per-node=1", "--tee=3", "--log-dir", mount_point, "/bin/sh", "-c", "seq 1 300000"},
                       base_options());
  CHECK(r.exitcode == 0);
  std::string expected;
  for (int i = 1; i <= 300000; ++i) expected += "[default0]:" + std::to_string(i) + "\n";
  CHECK(r.out == expected);
  INFO(r.err);
  const std::string message = "cannot write log file " + mount_point;
  const auto first = r.err.find(message);
  REQUIRE(first != std::string::npos);
  CHECK(r.err.find("/attempt_0/0/stdout.log: No space left on device", first) != std::string::npos);
  CHECK(r.err.find(message, first + 1) == std::string::npos);  // once
}

// Where cgroup v2 is mounted ("" when it is not).
std::string cgroup2_mount() {
  std::ifstream mounts("/proc/self/mountinfo");
  for (std::string line; std::getline(mounts, line);) {
    auto separator = line.find(" - cgroup2 ");
    if (separator == std::string::npos) continue;
    std::istringstream fields(line.substr(0, separator));
    std::string id, parent, device, root, mount_point;
    fields >> id >> parent >> device >> root >> mount_point;
    return mount_point;
  }
  return "";
}

// The cgroup v2 directory of `pid` when it is in a job cgroup of the launcher, else "".
std::string job_cgroup_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cgroup");
  std::string relative;
  for (std::string line; std::getline(in, line);)
    if (line.rfind("0::", 0) == 0) relative = line.substr(3);
  if (relative.find("/elastic-") == std::string::npos) return "";
  return cgroup2_mount() + relative;
}

TEST_CASE("the launcher dying uncleanly takes descendants that left their process group with it") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  // Both ways of finding them: the job's cgroup (where one can be made) and,
  // with it turned off, the environment marker.
  for (const char* cgroup : {"off", "auto"}) {
    for (int sig : {SIGKILL, SIGUSR1}) {
      INFO("signal " << sig << ", job cgroup " << cgroup);
      TempDir dir;
      RunOptions options = base_options();
      options.set_env["ELASTIC_JOB_CGROUP"] = cgroup;
      // One grandchild in a session of its own, one in a process group of its own,
      // one orphaned (its parent exits at once), and the worker's own child.
      Background launcher(
          on_backend(
              backend,
              {"--nproc-per-node=2", "/bin/sh", "-c",
               "setsid sleep 3137 & echo $! > \"$0/p_setsid_$RANK\"; "
               "/usr/bin/python3 -c 'import os; os.setpgid(0, 0); os.execvp(\"sleep\", [\"sleep\", \"3138\"])' & "
               "echo $! > \"$0/p_setpgid_$RANK\"; "
               "(setsid sleep 3139 & echo $! > \"$0/p_orphan_$RANK\") ; sleep 3140 & echo $! > \"$0/p_child_$RANK\"; "
               "touch \"$0/started_$RANK\"; wait",
               dir.path().string()}),
          dir.file("out"), dir.file("err"), options);
      REQUIRE(wait_until([&] { return file_exists(dir.file("started_0")) && file_exists(dir.file("started_1")); }));
      KillAtEnd cleanup;
      for (const auto& entry : fs::directory_iterator(dir.path()))
        if (entry.path().filename().string().rfind("p_", 0) == 0) cleanup.pids.push_back(read_pid(entry.path()));
      REQUIRE(cleanup.pids.size() == 8);
      // The setpgid one may still be starting Python: wait until it is sleep.
      REQUIRE(wait_until([&] {
        for (pid_t pid : cleanup.pids)
          if (read_file("/proc/" + std::to_string(pid) + "/comm") != "sleep\n") return false;
        return true;
      }));
      const std::string job_cgroup = job_cgroup_of(cleanup.pids.front());
      if (std::string(cgroup) == "off") CHECK(job_cgroup.empty());
      if (std::string(cgroup) == "auto" && job_cgroup.empty())
        WARN("no writable cgroup v2 with cgroup.kill here: the environment marker was used again");
      launcher.signal(sig);
      CHECK(launcher.wait() == -sig);
      CHECK(wait_until([&] { return none_alive(cleanup.pids); }, std::chrono::seconds(20)));
      // The watchdog removes the job's cgroup once it is empty.
      if (!job_cgroup.empty()) CHECK(wait_until([&] { return !fs::exists(job_cgroup); }, std::chrono::seconds(20)));
    }
  }
}

TEST_CASE("a job cgroup, where one is made, is removed when the run ends") {
  TempDir dir;
  auto r = elastic_run(
      {"--nproc-per-node=2", "/bin/sh", "-c", "cat /proc/self/cgroup > \"$0/cgroup_$RANK\"", dir.path().string()},
      base_options());
  CHECK(r.exitcode == 0);
  std::string relative;
  std::istringstream lines(read_file(dir.file("cgroup_0")));
  for (std::string line; std::getline(lines, line);)
    if (line.rfind("0::", 0) == 0) relative = line.substr(3);
  if (relative.find("/elastic-") == std::string::npos) {
    ELASTIC_SKIP("no writable cgroup v2 with cgroup.kill here: no job cgroup to check");
  }
  // The same cgroup for both workers, gone now.
  CHECK(read_file(dir.file("cgroup_1")).find(relative) != std::string::npos);
  const std::string path = cgroup2_mount() + relative;
  CHECK_FALSE(fs::exists(path));
}

TEST_CASE("orphans that come back to the launcher are reaped as they exit, not at the end") {
  TempDir dir;
  // 300 short-lived daemons: each one's parent exits at once, so it comes back
  // to the launcher (a child subreaper) and exits there.
  Background launcher({"--nproc-per-node=1", "/bin/sh", "-c",
                       "i=0; while [ $i -lt 300 ]; do (sh -c 'exit 0' &); i=$((i+1)); done; "
                       "touch \"$0/done\"; while :; do sleep 0.1; done",
                       dir.path().string()},
                      dir.file("out"), dir.file("err"), base_options());
  REQUIRE(wait_until([&] { return file_exists(dir.file("done")); }));
  CHECK(wait_until([&] { return zombie_children(launcher.pid()) == 0; }, std::chrono::seconds(30)));
  CHECK(alive(launcher.pid()));
  launcher.signal(SIGTERM);
  CHECK(launcher.wait() == 128 + SIGTERM);
}

TEST_CASE("a line of exactly 64 KiB is shown as one line, with no empty line after it") {
  auto r = elastic_run({"--nproc-per-node=1", "--tee=3", "/bin/sh", "-c",
                        "head -c 65536 /dev/zero | tr '\\0' x; sleep 0.3; echo; echo after"},
                       base_options());
  CHECK(r.exitcode == 0);
  CHECK(r.out == "[default0]:" + std::string(65536, 'x') + "\n[default0]:after\n");
}
