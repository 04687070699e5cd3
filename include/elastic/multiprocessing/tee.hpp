// Tee of one worker stream: raw bytes to its log file, and whole lines, each
// with the rank's prefix, to the console. Every console write() carries only
// whole lines of one rank, so ranks never split or mix each other's lines; a
// last line without a newline is completed at the end.
//
// The console (the launcher's stdout or stderr) is written by a thread of its
// own, so a slow reader, a reader that never reads, or a non-blocking console
// never blocks the loop that watches workers and signals.
#pragma once

#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <deque>
#include <elastic/write_all.hpp>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

namespace elastic::multiprocessing {

namespace detail {
using ::elastic::write_all;
}  // namespace detail

// One per console file descriptor, process-wide (Console::of): a FIFO of chunks
// written in order by a background thread. Writers never block. Past
// `high_water` queued bytes, has_room() is false and readers of worker pipes
// pause (the workers then wait on their own pipes, as with a console they wrote
// directly), until the queue is down to half; nothing is dropped, except a chunk
// the console refuses (EPIPE, EBADF): each chunk is tried on its own, so an fd
// number closed and reused later gets a fresh start.
class Console {
 public:
  static constexpr std::size_t high_water = std::size_t{4} << 20;
  static constexpr std::size_t max_write = std::size_t{1} << 16;

  // The console of `fd`, made on first use and never destroyed (its thread may
  // still be blocked in a write when the process exits).
  static Console& of(int fd) {
    static std::mutex registry_mutex;
    static auto* registry = new std::map<int, Console*>();
    std::lock_guard<std::mutex> lock(registry_mutex);
    auto& slot = (*registry)[fd];
    if (slot == nullptr) slot = new Console(fd);
    return *slot;
  }

  int fd() const { return fd_; }

  // Queues `data`; never blocks.
  void write(std::string_view data) {
    if (data.empty()) return;
    std::lock_guard<std::mutex> lock(mutex_);
    if (queue_.empty() && !writing_ && writes_never_block(fd_)) {
      // A file or /dev/null: written here, in order, with no thread to wake.
      (void)detail::write_all(fd_, data.data(), data.size());
      return;
    }
    queue_.emplace_back(data);
    queued_ += data.size();
    start_thread_locked();
    wake_.notify_one();
  }

  // True when more may be queued. When false, `room_fd()` becomes readable once
  // the queue is down to half of `high_water` (read it to reset it).
  bool has_room() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (queued_ < high_water) return true;
    waiting_for_room_ = true;
    return false;
  }
  // Made on first use; throws std::system_error when no descriptor is left.
  int room_fd() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (room_fd_ < 0) {
      room_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      if (room_fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
    }
    return room_fd_;
  }

  // Waits until everything queued is written, the console is gone, or the
  // reader took nothing for `stall_limit`. True when nothing is left queued.
  // A console given up on once is not waited for again until it takes something.
  bool flush(std::chrono::milliseconds stall_limit) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (given_up_ && last_progress_ <= given_up_at_) return queued_ == 0 && !writing_;
    given_up_ = false;
    last_progress_ = std::chrono::steady_clock::now();
    while (queued_ > 0 || writing_) {
      if (std::chrono::steady_clock::now() - last_progress_ >= stall_limit) {
        given_up_ = true;
        given_up_at_ = std::chrono::steady_clock::now();
        return false;
      }
      done_.wait_for(lock, std::chrono::milliseconds(100));
    }
    return true;
  }

  Console(const Console&) = delete;
  Console& operator=(const Console&) = delete;

 private:
  explicit Console(int fd) : fd_(fd) {}

  // A regular file or /dev/null takes a write at once (a pipe, a terminal or a
  // socket may not). Checked at each write: an fd number may be reused.
  static bool writes_never_block(int fd) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return false;
    return S_ISREG(st.st_mode) || (S_ISCHR(st.st_mode) && st.st_rdev == ::makedev(1, 3));
  }

  void start_thread_locked() {
    if (started_) return;
    started_ = true;
    // The thread takes no signal: the launcher reads its signals through a
    // signalfd, which only sees those no thread can take.
    sigset_t all, old;
    sigfillset(&all);
    ::pthread_sigmask(SIG_SETMASK, &all, &old);
    std::thread([this] { run(); }).detach();
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  }

  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [this] { return !queue_.empty(); });
      std::string chunk = std::move(queue_.front());
      queue_.pop_front();
      writing_ = true;
      lock.unlock();
      // write_all waits for writability (poll) on a non-blocking console.
      bool ok = true;
      for (std::size_t at = 0; ok && at < chunk.size(); at += max_write) {
        const std::size_t size = std::min(max_write, chunk.size() - at);
        ok = detail::write_all(fd_, chunk.data() + at, size);
        std::lock_guard<std::mutex> progress(mutex_);
        last_progress_ = std::chrono::steady_clock::now();
      }
      (void)ok;  // a console that is gone refuses the chunk at once: nothing to wait for
      lock.lock();
      writing_ = false;
      queued_ -= chunk.size();
      if (waiting_for_room_ && queued_ <= high_water / 2 && room_fd_ >= 0) {
        waiting_for_room_ = false;
        const std::uint64_t one = 1;
        ssize_t ignored = ::write(room_fd_, &one, sizeof(one));
        (void)ignored;
      }
      done_.notify_all();
    }
  }

  const int fd_;
  int room_fd_ = -1;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::deque<std::string> queue_;
  std::size_t queued_ = 0;
  bool writing_ = false;
  bool started_ = false;
  bool waiting_for_room_ = false;
  std::chrono::steady_clock::time_point last_progress_ = std::chrono::steady_clock::now();
  bool given_up_ = false;
  std::chrono::steady_clock::time_point given_up_at_;
};

