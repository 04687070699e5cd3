// Test support: TCP ports for servers whose port a test must name before they
// start (a launcher's --master-port or --rdzv-endpoint, an etcd's URLs).
//
// The kernel's own pick (bind port 0, read it, close) is racy when test programs
// run in parallel: the port is free again at once, and until the server binds it,
// any process's bind(0) or connect() may be handed it (a gloo listener of another
// test's PyTorch job, say), as may another test's pick. So the ports here come from
// below the kernel's ephemeral range, which bind(0) and connect() never hand out,
// and each stays marked, for the whole life of the test program, by an abstract
// Unix socket that the other test programs' picks respect.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <elastic/launcher/port.hpp>
#include <fstream>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>

namespace elastic::testing {

namespace detail {

// True when a plain listener could bind `port` on the wildcard address of
// `family` now (no SO_REUSEADDR: a port with connections in TIME_WAIT is passed
// over too). An address family the host lacks counts as free.
inline bool port_bindable(int family, int port) {
  const int fd = launcher::detail::bind_wildcard(family, port, false);
  if (fd >= 0) ::close(fd);
  return fd >= 0 || (family == AF_INET6 && errno == EAFNOSUPPORT);
}

// Marks `port` as this test program's: the mark's descriptor, or -1 when another
// program marked it. A mark kept open goes with the process, however it ends.
inline int mark_port(int port) {
  const int fd = launcher::detail::bind_abstract_socket("elastic-tests/port/" + std::to_string(port));
  if (fd < 0 && errno != EADDRINUSE)
    throw std::runtime_error("cannot mark port " + std::to_string(port) + ": " + std::strerror(errno));
  return fd;
}

// The first port of the kernel's ephemeral range (32768 when unreadable).
inline int ephemeral_low() {
  std::ifstream range("/proc/sys/net/ipv4/ip_local_port_range");
  int low = 32768;
  if (!(range >> low)) low = 32768;
  return low;
}

}  // namespace detail

// A port that no process listens on and that no other test program picked:
// below the ephemeral range (down to 10000 ports under it, never under 1024),
// marked as this program's until it exits.
inline int free_port() {
  static std::mutex mutex;
  static std::minstd_rand random(static_cast<unsigned>(::getpid()) ^
                                 static_cast<unsigned>(std::chrono::steady_clock::now().time_since_epoch().count()));
  std::lock_guard<std::mutex> lock(mutex);
  static const int high = detail::ephemeral_low() - 1;
  const int low = std::max(1024, high - 9999);
  if (high < low) throw std::runtime_error("no ports under the ephemeral range to test with");
  const int size = high - low + 1;
  const int start = static_cast<int>(random() % static_cast<unsigned>(size));
  for (int i = 0; i < size; ++i) {
    const int port = low + (start + i) % size;
    const int mark = detail::mark_port(port);
    if (mark < 0) continue;
    if (detail::port_bindable(AF_INET, port) && detail::port_bindable(AF_INET6, port)) return port;
    ::close(mark);
  }
  throw std::runtime_error("no free port between " + std::to_string(low) + " and " + std::to_string(high));
}

// True when something accepts TCP connections on 127.0.0.1:port.
inline bool tcp_port_open(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(port));
  bool open = ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  ::close(fd);
  return open;
}

}  // namespace elastic::testing
