// Lease sentinel: a small forked process that revokes an etcd lease as soon as
// its parent dies without saying goodbye (SIGKILL, a crash). A lease otherwise
// outlives a killed process by its whole TTL (15 s by default): with the
// sentinel, the dead node's ephemeral keys go within milliseconds and the other
// nodes' watches see it. A frozen (SIGSTOPped) parent keeps its pipe open, so
// it is still noticed by the TTL alone, as PyTorch does.
//
// The parent tells the sentinel the current lease through a socket pair (8 bytes:
// the id; 0: goodbye, exit without revoking; sent with MSG_NOSIGNAL, so a sentinel
// that is gone raises no SIGPIPE). When the parent's end closes without a goodbye,
// the sentinel sends POST /v3/lease/revoke over a plain TCP connection (the
// request's bytes and the address are prepared before the fork) and exits.
// Plain http only: TLS in the child would not be async-signal-safe.
#pragma once

#include <fcntl.h>
#include <netdb.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <elastic/helper_processes.hpp>
#include <string>

namespace elastic::rendezvous::detail {

class LeaseSentinel {
 public:
  LeaseSentinel() = default;
  LeaseSentinel(const LeaseSentinel&) = delete;
  LeaseSentinel& operator=(const LeaseSentinel&) = delete;
  ~LeaseSentinel() { stop(); }

  // Forks the sentinel for the etcd at host:port. False (and no sentinel) when the
  // address does not resolve or the fork fails: the lease then ends by its TTL.
  bool start(const std::string& host, int port) {
    if (pid_ > 0) return true;
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0 || found == nullptr)
      return false;
    std::memcpy(&address_, found->ai_addr, found->ai_addrlen);
    address_length_ = found->ai_addrlen;
    family_ = found->ai_family;
    ::freeaddrinfo(found);
    // Everything the child sends but the lease id, built before the fork.
    request_head_ = "POST /v3/lease/revoke HTTP/1.1\r\nHost: " + host + ":" + std::to_string(port) +
                    "\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: ";

    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return false;
    pid_t pid = ::fork();
    if (pid < 0) {
      ::close(fds[0]);
      ::close(fds[1]);
      return false;
    }
    if (pid == 0) run_child(fds[0], fds[1]);
    ::close(fds[0]);
    write_fd_ = fds[1];
    pid_ = pid;
    elastic::HelperProcesses::instance().add(pid);
    return true;
  }

  pid_t pid() const { return pid_; }

  // Whether the sentinel still runs. One that was killed (a launcher kills the
  // processes left after each round) is reaped here, and start() may fork anew.
  bool running() {
    if (pid_ <= 0) return false;
    int status = 0;
    pid_t reaped = ::waitpid(pid_, &status, WNOHANG);
    if (reaped == 0) return true;
    if (reaped < 0 && errno != ECHILD) return true;
    ::close(write_fd_);  // reaped by us, or by someone else (ECHILD): it is gone
    write_fd_ = -1;
    elastic::HelperProcesses::instance().remove(pid_);
    pid_ = -1;
    return false;
  }

  // The lease to revoke should this process die (0: none).
  void watch_lease(std::int64_t lease) { send(lease == 0 ? -1 : lease); }

  // A clean goodbye: the sentinel exits without revoking anything, and is reaped.
  void stop() {
    if (pid_ <= 0) return;
    send(0);
    ::close(write_fd_);
    write_fd_ = -1;
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    elastic::HelperProcesses::instance().remove(pid_);
    pid_ = -1;
  }

 private:
  void send(std::int64_t value) {
    if (write_fd_ < 0) return;
    // 8 bytes on a local stream socket: written whole or not at all.
    while (::send(write_fd_, &value, sizeof(value), MSG_NOSIGNAL) < 0 && errno == EINTR) {
    }
  }

  // Decimal digits of a non-negative value into `out`; returns their count.
  static int format_decimal(std::int64_t value, char* out) {
    char reversed[24];
    int count = 0;
    do {
      reversed[count++] = static_cast<char>('0' + value % 10);
      value /= 10;
    } while (value > 0);
    for (int i = 0; i < count; ++i) out[i] = reversed[count - 1 - i];
    return count;
  }

  static void write_whole(int fd, const char* data, std::size_t size) {
    while (size > 0) {
      ssize_t wrote = ::write(fd, data, size);
      if (wrote < 0 && errno == EINTR) continue;
      if (wrote <= 0) return;
      data += wrote;
      size -= static_cast<std::size_t>(wrote);
    }
  }

  // Async-signal-safe calls only from here on: the parent may have had threads.
  [[noreturn]] void run_child(int read_fd, int write_fd) {
    ::close(write_fd);
    read_fd = elastic::become_helper_child("elastic-lease", read_fd);
    std::int64_t lease = 0;
    for (;;) {
      std::int64_t value = 0;
      ssize_t got = ::recv(read_fd, &value, sizeof(value), MSG_WAITALL);
      if (got < 0 && errno == EINTR) continue;
      if (got != static_cast<ssize_t>(sizeof(value))) break;  // EOF without goodbye: the parent is gone
      if (value == 0) ::_exit(0);                             // goodbye
      lease = value < 0 ? 0 : value;
    }
    if (lease == 0) ::_exit(0);

    char body[64] = "{\"ID\":\"";
    int body_length = 7;
    body_length += format_decimal(lease, body + body_length);
    body[body_length++] = '"';
    body[body_length++] = '}';
    char length_line[32];
    int length_size = format_decimal(body_length, length_line);
    length_line[length_size++] = '\r';
    length_line[length_size++] = '\n';
    length_line[length_size++] = '\r';
    length_line[length_size++] = '\n';

    int fd = ::socket(family_, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) ::_exit(1);
    timeval limit{5, 0};  // etcd gone too: give up, the TTL ends the lease
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit));
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&address_), address_length_) != 0) ::_exit(1);
    write_whole(fd, request_head_.data(), request_head_.size());
    write_whole(fd, length_line, static_cast<std::size_t>(length_size));
    write_whole(fd, body, static_cast<std::size_t>(body_length));
    // Wait for the answer (etcd closes after it): the revoke is done by then.
    char answer[512];
    for (;;) {
      ssize_t got = ::read(fd, answer, sizeof(answer));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) break;
    }
    ::_exit(0);
  }

  pid_t pid_ = -1;
  int write_fd_ = -1;
  sockaddr_storage address_{};
  socklen_t address_length_ = 0;
  int family_ = AF_INET;
  std::string request_head_;
};

}  // namespace elastic::rendezvous::detail
