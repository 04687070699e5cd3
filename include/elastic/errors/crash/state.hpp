// Everything the crash signal handler touches, set aside before any crash.
// Signal-path file: all of it is async-signal-safe. The state is constant-
// initialized (constexpr constructors over zeroed storage): no guard variable,
// no constructor runs, so a handler may be the first to touch it.
#pragma once

#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <elastic/errors/detail/signal_safe.hpp>
#include <elastic/errors/stacktrace.hpp>
#include <type_traits>

// Where the compiler can check it, constant initialization is enforced.
#if defined(__cpp_constinit) && __cpp_constinit >= 201907L
#define ELASTIC_CONSTINIT constinit
#elif defined(__clang__)
#define ELASTIC_CONSTINIT [[clang::require_constant_initialization]]
#else
#define ELASTIC_CONSTINIT
#endif

namespace elastic::errors::detail {

inline constexpr std::size_t max_crash_frames = 100;

struct CrashState {
  // The thread writing the crash report; 0 while none. Minus a thread's id: that
  // thread is ending the process by exit() after an exception record (see
  // record_race.hpp).
  std::atomic<long> writer_thread{0};
  std::atomic<bool> report_done{false};
  std::atomic<bool> exception_recorded{false};  // an exception record is on disk
  std::atomic<int> crashing_signal{0};
  std::atomic<unsigned> watchdog_seconds{20};

  // The error file path, double-buffered so initialize() can change it while a
  // handler might be reading the other copy. -1: no path, trace on stderr only.
  char paths[2][4096] = {};
  std::atomic<int> active_path{-1};

  // Threads writing an exception record now (their ids; 0: a free slot). A crash
  // record is renamed into place only after they are done, so it is the last word.
  static constexpr std::size_t max_record_writers = 16;
  std::atomic<long> record_writers[max_record_writers] = {};

  struct sigaction previous[NSIG] = {};
  bool installed[NSIG] = {};

  StackFrame frames[max_crash_frames + 1] = {};
  bool hidden[max_crash_frames + 1] = {};  // plumbing frames left out of the report
  std::atomic<bool> traceback_all{false};  // ELASTIC_TRACEBACK_ALL, read at installation

  // The helper that adds file:line to a written record (see symbolizer.hpp) and
  // how long a record waits for it (set at installation, with the helper).
  char symbolizer[4096] = {};
  std::atomic<bool> has_symbolizer{false};
  std::atomic<unsigned> symbolizer_wait_ms{0};

  StaticText<32 * 1024> headline_and_frames;  // py_callstack
  StaticText<96 * 1024> report;               // the JSON document
  StaticText<8 * 1024> scratch;               // file names, one frame line
};

static_assert(std::is_trivially_destructible_v<CrashState>, "crash state must outlive every handler");

ELASTIC_CONSTINIT inline CrashState crash_state_storage{};

// Async-signal-safe.
inline CrashState& crash_state() { return crash_state_storage; }

// Where the crash handler builds the helper's command line (symbolizer.hpp). All
// zeros, so it lies in .bss: a program that never crashes touches no page of it
// and its file carries none of it, unlike CrashState (in .data: its texts point
// at their own storage).
struct SymbolizerCommandStorage {
  static constexpr std::size_t max_args = 8 + 2 * (max_crash_frames + 1);
  char* argv[max_args] = {};
  std::uintptr_t modules[max_crash_frames + 1] = {};
  char text[32 * 1024] = {};
};

static_assert(std::is_trivially_destructible_v<SymbolizerCommandStorage>, "must outlive every handler");

ELASTIC_CONSTINIT inline SymbolizerCommandStorage symbolizer_command_storage{};

// Async-signal-safe (a raw system call).
inline long current_thread_id() { return static_cast<long>(::syscall(SYS_gettid)); }

// Async-signal-safe.
inline std::int64_t wall_clock_seconds() {
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  return static_cast<std::int64_t>(now.tv_sec);
}

// The error file path crash reports go to, null when none. Async-signal-safe.
inline const char* crash_report_path() {
  CrashState& state = crash_state();
  const int active = state.active_path.load(std::memory_order_acquire);
  return active < 0 ? nullptr : state.paths[active];
}

}  // namespace elastic::errors::detail
