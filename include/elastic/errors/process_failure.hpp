// ProcessFailure: what a parent knows about one failed child, read from the error
// file the child wrote (any of TorchElastic's three formats) or, without one,
// made up from its exit code.
#pragma once

#include <fmt/format.h>
#include <time.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <elastic/errors/detail/file_io.hpp>
#include <elastic/errors/signals.hpp>
#include <elastic/log.hpp>
#include <istream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <streambuf>
#include <string>
#include <string_view>

namespace elastic {

// Shown where a value is not available, as TorchElastic does.
inline constexpr const char* not_available = "<N/A>";
// Shown as the traceback of a non-signal failure without an error file.
inline constexpr const char* no_traceback_message =
    "To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html";

// An error file that exists but cannot be used. what() names the file and the reason.
// The reason is printable ASCII of bounded length (see ErrorFileLimits).
class ErrorFileError : public std::runtime_error {
 public:
  ErrorFileError(std::string path, std::string reason)
      : std::runtime_error(fmt::format("invalid error file {}: {}", path, reason)),
        path_(std::move(path)),
        reason_(std::move(reason)) {}
  const std::string& path() const noexcept { return path_; }
  const std::string& reason() const noexcept { return reason_; }

 private:
  std::string path_;
  std::string reason_;
};

// Limits on what a reader accepts; an error file is a few KiB in practice. They
// bound the memory and time one hostile file can cost a parent: the bytes read,
// the nesting (serializing and copying JSON recurse), and the number of values
// (each parsed value costs tens of bytes, more than the text that spelled it).
// Strings are kept up to max_string_bytes each, and once max_kept_bytes of
// strings are kept, up to max_late_string_bytes each: the rest of a longer string
// is read (and checked) but not kept, and the string ends in a note of how much
// was left out. So a 60 MB trace costs a reader tens of MiB, not hundreds.
struct ErrorFileLimits {
  static constexpr std::size_t max_bytes = 64u << 20;  // 64 MiB
  static constexpr std::size_t max_string_bytes = 8u << 20;
  static constexpr std::size_t max_kept_bytes = 16u << 20;
  static constexpr std::size_t max_late_string_bytes = 256;
  static constexpr std::size_t max_depth = 512;          // nesting of arrays/objects
  static constexpr std::size_t max_values = 1u << 20;    // arrays, objects and members
  static constexpr std::size_t max_reason_bytes = 1024;  // of ErrorFileError::reason()
};

namespace errors::detail {

// The shape of a JSON text, counted outside strings by one linear scan that
// stops at the first limit passed, so hostile depth or size costs no parsing.
struct JsonShape {
  std::size_t depth = 0;   // deepest nesting of arrays/objects
  std::size_t values = 0;  // '[', '{' and ',' seen: an upper bound on values less one
};

inline JsonShape json_shape(std::string_view text, std::size_t depth_limit, std::size_t values_limit) {
  JsonShape shape;
  std::size_t depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > shape.depth && (shape.depth = depth) > depth_limit) break;
      if (++shape.values > values_limit) break;
    } else if (c == ',') {
      if (++shape.values > values_limit) break;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return shape;
}

// Deepest array/object nesting in `text`, counting stopped past `limit`.
inline std::size_t json_depth(std::string_view text, std::size_t limit) {
  return json_shape(text, limit, std::numeric_limits<std::size_t>::max()).depth;
}

// Why `text` is over ErrorFileLimits, or an empty string.
inline std::string json_limits_problem(std::string_view text) {
  const JsonShape shape = json_shape(text, ErrorFileLimits::max_depth, ErrorFileLimits::max_values);
  if (shape.depth > ErrorFileLimits::max_depth)
    return fmt::format("JSON nested deeper than {} levels", ErrorFileLimits::max_depth);
  if (shape.values > ErrorFileLimits::max_values)
    return fmt::format("JSON has more than {} values", ErrorFileLimits::max_values);
  return {};
}

// The JSON text of an open error file as a stream for the parser, read in blocks
// (bounded memory whatever the file's size), with three jobs done on the way:
// - strings longer than ErrorFileLimits allow are cut at a character boundary (never
//   inside an escape, a surrogate pair or a UTF-8 sequence) and end in
//   "\n... (N bytes cut)"; what is cut is still checked (control characters,
//   escapes, UTF-8 lead and continuation bytes) and a fault there is handed to the
//   parser, so a file is refused exactly when it is not valid JSON;
// - nesting and values are counted as json_shape() does; past a limit the stream
//   ends and problem() says why;
// - at most `max_bytes` are read, then problem() says the file grew.
class ShortenedJsonBuffer : public std::streambuf {
 public:
  ShortenedJsonBuffer(int fd, std::size_t max_bytes) : fd_(fd), max_bytes_(max_bytes) {}

