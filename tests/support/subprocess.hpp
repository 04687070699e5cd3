// Test support: run a real program with a chosen environment, capture its output
// and exit code (negative for a signal), with a deadline so no test can hang.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

extern char** environ;

namespace elastic::testing {

struct RunResult {
  int exitcode = 0;  // negative: killed by that signal
  std::string out;
  std::string err;
  bool timed_out = false;
  pid_t pid = 0;
};

struct RunOptions {
  std::map<std::string, std::string> set_env;
  std::vector<std::string> unset_env;
  std::string stdin_data;
  std::chrono::milliseconds timeout{60000};
  std::string cwd;

  RunOptions() = default;
  RunOptions(std::map<std::string, std::string> set, std::vector<std::string> unset = {})
      : set_env(std::move(set)), unset_env(std::move(unset)) {}
  RunOptions& in(std::string directory) {
    cwd = std::move(directory);
    return *this;
  }
  RunOptions& with_timeout(std::chrono::milliseconds limit) {
    timeout = limit;
    return *this;
  }
};

inline std::vector<std::string> make_environment(const RunOptions& options) {
  std::map<std::string, std::string> env;
  for (char** e = environ; *e; ++e) {
    std::string entry(*e);
    auto eq = entry.find('=');
    if (eq != std::string::npos) env[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  for (const auto& name : options.unset_env) env.erase(name);
  for (const auto& [name, value] : options.set_env) env[name] = value;
  std::vector<std::string> result;
  for (const auto& [name, value] : env) result.push_back(name + "=" + value);
  return result;
}

// Where a child's standard descriptors come from (-1: the test's own), and what
// else it starts with.
struct ChildSetup {
  int in = -1;
  int out = -1;
  int err = -1;
  std::string cwd;               // empty: the test's own
  bool die_with_parent = false;  // PR_SET_PDEATHSIG: gone even when the test is killed
};

// Starts `argv` (argv[0] a path, else looked up in PATH) with exactly `env`
// (NAME=value entries), SIGPIPE at its default, and returns its pid once it runs the
// program: a signal sent right after reaches the program, not a copy of this test
// that has not exec'd yet. A program that cannot be started exits 127 (126: no cwd).
inline pid_t start_child(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                         const ChildSetup& setup = {}) {
  if (argv.empty()) throw std::invalid_argument("start_child: empty argv");
  std::vector<std::string> argv_copy = argv, env_copy = env;
  std::vector<char*> args, envp;
  for (auto& a : argv_copy) args.push_back(a.data());
  args.push_back(nullptr);
  for (auto& e : env_copy) envp.push_back(e.data());
  envp.push_back(nullptr);
  int exec_done[2];
  if (::pipe2(exec_done, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    ::close(exec_done[0]);
    if (setup.die_with_parent) ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (setup.in >= 0) ::dup2(setup.in, 0);
    if (setup.out >= 0) ::dup2(setup.out, 1);
    if (setup.err >= 0) ::dup2(setup.err, 2);
    ::signal(SIGPIPE, SIG_DFL);
    if (!setup.cwd.empty() && ::chdir(setup.cwd.c_str()) != 0) _exit(126);
    ::execve(args[0], args.data(), envp.data());
    ::execvpe(args[0], args.data(), envp.data());
    _exit(127);
  }
  ::close(exec_done[1]);
  char ignored;
  while (::read(exec_done[0], &ignored, 1) < 0 && errno == EINTR) {
  }
  ::close(exec_done[0]);
  return pid;
}

inline RunResult run(const std::vector<std::string>& argv, const RunOptions& options = {}) {
  if (argv.empty()) throw std::invalid_argument("run: empty argv");
  int out_pipe[2], err_pipe[2], in_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) || ::pipe2(err_pipe, O_CLOEXEC) || ::pipe2(in_pipe, O_CLOEXEC))
    throw std::runtime_error("pipe failed");
  ChildSetup setup;
  setup.in = in_pipe[0];
  setup.out = out_pipe[1];
  setup.err = err_pipe[1];
  setup.cwd = options.cwd;
  const pid_t pid = start_child(argv, make_environment(options), setup);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  ::close(in_pipe[0]);
  if (!options.stdin_data.empty()) {
    ssize_t ignored = ::write(in_pipe[1], options.stdin_data.data(), options.stdin_data.size());
    (void)ignored;
  }
  ::close(in_pipe[1]);

  RunResult result;
  result.pid = pid;
  auto deadline = std::chrono::steady_clock::now() + options.timeout;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&result.out, &result.err};
  int open_count = 2;
  while (open_count > 0) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      result.timed_out = true;
      ::kill(pid, SIGKILL);
      break;
    }
    int n = ::poll(fds, 2, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR) continue;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buffer[65536];
      ssize_t got = ::read(fds[i].fd, buffer, sizeof(buffer));
      if (got > 0) {
        sinks[i]->append(buffer, static_cast<std::size_t>(got));
      } else {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_count;
      }
    }
  }
  for (auto& fd : fds)
    if (fd.fd >= 0) ::close(fd.fd);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exitcode = WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
  return result;
}

// A fresh directory, removed with everything in it at the end of the scope.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "elastic_test_XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all, ec);
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

inline void write_file(const std::string& path, const std::string& contents) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
  if (!out) throw std::runtime_error("cannot write " + path);
}

// Sets an environment variable for one scope, restoring the old value after.
class ScopedEnv {
 public:
  ScopedEnv(std::string name, std::optional<std::string> value) : name_(std::move(name)) {
    if (const char* old = std::getenv(name_.c_str())) old_ = old;
    if (value)
      ::setenv(name_.c_str(), value->c_str(), 1);
    else
      ::unsetenv(name_.c_str());
  }
  ~ScopedEnv() {
    if (old_)
      ::setenv(name_.c_str(), old_->c_str(), 1);
    else
      ::unsetenv(name_.c_str());
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_;
};

// The Debian interpreter that has python3-torch.
inline const char* system_python() { return "/usr/bin/python3"; }

}  // namespace elastic::testing
