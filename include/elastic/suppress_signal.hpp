// SuppressSignal: for one scope, a signal that this thread's own system call
// would raise (SIGPIPE from writing to a closed pipe, SIGXFSZ from writing past
// RLIMIT_FSIZE) is discarded, so the call fails with EPIPE or EFBIG instead of
// killing a process that is busy reporting a different failure.
//
// The signal is blocked in this thread only and, if the scope raised it, taken
// off the thread's pending set before unblocking; the process-wide disposition
// and other threads are untouched. Both signals are sent to the thread that made
// the call. A signal already pending when the scope began is left pending.
#pragma once

#include <pthread.h>
#include <signal.h>

#include <ctime>

namespace elastic {

class SuppressSignal {
 public:
  explicit SuppressSignal(int signal) : signal_(signal) {
    sigset_t only;
    sigemptyset(&only);
    sigaddset(&only, signal_);
    active_ = ::pthread_sigmask(SIG_BLOCK, &only, &old_mask_) == 0;
    sigset_t pending;
    sigemptyset(&pending);
    was_pending_ = active_ && ::sigpending(&pending) == 0 && sigismember(&pending, signal_) == 1;
  }
  ~SuppressSignal() {
    if (!active_) return;
    if (!was_pending_ && sigismember(&old_mask_, signal_) == 0) {
      sigset_t pending;
      sigemptyset(&pending);
      if (::sigpending(&pending) == 0 && sigismember(&pending, signal_) == 1) {
        sigset_t only;
        sigemptyset(&only);
        sigaddset(&only, signal_);
        const timespec no_wait{0, 0};
        ::sigtimedwait(&only, nullptr, &no_wait);
      }
    }
    ::pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
  }
  SuppressSignal(const SuppressSignal&) = delete;
  SuppressSignal& operator=(const SuppressSignal&) = delete;

 private:
  int signal_;
  sigset_t old_mask_{};
  bool active_ = false;
  bool was_pending_ = false;
};

}  // namespace elastic
