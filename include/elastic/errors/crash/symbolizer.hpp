// Source file:line for the frames of a record, added by a helper process
// (elastic-symbolize, which reads DWARF with libdw) before the record is final:
// the crash handler runs it after writing the record and before re-raising, the
// exception path after writing its record. Reading DWARF allocates, takes locks
// and may meet corrupt data: none of it may happen in a signal handler, nor in
// the worker (its `ldd` lists the C/C++ runtime alone). The helper rewrites the
// file atomically; while it runs, and whenever it fails or is too slow, the file
// holds the complete record with function+offset frames.
//
// Signal-path file: what the crash handler runs (async-signal-safe). The
// exception path's run and the choice of helper are in symbolizer_setup.hpp.
#pragma once

#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <elastic/errors/crash/state.hpp>
#include <elastic/errors/detail/signal_safe.hpp>

extern char** environ;

namespace elastic::errors::detail {

// How long a record waits for its file:line. The exception path waits less than
// a crash on another thread waits for exception records (5 s, record_race.hpp),
// so a helper never rewrites a file after a crash record replaced it.
inline constexpr unsigned crash_symbolizer_wait_ms = 10 * 1000;
inline constexpr unsigned exception_symbolizer_wait_ms = 4 * 1000;

// Waits for the helper at most `limit_ms`, then kills it. Async-signal-safe.
inline void wait_for_symbolizer(long child, unsigned limit_ms) {
  const auto now_ms = [] {
    timespec now{};
    ::clock_gettime(CLOCK_MONOTONIC, &now);
    return static_cast<std::int64_t>(now.tv_sec) * 1000 + now.tv_nsec / 1000000;
  };
  const std::int64_t deadline = now_ms() + limit_ms;
  while (now_ms() < deadline) {
    int status = 0;
    const long done = ::waitpid(static_cast<pid_t>(child), &status, WNOHANG);
    if (done == child) return;
    if (done < 0 && errno != EINTR) return;  // ECHILD: SIGCHLD ignored, reaped already
    timespec pause{0, 1000 * 1000};
    ::nanosleep(&pause, nullptr);
  }
  ::kill(static_cast<pid_t>(child), SIGKILL);
  int status = 0;
  ::waitpid(static_cast<pid_t>(child), &status, 0);
}

// Runs the helper on the record at `path` and waits for it, bounded. From the
// crash handler: a raw clone (fork without the atfork handlers, which may lock)
// and execve, both async-signal-safe. Async-signal-safe.
inline void symbolize_record_from_handler(const char* path) {
  CrashState& state = crash_state();
  if (path == nullptr || !state.has_symbolizer.load()) return;
  char pid_storage[24];
  FixedText pid(pid_storage, sizeof(pid_storage));
  pid.append_decimal(static_cast<std::int64_t>(::getpid()));
  char pid_flag[] = "--pid";
  char* argv[] = {state.symbolizer, pid_flag, pid_storage, const_cast<char*>(path), nullptr};
  const long child = ::syscall(SYS_clone, static_cast<long>(SIGCHLD), 0L, 0L, 0L, 0L);
  if (child < 0) return;
  if (child == 0) {
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);  // the crashing signal is blocked here
    ::execve(argv[0], argv, environ);
    ::_exit(127);
  }
  wait_for_symbolizer(child, crash_symbolizer_wait_ms);
}

}  // namespace elastic::errors::detail
