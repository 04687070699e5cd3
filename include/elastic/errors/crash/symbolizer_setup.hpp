// The choice of the helper that adds file:line to records, and its run from the
// exception path (see symbolizer.hpp). Not on the signal path.
//
// Which helper: ELASTIC_SYMBOLIZER (a path; "off" or 0 for none), else the one
// built with the library (ELASTIC_SYMBOLIZER_PATH, set by the CMake target).
#pragma once

#include <spawn.h>
#include <unistd.h>

#include <cstdlib>
#include <elastic/errors/crash/state.hpp>
#include <elastic/errors/crash/symbolizer.hpp>
#include <elastic/errors/detail/signal_safe.hpp>

namespace elastic::errors::detail {

// The same from ordinary code (the exception path). Not async-signal-safe.
inline void symbolize_record(const char* path) {
  CrashState& state = crash_state();
  if (path == nullptr || !state.has_symbolizer.load()) return;
  char pid_storage[24];
  FixedText pid(pid_storage, sizeof(pid_storage));
  pid.append_decimal(static_cast<std::int64_t>(::getpid()));
  char pid_flag[] = "--pid";
  char* argv[] = {state.symbolizer, pid_flag, pid_storage, const_cast<char*>(path), nullptr};
  pid_t child = 0;
  if (::posix_spawn(&child, argv[0], nullptr, nullptr, argv, environ) != 0) return;
  wait_for_symbolizer(child, exception_symbolizer_wait_ms);
}

// Chooses the helper (see above). Not async-signal-safe; called at installation.
inline void configure_symbolizer() {
  CrashState& state = crash_state();
  const char* chosen = std::getenv("ELASTIC_SYMBOLIZER");
  if (chosen != nullptr && (safe_streq(chosen, "off") || safe_streq(chosen, "0") || *chosen == '\0')) chosen = nullptr;
#ifdef ELASTIC_SYMBOLIZER_PATH
  else if (chosen == nullptr)
    chosen = ELASTIC_SYMBOLIZER_PATH;
#endif
  const bool usable =
      chosen != nullptr && safe_strlen(chosen) < sizeof(state.symbolizer) && ::access(chosen, X_OK) == 0;
  state.has_symbolizer.store(false);
  if (!usable) return;
  FixedText copy(state.symbolizer, sizeof(state.symbolizer));
  copy.append(chosen);
  state.has_symbolizer.store(true);
}

}  // namespace elastic::errors::detail
