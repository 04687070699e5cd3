// Background threads of the library (store servers, keep-alive, console writer)
// take none of the process's signals: a process-directed signal such as SIGCHLD or
// a forwarded SIGTERM must reach the thread that reads it (the launcher's signalfd,
// its reaping of orphans), never a helper thread that would drop it.
#pragma once

#include <pthread.h>

#include <csignal>
#include <thread>
#include <utility>

namespace elastic {

// A std::thread running `fn` with every signal blocked. Not async-signal-safe.
template <typename Fn>
std::thread signal_free_thread(Fn&& fn) {
  sigset_t all, previous;
  sigfillset(&all);
  ::pthread_sigmask(SIG_BLOCK, &all, &previous);
  std::thread thread(std::forward<Fn>(fn));
  ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  return thread;
}

}  // namespace elastic