class LinePrefixer {
 public:
  // A line longer than this is cut so a stream without newlines cannot grow memory.
  static constexpr std::size_t max_line = 1u << 16;

  LinePrefixer() = default;
  LinePrefixer(int console_fd, std::string prefix)
      : console_(console_fd >= 0 ? &Console::of(console_fd) : nullptr), prefix_(std::move(prefix)) {}

  bool enabled() const { return console_ != nullptr; }
  Console* console() const { return console_; }

  // Lines containing any of `filters` (plain substrings) are also written, with their
  // prefix, to `fd` (shared by the ranks: each write() holds whole lines of one rank).
  void duplicate_to(int fd, const std::vector<std::string>* filters) {
    duplicate_fd_ = fd;
    filters_ = filters;
  }

  void feed(std::string_view data) {
    if (console_ == nullptr || data.empty()) return;
    // The newline that ends a line just cut at max_line was shown with it.
    if (just_cut_ && data.front() == '\n') data.remove_prefix(1);
    just_cut_ = false;
    if (data.empty()) return;
    std::size_t last_newline = data.rfind('\n');
    if (last_newline == std::string_view::npos) {
      partial_.append(data);
      if (partial_.size() >= max_line) cut();
      return;
    }
    out_.clear();
    std::string_view whole = data.substr(0, last_newline + 1);
    std::size_t start = 0;
    while (start < whole.size()) {
      std::size_t end = whole.find('\n', start);
      if (out_.empty() && !partial_.empty()) {
        out_ += prefix_;
        out_ += partial_;
        partial_.clear();
      } else {
        out_ += prefix_;
      }
      out_.append(whole.substr(start, end + 1 - start));
      start = end + 1;
    }
    partial_.assign(data.substr(last_newline + 1));
    emit();
    if (partial_.size() >= max_line) cut();
  }

  // Shows a pending partial line, completed with a newline.
  void flush() {
    if (console_ == nullptr || partial_.empty()) return;
    out_.clear();
    out_ += prefix_;
    out_ += partial_;
    out_ += '\n';
    partial_.clear();
    emit();
  }

 private:
  void cut() {
    flush();
    just_cut_ = true;
  }

  void emit() {
    if (duplicate_fd_ >= 0 && filters_ != nullptr && !filters_->empty()) duplicate_matching();
    console_->write(out_);
    out_.clear();
  }

  void duplicate_matching() {
    std::string matching;
    for (std::size_t start = 0; start < out_.size();) {
      std::size_t end = out_.find('\n', start);
      end = end == std::string::npos ? out_.size() : end + 1;
      // The filters see the worker's line, not the prefix.
      const std::string_view line = std::string_view(out_).substr(start + prefix_.size(), end - start - prefix_.size());
      for (const auto& filter : *filters_)
        if (line.find(filter) != std::string_view::npos) {
          matching.append(out_, start, end - start);
          break;
        }
      start = end;
    }
    if (!matching.empty() && !detail::write_all(duplicate_fd_, matching.data(), matching.size())) duplicate_fd_ = -1;
  }

  Console* console_ = nullptr;
  int duplicate_fd_ = -1;
  const std::vector<std::string>* filters_ = nullptr;
  std::string prefix_;
  std::string partial_;
  std::string out_;
  bool just_cut_ = false;
};

}  // namespace elastic::multiprocessing
