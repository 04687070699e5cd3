// The handler of fatal signals: writes the crash report (stderr and the error
// file) from memory set aside in state.hpp, then lets the signal end the process
// as it would have without us. Signal-path file: every function here is
// async-signal-safe (no allocation, no locks, no stdio; only the system calls
// POSIX lists as safe, plus the lock-free unwinder and symbolizer of
// stacktrace.hpp once prepare_stacktrace() has run).
#pragma once

#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <elastic/errors/crash/fault.hpp>
#include <elastic/errors/crash/record_race.hpp>
#include <elastic/errors/crash/state.hpp>
#include <elastic/errors/crash/symbolizer.hpp>
#include <elastic/errors/detail/file_io.hpp>
#include <elastic/errors/detail/signal_safe.hpp>
#include <elastic/errors/signals.hpp>
#include <elastic/errors/stacktrace.hpp>

namespace elastic::errors::detail {

// Async-signal-safe.
inline void write_stderr(const char* text, std::size_t size) { write_all(STDERR_FILENO, text, size); }
inline void write_stderr(const char* text) { write_stderr(text, safe_strlen(text)); }

// The nested-format document, key order as PyTorch writes it:
// {"message": {"message": ..., "extraInfo": {"py_callstack": ..., "timestamp": ..., extra...}}}
// Async-signal-safe.
inline void append_crash_json(FixedText& out, const char* message, std::size_t message_size, const char* callstack,
                              std::size_t callstack_size, std::int64_t timestamp, const char* signal, long thread) {
  char number[32];
  FixedText digits(number, sizeof(number));
  out.append("{\"message\": {\"message\": ").append_json_string(message, message_size);
  out.append(", \"extraInfo\": {\"py_callstack\": ").append_json_string(callstack, callstack_size);
  digits.append_decimal(timestamp);
  out.append(", \"timestamp\": ").append_json_string(digits.c_str());
  if (signal != nullptr) out.append(", \"signal\": ").append_json_string(signal);
  digits.clear();
  digits.append_decimal(thread);
  out.append(", \"thread_id\": ").append_json_string(digits.c_str());
  out.append("}}}");
}

// The JSON document of a crash into state.report, from state.headline_and_frames
// (whose first `headline_size` bytes are the headline). Async-signal-safe.
inline void build_crash_report(int signo, std::size_t headline_size, std::int64_t now, long thread) {
  CrashState& state = crash_state();
  const FixedText& stack_text = state.headline_and_frames;
  state.report.clear();
  append_crash_json(state.report, stack_text.c_str(), headline_size, stack_text.c_str(), stack_text.size(), now,
                    signal_name_cstr(signo), thread);
  if (state.report.truncated()) {
    // Cut JSON would be unreadable; the headline alone still tells what happened.
    state.report.clear();
    append_crash_json(state.report, stack_text.c_str(), headline_size, stack_text.c_str(), headline_size, now,
                      signal_name_cstr(signo), thread);
  }
}

// Builds and writes the report of a fatal signal. Async-signal-safe.
inline void write_signal_report(int signo, const siginfo_t* info, const void* context, long thread) {
  CrashState& state = crash_state();
  FixedText& stack_text = state.headline_and_frames;
  stack_text.clear();
  append_signal_headline(stack_text, signo, info, context);
  const std::size_t headline_size = stack_text.size();

  const std::size_t captured = capture_stack(state.frames, max_crash_frames + 1);
  const std::size_t first = first_interrupted_frame(state.frames, captured, context);
  const bool name = can_name_frames();  // else module and offset alone: still enough for addr2line
  const std::size_t shown = captured - first < max_crash_frames ? captured - first : max_crash_frames;
  const std::size_t hidden =
      state.traceback_all.load() ? 0 : mark_plumbing_frames(state.frames + first, shown, state.hidden, name);
  for (std::size_t i = 0; i < shown; ++i) {
    if (hidden > 0 && state.hidden[i]) continue;
    stack_text.append('\n');
    append_frame(stack_text, i, state.frames[first + i], name);
  }
  if (captured > max_crash_frames && captured - first >= max_crash_frames) stack_text.append("\n... (more frames)");
  if (hidden > 0) append_hidden_frames_line(stack_text.append('\n'), hidden);

  const char* path = crash_report_path();
  write_stderr("[elastic] ERROR: ");
  write_stderr(stack_text.c_str(), stack_text.size());
  write_stderr("\n");
  if (path == nullptr) {
    write_stderr("[elastic] ERROR: no error file written (TORCHELASTIC_ERROR_FILE not set)\n");
    return;
  }
  const std::int64_t now = wall_clock_seconds();
  build_crash_report(signo, headline_size, now, thread);
  wait_for_record_writers(thread);
  const int error = safe_write_file_atomically(path, state.report.c_str(), state.report.size(), state.scratch);
  if (error != 0) {
    write_stderr("[elastic] ERROR: cannot write error file ");
    write_stderr(path);
    // strerror is not async-signal-safe: the number is.
    StaticText<32> number;
    number.append(": errno ").append_decimal(error).append('\n');
    write_stderr(number.c_str(), number.size());
    return;
  }
  // file:line, bounded; the record is complete already. A helper stopped at the
  // bound left it as it was: the record then says so.
  if (symbolize_record_from_handler(path, state.frames + first, shown) == SymbolizerOutcome::timed_out) {
    append_symbolizer_timeout_note(stack_text.append('\n'), crash_symbolizer_wait_ms());
    build_crash_report(signo, headline_size, now, thread);
    safe_write_file_atomically(path, state.report.c_str(), state.report.size(), state.scratch);
  }
  write_stderr("[elastic] ERROR: error file written to ");
  write_stderr(path);
  write_stderr("\n");
}

// Sends `signo` to this thread with `action` in place. The signal is blocked while
// its handler runs, so it arrives as soon as the handler returns, in the
// interrupted context: the default action then dumps core at the real fault.
// With the original siginfo (allowed when a process signals itself) a previous
// handler and the core dump see the real fault address and si_code.
// Async-signal-safe.
inline void reraise_with(int signo, const struct sigaction& action, const siginfo_t* info = nullptr) {
  ::sigaction(signo, &action, nullptr);
  const long pid = static_cast<long>(::getpid());
  const long thread = current_thread_id();
  if (info != nullptr) {
    siginfo_t copy = *info;
    if (::syscall(SYS_rt_tgsigqueueinfo, pid, thread, static_cast<long>(signo), &copy) == 0) return;
  }
  ::syscall(SYS_tgkill, pid, thread, static_cast<long>(signo));
}

// Async-signal-safe.
inline void reraise_with_default(int signo) {
  struct sigaction default_action {};
  default_action.sa_handler = SIG_DFL;
  sigemptyset(&default_action.sa_mask);
  reraise_with(signo, default_action);
}

// SIGALRM when the report takes longer than the watchdog allows: end the process
// by the signal that crashed it, as if no handler had been installed.
// Async-signal-safe.
inline void watchdog_expired(int) {
  const int signo = crash_state().crashing_signal.load();
  if (signo <= 0) return;
  write_stderr("[elastic] ERROR: crash report timed out\n");
  sigset_t unblock;
  sigemptyset(&unblock);
  sigaddset(&unblock, signo);
  ::pthread_sigmask(SIG_UNBLOCK, &unblock, nullptr);
  reraise_with_default(signo);
}

// Async-signal-safe.
inline void arm_watchdog(unsigned seconds) {
  if (seconds == 0) return;
  struct sigaction alarm_action {};
  alarm_action.sa_handler = &watchdog_expired;
  sigemptyset(&alarm_action.sa_mask);
  alarm_action.sa_flags = SA_ONSTACK;
  ::sigaction(SIGALRM, &alarm_action, nullptr);
  ::alarm(seconds);
}

// Async-signal-safe.
inline void crash_signal_handler(int signo, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  CrashState& state = crash_state();
  const long self = current_thread_id();
  if (!claim_crash_report(self)) {
    const long writer = state.writer_thread.load();
    if (writer == self) {
      // Either our terminate handler wrote the report and now aborts (let the
      // previous handler see it), or the handler itself faulted (die now).
      if (state.report_done.load())
        reraise_with(signo, state.previous[signo]);
      else
        reraise_with_default(signo);
      errno = saved_errno;
      return;
    }
    // Another thread is writing the report and will end the process, or is ending
    // it by exit() after an exception record: wait for it, bounded, then die by the
    // default action.
    for (unsigned waited = 0; waited < state.watchdog_seconds * 10 + 10; ++waited) {
      if (writer > 0 && state.report_done.load()) break;
      timespec tenth{0, 100 * 1000 * 1000};
      ::nanosleep(&tenth, nullptr);
    }
    reraise_with_default(signo);
    errno = saved_errno;
    return;
  }
  state.crashing_signal.store(signo);
  arm_watchdog(state.watchdog_seconds);
  write_signal_report(signo, info, context, self);
  state.report_done.store(true);
  ::alarm(0);
  reraise_with(signo, state.previous[signo], info);
  errno = saved_errno;
}

}  // namespace elastic::errors::detail
