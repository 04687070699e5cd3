// Building blocks that are safe inside a signal handler: a fixed-size text
// buffer, number formatting, JSON escaping and an atomic file write. Nothing here
// allocates, locks or touches stdio; only async-signal-safe system calls are used.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <elastic/detail/write_all.hpp>

namespace elastic::errors::detail {

inline std::size_t safe_strlen(const char* text) {
  std::size_t length = 0;
  if (text != nullptr)
    while (text[length] != '\0') ++length;
  return length;
}

inline bool safe_streq(const char* a, const char* b) {
  if (a == nullptr || b == nullptr) return a == b;
  while (*a != '\0' && *a == *b) ++a, ++b;
  return *a == *b;
}

// Text in caller-provided storage. Appends past the end are dropped (the text is
// truncated, never overflowed); `truncated()` tells whether that happened.
class FixedText {
 public:
  FixedText(char* storage, std::size_t capacity) : data_(storage), capacity_(capacity) { clear(); }

  void clear() {
    size_ = 0;
    truncated_ = false;
    if (capacity_ > 0) data_[0] = '\0';
  }
  const char* c_str() const { return data_; }
  std::size_t size() const { return size_; }
  bool truncated() const { return truncated_; }

  FixedText& append(char c) {
    if (size_ + 1 < capacity_) {
      data_[size_++] = c;
      data_[size_] = '\0';
    } else {
      truncated_ = true;
    }
    return *this;
  }
  FixedText& append(const char* text) {
    if (text != nullptr)
      while (*text != '\0') append(*text++);
    return *this;
  }
  FixedText& append(const char* text, std::size_t length) {
    for (std::size_t i = 0; i < length; ++i) append(text[i]);
    return *this;
  }
  FixedText& append_decimal(std::int64_t value) {
    std::uint64_t magnitude = value < 0 ? 0 - static_cast<std::uint64_t>(value) : static_cast<std::uint64_t>(value);
    if (value < 0) append('-');
    return append_unsigned(magnitude);
  }
  FixedText& append_unsigned(std::uint64_t value) {
    char digits[24];
    int count = 0;
    do {
      digits[count++] = static_cast<char>('0' + value % 10);
      value /= 10;
    } while (value != 0);
    while (count > 0) append(digits[--count]);
    return *this;
  }
  // "0x" and lowercase hex digits, no padding: the spelling of Python and gdb.
  FixedText& append_hex(std::uint64_t value) {
    static const char hex[] = "0123456789abcdef";
    char digits[16];
    int count = 0;
    do {
      digits[count++] = hex[value & 0xF];
      value >>= 4;
    } while (value != 0);
    append("0x");
    while (count > 0) append(digits[--count]);
    return *this;
  }

  // A JSON string literal with the escapes Python's json.dumps(ensure_ascii=True)
  // uses, so the file reads the same as one PyTorch writes. Invalid UTF-8 becomes
  // U+FFFD.
  FixedText& append_json_string(const char* text, std::size_t length) {
    append('"');
    std::size_t i = 0;
    while (i < length) {
      const auto byte = static_cast<unsigned char>(text[i]);
      if (byte < 0x80) {
        append_json_ascii(static_cast<char>(byte));
        ++i;
        continue;
      }
      std::uint32_t code_point = 0xFFFD;
      std::size_t used = decode_utf8(reinterpret_cast<const unsigned char*>(text) + i, length - i, code_point);
      i += used;
      if (code_point >= 0x10000) {
        code_point -= 0x10000;
        append_unicode_escape(0xD800 + (code_point >> 10));
        append_unicode_escape(0xDC00 + (code_point & 0x3FF));
      } else {
        append_unicode_escape(code_point);
      }
    }
    return append('"');
  }
  FixedText& append_json_string(const char* text) { return append_json_string(text, safe_strlen(text)); }

