// Test support for the launcher: run elastic-run for real, in the foreground or
// in the background (to signal it), and look at the processes it left.
#pragma once

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/subprocess.hpp"

namespace elastic::testing {

// Log directories made without --log-dir (never removed, as with torchrun) go
// under this, removed when the test program ends.
inline const TempDir& scratch_tmpdir() {
  static TempDir dir;
  return dir;
}

inline RunOptions with_scratch_tmpdir(RunOptions options) {
  if (!options.set_env.count("TMPDIR")) options.set_env["TMPDIR"] = scratch_tmpdir().path().string();
  return options;
}

// A launch that only warnings make noisy, with no PET_* defaults or error file
// inherited from the test's own environment.
inline RunOptions quiet_launch_options() {
  RunOptions options;
  options.set_env["OMP_NUM_THREADS"] = "1";
  options.set_env["ELASTIC_LOG_LEVEL"] = "warning";
  options.unset_env = {"PET_NPROC_PER_NODE", "PET_NNODES", "PET_NO_PYTHON", "TORCHELASTIC_ERROR_FILE"};
  return options;
}

inline RunResult elastic_run(std::vector<std::string> args, RunOptions options = {}) {
  options = with_scratch_tmpdir(std::move(options));
  args.insert(args.begin(), ELASTIC_RUN_BINARY);
  if (options.timeout == std::chrono::milliseconds(60000)) options.timeout = std::chrono::seconds(120);
  return run(args, options);
}

// Polls `ready` every 10 ms until true or `timeout` passes.
inline bool wait_until(const std::function<bool()>& ready,
                       std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (ready()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return ready();
}

// True while `pid` exists and is not a zombie.
// Read with read(2): a process that exits during the read makes it fail with ESRCH,
// which std::ifstream turns into an exception.
inline bool alive(pid_t pid) {
  if (pid <= 0 || ::kill(pid, 0) != 0) return false;
  const int fd = ::open(("/proc/" + std::to_string(pid) + "/stat").c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;  // gone since kill()
  char buffer[1024];
  ssize_t got;
  while ((got = ::read(fd, buffer, sizeof(buffer))) < 0 && errno == EINTR) {
  }
  ::close(fd);
  if (got <= 0) return false;
  const std::string text(buffer, static_cast<std::size_t>(got));
  auto close_paren = text.rfind(')');
  return close_paren == std::string::npos || close_paren + 2 >= text.size() || text[close_paren + 2] != 'Z';
}

inline bool file_exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

inline std::map<std::string, std::string> read_env_file(const std::string& path) {
  std::map<std::string, std::string> env;
  std::istringstream in(read_file(path));
  for (std::string line; std::getline(in, line);) {
    auto eq = line.find('=');
    if (eq != std::string::npos) env[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return env;
}

inline pid_t read_pid(const std::string& path) {
  std::istringstream in(read_file(path));
  pid_t pid = 0;
  in >> pid;
  return pid;
}

// elastic-run in the background; stdout and stderr go to files.
class Background {
 public:
  Background(std::vector<std::string> args, const std::string& out_file, const std::string& err_file,
             const RunOptions& options = {})
      : out_file_(out_file), err_file_(err_file) {
    args.insert(args.begin(), ELASTIC_RUN_BINARY);
    ChildSetup setup;
    setup.out = ::open(out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    setup.err = ::open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    pid_ = start_child(args, make_environment(with_scratch_tmpdir(options)), setup);
    ::close(setup.out);
    ::close(setup.err);
  }
  ~Background() {
    if (!reaped_) {
      ::kill(pid_, SIGKILL);
      wait();
    }
  }
  pid_t pid() const { return pid_; }
  void signal(int sig) { ::kill(pid_, sig); }
  // Exit code (negative: signal), or 1000 on timeout (the launcher is then killed).
  int wait(std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    if (reaped_) return code_;
    int status = 0;
    bool done = wait_until([&] { return ::waitpid(pid_, &status, WNOHANG) == pid_; }, timeout);
    if (!done) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
      reaped_ = true;
      return code_ = 1000;
    }
    reaped_ = true;
    code_ = WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
    return code_;
  }
  std::string out() const { return read_file(out_file_); }
  std::string err() const { return read_file(err_file_); }

 private:
  std::string out_file_, err_file_;
  pid_t pid_ = -1;
  bool reaped_ = false;
  int code_ = 0;
};

}  // namespace elastic::testing
