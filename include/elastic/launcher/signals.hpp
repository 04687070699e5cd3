// The launcher's handled signals: read from a signalfd, never acted on by a handler,
// so that one arriving at any moment (also a second one) is seen by the attempt loop.
#pragma once

#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

namespace elastic::launcher {

// The launch was stopped by a signal to the launcher (forwarded to the workers).
class SignalException : public std::runtime_error {
 public:
  explicit SignalException(int signum)
      : std::runtime_error("Process " + std::to_string(::getpid()) + " got signal: " + std::to_string(signum)),
        signum_(signum) {}
  int signum() const { return signum_; }

 private:
  int signum_;
};

// Blocks `signals` and reads them from a signalfd for as long as it lives.
class SignalReader {
 public:
  explicit SignalReader(const std::vector<int>& signals) {
    sigset_t set;
    sigemptyset(&set);
    for (int sig : signals) sigaddset(&set, sig);
    ::sigprocmask(SIG_BLOCK, &set, &old_mask_);
    fd_ = ::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "signalfd");
  }
  ~SignalReader() {
    ::close(fd_);
    ::sigprocmask(SIG_SETMASK, &old_mask_, nullptr);
  }
  SignalReader(const SignalReader&) = delete;
  SignalReader& operator=(const SignalReader&) = delete;
  int fd() const { return fd_; }
  // The next pending signal, or 0.
  int next() {
    signalfd_siginfo info{};
    ssize_t got = ::read(fd_, &info, sizeof(info));
    return got == static_cast<ssize_t>(sizeof(info)) ? static_cast<int>(info.ssi_signo) : 0;
  }

 private:
  int fd_ = -1;
  sigset_t old_mask_{};
};

}  // namespace elastic::launcher
