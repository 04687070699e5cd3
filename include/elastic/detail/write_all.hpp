#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstddef>

namespace elastic::detail {

// Writes all of `data` to `fd`, retrying short writes and EINTR. Only write(2) is
// called, so the crash handler may use it too. False when the fd is unusable.
inline bool write_all(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) errno = ENOSPC;  // a write that makes no progress would loop forever
    if (n <= 0) return false;
    data += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

}  // namespace elastic::detail
