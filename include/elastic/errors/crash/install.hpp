// Native crash capture: a fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT,
// SIGTRAP) or std::terminate writes the error file, with the native stack of the
// failing thread in extraInfo.py_callstack, before the process dies as it would
// have without us (same signal, so the parent sees -11 and core dumps still happen).
//
// install_crash_handlers() is called by ErrorHandler::initialize(), hence by every
// record(). The files of this folder:
//   options.hpp         which signals, which limits (ELASTIC_CRASH_SIGNALS)
//   state.hpp           the constant-initialized memory the handler uses     [signal path]
//   fault.hpp           the headline of a fatal signal                       [signal path]
//   record_race.hpp     which record wins: crash, exception record or exit   [signal path]
//   signal_handler.hpp  the handler, the report, the re-raise, the watchdog  [signal path]
//   symbolizer.hpp      file:line by a helper process: build ids, command line, bounded wait  [signal path]
//   symbolizer_setup.hpp  which helper, its time limit; its run from the exception path
//   terminate.hpp       the std::terminate handler
//   alt_stack.hpp       per-thread alternate signal stacks
//   install.hpp         this file: installing all of the above
// Signal-path files hold async-signal-safe code only.
#pragma once

#include <signal.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <elastic/errors/crash/alt_stack.hpp>
#include <elastic/errors/crash/options.hpp>
#include <elastic/errors/crash/signal_handler.hpp>
#include <elastic/errors/crash/state.hpp>
#include <elastic/errors/crash/symbolizer.hpp>
#include <elastic/errors/crash/symbolizer_setup.hpp>
#include <elastic/errors/crash/terminate.hpp>
#include <elastic/errors/stacktrace.hpp>
#include <elastic/errors/throw_trace.hpp>
#include <elastic/log.hpp>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace elastic {

namespace errors::detail {
// Serializes installation and path changes. Not async-signal-safe.
inline std::mutex& install_mutex() {
  static std::mutex mutex;
  return mutex;
}
}  // namespace errors::detail

// Where crash reports go: the error file path, or none for stderr only.
// ErrorHandler::initialize() sets it from TORCHELASTIC_ERROR_FILE.
// Not async-signal-safe (takes a mutex).
inline void set_crash_report_path(const std::optional<std::string>& path) {
  auto& state = errors::detail::crash_state();
  std::lock_guard<std::mutex> lock(errors::detail::install_mutex());
  if (!path || path->empty()) {
    state.active_path.store(-1, std::memory_order_release);
    return;
  }
  if (path->size() >= sizeof(state.paths[0])) {
    log::warning("error file path too long for crash reports: {}", *path);
    state.active_path.store(-1, std::memory_order_release);
    return;
  }
  const int next = state.active_path.load() == 0 ? 1 : 0;
  std::memcpy(state.paths[next], path->c_str(), path->size() + 1);
  state.active_path.store(next, std::memory_order_release);
}

// Gives the calling thread its own alternate signal stack, so a stack overflow in
// it is reported too. record() does this for the threads it runs on; call it at
// the start of other threads.
// Not async-signal-safe.
inline bool register_crash_thread(std::size_t alternate_stack_bytes = CrashCaptureOptions{}.alternate_stack_bytes) {
  return errors::detail::ensure_alternate_signal_stack(alternate_stack_bytes);
}

// Installs the crash handlers once per process (signals listed in options or
// ELASTIC_CRASH_SIGNALS, and std::terminate), and an alternate signal stack for
// the calling thread. Cheap after the first call. Problems are logged, not thrown.
// Not async-signal-safe.
inline void install_crash_handlers(const CrashCaptureOptions& options = {}) {
  namespace detail = errors::detail;
  if (!register_crash_thread(options.alternate_stack_bytes))
    log::warning("cannot set an alternate signal stack: stack overflows will not be reported");
  std::lock_guard<std::mutex> lock(detail::install_mutex());
  auto& state = detail::crash_state();
  static bool terminate_installed = false;
  static bool warmed_up = false;
  const std::vector<int> signals = detail::crash_signals_from_environment(options.signals);
  if (!warmed_up && (!signals.empty() || options.terminate_handler)) {
    // Binds and initializes what the handlers call, so a crash finds it ready. The
    // symbol tables are read only when a report needs them (see prepare_stacktrace).
    prepare_stacktrace();
    detail::current_thread_id();
    detail::wall_clock_seconds();
    detail::safe_random_u64();
    warmed_up = true;
  }
  errors::detail::arm_throw_traces(options.throw_traces);
  state.traceback_all.store(traceback_all_requested());
  detail::configure_symbolizer();
  state.watchdog_seconds = options.watchdog_seconds;
  for (int signo : signals) {
    if (signo <= 0 || signo >= NSIG || state.installed[signo]) continue;
    struct sigaction action {};
    action.sa_sigaction = &detail::crash_signal_handler;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    if (::sigaction(signo, &action, &state.previous[signo]) != 0) {
      log::warning("cannot install the crash handler for {}: {}", signal_name_cstr(signo), std::strerror(errno));
      continue;
    }
    state.installed[signo] = true;
  }
  static bool exit_hook_installed = false;
  if (!exit_hook_installed && (!signals.empty() || options.terminate_handler)) {
    // exit() on one thread while another reports a crash: let the crash end the process.
    std::atexit(&detail::on_exit_hook);
    exit_hook_installed = true;
  }
  if (options.terminate_handler && !terminate_installed) {
    std::terminate_handler previous = std::set_terminate(&detail::crash_terminate_handler);
    if (previous != &detail::crash_terminate_handler) detail::previous_terminate_handler() = previous;
    terminate_installed = true;
  }
}

}  // namespace elastic
