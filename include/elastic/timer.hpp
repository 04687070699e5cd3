// Worker hang timers: the worker side of PyTorch's file-based timers, for native workers.
//
//   {
//     auto timer = elastic::expires_after(std::chrono::seconds(30));
//     all_reduce(...);  // if this takes longer than 30 s, the launcher kills this worker
//   }                   // leaving the scope releases the timer
//
// Under elastic-run or torchrun with TORCHELASTIC_ENABLE_FILE_TIMER=1, the launcher serves a
// named pipe given to workers in TORCHELASTIC_TIMER_FILE; each acquire and release is one JSON
// line written to it, in torch.distributed.elastic.timer.FileTimerClient's format. Without
// TORCHELASTIC_TIMER_FILE (timers not enabled), timers do nothing. No networking, no thread.
#pragma once

#include <fcntl.h>
#include <limits.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <system_error>
#include <utility>

namespace elastic::timer {

// Sends timer requests to the launcher's timer server.
class FileTimerClient {
 public:
  // `signal`: what the server sends this process when a timer expires (SIGKILL, as PyTorch's
  // client; 0 or less: the timer only expires, nothing is sent).
  explicit FileTimerClient(std::string file_path, int signal = SIGKILL)
      : file_path_(std::move(file_path)), signal_(signal) {}

  // The client for TORCHELASTIC_TIMER_FILE, or none when it is not set.
  static std::optional<FileTimerClient> from_environment(int signal = SIGKILL) {
    const char* path = std::getenv("TORCHELASTIC_TIMER_FILE");
    if (path == nullptr || *path == '\0') return std::nullopt;
    return FileTimerClient(path, signal);
  }

  const std::string& file_path() const { return file_path_; }

  // Sets (or moves) the timer `scope_id` of this process to expire at `expiration_time`,
  // seconds since the epoch. Throws std::system_error (EPIPE) when no server reads the pipe.
  void acquire(const std::string& scope_id, double expiration_time) const { send(scope_id, expiration_time, signal_); }
  // Clears the timer `scope_id` of this process.
  void release(const std::string& scope_id) const { send(scope_id, -1, 0); }

 private:
  void send(const std::string& scope_id, double expiration_time, int signal) const {
    const std::string line = nlohmann::json{{"version", 1},
                                            {"pid", static_cast<long>(::getpid())},
                                            {"scope_id", scope_id},
                                            {"expiration_time", expiration_time},
                                            {"signal", signal}}
                                 .dump() +
                             "\n";
    // Up to PIPE_BUF bytes, one write is atomic: requests of concurrent workers never mix.
    if (line.size() > PIPE_BUF)
      throw std::system_error(EMSGSIZE, std::generic_category(), "timer request over PIPE_BUF bytes");
    // Non-blocking open: with no server (ENXIO) this fails at once instead of hanging.
    int fd = ::open(file_path_.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
      throw std::system_error(errno == ENXIO ? EPIPE : errno, std::generic_category(),
                              "no timer server at " + file_path_);
    ssize_t written;
    do {
      written = ::write(fd, line.data(), line.size());
    } while (written < 0 && errno == EINTR);
    int saved = errno;
    ::close(fd);
    if (written != static_cast<ssize_t>(line.size()))
      throw std::system_error(written < 0 ? saved : EIO, std::generic_category(),
                              "cannot send a timer request to " + file_path_);
  }

  std::string file_path_;
  int signal_;
};

// A timer that expires `after` its creation unless destroyed before; see expires_after().
class Expiry {
 public:
  Expiry(std::optional<FileTimerClient> client, std::string scope_id, std::chrono::duration<double> after)
      : client_(std::move(client)), scope_id_(std::move(scope_id)) {
    if (!client_) return;
    const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    client_->acquire(scope_id_, now + after.count());
  }
  Expiry(Expiry&& other) noexcept
      : client_(std::exchange(other.client_, std::nullopt)), scope_id_(std::move(other.scope_id_)) {}
  Expiry& operator=(Expiry&&) = delete;
  Expiry(const Expiry&) = delete;
  Expiry& operator=(const Expiry&) = delete;
  ~Expiry() {
    if (!client_) return;
    try {
      client_->release(scope_id_);
    } catch (...) {
      // A server that went away cannot kill us either.
    }
  }
  bool active() const { return client_.has_value(); }
  const std::string& scope_id() const { return scope_id_; }

 private:
  std::optional<FileTimerClient> client_;
  std::string scope_id_;
};

}  // namespace elastic::timer

namespace elastic {

// A scoped worker timer: the launcher kills this worker (SIGKILL) if the returned object
// still lives `after` from now. The scope is named after the caller's file and line, as
// PyTorch's expires() does, unless `scope_id` is given. Without TORCHELASTIC_TIMER_FILE it
// does nothing; with one and no server reading it, it throws std::system_error.
[[nodiscard]] inline timer::Expiry expires_after(std::chrono::duration<double> after, std::string scope_id = "",
                                                 const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  if (scope_id.empty()) scope_id = std::string(file) + "#" + std::to_string(line);
  return timer::Expiry(timer::FileTimerClient::from_environment(), std::move(scope_id), after);
}

}  // namespace elastic
