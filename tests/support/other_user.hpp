// Test support: processes of another local user, for attacks by one. The suite
// runs as root; a forked child drops to `nobody` (65534) before it acts.
#pragma once

#include <grp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <string>
#include <utility>
#include <vector>

namespace elastic::testing {

inline constexpr uid_t nobody = 65534;

// Only root can start processes of another uid.
inline bool can_be_another_user() { return ::geteuid() == 0; }

// Drops this (forked) process to `uid` and the group of the same number. Only
// async-signal-safe calls: it runs between fork and exec.
inline bool become_user(uid_t uid) {
  if (uid == ::geteuid()) return true;
  return ::setgroups(0, nullptr) == 0 && ::setgid(static_cast<gid_t>(uid)) == 0 && ::setuid(uid) == 0 &&
         ::geteuid() == uid;
}

// A process of `uid` running argv with exactly `env`, in a session of its own (so no
// signal to the test's group reaches it). Killed and reaped when it goes out of scope.
class ProcessAs {
 public:
  ProcessAs(uid_t uid, std::vector<std::string> argv, std::vector<std::string> env)
      : argv_(std::move(argv)), env_(std::move(env)) {
    std::vector<char*> args;
    for (auto& a : argv_) args.push_back(a.data());
    args.push_back(nullptr);
    std::vector<char*> envp;
    for (auto& e : env_) envp.push_back(e.data());
    envp.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::setsid();
      if (!become_user(uid)) ::_exit(126);
      ::execve(args[0], args.data(), envp.data());
      ::_exit(127);
    }
  }
  ProcessAs(const ProcessAs&) = delete;
  ProcessAs& operator=(const ProcessAs&) = delete;
  ~ProcessAs() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
  pid_t pid() const { return pid_; }

 private:
  std::vector<std::string> argv_;
  std::vector<std::string> env_;
  pid_t pid_ = -1;
};

}  // namespace elastic::testing
