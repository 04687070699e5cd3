// Which address other hosts reach this one at: the choice of MASTER_ADDR when this
// node hosts rank 0 of a round of several nodes. The host name (as getfqdn() gives
// it) is the usual answer, but in many images the host's own name resolves to
// 127.0.0.1 or 127.0.1.1: handed to another host, it points that host at itself.
#pragma once

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <string>

namespace elastic::launcher {

namespace detail {

inline std::string numeric_host(const sockaddr* address, socklen_t length) {
  char text[NI_MAXHOST] = {};
  if (::getnameinfo(address, length, text, sizeof(text), nullptr, 0, NI_NUMERICHOST) != 0) return "";
  return text;
}

}  // namespace detail

// 127.0.0.0/8, ::1 and IPv4-mapped loopback, as numeric text.
inline bool is_loopback_address(const std::string& numeric) {
  in_addr v4{};
  if (::inet_pton(AF_INET, numeric.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (::inet_pton(AF_INET6, numeric.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
  }
  return false;
}

// Whether `name` resolves here to a loopback address first (what a connection to
// it would use), or is "localhost".
inline bool resolves_to_loopback(const std::string& name) {
  if (name == "localhost") return true;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo(name.c_str(), nullptr, &hints, &found) != 0 || found == nullptr) return false;
  const bool loopback = is_loopback_address(detail::numeric_host(found->ai_addr, found->ai_addrlen));
  ::freeaddrinfo(found);
  return loopback;
}

// The address this host's connections to host:port come from (the source address
// of its route there), as numeric text; empty when `host` cannot be resolved or
// reached. A UDP socket is connected, which sends nothing.
inline std::string route_source_address(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port > 0 ? port : 9);
  if (::getaddrinfo(host.c_str(), service.c_str(), &hints, &found) != 0) return "";
  std::string result;
  for (addrinfo* a = found; a != nullptr && result.empty(); a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    sockaddr_storage local{};
    socklen_t length = sizeof(local);
    if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &length) == 0)
      result = detail::numeric_host(reinterpret_cast<sockaddr*>(&local), length);
    ::close(fd);
  }
  ::freeaddrinfo(found);
  return result;
}

}  // namespace elastic::launcher
