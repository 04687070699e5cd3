// Signal names as Python's signal.Signals gives them on Linux, so summaries match
// PyTorch's: canonical names only (SIGABRT, not SIGIOT; SIGIO, not SIGPOLL).
#pragma once

#include <string>

namespace elastic {

// The name of signal `signo`, or "<N/A>" for a number Python has no name for
// (0, 32, 33, 35-63, anything out of range). Async-signal-safe: a static string.
inline const char* signal_name_cstr(int signo) noexcept {
  static const char* const names[] = {
      nullptr,     "SIGHUP",  "SIGINT",    "SIGQUIT", "SIGILL",   "SIGTRAP", "SIGABRT", "SIGBUS",
      "SIGFPE",    "SIGKILL", "SIGUSR1",   "SIGSEGV", "SIGUSR2",  "SIGPIPE", "SIGALRM", "SIGTERM",
      "SIGSTKFLT", "SIGCHLD", "SIGCONT",   "SIGSTOP", "SIGTSTP",  "SIGTTIN", "SIGTTOU", "SIGURG",
      "SIGXCPU",   "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGWINCH", "SIGIO",   "SIGPWR",  "SIGSYS",
  };
  if (signo > 0 && signo < static_cast<int>(sizeof(names) / sizeof(names[0]))) return names[signo];
  if (signo == 34) return "SIGRTMIN";
  if (signo == 64) return "SIGRTMAX";
  return "<N/A>";
}

inline std::string signal_name(int signo) { return signal_name_cstr(signo); }

}  // namespace elastic