 private:
  void append_json_ascii(char c) {
    switch (c) {
      case '"': append("\\\""); return;
      case '\\': append("\\\\"); return;
      case '\n': append("\\n"); return;
      case '\r': append("\\r"); return;
      case '\t': append("\\t"); return;
      case '\b': append("\\b"); return;
      case '\f': append("\\f"); return;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F)
          append_unicode_escape(static_cast<unsigned char>(c));
        else
          append(c);
    }
  }
  void append_unicode_escape(std::uint32_t unit) {
    static const char hex[] = "0123456789abcdef";
    append("\\u");
    for (int shift = 12; shift >= 0; shift -= 4) append(hex[(unit >> shift) & 0xF]);
  }
  // Decodes one UTF-8 sequence; returns the bytes it used (at least 1). Overlong
  // forms, surrogates and out-of-range values leave U+FFFD, one byte consumed.
  static std::size_t decode_utf8(const unsigned char* s, std::size_t left, std::uint32_t& out) {
    out = 0xFFFD;
    int extra = s[0] >= 0xF0 && s[0] < 0xF5 ? 3 : s[0] >= 0xE0 ? 2 : s[0] >= 0xC2 && s[0] < 0xE0 ? 1 : -1;
    if (s[0] >= 0xF5) extra = -1;
    if (extra < 0 || static_cast<std::size_t>(extra) >= left) return 1;
    std::uint32_t value = s[0] & (0x3F >> extra);
    for (int k = 1; k <= extra; ++k) {
      if ((s[k] & 0xC0) != 0x80) return 1;
      value = (value << 6) | (s[k] & 0x3F);
    }
    static const std::uint32_t smallest[] = {0, 0x80, 0x800, 0x10000};
    if (value < smallest[extra] || value > 0x10FFFF || (value >= 0xD800 && value <= 0xDFFF)) return 1;
    out = value;
    return static_cast<std::size_t>(extra) + 1;
  }

  char* data_;
  std::size_t capacity_;
  std::size_t size_ = 0;
  bool truncated_ = false;
};

// Storage and text together, for buffers that live in static storage.
template <std::size_t Capacity>
class StaticText : public FixedText {
 public:
  StaticText() : FixedText(storage_, Capacity) {}
  StaticText(const StaticText&) = delete;
  StaticText& operator=(const StaticText&) = delete;

 private:
  char storage_[Capacity];
};

using ::elastic::detail::write_all;

// mkdir -p of the directories above `path`, in place on a copy in `scratch`.
inline void safe_create_parent_directories(const char* path, FixedText& scratch) {
  scratch.clear();
  scratch.append(path);
  if (scratch.truncated()) return;
  char* text = const_cast<char*>(scratch.c_str());
  for (std::size_t i = 1; i < scratch.size(); ++i) {
    if (text[i] != '/') continue;
    text[i] = '\0';
    ::mkdir(text, 0755);  // an existing directory (EEXIST) is the common case
    text[i] = '/';
  }
}

// Writes `size` bytes to `path` so that a reader sees the whole file or none:
// a new temporary file in the same directory (named from `path`, the pid and a
// `unique` number), written and renamed over `path`. `scratch` holds the names.
// Returns 0 on success, else the errno of the step that failed.
inline int safe_write_file_atomically(const char* path, const char* data, std::size_t size, std::uint64_t unique,
                                      FixedText& scratch) {
  const std::size_t path_length = safe_strlen(path);
  std::size_t slash = path_length;
  while (slash > 0 && path[slash - 1] != '/') --slash;
  scratch.clear();
  scratch.append(path, slash).append('.').append(path + slash).append(".crash.");
  scratch.append_unsigned(static_cast<std::uint64_t>(::getpid())).append('.').append_unsigned(unique);
  // The temporary name is kept apart from the scratch buffer the directory walk uses.
  char temp[4096];
  if (scratch.truncated() || scratch.size() >= sizeof(temp)) return ENAMETOOLONG;
  for (std::size_t i = 0; i <= scratch.size(); ++i) temp[i] = scratch.c_str()[i];

  const int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW;
  int fd = ::open(temp, flags, 0644);
  if (fd < 0 && errno == ENOENT) {
    safe_create_parent_directories(path, scratch);
    fd = ::open(temp, flags, 0644);
  }
  if (fd < 0) return errno;
  const bool written = write_all(fd, data, size);
  int error = written ? 0 : errno;
  if (::close(fd) != 0 && error == 0) error = errno;
  if (error == 0 && ::rename(temp, path) != 0) error = errno;
  if (error != 0) ::unlink(temp);
  return error;
}

}  // namespace elastic::errors::detail