  const std::string& problem() const { return problem_; }

 protected:
  int_type underflow() override {
    while (out_.empty() || out_position_ == out_.size()) {
      out_.clear();
      out_position_ = 0;
      if (!problem_.empty() || at_end_) return traits_type::eof();
      if (!fill()) {
        at_end_ = true;
        if (!problem_.empty() || out_.empty()) return traits_type::eof();
        break;
      }
    }
    setg(out_.data() + out_position_, out_.data() + out_position_, out_.data() + out_.size());
    out_position_ = out_.size();
    return traits_type::to_int_type(*gptr());
  }

 private:
  // Reads one block and filters it into out_. False at end of file or on a problem.
  bool fill() {
    char block[64 * 1024];
    ssize_t n;
    do {
      n = ::read(fd_, block, sizeof(block));
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      problem_ = std::strerror(errno);
      return false;
    }
    if (n == 0) {
      if (in_string_ && skipped_ > 0) note_cut();  // unterminated: the parser says so
      return false;
    }
    read_ += static_cast<std::size_t>(n);
    if (read_ > max_bytes_) {
      problem_ = fmt::format("file grew over the limit of {} bytes while being read", max_bytes_);
      return false;
    }
    for (ssize_t i = 0; i < n && problem_.empty(); ++i) take(static_cast<unsigned char>(block[i]));
    return problem_.empty();
  }

  void take(unsigned char c) {
    if (!in_string_) {
      out_.push_back(static_cast<char>(c));
      if (c == '"') {
        in_string_ = true;
        skipping_ = false;
        kept_ = skipped_ = 0;
        escape_left_ = utf8_left_ = 0;
        high_surrogate_ = false;
        limit_ = kept_total_ >= ErrorFileLimits::max_kept_bytes ? ErrorFileLimits::max_late_string_bytes
                                                                : ErrorFileLimits::max_string_bytes;
      } else if (c == '[' || c == '{') {
        if (++depth_ > ErrorFileLimits::max_depth)
          problem_ = fmt::format("JSON nested deeper than {} levels", ErrorFileLimits::max_depth);
        else if (++values_ > ErrorFileLimits::max_values)
          problem_ = fmt::format("JSON has more than {} values", ErrorFileLimits::max_values);
      } else if (c == ',') {
        if (++values_ > ErrorFileLimits::max_values)
          problem_ = fmt::format("JSON has more than {} values", ErrorFileLimits::max_values);
      } else if ((c == ']' || c == '}') && depth_ > 0) {
        --depth_;
      }
      return;
    }
    const bool unit_start = escape_left_ == 0 && utf8_left_ == 0;
    if (unit_start && c == '"') {
      if (skipped_ > 0) note_cut();
      out_.push_back('"');
      kept_total_ += kept_;
      in_string_ = false;
      return;
    }
    // Decided at the start of each character (an escape, a UTF-8 sequence), never
    // between the two halves of a surrogate pair.
    if (unit_start && kept_ >= limit_ && !high_surrogate_) skipping_ = true;
    const bool keep = !skipping_;
    const char* fault = nullptr;  // what the parser is handed for a byte no valid JSON string has here
    if (escape_left_ > 0) {
      if (escape_left_ == 5) {  // the character after the backslash
        if (c == 'u') {
          escape_left_ = 4;
          unicode_ = 0;
        } else {
          if (c == 0 || std::strchr("\"\\/bfnrt", c) == nullptr) fault = "\\q";
          escape_left_ = 0;
          high_surrogate_ = false;
        }
      } else {
        const int digit = c >= '0' && c <= '9'   ? c - '0'
                          : c >= 'a' && c <= 'f' ? c - 'a' + 10
                          : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                                 : -1;
        if (digit < 0) fault = "\\uq";
        unicode_ = unicode_ * 16 + (digit < 0 ? 0 : static_cast<unsigned>(digit));
        if (--escape_left_ == 0) high_surrogate_ = unicode_ >= 0xD800 && unicode_ <= 0xDBFF;
      }
    } else if (utf8_left_ > 0) {
      if ((c & 0xC0) != 0x80) fault = "\xff";
      --utf8_left_;
    } else if (c == '\\') {
      escape_left_ = 5;
    } else if (c < 0x20) {
      fault = "\x01";
    } else if (c >= 0x80) {
      utf8_left_ = c >= 0xC2 && c < 0xE0 ? 1 : c >= 0xE0 && c < 0xF0 ? 2 : c >= 0xF0 && c < 0xF5 ? 3 : 0;
      if (utf8_left_ == 0) fault = "\xff";
      high_surrogate_ = false;
    } else {
      high_surrogate_ = false;
    }
    if (keep) {
      out_.push_back(static_cast<char>(c));  // a fault here is the parser's to find, as it is
      ++kept_;
    } else if (fault != nullptr) {
      note_cut();
      out_.append(fault);  // makes the parser refuse the file at this point
    } else {
      ++skipped_;
    }
  }

