// Which signals crash capture handles and with what limits: CrashCaptureOptions
// and the ELASTIC_CRASH_SIGNALS variable. Start-up code, never on the signal path
// (it allocates and logs).
//
//   ELASTIC_CRASH_SIGNALS  unset: the default list; "off" (or 0, none, false): no
//                          signal handler is installed (for runtimes that install
//                          their own, such as the JVM or a sanitizer); otherwise
//                          a comma separated list of names (SIGSEGV or SEGV) or numbers.
#pragma once

#include <signal.h>

#include <cstddef>
#include <cstdlib>
#include <elastic/errors/signals.hpp>
#include <elastic/log.hpp>
#include <string>
#include <vector>

namespace elastic {

inline constexpr const char* crash_signals_env = "ELASTIC_CRASH_SIGNALS";

// The signals treated as crashes. SIGTERM and SIGINT are not: launchers send them
// to stop healthy workers.
inline std::vector<int> default_crash_signals() { return {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP}; }

struct CrashCaptureOptions {
  std::vector<int> signals = default_crash_signals();  // ELASTIC_CRASH_SIGNALS overrides
  std::size_t alternate_stack_bytes = 256 * 1024;      // per thread, for stack overflows
  unsigned watchdog_seconds = 20;                      // a handler stuck longer ends the process by the same signal
  bool terminate_handler = true;                       // std::set_terminate: uncaught exceptions, noexcept violations
  bool throw_traces = true;  // record throw sites from now on (ELASTIC_THROW_TRACES=0 overrides)
};

namespace errors::detail {

// Not async-signal-safe (allocates).
inline bool crash_signals_disabled(const char* value) {
  std::string text = value;
  for (char& c : text) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  return text == "0" || text == "off" || text == "none" || text == "false" || text == "no";
}

// The signals to handle: ELASTIC_CRASH_SIGNALS when set, else `fallback`.
// Not async-signal-safe (allocates, logs).
inline std::vector<int> crash_signals_from_environment(const std::vector<int>& fallback) {
  const char* value = std::getenv(crash_signals_env);
  if (value == nullptr || *value == '\0') return fallback;
  if (crash_signals_disabled(value)) return {};
  std::vector<int> signals;
  std::string text = value;
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find_first_of(", ", start);
    if (end == std::string::npos) end = text.size();
    std::string name = text.substr(start, end - start);
    start = end + 1;
    if (name.empty()) continue;
    int found = 0;
    if (name.find_first_not_of("0123456789") == std::string::npos) {
      found = std::atoi(name.c_str());
    } else {
      for (char& c : name) c = static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
      if (name.rfind("SIG", 0) != 0) name = "SIG" + name;
      for (int signo = 1; signo < NSIG && found == 0; ++signo)
        if (name == signal_name_cstr(signo)) found = signo;
    }
    if (found <= 0 || found >= NSIG || found == SIGKILL || found == SIGSTOP)
      log::warning("{}: ignoring '{}', not a signal that can be handled", crash_signals_env, name);
    else
      signals.push_back(found);
  }
  return signals;
}

}  // namespace errors::detail
}  // namespace elastic
