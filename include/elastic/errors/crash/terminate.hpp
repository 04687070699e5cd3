// The std::terminate handler: an uncaught exception or a noexcept violation writes
// the error file (with the throw site when traced), then the previous handler
// runs. std::terminate is an ordinary call, not a signal: this code may allocate.
#pragma once

#include <cstdlib>
#include <elastic/errors/crash/record_race.hpp>
#include <elastic/errors/crash/signal_handler.hpp>
#include <elastic/errors/crash/state.hpp>
#include <elastic/errors/crash/symbolizer.hpp>
#include <elastic/errors/crash/symbolizer_setup.hpp>
#include <elastic/errors/detail/exception_info.hpp>
#include <elastic/errors/detail/file_io.hpp>
#include <elastic/errors/detail/python_json.hpp>
#include <elastic/errors/stacktrace.hpp>
#include <elastic/errors/throw_trace.hpp>
#include <elastic/log.hpp>
#include <exception>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace elastic::errors::detail {

// Not async-signal-safe; called from std::terminate only.
inline std::terminate_handler& previous_terminate_handler() {
  static std::terminate_handler previous = nullptr;
  return previous;
}

// Not async-signal-safe (allocates, formats): runs in std::terminate, not in a
// signal handler.
inline void write_terminate_report(long thread) {
  std::string headline;
  std::string callstack;
  std::vector<StackFrame> here = current_stack(max_crash_frames);
  if (std::exception_ptr error = std::current_exception()) {
    auto levels = describe_exception(error);
    headline = levels.front().headline();
    // Without a recorded throw site, the stack here: std::terminate runs on top of
    // the throw when nothing caught the exception (no unwinding happened).
    callstack = format_exception_callstack(levels, here);
  } else {
    headline = "std::terminate called without an active exception";
    callstack = headline + "\n" + format_stack(here);
    callstack.pop_back();
  }
  log::write_line(log::Level::error, "terminate called: " + callstack);
  const char* path = crash_report_path();
  if (path == nullptr) return;
  nlohmann::ordered_json extra;
  extra["py_callstack"] = callstack;
  extra["timestamp"] = std::to_string(wall_clock_seconds());
  extra["thread_id"] = std::to_string(thread);
  nlohmann::ordered_json data;
  data["message"]["message"] = headline;
  data["message"]["extraInfo"] = std::move(extra);
  const std::string contents = python_json_dumps(data);
  wait_for_record_writers(thread);
  std::string problem = write_file_atomically(path, contents);
  if (!problem.empty()) {
    log::error("cannot write error file {}: {}", path, problem);
    return;
  }
  if (symbolize_record(path) == SymbolizerOutcome::timed_out) {
    data["message"]["extraInfo"]["py_callstack"] = callstack + "\n" + symbolizer_timeout_note();
    problem = write_file_atomically(path, python_json_dumps(data));
    if (!problem.empty()) log::error("cannot write error file {}: {}", path, problem);
  }
}

// Not async-signal-safe; installed with std::set_terminate.
[[noreturn]] inline void crash_terminate_handler() {
  CrashState& state = crash_state();
  const long self = current_thread_id();
  if (claim_crash_report(self)) {
    try {
      write_terminate_report(self);
    } catch (...) {
      write_stderr("[elastic] ERROR: cannot write the terminate report\n");
    }
    state.report_done.store(true);
  }
  // Chain: the previous handler (libstdc++'s prints the exception and aborts).
  if (std::terminate_handler previous = previous_terminate_handler()) previous();
  std::abort();
}

}  // namespace elastic::errors::detail
