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
// the sentinel sends POST /v3/lease/revoke over a plain TCP connection to each
// member of the cluster in turn until one answers (the request's bytes and the
// addresses are prepared before the fork), and exits.
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
#include <utility>
#include <vector>

namespace elastic::rendezvous::detail {

class LeaseSentinel {
 public:
  LeaseSentinel() = default;
  LeaseSentinel(const LeaseSentinel&) = delete;
  LeaseSentinel& operator=(const LeaseSentinel&) = delete;
  ~LeaseSentinel() { stop(); }

  // Forks the sentinel for the etcd cluster whose members are `members` (host,
  // port), tried in that order. False (and no sentinel) when no address resolves
  // or the fork fails: the lease then ends by its TTL.
  bool start(const std::vector<std::pair<std::string, int>>& members) {
    if (pid_ > 0) return true;
    member_count_ = 0;
    for (const auto& [host, port] : members) {
      if (member_count_ == max_members) break;
      addrinfo hints{};
      hints.ai_family = AF_UNSPEC;
      hints.ai_socktype = SOCK_STREAM;
      addrinfo* found = nullptr;
      if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0 || found == nullptr) continue;
      Member& member = members_[member_count_++];
      std::memcpy(&member.address, found->ai_addr, found->ai_addrlen);
      member.address_length = found->ai_addrlen;
      member.family = found->ai_family;
      ::freeaddrinfo(found);
    }
    if (member_count_ == 0) return false;
    // Everything the child sends but the lease id, built before the fork (etcd
    // does not check the Host header).
    request_head_ = "POST /v3/lease/revoke HTTP/1.1\r\nHost: " + members.front().first + ":" +
                    std::to_string(members.front().second) +
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

    // Each member in turn until one answers 200 (a lease already gone answers 404:
    // nothing to do either); a member gone or cut off costs at most its time limit.
    for (std::size_t i = 0; i < member_count_; ++i) {
      int status = revoke_at(members_[i], length_line, length_size, body, body_length);
      if (status == 200 || status == 404) break;
    }
    ::_exit(0);
  }

  struct Member {
    sockaddr_storage address{};
    socklen_t address_length = 0;
    int family = AF_INET;
  };

  // Async-signal-safe. Sends the revoke to one member; returns the HTTP status of
  // its answer, or 0 (no connection, no answer within 2 s).
  int revoke_at(const Member& member, const char* length_line, int length_size, const char* body,
                int body_length) const {
    int fd = ::socket(member.family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    timeval limit{2, 0};  // bounds connect() too (Linux applies SO_SNDTIMEO to it)
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit));
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&member.address), member.address_length) != 0) {
      ::close(fd);
      return 0;
    }
    write_whole(fd, request_head_.data(), request_head_.size());
    write_whole(fd, length_line, static_cast<std::size_t>(length_size));
    write_whole(fd, body, static_cast<std::size_t>(body_length));
    // Wait for the answer (etcd closes after it): the revoke is done by then. The
    // first 12 bytes ("HTTP/1.1 200") are kept for the status, the rest drained.
    char answer[512];
    std::size_t seen = 0;
    for (;;) {
      ssize_t got = ::read(fd, answer + seen, sizeof(answer) - seen);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) break;
      seen += static_cast<std::size_t>(got);
      if (seen == sizeof(answer)) seen = 12;
    }
    int status = 0;
    if (seen >= 12 && std::memcmp(answer, "HTTP/1.", 7) == 0)
      for (int i = 9; i < 12 && answer[i] >= '0' && answer[i] <= '9'; ++i) status = status * 10 + (answer[i] - '0');
    ::close(fd);
    return status;
  }

  static constexpr std::size_t max_members = 8;

  pid_t pid_ = -1;
  int write_fd_ = -1;
  Member members_[max_members];
  std::size_t member_count_ = 0;
  std::string request_head_;
};

}  // namespace elastic::rendezvous::detail
