// Building blocks that are safe inside a signal handler: a fixed-size text
// buffer, number formatting, JSON escaping and an atomic file write. Nothing here
// allocates, locks or touches stdio; only async-signal-safe system calls are used.
#pragma once

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <elastic/write_all.hpp>

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
  constexpr FixedText(char* storage, std::size_t capacity) : data_(storage), capacity_(capacity) { clear(); }

  constexpr void clear() {
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

template <std::size_t Capacity>
struct ZeroedStorage {
  char storage_[Capacity] = {};
};

// Storage and text together, for buffers that live in static storage. The
// storage is a base constructed before the text that points into it, so the
// whole is constexpr-constructible: a static StaticText is constant-initialized.
template <std::size_t Capacity>
class StaticText : private ZeroedStorage<Capacity>, public FixedText {
 public:
  constexpr StaticText() : ZeroedStorage<Capacity>(), FixedText(this->storage_, Capacity) {}
  StaticText(const StaticText&) = delete;
  StaticText& operator=(const StaticText&) = delete;
};

using ::elastic::write_all;

// The mode of every file and directory the error path creates, on the exception
// path and the crash path alike: an error file may hold data its owner alone should read.
inline constexpr mode_t error_file_mode = 0600;
inline constexpr mode_t error_directory_mode = 0700;

// 64 unpredictable bits for a temporary file's name: getrandom(2) (a system call,
// so async-signal-safe), else the clock, the thread and an address, mixed.
inline std::uint64_t safe_random_u64() {
  std::uint64_t value = 0;
  if (::syscall(SYS_getrandom, &value, sizeof(value), GRND_NONBLOCK) == static_cast<long>(sizeof(value))) return value;
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  static std::atomic<std::uint64_t> mix{0};  // lock-free, so async-signal-safe
  value = mix.load(std::memory_order_relaxed) ^ (static_cast<std::uint64_t>(now.tv_nsec) << 20) ^
          static_cast<std::uint64_t>(now.tv_sec) ^ (static_cast<std::uint64_t>(::syscall(SYS_gettid)) << 40) ^
          reinterpret_cast<std::uintptr_t>(&now);
  // splitmix64's finalizer spreads every input bit over the result.
  value += 0x9e3779b97f4a7c15ULL;
  value = (value ^ (value >> 30)) * 0xbf58476d1ce4e5b9ULL;
  value = (value ^ (value >> 27)) * 0x94d049bb133111ebULL;
  value ^= value >> 31;
  mix.store(value, std::memory_order_relaxed);
  return value;
}

// How many random names a writer tries before giving up: a name already taken
// (planted, or left by a killed writer) is skipped, never written through.
inline constexpr int temporary_name_attempts = 64;

// mkdir -p of the directories above `path`, in place on a copy in `scratch`.
inline void safe_create_parent_directories(const char* path, FixedText& scratch) {
  scratch.clear();
  scratch.append(path);
  if (scratch.truncated()) return;
  char* text = const_cast<char*>(scratch.c_str());
  for (std::size_t i = 1; i < scratch.size(); ++i) {
    if (text[i] != '/') continue;
    text[i] = '\0';
    ::mkdir(text, error_directory_mode);  // an existing directory (EEXIST) is the common case
    text[i] = '/';
  }
}

// Opens a new temporary file next to `path` under a random name (`.<name>.tmp.<16 hex>`),
// written into `temp` (of `temp_size` bytes); O_EXCL|O_NOFOLLOW, so a file or symlink
// already at a name is never opened: another name is tried. Missing parent directories
// are created (through `scratch`). Returns the descriptor, or -errno.
inline int safe_open_temporary(const char* path, char* temp, std::size_t temp_size, FixedText& scratch) {
  const std::size_t path_length = safe_strlen(path);
  std::size_t slash = path_length;
  while (slash > 0 && path[slash - 1] != '/') --slash;
  const std::size_t name_length = path_length - slash < 200 ? path_length - slash : 200;  // fits NAME_MAX
  const int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW;
  bool created_directories = false;
  int error = EEXIST;
  for (int attempt = 0; attempt < temporary_name_attempts; ++attempt) {
    FixedText name(temp, temp_size);
    name.append(path, slash).append('.').append(path + slash, name_length).append(".tmp.");
    const std::uint64_t random = safe_random_u64();
    static const char hex[] = "0123456789abcdef";
    for (int shift = 60; shift >= 0; shift -= 4) name.append(hex[(random >> shift) & 0xF]);
    if (name.truncated()) return -ENAMETOOLONG;
    const int fd = ::open(temp, flags, error_file_mode);
    if (fd >= 0) return fd;
    error = errno;
    if (error == ENOENT && !created_directories) {
      safe_create_parent_directories(path, scratch);
      created_directories = true;
      --attempt;
      continue;
    }
    if (error != EEXIST) break;
  }
  return -error;
}

// Writes `size` bytes to `path` so that a reader sees the whole file or none:
// a new temporary file in the same directory (see safe_open_temporary), written
// and renamed over `path` (rename(2) replaces a symlink there, never follows it).
// `scratch` is working space. Returns 0 on success, else the errno of the step that failed.
inline int safe_write_file_atomically(const char* path, const char* data, std::size_t size, FixedText& scratch) {
  char temp[4096];
  const int fd = safe_open_temporary(path, temp, sizeof(temp), scratch);
  if (fd < 0) return -fd;
  const bool written = write_all(fd, data, size);
  int error = written ? 0 : errno;
  if (::close(fd) != 0 && error == 0) error = errno;
  if (error == 0 && ::rename(temp, path) != 0) error = errno;
  if (error != 0) ::unlink(temp);
  return error;
}

}  // namespace elastic::errors::detail
