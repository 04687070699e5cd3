// Helper processes the library forks for itself and keeps for as long as their
// owner lives (the etcd store's lease sentinel): a launcher that kills the
// processes left over after a round leaves these alone. Their owners stop and
// reap them.
#pragma once

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <mutex>
#include <vector>

namespace elastic {

class HelperProcesses {
 public:
  static HelperProcesses& instance() {
    static HelperProcesses registry;
    return registry;
  }
  void add(pid_t pid) {
    std::lock_guard<std::mutex> lock(mutex_);
    pids_.push_back(pid);
  }
  void remove(pid_t pid) {
    std::lock_guard<std::mutex> lock(mutex_);
    pids_.erase(std::remove(pids_.begin(), pids_.end(), pid), pids_.end());
  }
  bool contains(pid_t pid) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::find(pids_.begin(), pids_.end(), pid) != pids_.end();
  }

 private:
  mutable std::mutex mutex_;
  std::vector<pid_t> pids_;
};

// Makes a just-forked child a quiet helper that acts only once its owner is gone:
// the terminal's and the owner's forwarded signals ignored, none blocked, `name`
// shown by ps, stdio on /dev/null (a reader waiting for EOF on the owner's stdout
// must not wait for us) and nothing else of the owner's open but `keep_fd`, moved
// to descriptor 3. Returns the descriptor `keep_fd` now has.
// Async-signal-safe calls only: the owner may have had threads when it forked.
inline int become_helper_child(const char* name, int keep_fd) noexcept {
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGUSR1, SIGUSR2}) ::sigaction(sig, &ignore, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::prctl(PR_SET_NAME, name, 0, 0, 0);
  // Above stdio first: keep_fd is 0-2 when the owner started with those closed.
  int keep = ::fcntl(keep_fd, F_DUPFD, 3);
  if (keep < 0) keep = keep_fd;
  int null_fd = ::open("/dev/null", O_RDWR);
  if (null_fd >= 0) {
    ::dup2(null_fd, 0);
    ::dup2(null_fd, 1);
    ::dup2(null_fd, 2);
  }
  if (keep > 3) {
    ::dup2(keep, 3);
    keep = 3;
  }
  ::syscall(SYS_close_range, 4u, ~0u, 0u);
  return keep;
}

}  // namespace elastic
