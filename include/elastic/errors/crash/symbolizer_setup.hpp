// The choice of the helper that adds file:line to records, its time limit, and
// its run from the exception path (see symbolizer.hpp, which builds the command
// line for both paths). Not on the signal path.
//
// Which helper: ELASTIC_SYMBOLIZER (a path; "off" or 0 for none), else the one
// built with the library (ELASTIC_SYMBOLIZER_PATH, set by the CMake target).
// How long a record waits for it: ELASTIC_SYMBOLIZER_TIMEOUT_MS (milliseconds,
// 2000 by default; at most 10 s for a crash, 4 s for an exception record).
#pragma once

#include <link.h>
#include <spawn.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <elastic/errors/crash/state.hpp>
#include <elastic/errors/crash/symbolizer.hpp>
#include <elastic/errors/detail/signal_safe.hpp>
#include <elastic/log.hpp>
#include <string>
#include <vector>

namespace elastic::errors::detail {

// An address inside each module loaded now. Not async-signal-safe (the loader's lock).
inline std::vector<std::uintptr_t> loaded_module_addresses() {
  std::vector<std::uintptr_t> addresses;
  ::dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* out) {
        for (ElfW(Half) i = 0; i < info->dlpi_phnum; ++i) {
          if (info->dlpi_phdr[i].p_type != PT_LOAD) continue;
          static_cast<std::vector<std::uintptr_t>*>(out)->push_back(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
          break;
        }
        return 0;
      },
      &addresses);
  return addresses;
}

// The same as symbolize_record_from_handler, from ordinary code (the exception
// path, the terminate handler). The record's frames may come from any module
// (a subclass may format them itself), so every loaded module's build id is
// handed over. Not async-signal-safe.
inline SymbolizerOutcome symbolize_record(const char* path) {
  CrashState& state = crash_state();
  if (path == nullptr || !state.has_symbolizer.load()) return SymbolizerOutcome::not_run;
  const std::vector<std::uintptr_t> addresses = loaded_module_addresses();
  const std::size_t modules = addresses.size();
  std::vector<char*> argv(8 + 2 * modules);
  std::vector<std::uintptr_t> seen(modules);
  std::vector<char> text(2 * sizeof(state.symbolizer) + 64 + modules * 512);
  SymbolizerCommand command(argv.data(), argv.size(), seen.data(), seen.size(), text.data(), text.size());
  if (!command.start(state.symbolizer, static_cast<long>(::getpid()), path)) return SymbolizerOutcome::not_run;
  for (std::uintptr_t address : addresses) command.add_module_of(address);
  char** ready = command.finish();
  if (ready == nullptr) return SymbolizerOutcome::not_run;
  posix_spawnattr_t attributes;
  if (::posix_spawnattr_init(&attributes) != 0) return SymbolizerOutcome::not_run;
  sigset_t stops;
  symbolizer_stop_signals(&stops);
  ::posix_spawnattr_setsigmask(&attributes, &stops);
  ::posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK);
  pid_t child = 0;
  const int spawned = ::posix_spawn(&child, ready[0], nullptr, &attributes, ready, environ);
  ::posix_spawnattr_destroy(&attributes);
  if (spawned != 0) return SymbolizerOutcome::not_run;
  const unsigned chosen = state.symbolizer_wait_ms.load();
  return wait_for_symbolizer(child,
                             chosen < max_exception_symbolizer_wait_ms ? chosen : max_exception_symbolizer_wait_ms);
}

// The line a record gets when the helper was stopped at the bound (the exception
// path's limit). Not async-signal-safe.
inline std::string symbolizer_timeout_note() {
  const unsigned chosen = crash_state().symbolizer_wait_ms.load();
  char storage[256];
  FixedText note(storage, sizeof(storage));
  append_symbolizer_timeout_note(note,
                                 chosen < max_exception_symbolizer_wait_ms ? chosen : max_exception_symbolizer_wait_ms);
  return note.c_str();
}

// ELASTIC_SYMBOLIZER_TIMEOUT_MS: milliseconds, from 1; unset or not a number: the
// default (a warning for the latter). Not async-signal-safe.
inline unsigned symbolizer_wait_from_environment() {
  const char* value = std::getenv("ELASTIC_SYMBOLIZER_TIMEOUT_MS");
  if (value == nullptr || *value == '\0') return default_symbolizer_wait_ms;
  char* end = nullptr;
  errno = 0;
  const unsigned long parsed = std::strtoul(value, &end, 10);
  if (errno != 0 || end == value || *end != '\0' || parsed == 0 || value[0] == '-') {
    log::warning("ELASTIC_SYMBOLIZER_TIMEOUT_MS: '{}' is not a number of milliseconds from 1; using {}", value,
                 default_symbolizer_wait_ms);
    return default_symbolizer_wait_ms;
  }
  return parsed < max_crash_symbolizer_wait_ms ? static_cast<unsigned>(parsed) : max_crash_symbolizer_wait_ms;
}

// Chooses the helper and its limit (see above). Not async-signal-safe; called at
// installation.
inline void configure_symbolizer() {
  CrashState& state = crash_state();
  state.symbolizer_wait_ms.store(symbolizer_wait_from_environment());
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
