// JSON from peers, parsed with a nesting limit: a document nested deeper than
// `max_depth` is refused while it is read, before any deep value exists, so neither
// parsing nor printing nor destroying it can run out of stack.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace elastic::rendezvous::detail {

inline constexpr int default_json_depth = 64;

class JsonTooDeep : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws nlohmann::json::parse_error for bad JSON, JsonTooDeep past the limit.
inline nlohmann::json parse_json_bounded(const std::string& text, int max_depth = default_json_depth) {
  return nlohmann::json::parse(text, [max_depth](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
    if (depth > max_depth) throw JsonTooDeep("JSON nested deeper than " + std::to_string(max_depth) + " levels");
    return true;
  });
}

// As above; a discarded value for bad or too deep JSON.
inline nlohmann::json parse_json_or_discarded(const std::string& text, int max_depth = default_json_depth) {
  try {
    return parse_json_bounded(text, max_depth);
  } catch (const std::exception&) {
    return nlohmann::json(nlohmann::json::value_t::discarded);
  }
}

}  // namespace elastic::rendezvous::detail
