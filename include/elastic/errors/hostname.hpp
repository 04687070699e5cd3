// The host name shown in failure summaries, computed as Python's socket.getfqdn()
// does so that our summaries and torchrun's agree on the same machine.
#pragma once

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

namespace elastic {

// gethostname(), "localhost" when that fails.
inline std::string hostname() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "localhost";
  return name;
}

namespace errors::detail {
// getfqdn(): resolve the host name, reverse-look-up its first address, then take
// the first of (official name, aliases...) containing a dot, else the official
// name. Any failure leaves the plain host name.
inline std::string compute_fqdn() {
  const std::string host = hostname();
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), nullptr, &hints, &found) != 0 || found == nullptr) return host;

  hostent entry{};
  hostent* result = nullptr;
  std::vector<char> buffer(16384);
  int herr = 0;
  const void* address = nullptr;
  socklen_t length = 0;
  int family = found->ai_family;
  if (family == AF_INET) {
    address = &reinterpret_cast<sockaddr_in*>(found->ai_addr)->sin_addr;
    length = sizeof(in_addr);
  } else if (family == AF_INET6) {
    address = &reinterpret_cast<sockaddr_in6*>(found->ai_addr)->sin6_addr;
    length = sizeof(in6_addr);
  }
  int rc =
      address ? ::gethostbyaddr_r(address, length, family, &entry, buffer.data(), buffer.size(), &result, &herr) : -1;
  ::freeaddrinfo(found);
  if (rc != 0 || result == nullptr || result->h_name == nullptr) return host;

  if (std::strchr(result->h_name, '.') != nullptr) return result->h_name;
  for (char** alias = result->h_aliases; alias != nullptr && *alias != nullptr; ++alias)
    if (std::strchr(*alias, '.') != nullptr) return *alias;
  return result->h_name;
}
}  // namespace errors::detail

// The fully qualified name of this host, as Python's socket.getfqdn() gives it.
// Resolved once per process: name lookups can take a while and the answer does
// not change during a job.
inline const std::string& fqdn() {
  static const std::string name = errors::detail::compute_fqdn();
  return name;
}

}  // namespace elastic
