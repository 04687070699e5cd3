// write_all(): a write(2) that finishes the job, for any file descriptor.
#pragma once

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>

namespace elastic {

// Writes all of `data` to `fd`, retrying short writes and EINTR. On a
// non-blocking fd (O_NONBLOCK set by whoever shares it), EAGAIN waits in poll()
// for writability: no busy loop, no lost bytes. Only write(2) and poll(2) are
// called, both async-signal-safe, so the crash handler may use it too. False
// when the fd is unusable.
inline bool write_all(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd writable{fd, POLLOUT, 0};
      if (::poll(&writable, 1, -1) < 0 && errno != EINTR) return false;
      continue;  // POLLERR/POLLHUP show up as the next write's error
    }
    if (n == 0) errno = ENOSPC;  // a write that makes no progress would loop forever
    if (n <= 0) return false;
    data += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

}  // namespace elastic