  void note_cut() {
    const std::string note = fmt::format("\\n... ({} bytes cut)", skipped_);
    out_.append(note);
    skipped_ = 0;
  }

  int fd_;
  std::size_t max_bytes_;
  std::size_t read_ = 0;
  std::string out_;
  std::size_t out_position_ = 0;
  std::string problem_;
  bool at_end_ = false;
  // Outside strings.
  std::size_t depth_ = 0, values_ = 0;
  // Inside a string.
  bool in_string_ = false, skipping_ = false, high_surrogate_ = false;
  int escape_left_ = 0;  // 5: just after a backslash; 4..1: hex digits of \uXXXX left
  int utf8_left_ = 0;    // continuation bytes left
  unsigned unicode_ = 0;
  std::size_t kept_ = 0, skipped_ = 0, limit_ = 0, kept_total_ = 0;
};

// A reason fit to print and to put in JSON: printable ASCII, other bytes as \xHH
// (a parser's message quotes the file's raw bytes), cut at `limit` bytes.
inline std::string printable_reason(std::string_view text, std::size_t limit = ErrorFileLimits::max_reason_bytes) {
  std::string out;
  for (unsigned char c : text) {
    if (out.size() >= limit) {
      out += "...";
      break;
    }
    if (c >= 0x20 && c < 0x7f)
      out += static_cast<char>(c);
    else
      out += fmt::format("\\x{:02x}", c);
  }
  return out;
}

// Python's int() of a str: surrounding whitespace, an optional sign, decimal
// digits with single underscores between them. Limited to int64.
inline std::optional<std::int64_t> parse_python_int(const std::string& text) {
  std::size_t begin = text.find_first_not_of(" \t\n\r\f\v");
  std::size_t end = text.find_last_not_of(" \t\n\r\f\v");
  if (begin == std::string::npos) return std::nullopt;
  std::size_t i = begin;
  bool negative = false;
  if (text[i] == '+' || text[i] == '-') negative = text[i++] == '-';
  if (i > end) return std::nullopt;
  std::uint64_t magnitude = 0;
  const std::uint64_t limit = negative ? std::uint64_t(std::numeric_limits<std::int64_t>::max()) + 1
                                       : std::uint64_t(std::numeric_limits<std::int64_t>::max());
  bool last_was_digit = false;
  for (; i <= end; ++i) {
    char c = text[i];
    if (c == '_' && last_was_digit && i < end) {
      last_was_digit = false;
      continue;
    }
    if (c < '0' || c > '9') return std::nullopt;
    unsigned digit = static_cast<unsigned>(c - '0');
    if (magnitude > (limit - digit) / 10) return std::nullopt;
    magnitude = magnitude * 10 + digit;
    last_was_digit = true;
  }
  if (!last_was_digit) return std::nullopt;
  if (negative) return magnitude == limit ? std::numeric_limits<std::int64_t>::min() : -std::int64_t(magnitude);
  return std::int64_t(magnitude);
}

// Python's int() applied to a JSON value: integers, floats (truncated), booleans
// and integer strings. Anything else, or out of int64 range, is rejected.
inline std::optional<std::int64_t> to_python_int(const nlohmann::json& value) {
  using value_t = nlohmann::json::value_t;
  switch (value.type()) {
    case value_t::number_integer: return value.get<std::int64_t>();
    case value_t::number_unsigned: {
      auto v = value.get<std::uint64_t>();
      if (v > std::uint64_t(std::numeric_limits<std::int64_t>::max())) return std::nullopt;
      return std::int64_t(v);
    }
    case value_t::number_float: {
      double v = std::trunc(value.get<double>());
      if (!std::isfinite(v) || v < -9.2233720368547758e18 || v >= 9.2233720368547758e18) return std::nullopt;
      return static_cast<std::int64_t>(v);
    }
    case value_t::boolean: return value.get<bool>() ? 1 : 0;
    case value_t::string: return parse_python_int(value.get_ref<const std::string&>());
    default: return std::nullopt;
  }
}

// Python's int(time.time()): CLOCK_REALTIME. time(2) reads a coarse clock that lags
// it by up to a tick, so across a second boundary it would say the second before.
inline std::int64_t now_seconds() {
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  return static_cast<std::int64_t>(now.tv_sec);
}

// CLOCK_REALTIME in nanoseconds: a failure's time below the second.
inline std::int64_t now_nanoseconds() {
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  return static_cast<std::int64_t>(now.tv_sec) * 1000000000 + now.tv_nsec;
}

// The key of an error file's time in nanoseconds (extraInfo's in the nested
// format, top level's otherwise); PyTorch's readers ignore it.
inline constexpr const char* time_ns_key = "timestamp_ns";

}  // namespace errors::detail

