// Watchdog: a small forked process that outlives its parent for one purpose.
// The parent tells it, through a pipe, which process groups it started; when
// the parent's end of the pipe closes without a goodbye (the parent was
// SIGKILLed or crashed), the watchdog SIGKILLs every group still registered.
// PR_SET_PDEATHSIG alone only reaches the workers themselves, not their children.
#pragma once

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <elastic/multiprocessing/spawn.hpp>
#include <stdexcept>
#include <system_error>
#include <vector>

namespace elastic::multiprocessing {

class Watchdog {
 public:
  static constexpr int max_groups = 8192;

  Watchdog() = default;
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  ~Watchdog() { stop(); }

  // Forks the watchdog. Only async-signal-safe calls happen in the child, so
  // this is safe from a multi-threaded parent too.
  void start() {
    if (pid_ > 0) return;
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "watchdog pipe");
    std::vector<int> groups(max_groups, 0);  // allocated before fork: the child must not allocate
    int* table = groups.data();
    pid_t pid = ::fork();
    if (pid < 0) {
      int error = errno;
      ::close(fds[0]);
      ::close(fds[1]);
      throw std::system_error(error, std::generic_category(), "watchdog fork");
    }
    if (pid == 0) run_child(fds[0], fds[1], table);
    ::close(fds[0]);
    write_fd_ = fds[1];
    pid_ = pid;
  }

  pid_t pid() const { return pid_; }

  void add_group(pid_t pgid) { send(static_cast<std::int32_t>(pgid)); }
  void remove_group(pid_t pgid) { send(-static_cast<std::int32_t>(pgid)); }

  // A clean goodbye: the watchdog exits without killing anything, and is reaped.
  void stop() {
    if (pid_ <= 0) return;
    send(0);
    ::close(write_fd_);
    write_fd_ = -1;
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
  }

 private:
  void send(std::int32_t value) {
    if (write_fd_ < 0) return;
    // 4 bytes are below PIPE_BUF: written whole or not at all.
    while (::write(write_fd_, &value, sizeof(value)) < 0 && errno == EINTR) {
    }
  }

  [[noreturn]] static void run_child(int read_fd, int write_fd, int* groups) {
    ::close(write_fd);
    // Terminal signals and the launcher's forwarded ones are not for us: we
    // exist to act after the parent is gone.
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGUSR1, SIGUSR2}) ::sigaction(sig, &ignore, nullptr);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::setpgid(0, 0);
    ::prctl(PR_SET_NAME, "elastic-watchdog", 0, 0, 0);
    // Hold nothing of the parent's open: not its stdout (a reader waiting for EOF
    // would wait for us), not its workers' pipes.
    int null_fd = ::open("/dev/null", O_RDWR);
    if (null_fd >= 0) {
      ::dup2(null_fd, 0);
      ::dup2(null_fd, 1);
      ::dup2(null_fd, 2);
    }
    int keep = ::fcntl(read_fd, F_DUPFD_CLOEXEC, 3);
    if (keep > 3) {
      ::dup2(keep, 3);
      keep = 3;
    }
    ::syscall(SYS_close_range, 4u, ~0u, 0u);
    int count = 0;
    for (;;) {
      std::int32_t value = 0;
      ssize_t got = ::read(keep, &value, sizeof(value));
      if (got < 0 && errno == EINTR) continue;
      if (got == static_cast<ssize_t>(sizeof(value))) {
        if (value == 0) ::_exit(0);  // goodbye
        if (value > 0) {
          if (count < max_groups) groups[count++] = value;
        } else {
          for (int i = 0; i < count; ++i)
            if (groups[i] == -value) {
              groups[i] = groups[--count];
              break;
            }
        }
        continue;
      }
      break;  // EOF without goodbye: the parent is gone
    }
    for (int i = 0; i < count; ++i) ::kill(-groups[i], SIGKILL);
    ::_exit(0);
  }

  pid_t pid_ = -1;
  int write_fd_ = -1;
};

}  // namespace elastic::multiprocessing
