// Tee of one worker stream: raw bytes to its log file, and whole lines, each
// with the rank's prefix, to the console. Every console write() carries only
// whole lines, so ranks never split or mix each other's lines; a last line
// without a newline is completed at the end.
//
// The console (the launcher's stdout or stderr) is written by a thread of its
// own, so a slow reader, a reader that never reads, or a non-blocking console
// never blocks the loop that watches workers and signals.
#pragma once

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <csignal>
#include <cstring>
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
//
// The hand-off costs no copy (hand_off() swaps the caller's buffer for an empty
// one, recycled); the thread takes every chunk queued meanwhile and writes them
// with as few writev() calls as max_write allows, each of whole lines. It is
// woken only when idle: under a flood, chunks queued while it writes go with
// its next batch, unasked.
class Console {
 public:
  static constexpr std::size_t high_water = std::size_t{4} << 20;
  // The thread takes up to this many queued bytes at a time (at least one chunk).
  static constexpr std::size_t max_batch = std::size_t{1} << 20;
  // One write() carries at most this much, whole lines (a longer line alone), so
  // a reader that is slow but steady is seen making progress at least this often.
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

  // Queues a copy of `data`; never blocks.
  void write(std::string_view data) {
    if (data.empty()) return;
    std::string chunk(data);
    push(chunk, false);
  }

  // Queues the contents of `chunk` without copying them and leaves an empty
  // buffer in its place (a recycled one, with room, when there is one); never
  // blocks. `chunk` should hold whole lines: it goes out in one write().
  void hand_off(std::string& chunk) { push(chunk, true); }

  // True when more may be queued. When false, `room_fd()` becomes readable once
  // the queue is down to half of `high_water` (read it to reset it).
  bool has_room() {
    // Read without the lock on the way in: at worst one more batch is queued.
    if (queued_.load(std::memory_order_relaxed) < high_water) return true;
    std::lock_guard<std::mutex> lock(mutex_);
    if (queued_.load(std::memory_order_relaxed) < high_water) return true;
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
    const auto empty = [this] { return queued_.load(std::memory_order_relaxed) == 0 && !writing_; };
    if (given_up_ && last_progress() <= given_up_at_) return empty();
    given_up_ = false;
    note_progress();
    while (!empty()) {
      if (Clock::now() - last_progress() >= stall_limit) {
        given_up_ = true;
        given_up_at_ = Clock::now();
        return false;
      }
      done_.wait_for(lock, std::chrono::milliseconds(100));
    }
    return true;
  }

  Console(const Console&) = delete;
  Console& operator=(const Console&) = delete;

 private:
  using Clock = std::chrono::steady_clock;
  // Emptied buffers kept for reuse; a larger one is let go.
  static constexpr std::size_t max_spare = 4;
  static constexpr std::size_t max_spare_capacity = std::size_t{1} << 20;

  explicit Console(int fd) : fd_(fd) {}

