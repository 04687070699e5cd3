// The process-wide error handler used by record() when none is given.
#pragma once

#include <elastic/errors/detail/summary_hook.hpp>
#include <elastic/errors/error_handler.hpp>
#include <memory>
#include <mutex>
#include <string>

namespace elastic {

namespace errors::detail {
inline std::mutex& handler_mutex() {
  static std::mutex mutex;
  return mutex;
}
inline std::shared_ptr<ErrorHandler>& handler_slot() {
  static std::shared_ptr<ErrorHandler> handler;
  return handler;
}
}  // namespace errors::detail

// The handler in use; a plain ErrorHandler until set_error_handler() is called.
inline std::shared_ptr<ErrorHandler> get_error_handler() {
  std::lock_guard<std::mutex> lock(errors::detail::handler_mutex());
  auto& slot = errors::detail::handler_slot();
  if (!slot) slot = std::make_shared<ErrorHandler>();
  return slot;
}

// Replaces the process-wide handler; nullptr restores the default one.
inline void set_error_handler(std::shared_ptr<ErrorHandler> handler) {
  std::lock_guard<std::mutex> lock(errors::detail::handler_mutex());
  errors::detail::handler_slot() = handler ? std::move(handler) : std::make_shared<ErrorHandler>();
}

namespace errors::detail {
inline std::string enrich_through_error_handler(std::string message, const std::string& error_file) {
  return get_error_handler()->maybe_enrich_signal_failure_message(std::move(message), error_file);
}
// Failure summaries (ChildFailedError) reach the handler through this hook.
inline const bool summary_hook_set = (signal_failure_enricher.store(&enrich_through_error_handler), true);
}  // namespace errors::detail

}  // namespace elastic
