// Serializes JSON the way Python's json.dump does with its defaults: one line,
// separators ", " and ": ", keys in the order given, ensure_ascii. Files we write
// are then byte-comparable with PyTorch's, and a copy-up keeps their shape.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace elastic::errors::detail {

// Python escapes non-ASCII as lowercase \uXXXX (surrogate pairs above U+FFFF),
// control characters as \u00XX except \b \f \n \r \t, and DEL as \u007f; so does
// nlohmann's dump with ensure_ascii. Invalid UTF-8 becomes U+FFFD instead of throwing.
inline void append_python_string(std::string& out, const std::string& value) {
  out += nlohmann::json(value).dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
}

template <typename Json>
void append_python_json(std::string& out, const Json& value) {
  switch (value.type()) {
    case nlohmann::json::value_t::object: {
      out += '{';
      bool first = true;
      for (auto it = value.begin(); it != value.end(); ++it) {
        if (!first) out += ", ";
        first = false;
        append_python_string(out, it.key());
        out += ": ";
        append_python_json(out, it.value());
      }
      out += '}';
      break;
    }
    case nlohmann::json::value_t::array: {
      out += '[';
      bool first = true;
      for (const auto& element : value) {
        if (!first) out += ", ";
        first = false;
        append_python_json(out, element);
      }
      out += ']';
      break;
    }
    case nlohmann::json::value_t::string:
      append_python_string(out, value.template get_ref<const std::string&>());
      break;
    default:  // numbers, booleans, null: nlohmann's spelling matches Python's
      out += value.dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
      break;
  }
}

template <typename Json>
std::string python_json_dumps(const Json& value) {
  std::string out;
  append_python_json(out, value);
  return out;
}

}  // namespace elastic::errors::detail
