// Test support: an impaired link made in user space. This kernel has no netem qdisc
// (and no qdisc that holds packets for a set time), so a host's link can be two tap
// devices, one in the host's namespace and one in the switch's, with this relay
// between them: each frame waits in a queue for the set delay, and is dropped at the
// set rate or always while that direction is cut. One thread per direction polls its
// tap; frames leave in the order they came. The settings may change while it runs.
//
// The taps must exist (persistent, made by `ip tuntap`); the relay attaches to them
// by name in their namespaces. When the relay is destroyed its threads stop and the
// taps lose their carrier: the link is down until a new relay attaches.
#pragma once

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace elastic::testing {

// What one direction of a link does to its frames.
struct Impairment {
  std::chrono::milliseconds delay{0};
  double loss = 0;  // the share of frames dropped, 0 to 1
  bool cut = false;
};

class LinkRelay {
 public:
  enum Direction { out = 0, in = 1 };  // out: from the host to the switch

  // Attaches to tap `host_tap` in namespace `host_ns` and `switch_tap` in `switch_ns`.
  LinkRelay(const std::string& host_ns, const std::string& host_tap, const std::string& switch_ns,
            const std::string& switch_tap) {
    stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (stop_fd_ < 0) throw std::runtime_error("eventfd failed");
    try {
      host_fd_ = open_tap(host_ns, host_tap);
      switch_fd_ = open_tap(switch_ns, switch_tap);
    } catch (...) {
      close_all();
      throw;
    }
    threads_[out] = std::thread([this] { forward(host_fd_, switch_fd_, directions_[out]); });
    threads_[in] = std::thread([this] { forward(switch_fd_, host_fd_, directions_[in]); });
  }
  ~LinkRelay() {
    const std::uint64_t one = 1;
    ssize_t ignored = ::write(stop_fd_, &one, sizeof one);
    (void)ignored;
    for (auto& t : threads_)
      if (t.joinable()) t.join();
    close_all();
  }
  LinkRelay(const LinkRelay&) = delete;
  LinkRelay& operator=(const LinkRelay&) = delete;

  void set(Direction d, const Impairment& impairment) {
    directions_[d].delay_ms = impairment.delay.count();
    directions_[d].loss = impairment.loss;
    directions_[d].cut = impairment.cut;
  }
  void set_both(const Impairment& impairment) {
    set(out, impairment);
    set(in, impairment);
  }
  // Frames that went through, and that were dropped, in direction `d` so far.
  std::uint64_t forwarded(Direction d) const { return directions_[d].forwarded; }
  std::uint64_t dropped(Direction d) const { return directions_[d].dropped; }

 private:
  struct State {
    std::atomic<std::int64_t> delay_ms{0};
    std::atomic<double> loss{0};
    std::atomic<bool> cut{false};
    std::atomic<std::uint64_t> forwarded{0};
    std::atomic<std::uint64_t> dropped{0};
  };
  using Clock = std::chrono::steady_clock;
  struct Frame {
    Clock::time_point due;
    std::vector<unsigned char> bytes;
  };
  // As netem's default limit: a queue that grows past it drops new frames.
  static constexpr std::size_t queue_limit = 1000;

  // A tap can only be attached from inside its namespace: a thread of its own
  // enters it, so the caller's namespace stays as it was.
  static int open_tap(const std::string& ns, const std::string& name) {
    int fd = -1;
    std::string error;
    std::thread([&] {
      const int ns_fd = ::open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
      if (ns_fd < 0 || ::setns(ns_fd, CLONE_NEWNET) != 0) {
        error = "cannot enter namespace " + ns + ": " + std::strerror(errno);
        if (ns_fd >= 0) ::close(ns_fd);
        return;
      }
      ::close(ns_fd);
      fd = ::open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
      if (fd < 0) {
        error = std::string("cannot open /dev/net/tun: ") + std::strerror(errno);
        return;
      }
      ifreq request{};
      request.ifr_flags = IFF_TAP | IFF_NO_PI;
      std::strncpy(request.ifr_name, name.c_str(), IFNAMSIZ - 1);
      if (::ioctl(fd, TUNSETIFF, &request) != 0) {
        error = "cannot attach to tap " + name + " in " + ns + ": " + std::strerror(errno);
        ::close(fd);
        fd = -1;
      }
    }).join();
    if (fd < 0) throw std::runtime_error(error);
    return fd;
  }

  void forward(int from, int to, State& state) {
    std::mt19937_64 random(std::random_device{}());
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    std::deque<Frame> queue;
    std::vector<unsigned char> buffer(65536);
    for (;;) {
      int timeout_ms = -1;
      if (!queue.empty()) {
        const auto wait = std::chrono::ceil<std::chrono::milliseconds>(queue.front().due - Clock::now());
        timeout_ms = wait.count() < 0 ? 0 : static_cast<int>(wait.count());
      }
      pollfd fds[2] = {{from, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
      if (::poll(fds, 2, timeout_ms) < 0 && errno != EINTR) return;
      if (fds[1].revents != 0) return;
      if (fds[0].revents & (POLLERR | POLLHUP | POLLNVAL)) return;
      if (fds[0].revents & POLLIN) {
        for (;;) {
          const ssize_t n = ::read(from, buffer.data(), buffer.size());
          if (n < 0 && errno == EINTR) continue;
          if (n < 0 && errno != EAGAIN) return;  // the tap is gone (its namespace was deleted)
          if (n <= 0) break;
          if (state.cut || uniform(random) < state.loss || queue.size() >= queue_limit) {
            ++state.dropped;
            continue;
          }
          queue.push_back(Frame{Clock::now() + std::chrono::milliseconds(state.delay_ms.load()),
                                std::vector<unsigned char>(buffer.begin(), buffer.begin() + n)});
        }
      }
      const auto now = Clock::now();
      while (!queue.empty() && queue.front().due <= now) {
        // A frame the other tap cannot take now is lost, as on a congested wire.
        if (::write(to, queue.front().bytes.data(), queue.front().bytes.size()) > 0)
          ++state.forwarded;
        else
          ++state.dropped;
        queue.pop_front();
      }
    }
  }

  void close_all() {
    for (int* fd : {&host_fd_, &switch_fd_, &stop_fd_})
      if (*fd >= 0) {
        ::close(*fd);
        *fd = -1;
      }
  }

  int host_fd_ = -1;
  int switch_fd_ = -1;
  int stop_fd_ = -1;
  State directions_[2];
  std::thread threads_[2];
};

}  // namespace elastic::testing
