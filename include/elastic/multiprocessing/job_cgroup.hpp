// JobCgroup: a cgroup (v2) of its own for one attempt's workers, made below the
// launcher's cgroup where that is writable and has cgroup.kill (Linux 5.14+).
// Every worker joins it before exec, so everything it starts is in it too,
// whatever group or session it moves to: writing "1" to cgroup.kill ends them
// all. Where it cannot be made, nothing changes (the watchdog's environment
// marker is the fallback). ELASTIC_JOB_CGROUP=off turns it off.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <elastic/multiprocessing/spawn.hpp>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace elastic::multiprocessing {

namespace detail {

// The cgroup v2 directory this process is in, or "" when it cannot be told
// (no cgroup2 mount, or one that shows only part of the hierarchy).
inline std::string own_cgroup2_dir() {
  std::string relative;
  std::ifstream cgroups("/proc/self/cgroup");
  for (std::string line; std::getline(cgroups, line);)
    if (line.rfind("0::", 0) == 0) relative = line.substr(3);
  if (relative.empty() || relative.find("(deleted)") != std::string::npos) return "";
  std::ifstream mounts("/proc/self/mountinfo");
  for (std::string line; std::getline(mounts, line);) {
    auto separator = line.find(" - ");
    if (separator == std::string::npos || line.compare(separator + 3, 8, "cgroup2 ") != 0) continue;
    std::istringstream fields(line.substr(0, separator));
    std::string id, parent, device, root, mount_point;
    fields >> id >> parent >> device >> root >> mount_point;
    if (root != "/") continue;
    return relative == "/" ? mount_point : mount_point + relative;
  }
  return "";
}

}  // namespace detail

class JobCgroup {
 public:
  JobCgroup() = default;
  JobCgroup(const JobCgroup&) = delete;
  JobCgroup& operator=(const JobCgroup&) = delete;
  ~JobCgroup() { kill_and_remove(); }

  // Makes the cgroup; false (nothing made) where it is not available.
  bool create() {
    if (active()) return true;
    const char* setting = std::getenv("ELASTIC_JOB_CGROUP");
    if (setting != nullptr && std::strcmp(setting, "off") == 0) return false;
    const std::string parent = detail::own_cgroup2_dir();
    if (parent.empty() || ::access((parent + "/cgroup.procs").c_str(), W_OK) != 0) return false;
    static unsigned counter = 0;
    std::string path = parent + "/elastic-" + std::to_string(::getpid()) + "-" + std::to_string(++counter) + "-" +
                       std::to_string(static_cast<long long>(std::time(nullptr)));
    if (::mkdir(path.c_str(), 0755) != 0) return false;
    detail::Fd procs(::open((path + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC));
    if (!procs || ::access((path + "/cgroup.kill").c_str(), W_OK) != 0) {
      ::rmdir(path.c_str());
      return false;
    }
    path_ = std::move(path);
    procs_ = std::move(procs);
    return true;
  }

  bool active() const { return !path_.empty(); }
  const std::string& path() const { return path_; }
  // Written "0" by each worker before exec: it joins the cgroup.
  int procs_fd() const { return procs_.get(); }

  // SIGKILLs everything in the cgroup, then removes it once empty.
  void kill_and_remove() {
    if (!active()) return;
    kill_all(path_.c_str());
    remove_when_empty(path_.c_str());
    procs_.reset();
    path_.clear();
  }

  // Async-signal-safe (the watchdog uses them): only open, write, rmdir, nanosleep.
  static void kill_all(const char* dir) {
    char path[PATH_MAX];
    const char suffix[] = "/cgroup.kill";
    const std::size_t length = std::strlen(dir);
    if (length + sizeof(suffix) > sizeof(path)) return;
    // NOLINTNEXTLINE(bugprone-not-null-terminated-result): the suffix copied next ends in NUL
    std::memcpy(path, dir, length);
    std::memcpy(path + length, suffix, sizeof(suffix));
    int fd = ::open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t ignored = ::write(fd, "1", 1);
    (void)ignored;
    ::close(fd);
  }
  // A cgroup can be removed once its last process has exited (zombies do not
  // count); bounded at about two seconds.
  static bool remove_when_empty(const char* dir) {
    // The kernel marks a cgroup empty a little after its last process exits:
    // short pauses first.
    long pause_ns = 50000;
    for (long waited_ns = 0; waited_ns < 2000000000L; waited_ns += pause_ns) {
      if (::rmdir(dir) == 0 || errno == ENOENT) return true;
      if (errno != EBUSY) return false;
      if (waited_ns > 0 && pause_ns < 5000000) pause_ns *= 2;
      const timespec pause{0, pause_ns};
      ::nanosleep(&pause, nullptr);
    }
    return false;
  }

 private:
  std::string path_;
  detail::Fd procs_;
};

}  // namespace elastic::multiprocessing