class ProcessFailure {
 public:
  int local_rank = 0;
  int pid = 0;
  int exitcode = 0;
  std::string error_file;          // "<N/A>" when the child left no file
  nlohmann::json error_file_data;  // the parsed file, or {"message": "<NONE>"}
  nlohmann::json message;          // a string, or the nested {"message", "extraInfo"} object
  std::int64_t timestamp = 0;      // seconds since the epoch
  // When it happened, in nanoseconds since the epoch: the error file's timestamp_ns
  // when it has one, else when this process saw the exit. Breaks ties between
  // equal `timestamp`s.
  std::int64_t time_ns = errors::detail::now_nanoseconds();
  // Where it happened: empty for this host (a failure reported by another node of
  // the job names its host).
  std::string host;
  // Non-empty: why this failure is not a root cause (the worker was stopped by the
  // launcher, or failed after the job's first failure). Shown in the summary.
  std::string collateral;

  // Reads `error_file_path` if it is a regular file. A malformed file throws
  // ErrorFileError. A missing one (or a directory, FIFO, device) gives
  // error_file "<N/A>", a message made from the exit code, and the current time.
  ProcessFailure(int local_rank_, int pid_, int exitcode_, std::string error_file_path)
      : local_rank(local_rank_), pid(pid_), exitcode(exitcode_), error_file(std::move(error_file_path)) {
    error_file_data = empty_error_data();
    message = "";
    errors::detail::OpenedFile file;
    errors::detail::open_regular_file(file, error_file, ErrorFileLimits::max_bytes);
    switch (file.status) {
      case errors::detail::ReadResult::Status::ok: load(file.fd); break;
      case errors::detail::ReadResult::Status::not_a_file: set_no_reply_file(); break;
      case errors::detail::ReadResult::Status::error: fail(file.reason);
    }
    if (message.is_string() && message.get_ref<const std::string&>().empty()) message = default_message();
  }

  // Never throws for a bad file: a parent that must report every rank uses this.
  // An unusable file keeps its path in `error_file` and the reason in the message.
  static ProcessFailure read_or_describe(int local_rank, int pid, int exitcode, std::string error_file_path) {
    try {
      return ProcessFailure(local_rank, pid, exitcode, error_file_path);
    } catch (const ErrorFileError& e) {
      ProcessFailure failure(local_rank, pid, exitcode, std::string(not_available));
      failure.error_file = std::move(error_file_path);
      failure.message = fmt::format("{} (error file unusable: {})", failure.default_message(), e.reason());
      return failure;
    }
  }

  // Equal when every field is (as PyTorch's dataclass compares them).
  friend bool operator==(const ProcessFailure& a, const ProcessFailure& b) {
    return a.local_rank == b.local_rank && a.pid == b.pid && a.exitcode == b.exitcode && a.error_file == b.error_file &&
           a.error_file_data == b.error_file_data && a.message == b.message && a.timestamp == b.timestamp;
  }
  friend bool operator!=(const ProcessFailure& a, const ProcessFailure& b) { return !(a == b); }

