// Diagnostics of the library and the launcher: one line each, on stderr, with a
// "[elastic] LEVEL:" prefix. The threshold comes from ELASTIC_LOG_LEVEL
// (debug, info, warning, error, off; default warning, as TorchElastic's LOGLEVEL)
// unless set_level() was called.
#pragma once

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <elastic/suppress_signal.hpp>
#include <elastic/write_all.hpp>
#include <string>
#include <string_view>

namespace elastic::log {

enum class Level : int { debug = 0, info = 1, warning = 2, error = 3, off = 4 };

namespace detail {
// -1: not set programmatically, read the environment on each call so that a
// process (or a test) may change ELASTIC_LOG_LEVEL at any time.
inline std::atomic<int> forced_level{-1};

inline Level parse_level(const char* text, Level fallback) {
  if (text == nullptr || *text == '\0') return fallback;
  std::string value;
  for (const char* p = text; *p != '\0'; ++p)
    value.push_back(static_cast<char>(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p));
  if (value == "debug") return Level::debug;
  if (value == "info") return Level::info;
  if (value == "warning" || value == "warn") return Level::warning;
  if (value == "error") return Level::error;
  if (value == "off" || value == "none" || value == "critical") return Level::off;
  return fallback;
}

inline const char* level_name(Level level) {
  switch (level) {
    case Level::debug: return "DEBUG";
    case Level::info: return "INFO";
    case Level::warning: return "WARNING";
    case Level::error: return "ERROR";
    default: return "";
  }
}

inline std::atomic<void (*)(std::string_view)> sink{nullptr};
}  // namespace detail

// Where whole lines go instead of stderr when set: the launcher queues them on its
// stderr console, in order with teed worker output, so a stalled reader never
// blocks the thread that logs. The sink must not log itself.
using Sink = void (*)(std::string_view line);

// Sets the sink (null: stderr again); returns the one it replaces, so a scope can
// put it back.
inline Sink set_sink(Sink to) { return detail::sink.exchange(to); }

// Writes one "[elastic] LEVEL: text" line whatever the threshold: for messages
// that must be seen (a failure being reported). One write(2) per message so lines
// from concurrent processes never interleave; a closed stderr pipe gives EPIPE
// here, not a SIGPIPE that would kill the process.
inline void write_line(Level level, std::string_view text) {
  std::string line = fmt::format("[elastic] {}: {}\n", detail::level_name(level), text);
  if (Sink to = detail::sink.load()) {
    to(line);
    return;
  }
  elastic::SuppressSignal no_sigpipe(SIGPIPE);
  // A failure here means stderr is gone: there is no one else to tell.
  (void)elastic::write_all(STDERR_FILENO, line.data(), line.size());
}

inline Level level() {
  int forced = detail::forced_level.load(std::memory_order_relaxed);
  if (forced >= 0) return static_cast<Level>(forced);
  return detail::parse_level(std::getenv("ELASTIC_LOG_LEVEL"), Level::warning);
}

inline void set_level(Level level) { detail::forced_level.store(static_cast<int>(level)); }
inline void reset_level() { detail::forced_level.store(-1); }
inline bool enabled(Level at) { return at != Level::off && static_cast<int>(at) >= static_cast<int>(level()); }

template <typename... Args>
void write(Level at, fmt::format_string<Args...> format, Args&&... args) {
  if (!enabled(at)) return;
  write_line(at, fmt::format(format, std::forward<Args>(args)...));
}

template <typename... Args>
void debug(fmt::format_string<Args...> format, Args&&... args) {
  write(Level::debug, format, std::forward<Args>(args)...);
}
template <typename... Args>
void info(fmt::format_string<Args...> format, Args&&... args) {
  write(Level::info, format, std::forward<Args>(args)...);
}
template <typename... Args>
void warning(fmt::format_string<Args...> format, Args&&... args) {
  write(Level::warning, format, std::forward<Args>(args)...);
}
template <typename... Args>
void error(fmt::format_string<Args...> format, Args&&... args) {
  write(Level::error, format, std::forward<Args>(args)...);
}

}  // namespace elastic::log