  // A regular file or /dev/null takes a write at once (a pipe, a terminal or a
  // socket may not). Checked at each write: an fd number may be reused.
  static bool writes_never_block(int fd) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return false;
    return S_ISREG(st.st_mode) || (S_ISCHR(st.st_mode) && st.st_rdev == ::makedev(1, 3));
  }

  void push(std::string& chunk, bool recycle) {
    if (chunk.empty()) return;
    std::lock_guard<std::mutex> lock(mutex_);
    if (queue_.empty() && !writing_ && writes_never_block(fd_)) {
      // A file or /dev/null: written here, in order, with no thread to wake.
      (void)detail::write_all(fd_, chunk.data(), chunk.size());
      chunk.clear();
      return;
    }
    queued_.store(queued_.load(std::memory_order_relaxed) + chunk.size(), std::memory_order_relaxed);
    queue_.push_back(std::move(chunk));
    chunk.clear();
    if (recycle && !spare_.empty()) {
      chunk.swap(spare_.back());
      spare_.pop_back();
    }
    start_thread_locked();
    // A thread that is writing takes this chunk with its next batch, unasked.
    if (idle_) wake_.notify_one();
  }

  Clock::time_point last_progress() const {
    return Clock::time_point(Clock::duration(last_progress_.load(std::memory_order_relaxed)));
  }
  void note_progress() { last_progress_.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed); }

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

  // Writes `batch` in order: chunks together, up to max_write bytes a writev();
  // a larger chunk in pieces that end with a newline. A chunk the console
  // refuses is dropped alone; the next one is tried afresh.
  void write_batch(std::vector<std::string>& batch, std::vector<iovec>& pending, std::vector<iovec>& out) {
    pending.clear();
    for (auto& chunk : batch) pending.push_back(iovec{chunk.data(), chunk.size()});
    std::size_t first = 0;
    while (first < pending.size()) {
      out.clear();
      std::size_t bytes = 0;
      for (std::size_t i = first; i < pending.size() && out.size() < IOV_MAX; ++i) {
        std::size_t size = pending[i].iov_len;
        if (bytes + size > max_write) {
          if (!out.empty()) break;
          size = line_aligned(static_cast<const char*>(pending[i].iov_base), size);
        }
        out.push_back(iovec{pending[i].iov_base, size});
        bytes += size;
        if (size < pending[i].iov_len) break;
      }
      ssize_t n = ::writev(fd_, out.data(), static_cast<int>(out.size()));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        // Non-blocking console (O_NONBLOCK set by whoever shares it): wait for room.
        pollfd writable{fd_, POLLOUT, 0};
        if (::poll(&writable, 1, -1) < 0 && errno != EINTR) ++first;
        continue;  // POLLERR/POLLHUP show up as the next write's error
      }
      if (n <= 0) {  // refused (gone, closed, full disk): this chunk is dropped
        ++first;
        continue;
      }
      note_progress();
      auto left = static_cast<std::size_t>(n);
      while (first < pending.size() && left >= pending[first].iov_len) left -= pending[first++].iov_len;
      if (left > 0) {
        pending[first].iov_base = static_cast<char*>(pending[first].iov_base) + left;
        pending[first].iov_len -= left;
      }
    }
  }

  // How much of `data` (over max_write bytes) one write takes: up to its last
  // newline within max_write, else up to its first newline, else all of it.
  static std::size_t line_aligned(const char* data, std::size_t size) {
    if (const void* newline = ::memrchr(data, '\n', max_write))
      return static_cast<std::size_t>(static_cast<const char*>(newline) - data) + 1;
    if (const void* newline = std::memchr(data + max_write, '\n', size - max_write))
      return static_cast<std::size_t>(static_cast<const char*>(newline) - data) + 1;
    return size;
  }

  void run() {
    std::vector<std::string> batch;
    std::vector<iovec> pending, out;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      idle_ = true;
      wake_.wait(lock, [this] { return !queue_.empty(); });
      idle_ = false;
      std::size_t bytes = 0;
      do {
        bytes += queue_.front().size();
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      } while (!queue_.empty() && bytes + queue_.front().size() <= max_batch);
      writing_ = true;
      lock.unlock();
      write_batch(batch, pending, out);
      lock.lock();
      writing_ = false;
      queued_.store(queued_.load(std::memory_order_relaxed) - bytes, std::memory_order_relaxed);
      for (auto& chunk : batch)
        if (spare_.size() < max_spare && chunk.capacity() <= max_spare_capacity) {
          chunk.clear();
          spare_.push_back(std::move(chunk));
        }
      batch.clear();
      if (waiting_for_room_ && queued_.load(std::memory_order_relaxed) <= high_water / 2 && room_fd_ >= 0) {
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
  std::vector<std::string> spare_;
  // Changed under mutex_ only; read without it by has_room()'s first look.
  std::atomic<std::size_t> queued_{0};
  bool writing_ = false;
  bool started_ = false;
  bool idle_ = false;  // the thread waits for work: a new chunk must wake it
  bool waiting_for_room_ = false;
  // Written by the thread after each write that took bytes, read by flush().
  std::atomic<Clock::rep> last_progress_{Clock::now().time_since_epoch().count()};
  bool given_up_ = false;
  Clock::time_point given_up_at_;
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

  // Shows the whole lines of `data`, each behind the prefix, and keeps the rest
  // for the next call. With `now` false they wait in one buffer for commit() (or
  // the next call with `now`), so that a batch of reads goes out in one write().
  void feed(std::string_view data, bool now = true) {
    if (console_ == nullptr || data.empty()) return;
    feed_lines(data);
    if (now) commit();
  }

  // Hands the lines fed so far to the console.
  void commit() {
    if (!out_.empty()) emit();
  }

  // Shows a pending partial line, completed with a newline.
  void flush() {
    if (console_ == nullptr) return;
    if (!partial_.empty()) {
      out_.append(prefix_).append(partial_) += '\n';
      partial_.clear();
    }
    commit();
  }

 private:
  void feed_lines(std::string_view data) {
    // The newline that ends a line just cut at max_line was shown with it.
    if (just_cut_ && data.front() == '\n') data.remove_prefix(1);
    just_cut_ = false;
    if (data.empty()) return;
    const auto* last = static_cast<const char*>(::memrchr(data.data(), '\n', data.size()));
    if (last == nullptr) {
      partial_.append(data);
      if (partial_.size() >= max_line) cut();
      return;
    }
    const std::size_t last_newline = static_cast<std::size_t>(last - data.data());
    // All the whole lines go to one buffer (one write), each behind the prefix.
    const char* line = data.data();
    const char* const end = last + 1;
    if (!partial_.empty()) {
      const auto* newline = static_cast<const char*>(std::memchr(line, '\n', static_cast<std::size_t>(end - line)));
      out_.append(prefix_).append(partial_).append(line, static_cast<std::size_t>(newline + 1 - line));
      partial_.clear();
      line = newline + 1;
    }
    while (line < end) {
      const auto* newline = static_cast<const char*>(std::memchr(line, '\n', static_cast<std::size_t>(end - line)));
      out_.append(prefix_).append(line, static_cast<std::size_t>(newline + 1 - line));
      line = newline + 1;
    }
    partial_.assign(data.substr(last_newline + 1));
    if (partial_.size() >= max_line) cut();
  }

  // A partial line of max_line bytes is shown as a line of its own.
  void cut() {
    out_.append(prefix_).append(partial_) += '\n';
    partial_.clear();
    just_cut_ = true;
  }

  void emit() {
    if (duplicate_fd_ >= 0 && filters_ != nullptr && !filters_->empty()) duplicate_matching();
    console_->hand_off(out_);
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
