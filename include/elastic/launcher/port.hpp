// The master port of a job on this host, held for as long as the job runs.
//
// The port is held with sockets that are bound but never listen, with SO_REUSEADDR: the
// store on MASTER_PORT (the launcher's own, agent_store.hpp, or worker rank 0's with
// TORCHELASTIC_USE_AGENT_STORE=False; both set SO_REUSEADDR) can still bind and listen
// there, while the kernel hands the port to no other bind(port 0) or connect(), and a
// listener elsewhere on it makes the bind fail.
// An abstract Unix socket named after the port marks it as held by a launcher, so two
// launchers on one host never share a port, even before either's rank 0 listens.
//
// Anyone on the host may bind any abstract name, so a mark counts only when its holder
// is shown to be of this process's uid: the mark listens, and a launcher that finds the
// name taken connects to it and reads the holder's credentials (SO_PEERCRED). A name
// held by another uid, or by a socket that does not answer (not listening, or its queue
// full), is seen past: the port is then judged by binding it alone, and this launcher
// holds it without a mark of its own.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <elastic/log.hpp>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace elastic::launcher {

namespace detail {

// A Unix socket bound to `name` in the abstract namespace (Linux): the name is
// taken for as long as the socket is open, and freed with the process however it
// ends, leaving no file behind. -1 and errno (EADDRINUSE: taken) on failure.
inline int bind_abstract_socket(const std::string& name) {
  sockaddr_un address{};
  if (name.size() + 1 > sizeof(address.sun_path)) {
    errno = ENAMETOOLONG;
    return -1;
  }
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path + 1, name.data(), name.size());
  const auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), length) != 0) {
    const int saved = errno;
    ::close(fd);
    errno = saved;
    return -1;
  }
  return fd;
}

// Who holds the abstract socket `name`: connects to it (without blocking) and reads
// the listener's credentials. False when that cannot be told: nothing listens on the
// name (ECONNREFUSED), or its queue of connections is full (EAGAIN).
inline bool abstract_socket_holder(const std::string& name, ucred& holder) {
  sockaddr_un address{};
  if (name.size() + 1 > sizeof(address.sun_path)) return false;
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path + 1, name.data(), name.size());
  const auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  // A holder between its bind and its listen refuses for a moment: a few short tries.
  for (int attempt = 0; attempt < 5; ++attempt) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return false;
    const bool connected = ::connect(fd, reinterpret_cast<sockaddr*>(&address), length) == 0;
    const int error = errno;
    socklen_t size = sizeof(holder);
    const bool known = connected && ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &holder, &size) == 0;
    ::close(fd);
    if (known) return true;
    if (connected || error != ECONNREFUSED) return false;
    const timespec pause{0, 1000000};
    ::nanosleep(&pause, nullptr);
  }
  return false;
}

// A TCP socket of `family` bound to the wildcard address and `port` (IPv6: dual
// stack), with SO_REUSEADDR when `reuse_address`; -1 and errno on failure.
inline int bind_wildcard(int family, int port, bool reuse_address) {
  int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  if (reuse_address) ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  int rc;
  if (family == AF_INET6) {
    sockaddr_in6 addr{};
    addr.sin6_family = AF_INET6;
    addr.sin6_addr = in6addr_any;
    addr.sin6_port = htons(static_cast<uint16_t>(port));
    rc = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  } else {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    rc = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  }
  if (rc != 0) {
    const int saved = errno;
    ::close(fd);
    errno = saved;
    return -1;
  }
  return fd;
}

}  // namespace detail

// The port cannot be held: another process listens on it, or another launcher holds it.
class PortBusyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class PortReservation {
 public:
  PortReservation() = default;
  PortReservation(PortReservation&& other) noexcept
      : port_(std::exchange(other.port_, 0)), fds_(std::move(other.fds_)) {
    other.fds_.clear();
  }
  PortReservation& operator=(PortReservation&& other) noexcept {
    if (this != &other) {
      release();
      port_ = std::exchange(other.port_, 0);
      fds_ = std::move(other.fds_);
      other.fds_.clear();
    }
    return *this;
  }
  PortReservation(const PortReservation&) = delete;
  PortReservation& operator=(const PortReservation&) = delete;
  ~PortReservation() { release(); }

  int port() const { return port_; }

  // The abstract Unix socket name that marks `port` as held by a launcher.
  static std::string mark_name(int port) { return "elastic-run/master-port/" + std::to_string(port); }

  // Holds `port`; throws PortBusyError naming why it cannot.
  static PortReservation hold(int port) {
    PortReservation held;
    std::string why;
    if (!held.try_hold(port, why))
      throw PortBusyError("port " + std::to_string(port) + " is busy on this host (" + why + ")");
    return held;
  }

  // Holds a free port the kernel picks.
  static PortReservation any() {
    std::string why;
    constexpr int attempts = 64;
    for (int attempt = 0; attempt < attempts; ++attempt) {
      int fd = detail::bind_wildcard(AF_INET, 0, true);
      if (fd < 0) {
        why = std::string("binding a port the kernel picks failed: ") + std::strerror(errno);
        break;
      }
      sockaddr_in addr{};
      socklen_t len = sizeof(addr);
      int port = ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0 ? ntohs(addr.sin_port) : 0;
      ::close(fd);
      PortReservation held;
      std::string busy;
      if (port > 0 && held.try_hold(port, busy)) return held;
      why = "the last of " + std::to_string(attempts) + " ports the kernel picked, " + std::to_string(port) +
            ", could not be held: " + busy;
    }
    throw PortBusyError("no free port could be held on this host (" + why + ")");
  }

 private:
  bool try_hold(int port, std::string& why) {
    release();
    // The launcher's mark first: a port another launcher holds is busy even before its rank 0 listens.
    const std::string name = mark_name(port);
    int mark = detail::bind_abstract_socket(name);
    if (mark >= 0) {
      // Listening, so that other launchers can ask who holds it; no connection is ever accepted.
      ::listen(mark, SOMAXCONN);
      fds_.push_back(mark);
    } else if (errno != EADDRINUSE) {
      why = std::string("cannot mark it: ") + std::strerror(errno);
      return false;
    } else {
      ucred holder{};
      const bool known = detail::abstract_socket_holder(name, holder);
      if (known && holder.uid == ::geteuid()) {
        why = "another elastic-run job holds it";
        return false;
      }
      log::warning("port {}: its elastic-run mark is held by {}; passed over, the port is judged by binding it", port,
                   known ? "uid " + std::to_string(holder.uid) + " (pid " + std::to_string(holder.pid) + "), not ours"
                         : std::string("a socket that does not answer"));
    }
    int v4 = detail::bind_wildcard(AF_INET, port, true);
    if (v4 < 0) {
      why = errno == EADDRINUSE ? "a process listens on it" : std::strerror(errno);
      release();
      return false;
    }
    fds_.push_back(v4);
    // IPv6 (dual stack) too where the host has it: c10d's store binds [::] first.
    int v6 = detail::bind_wildcard(AF_INET6, port, true);
    if (v6 >= 0) {
      fds_.push_back(v6);
    } else if (errno == EADDRINUSE) {
      why = "a process listens on it";
      release();
      return false;
    }
    port_ = port;
    return true;
  }

  void release() {
    for (int fd : fds_) ::close(fd);
    fds_.clear();
    port_ = 0;
  }

  int port_ = 0;
  std::vector<int> fds_;
};

}  // namespace elastic::launcher