  // "SIGSEGV" for exit code -11; "<N/A>" for an unnamed signal or a non-negative code.
  std::string signal_name() const { return exitcode < 0 ? elastic::signal_name(-exitcode) : not_available; }

  // Local time as YYYY-MM-DD_HH:MM:SS. A timestamp no calendar can show (before
  // year 1 or after 9999, where Python raises) is printed as the raw number.
  std::string timestamp_isoformat() const {
    std::tm local{};
    const std::time_t seconds = static_cast<std::time_t>(timestamp);
    if (::localtime_r(&seconds, &local) == nullptr || local.tm_year + 1900 < 1 || local.tm_year + 1900 > 9999)
      return std::to_string(timestamp);
    // Python writes the year with at least four digits ("0385"); strftime's %Y does not.
    return fmt::format("{:04d}-{:02d}-{:02d}_{:02d}:{:02d}:{:02d}", local.tm_year + 1900, local.tm_mon + 1,
                       local.tm_mday, local.tm_hour, local.tm_min, local.tm_sec);
  }

  static nlohmann::json empty_error_data() { return nlohmann::json{{"message", "<NONE>"}}; }

 private:
  [[noreturn]] void fail(const std::string& raw_reason) const {
    const std::string reason = errors::detail::printable_reason(raw_reason);
    log::error("Failed to parse reply file: {}: {}", error_file, reason);
    throw ErrorFileError(error_file, reason);
  }

  std::string default_message() const {
    if (exitcode < 0) return fmt::format("Signal {} ({}) received by PID {}", -exitcode, signal_name(), pid);
    return no_traceback_message;
  }

  void set_no_reply_file() {
    error_file = not_available;
    error_file_data = empty_error_data();
    message = "";
    timestamp = errors::detail::now_seconds();
  }

  // Parses the file as a stream, with bounded memory (see ShortenedJsonBuffer).
  void load(int fd) {
    errors::detail::ShortenedJsonBuffer buffer(fd, ErrorFileLimits::max_bytes);
    std::istream stream(&buffer);
    nlohmann::json data;
    std::string parse_error;
    try {
      data = nlohmann::json::parse(stream);
    } catch (const nlohmann::json::exception& e) {
      parse_error = e.what();
    }
    if (!buffer.problem().empty()) fail(buffer.problem());
    if (!parse_error.empty()) fail(fmt::format("not valid JSON ({})", parse_error));
    if (!data.is_object()) fail("top level is not a JSON object");
    auto found = data.find("message");
    if (found == data.end()) fail("no \"message\" key");
    const nlohmann::json& msg = *found;

    std::optional<std::int64_t> stamp;
    if (msg.is_string()) {  // new format, or MAST with a string timestamp
      auto ts = data.find("timestamp");
      stamp = ts == data.end() ? std::optional<std::int64_t>(0) : errors::detail::to_python_int(*ts);
      if (!stamp) fail("\"timestamp\" is not an integer");
    } else if (msg.is_object()) {  // nested format
      auto extra = msg.find("extraInfo");
      if (extra == msg.end() || !extra->is_object()) fail("no \"message.extraInfo\" object");
      auto ts = extra->find("timestamp");
      if (ts == extra->end()) fail("no \"message.extraInfo.timestamp\"");
      stamp = errors::detail::to_python_int(*ts);
      if (!stamp) fail("\"message.extraInfo.timestamp\" is not an integer");
      // Whatever the summary will display must be a string.
      auto callstack = extra->find("py_callstack");
      if (callstack != extra->end()) {
        if (!callstack->is_string()) fail("\"message.extraInfo.py_callstack\" is not a string");
      } else if (auto text = msg.find("message"); text != msg.end() && !text->is_string()) {
        fail("\"message.message\" is not a string");
      }
    } else {
      fail("\"message\" is neither a string nor an object");
    }
    if (log::enabled(log::Level::debug))  // the dump is costly: skip it when unseen
      log::debug("User process failed with error data: {}", data.dump(2));
    message = msg;
    timestamp = *stamp;
    const nlohmann::json& holder = msg.is_object() ? msg.at("extraInfo") : data;
    if (auto ns = holder.find(errors::detail::time_ns_key); ns != holder.end())
      if (auto value = errors::detail::to_python_int(*ns); value && *value / 1000000000 == timestamp) time_ns = *value;
    error_file_data = std::move(data);
  }
};

}  // namespace elastic
