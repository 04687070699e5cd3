// How a failure summary reaches the process's ErrorHandler without including it:
// the reader side (ChildFailedError, what launchers include) stays free of the
// worker side (the handler, crash capture), and handlers.hpp fills the hook in
// every program that has a handler.
#pragma once

#include <atomic>
#include <string>

namespace elastic::errors::detail {

// ErrorHandler::maybe_enrich_signal_failure_message of the process-wide handler.
using SignalFailureEnricher = std::string (*)(std::string message, const std::string& error_file);
inline std::atomic<SignalFailureEnricher> signal_failure_enricher{nullptr};

inline std::string enrich_signal_failure_message(std::string message, const std::string& error_file) {
  if (SignalFailureEnricher enrich = signal_failure_enricher.load()) return enrich(std::move(message), error_file);
  return message;
}

}  // namespace elastic::errors::detail
