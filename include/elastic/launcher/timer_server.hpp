// The launcher's side of PyTorch's file-based worker timers (TORCHELASTIC_ENABLE_FILE_TIMER=1).
//
// Workers send one JSON line per request into a named pipe (TORCHELASTIC_TIMER_FILE), the
// format of torch.distributed.elastic.timer.FileTimerClient:
//   {"version": 1, "pid": 1234, "scope_id": "step", "expiration_time": 1700000000.5, "signal": 9}
// expiration_time is wall-clock seconds since the epoch; a negative one releases the timer.
// When a worker's timer expires, the worker is sent the request's signal (none if <= 0), and
// the launcher reports it as having died of an expired timer.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <elastic/log.hpp>
#include <elastic/signal_free_thread.hpp>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace elastic::launcher {

class TimerServer {
 public:
  // Creates the named pipe at `path` (mode 0600; an existing pipe there is replaced, any
  // other file is an error) and starts serving it on a thread of its own.
  explicit TimerServer(std::string path) : path_(std::move(path)) {
    struct stat st {};
    if (::lstat(path_.c_str(), &st) == 0) {
      if (!S_ISFIFO(st.st_mode))
        throw std::system_error(EEXIST, std::generic_category(), "timer file " + path_ + " exists and is not a pipe");
      ::unlink(path_.c_str());
    }
    if (::mkfifo(path_.c_str(), 0600) != 0)
      throw std::system_error(errno, std::generic_category(), "cannot create timer file " + path_);
    // The server keeps a writer open itself, so the pipe never reads end-of-file between clients.
    read_fd_ = ::open(path_.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    write_fd_ = read_fd_ < 0 ? -1 : ::open(path_.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (read_fd_ < 0 || write_fd_ < 0 || stop_fd_ < 0) {
      int saved = errno;
      close_all();
      throw std::system_error(saved, std::generic_category(), "cannot open timer file " + path_);
    }
    // The thread never takes the process's signals: the launcher reads them from a signalfd,
    // which works only while every thread blocks them.
    thread_ = elastic::signal_free_thread([this] { serve(); });
  }
  ~TimerServer() {
    std::uint64_t one = 1;
    [[maybe_unused]] auto ignored = ::write(stop_fd_, &one, sizeof(one));
    if (thread_.joinable()) thread_.join();
    close_all();
  }
  TimerServer(const TimerServer&) = delete;
  TimerServer& operator=(const TimerServer&) = delete;

  const std::string& path() const { return path_; }

  // Only these processes (the current attempt's workers) may be signalled; timers of any
  // other process are dropped. A worker may send its first request before the launcher
  // knows its pid, so requests are kept until then.
  //
  // Each worker is pinned here by a pidfd and signalled only through it, so a worker that
  // has exited and been reaped is never confused with a process that got its pid since.
  // Call it while the workers cannot have been reaped yet (as LaunchConfig's
  // on_workers_started is): each pid then still names its worker.
  void set_workers(const std::map<int, pid_t>& pids) {
    std::lock_guard<std::mutex> lock(mutex_);
    close_pidfds();
    for (const auto& [local_rank, pid] : pids) {
      const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
      // Without pidfd_open (Linux before 5.3) the pid alone is kept, and signalled with kill().
      if (pidfd < 0 && errno != ENOSYS) {
        log::warning("timer file {}: worker pid {} cannot be pinned ({}); its timers will be ignored", path_, pid,
                     std::strerror(errno));
        continue;
      }
      if (pidfd >= 0) ::fcntl(pidfd, F_SETFD, FD_CLOEXEC);
      workers_[pid] = pidfd;
    }
    workers_known_ = true;
    for (auto it = timers_.begin(); it != timers_.end();) {
      if (workers_.count(it->first.first) != 0) {
        ++it;
        continue;
      }
      log::warning("timer file {}: ignoring a timer of pid {}, not a worker of this job", path_, it->first.first);
      it = timers_.erase(it);
    }
  }

  // The attempt's workers are gone: their timers go, and the next attempt's requests are
  // kept until set_workers() names its workers.
  void end_attempt() {
    std::lock_guard<std::mutex> lock(mutex_);
    close_pidfds();
    workers_known_ = false;
    timers_.clear();
  }

  // Why `pid` was killed, when an expired timer did it: "timer expired (scope 'step')".
  std::optional<std::string> expired(pid_t pid) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = expired_.find(pid);
    if (found == expired_.end()) return std::nullopt;
    return "timer expired (scope '" + found->second + "')";
  }

 private:
  struct Timer {
    double expiration_time;
    int signal;
  };

  void serve() {
    std::string pending;
    bool warned = false;
    for (;;) {
      int timeout_ms = next_timeout_ms();
      pollfd fds[2] = {{read_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
      int ready = ::poll(fds, 2, timeout_ms);
      if (ready < 0 && errno != EINTR) return;
      if (ready > 0 && (fds[1].revents & POLLIN)) return;
      if (ready > 0 && (fds[0].revents & POLLIN)) {
        char buffer[4096];
        ssize_t got;
        while ((got = ::read(read_fd_, buffer, sizeof(buffer))) > 0)
          pending.append(buffer, static_cast<std::size_t>(got));
        for (std::size_t newline; (newline = pending.find('\n')) != std::string::npos;) {
          std::string line = pending.substr(0, newline);
          pending.erase(0, newline + 1);
          if (!handle(line) && !warned) {
            log::warning("timer file {}: ignoring a request that is not FileTimerClient's JSON", path_);
            warned = true;
          }
        }
        // A line longer than any client sends (PIPE_BUF): drop it rather than grow.
        if (pending.size() > 65536) pending.clear();
      }
      reap_expired();
    }
  }

  // Registers or releases one request; false for a malformed one.
  bool handle(const std::string& line) {
    auto request = nlohmann::json::parse(line, nullptr, false);
    if (request.is_discarded() || !request.is_object()) return false;
    auto pid = request.find("pid");
    auto scope = request.find("scope_id");
    auto expiration = request.find("expiration_time");
    auto signal = request.find("signal");
    if (pid == request.end() || !pid->is_number_integer() || scope == request.end() || !scope->is_string() ||
        expiration == request.end() || !expiration->is_number())
      return false;
    const auto key = std::make_pair(pid->get<pid_t>(), scope->get<std::string>());
    const double expiration_time = expiration->get<double>();
    int sig = signal != request.end() && signal->is_number_integer() ? signal->get<int>() : 0;
    std::lock_guard<std::mutex> lock(mutex_);
    if (expiration_time < 0) {
      timers_.erase(key);
    } else if (workers_known_ && workers_.count(key.first) == 0) {
      // Anyone who can write the pipe could name any pid: only our workers are ever signalled.
      log::warning("timer file {}: ignoring a timer of pid {}, not a worker of this job", path_, key.first);
    } else {
      timers_[key] = Timer{expiration_time, sig};
    }
    return true;
  }

  static double now() {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  }

  int next_timeout_ms() const {
    std::lock_guard<std::mutex> lock(mutex_);
    if (timers_.empty()) return -1;
    if (!workers_known_) return 50;  // expiry waits for set_workers()
    double soonest = timers_.begin()->second.expiration_time;
    for (const auto& [key, timer] : timers_) soonest = std::min(soonest, timer.expiration_time);
    double wait_ms = (soonest - now()) * 1000.0;
    // Wall-clock deadlines can move with the clock: look again at least once a second.
    return static_cast<int>(std::clamp(wait_ms + 1.0, 0.0, 1000.0));
  }

  void reap_expired() {
    std::lock_guard<std::mutex> lock(mutex_);
    const double at = now();
    // Per worker, the first expired timer (by expiration) with a signal decides.
    std::map<pid_t, std::pair<double, std::pair<std::string, int>>> due;
    std::set<pid_t> expired_pids;
    for (const auto& [key, timer] : timers_) {
      // Before the workers' pids are known, an expired timer waits for them (set_workers).
      if (timer.expiration_time > at || !workers_known_) continue;
      expired_pids.insert(key.first);
      if (timer.signal <= 0) continue;
      auto found = due.find(key.first);
      if (found == due.end() || timer.expiration_time < found->second.first)
        due[key.first] = {timer.expiration_time, {key.second, timer.signal}};
    }
    for (const auto& [pid, what] : due) {
      const auto& [scope, sig] = what.second;
      auto worker = workers_.find(pid);
      if (worker == workers_.end()) continue;
      log::warning("worker pid {}: timer '{}' expired, sending signal {}", pid, scope, sig);
      const int pidfd = worker->second;
      const long sent = pidfd >= 0 ? ::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0) : ::kill(pid, sig);
      if (sent == 0)
        expired_.emplace(pid, scope);
      else if (errno == ESRCH)
        log::warning("worker pid {}: has exited; its expired timer '{}' signals nothing", pid, scope);
      else
        log::error("worker pid {}: cannot send signal {}: {}", pid, sig, std::strerror(errno));
    }
    // As PyTorch's server: every timer of a worker that had one expire is dropped.
    for (auto it = timers_.begin(); it != timers_.end();)
      it = expired_pids.count(it->first.first) ? timers_.erase(it) : std::next(it);
  }

  // With mutex_ held.
  void close_pidfds() {
    for (const auto& [pid, pidfd] : workers_)
      if (pidfd >= 0) ::close(pidfd);
    workers_.clear();
  }

  void close_all() {
    close_pidfds();
    for (int* fd : {&read_fd_, &write_fd_, &stop_fd_})
      if (*fd >= 0) ::close(std::exchange(*fd, -1));
    ::unlink(path_.c_str());
  }

  std::string path_;
  int read_fd_ = -1;
  int write_fd_ = -1;
  int stop_fd_ = -1;
  mutable std::mutex mutex_;
  std::map<pid_t, int> workers_;  // the workers' pidfds (-1: none, the kernel lacks them)
  bool workers_known_ = false;
  std::map<std::pair<pid_t, std::string>, Timer> timers_;
  std::map<pid_t, std::string> expired_;
  std::thread thread_;
};

}  // namespace elastic::launcher
